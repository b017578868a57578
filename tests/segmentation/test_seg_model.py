"""Backbone adapter, decode heads and the Segmenter model: shapes, prefix tokens, non-square inputs, gradients."""

import copy

import pytest
import torch
from torch import nn

from lifevit.layers import life_layers
from lifevit.tasks.segmentation import (
    LinearDecoder,
    MaskTransformerDecoder,
    ModelConfig,
    build_segmenter,
    create_backbone,
)

TINY_VIT = dict(embed_dim=48, depth=2, num_heads=2)
TINY_SWIN = dict(embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1), window_size=4)


@pytest.mark.parametrize(
    "name", ["deit_tiny_patch16_224", "deit_tiny_patch16_224_life", "deit_tiny_distilled_patch16_224_life"]
)
def test_vit_adapter_removes_prefix_tokens_on_non_square_grid(name):
    backbone = create_backbone(name, img_size=(64, 96), **TINY_VIT)
    x = torch.randn(2, 3, 48, 80)  # other size than built for: dynamic_img_size
    (feat,) = backbone(x)
    assert feat.shape == (2, 48, 3, 5)  # 3 x 5 patches, no class / distillation token
    assert backbone.stride == 16 and backbone.channels == (48,)
    # the LIFE layers were told this input's grid and the model's prefix-token count
    for layer in life_layers(backbone):
        assert layer.grid_size == (3, 5)
        assert layer.num_prefix_tokens == backbone.model.num_prefix_tokens


def test_vit_adapter_matches_timm_tokens():
    """The map is the final-norm patch tokens of timm's forward_features, reshaped to the grid."""
    backbone = create_backbone("deit_tiny_patch16_224_life", img_size=(32, 64), **TINY_VIT).eval()
    x = torch.randn(1, 3, 32, 64)
    (feat,) = backbone(x)
    tokens = backbone.model.forward_features(x)  # (1, 1 + 2 * 4, 48)
    expected = tokens[:, 1:].reshape(1, 2, 4, 48).permute(0, 3, 1, 2)
    assert torch.allclose(feat, expected, atol=1e-5)


def test_vit_adapter_several_blocks_and_bad_index():
    backbone = create_backbone("deit_tiny_patch16_224_life", img_size=32, out_indices=(0, -1), **TINY_VIT)
    maps = backbone(torch.randn(1, 3, 32, 32))
    assert [m.shape for m in maps] == [(1, 48, 2, 2)] * 2
    with pytest.raises(ValueError, match="out of range"):
        create_backbone("deit_tiny_patch16_224", img_size=32, out_indices=(5,), **TINY_VIT)
    with pytest.raises(ValueError, match="unknown backbone"):
        create_backbone("no_such_model", img_size=32)


@pytest.mark.parametrize("name", ["swinv2_tiny_window8_256", "swinv2_tiny_window8_256_life"])
def test_swinv2_multi_stage(name):
    backbone = create_backbone(name, img_size=64, out_indices=(0, 1, 2, 3), **TINY_SWIN)
    maps = backbone(torch.randn(1, 3, 64, 128))
    assert [tuple(m.shape) for m in maps] == [(1, 16, 16, 32), (1, 32, 8, 16), (1, 64, 4, 8), (1, 128, 2, 4)]
    assert backbone.reductions == (4, 8, 16, 32) and backbone.stride == 32


@pytest.mark.parametrize("decoder", ["linear", "mask_transformer"])
@pytest.mark.parametrize(
    "name, kwargs, out_indices",
    [
        ("deit_tiny_patch16_224_life", TINY_VIT, (-1,)),
        ("swinv2_tiny_window8_256_life", TINY_SWIN, (0, 1, 2, 3)),
    ],
)
def test_segmenter_forward_backward_any_size(decoder, name, kwargs, out_indices):
    cfg = ModelConfig(
        backbone=name,
        decoder=decoder,
        num_classes=5,
        img_size=64,
        out_indices=out_indices,
        backbone_kwargs=kwargs,
        decoder_layers=1,
        drop_path_rate=0.0,
    )
    model = build_segmenter(cfg)
    x = torch.randn(2, 3, 50, 70)  # not a multiple of the stride: padded, then cropped back
    logits = model(x)["logits"]
    assert logits.shape == (2, 5, 50, 70) and torch.isfinite(logits).all()
    logits.logsumexp(1).mean().backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"parameters without gradient: {missing}"


def test_mask_transformer_decoder_shapes_and_class_masks():
    dec = MaskTransformerDecoder(in_dim=32, num_classes=7, dim=64, depth=1, num_heads=2)
    out = dec(torch.randn(3, 32, 4, 6))
    assert out.shape == (3, 7, 4, 6)
    # masks are LayerNorm-ed over the classes: zero mean, unit variance per pixel (default affine)
    assert torch.allclose(out.mean(1), torch.zeros(3, 4, 6), atol=1e-5)
    with pytest.raises(ValueError, match="not divisible"):
        MaskTransformerDecoder(32, 7, dim=64, num_heads=3)


def test_linear_decoder_is_per_patch():
    dec = LinearDecoder(8, 3)
    x = torch.randn(1, 8, 4, 4)
    out = dec(x)
    assert torch.allclose(out[0, :, 1, 2], dec.head.weight[:, :, 0, 0] @ x[0, :, 1, 2] + dec.head.bias, atol=1e-6)


def test_model_config_rejects_bad_values():
    with pytest.raises(ValueError, match="model.decoder must be one of"):
        ModelConfig(decoder="upernet")
    with pytest.raises(ValueError, match="img_size"):
        ModelConfig(img_size=(1, 2, 3))


def test_lifeify_backbone_for_imagenet_initialised_rows():
    """``lifeify: true`` turns a plain (pretrained) backbone into a LIFE one; it rebuilds identically."""
    cfg = ModelConfig(
        backbone="deit_tiny_patch16_224", lifeify=True, num_classes=3, img_size=64, backbone_kwargs=TINY_VIT
    )
    model = build_segmenter(cfg)
    assert len(list(life_layers(model))) == 2
    rebuilt = build_segmenter(cfg)
    rebuilt.load_state_dict(model.state_dict())  # same structure, strict
    model.eval(), rebuilt.eval()
    x = torch.randn(1, 3, 48, 80)
    assert torch.allclose(model(x)["logits"], rebuilt(x)["logits"], atol=1e-6)


def test_every_segmentation_config_parses():
    from pathlib import Path

    import yaml

    from lifevit.tasks.segmentation import config_from_dict

    files = sorted((Path(__file__).resolve().parents[2] / "configs" / "segmentation").glob("*.yaml"))
    assert len(files) >= 7
    for f in files:
        cfg = config_from_dict(yaml.safe_load(f.read_text()))
        assert cfg.model.num_classes in (11, 19), f
        assert timm_has(cfg.model.backbone), f


def timm_has(name):
    import timm

    return name in timm.list_models()


def _classifier_checkpoint(tmp_path, **kwargs):
    import timm

    from lifevit.engine.checkpoint import save_checkpoint

    clf = timm.create_model("vit_lite_patch4_28_life", num_classes=10, **kwargs).eval()
    ema = copy.deepcopy(clf)
    for p in ema.parameters():
        p.data.add_(0.01)  # the EMA weights differ from the raw ones: check which are loaded

    class Ema:
        module = ema

    meta = {"task": "classification", "model": "vit_lite_patch4_28_life"}
    save_checkpoint(tmp_path / "clf", model=clf, meta=meta, epoch=3, ema=Ema())
    return clf, ema


def test_init_from_a_classification_checkpoint(tmp_path):
    """A grey-scale 28 x 28 classifier (4 px patches) starts an RGB segmentation backbone: same blocks (the EMA
    weights), patch embedding resampled to 6 px and adapted to 3 channels, position embedding to the new grid."""
    _, ema = _classifier_checkpoint(tmp_path)
    backbone = create_backbone(
        "vit_lite_patch4_28_life", img_size=96, in_chans=3, patch_size=6, init_checkpoint=str(tmp_path / "clf")
    )
    model = backbone.model
    torch.testing.assert_close(model.blocks[2].attn.qkv.pointwise[0].weight, ema.blocks[2].attn.qkv.pointwise[0].weight)
    torch.testing.assert_close(model.cls_token, ema.cls_token)
    assert model.patch_embed.proj.weight.shape == (96, 3, 6, 6)
    assert model.pos_embed.shape == (1, 1 + 16 * 16, 96)
    # same patch size: a grey image repeated in 3 channels embeds exactly as the grey image in the classifier
    same = create_backbone(
        "vit_lite_patch4_28_life", img_size=28, in_chans=3, init_checkpoint=str(tmp_path / "clf")
    ).model
    grey = torch.rand(2, 1, 28, 28)
    torch.testing.assert_close(
        same.patch_embed(grey.expand(-1, 3, -1, -1)).flatten(1, 2), ema.patch_embed(grey), atol=1e-5, rtol=1e-5
    )


def test_init_checkpoint_errors(tmp_path):
    _classifier_checkpoint(tmp_path, embed_dim=48, num_heads=2)
    with pytest.raises(ValueError, match="does not fit"):
        create_backbone("vit_lite_patch4_28_life", img_size=96, in_chans=3, init_checkpoint=str(tmp_path / "clf"))
    from lifevit.engine.checkpoint import save_checkpoint

    save_checkpoint(tmp_path / "seg", model=nn.Linear(2, 2), meta={"task": "segmentation", "model": "x"}, epoch=1)
    with pytest.raises(ValueError, match="expected a classification one"):
        create_backbone("vit_lite_patch4_28_life", img_size=96, init_checkpoint=str(tmp_path / "seg"))
