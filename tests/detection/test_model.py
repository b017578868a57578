"""Backbone adapters and heads: shapes, non-square / padded inputs, one training step of each head."""

import pytest
import torch
from timm.layers import Attention

from lifevit.layers import LIFE, LIFEAttention
from lifevit.tasks.backbone import create_backbone
from lifevit.tasks.detection import HEADS, LossConfig, ModelConfig, build_criterion, build_detector
from lifevit.tasks.detection.head import build_head

TINY = dict(
    backbone="vit_lite_patch4_28_life",
    backbone_kwargs={"patch_size": 8, "in_chans": 3, "depth": 1},
    hidden_dim=32,
    num_heads=2,
    enc_layers=1,
    dec_layers=2,
    num_queries=5,
    mlp_ratio=2.0,
)


def _targets(B):
    return [
        {"labels": torch.tensor([b % 3, 1]), "boxes": torch.tensor([[0.3, 0.3, 0.2, 0.3], [0.7, 0.6, 0.3, 0.2]])}
        for b in range(B)
    ]


@pytest.mark.parametrize("head", sorted(HEADS))
def test_one_training_step(head):
    torch.manual_seed(0)
    model = build_detector(ModelConfig(head=head, **TINY), num_classes=3, img_size=48)
    crit = build_criterion(LossConfig(), 3)
    x = torch.randn(2, 3, 48, 64)  # non-square
    out = model(x)
    assert out["pred_logits"].shape == (2, 5, 3) and out["pred_boxes"].shape == (2, 5, 4)
    assert len(out["aux_outputs"]) == 1 and out["enc_outputs"]["pred_boxes"].shape == (2, 5, 4)
    assert ((out["pred_boxes"] > 0) & (out["pred_boxes"] < 1)).all()
    losses = crit(out, _targets(2))
    loss = crit.total(losses)
    assert torch.isfinite(loss)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"parameters without gradient: {missing}"
    opt.step()
    changed = sum(not torch.equal(before[n], p) for n, p in model.named_parameters())
    assert changed == len(before)


def test_head_definitions():
    enc = build_head("encdec", 48, 3, hidden_dim=32, num_heads=4)
    lin = build_head("encdec_linear", 48, 3, hidden_dim=32, num_heads=4)
    life = build_head("encdec_life", 48, 3, hidden_dim=32, num_heads=4, life_kernel_sizes=(3,))
    assert enc.hidden_dim == 48 and isinstance(enc.input_proj, torch.nn.LayerNorm)  # no projection: backbone width
    assert lin.hidden_dim == life.hidden_dim == 32
    assert type(lin.encoder[0].attn) is Attention
    assert isinstance(life.encoder[0].attn, LIFEAttention) and life.encoder[0].attn.qkv.kernel_sizes == (3,)
    # LIFE-only difference: same parameter names outside the encoder qkv
    outside = lambda h: {n for n, _ in h.named_parameters() if ".attn.qkv." not in n}  # noqa: E731
    assert outside(lin) == outside(life)
    feats = torch.randn(2, 48, 3, 5)
    life(feats)
    for layer in life.modules():
        if isinstance(layer, LIFE):
            assert layer.grid_size == (3, 5) and layer.num_prefix_tokens == 0
    with pytest.raises(ValueError, match="unknown detection head 'detr'"):
        build_head("detr", 48, 3)
    with pytest.raises(ValueError, match="hidden_dim must be divisible"):
        build_head("encdec_linear", 48, 3, hidden_dim=30, num_heads=4)


def test_padding_mask_ignores_padding():
    torch.manual_seed(0)
    model = build_detector(ModelConfig(head="encdec_life", **TINY), num_classes=3, img_size=48).eval()
    x = torch.randn(1, 3, 48, 48)
    padded = torch.zeros(1, 3, 48, 64)
    padded[..., :48] = x
    mask = torch.zeros(1, 48, 64, dtype=torch.bool)
    mask[..., :48] = True
    with torch.no_grad():
        out = model(padded, mask)
    # every query comes from a real cell and boxes are normalised by the real image
    assert out["enc_outputs"]["pred_boxes"][..., 0].max() < 1.0
    assert torch.isfinite(out["pred_boxes"]).all()


def test_backbones():
    # the dense-backbone adapter shared with segmentation: the detector reads its last map
    vit = create_backbone("vit_lite_patch4_28_life", img_size=32, patch_size=8, in_chans=3, depth=1)
    assert vit(torch.randn(1, 3, 32, 48))[-1].shape == (1, 96, 4, 6) and vit.stride == 8 and vit.num_channels == 96
    with pytest.raises(ValueError, match="not a multiple of the backbone stride 8"):
        vit(torch.randn(1, 3, 30, 48))
    with pytest.raises(ValueError, match="unknown backbone 'resnet_does_not_exist'"):
        create_backbone("resnet_does_not_exist", img_size=32)
    swin = create_backbone(
        "swinv2_tiny_window8_256", img_size=64, depths=(1, 1, 1, 1), embed_dim=24, num_heads=(1, 1, 1, 1)
    )
    assert swin.stride == 32 and swin(torch.randn(1, 3, 64, 96))[-1].shape == (1, 192, 2, 3)


def test_paper_configs_parse():
    from pathlib import Path

    import yaml

    from lifevit.tasks.detection.config import config_from_dict

    folder = Path(__file__).resolve().parents[2] / "configs" / "detection"
    rows = set()
    for f in sorted(folder.glob("*.yaml")):
        cfg = config_from_dict(yaml.safe_load(f.read_text()))
        assert cfg.model.head in HEADS, f
        if f.name.startswith("voc_"):
            life_backbone = cfg.model.backbone.endswith("_life") or cfg.model.lifeify
            rows.add((cfg.model.backbone.split("_")[0], life_backbone, cfg.model.head, cfg.model.pretrained))
            assert cfg.data.val_split == "test" and cfg.data.val_year == "2007"
    assert len(rows) == 24  # 4 backbones x 3 heads x 2 initialisations


def test_config_values_are_checked():
    from lifevit.tasks.detection.config import config_from_dict

    cfg = config_from_dict({"train": {"lr": "7e-4", "epochs": "3"}})  # YAML reads 7e-4 as a string
    assert cfg.train.lr == pytest.approx(7e-4) and cfg.train.epochs == 3
    with pytest.raises(ValueError, match="config key 'train.lr' expects a number, got 'fast'"):
        config_from_dict({"train": {"lr": "fast"}})
    with pytest.raises(ValueError, match=r"unknown config key\(s\) 'model.heads'; valid keys of model:"):
        config_from_dict({"model": {"heads": "encdec"}})
    # keys that moved are refused at their old place, and read at their new one
    for section, key in (("train", "eval_every"), ("train", "score_threshold"), ("data", "num_workers")):
        with pytest.raises(ValueError, match=rf"unknown config key\(s\) '{section}.{key}'"):
            config_from_dict({section: {key: 1}})
    cfg = config_from_dict(
        {"train": {"eval_interval": 2, "min_lr": 1e-6}, "inference": {"score_threshold": 0.5}, "data": {"workers": 1}}
    )
    assert (cfg.train.eval_interval, cfg.inference.score_threshold, cfg.data.workers) == (2, 0.5, 1)
    assert cfg.train.min_lr == 1e-6  # an absolute learning rate now
    with pytest.raises(ValueError, match="config key 'model.lifeify' expects true or false, got 'yes'"):
        config_from_dict({"model": {"lifeify": "yes"}})
    assert config_from_dict({"model": {"life_kernel_sizes": [3, 3]}}).model.life_kernel_sizes == (3, 3)
