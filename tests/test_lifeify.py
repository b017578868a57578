"""lifeify: in-place conversion of timm ViT / DeiT / SwinV2 models to LIFE."""

import pytest
import timm
import torch

import lifevit
from lifevit import LIFE
from lifevit.layers import TokenGridMixin
from lifevit.models.swinv2 import LIFEWindowAttention

VIT_SMALL = dict(depth=2, img_size=32, patch_size=4, num_classes=10)
SWIN_SMALL = dict(
    depths=(2, 2),
    num_heads=(3, 6),
    embed_dim=24,
    img_size=32,
    patch_size=2,
    window_size=8,
    num_classes=10,
    drop_path_rate=0.0,
)
CASES = [
    ("deit_tiny_patch16_224", VIT_SMALL),
    ("deit_small_patch16_224", VIT_SMALL),
    ("deit_tiny_distilled_patch16_224", VIT_SMALL),
    ("swinv2_tiny_window8_256", SWIN_SMALL),
]


def _randomise(model):
    # fresh timm models zero some weights (SwinV2 post-norms); random values make the checks meaningful
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.05)
    return model


def _logits(out):
    return out[0] if isinstance(out, (tuple, list)) else out


@pytest.mark.parametrize("name, kwargs", CASES)
def test_keeps_every_other_weight_bit_identical(name, kwargs):
    model = _randomise(timm.create_model(name, **kwargs))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert lifevit.lifeify(model) is model
    after = model.state_dict()
    removed = sorted(set(before) - set(after))
    expected_removed = [
        k for k in before if k.endswith(("attn.qkv.weight", "attn.qkv.bias", "attn.q_bias", "attn.v_bias"))
    ]
    assert removed == sorted(expected_removed) and removed
    assert all(torch.equal(before[k], after[k]) for k in before if k in after)
    new = set(after) - set(before)
    assert new and all(".attn.qkv." in k for k in new)


@pytest.mark.parametrize("name, kwargs", CASES)
def test_scale_one_reproduces_a_slice_of_the_original_qkv(name, kwargs):
    model = _randomise(timm.create_model(name, **kwargs))
    attn = model.blocks[0].attn if hasattr(model, "blocks") else model.layers[0].blocks[0].attn
    x = torch.randn(2, 5, attn.qkv.in_features)
    with torch.no_grad():
        if hasattr(attn, "q_bias"):  # SwinV2: bias-free linear plus q / v biases
            bias = torch.cat((attn.q_bias, torch.zeros_like(attn.q_bias), attn.v_bias))
            full = torch.nn.functional.linear(x, attn.qkv.weight, bias)
        else:
            full = attn.qkv(x)
    lifevit.lifeify(model)
    life = attn.qkv
    assert isinstance(life, LIFE)
    c1, D = life.widths[0], life.out_dim
    with torch.no_grad():
        scale1 = life.linear(x).view(2, 5, 3, c1)
    torch.testing.assert_close(scale1, full.view(2, 5, 3, D)[..., :c1])


@pytest.mark.parametrize("name, kwargs", [c for c in CASES if c[0] != "deit_small_patch16_224"])
def test_converted_model_tracks_its_grid_and_trains(name, kwargs):
    model = timm.create_model(name, **kwargs)
    lifevit.lifeify(model)
    if hasattr(model, "blocks"):
        assert isinstance(model, TokenGridMixin)
        assert all(m.grid_size == (8, 8) and m.num_prefix_tokens == model.num_prefix_tokens
                   for m in model.modules() if isinstance(m, LIFE))  # fmt: skip
    else:
        attns = [m for m in model.modules() if isinstance(m, LIFEWindowAttention)]
        assert len(attns) == 4 and all(a.qkv.grid_size == tuple(a.window_size) for a in attns)
    torch.manual_seed(0)
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    losses = []
    for _ in range(6):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(_logits(model(x)), y)
        loss.backward()
        if not losses:
            missing = [n for n, p in model.named_parameters() if p.grad is None]
            assert not missing, missing[:5]
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0], losses  # it fits a fixed batch


def test_preserve_init_reproduces_the_model_in_float64():
    model = _randomise(timm.create_model("deit_tiny_patch16_224", **VIT_SMALL)).double().eval()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        expected = model(x)
        lifevit.lifeify(model, init="preserve")
        got = model(x)
    torch.testing.assert_close(got, expected, rtol=1e-7, atol=1e-9)


def test_preserve_refuses_a_width_it_cannot_reproduce_before_changing_anything():
    model = timm.create_model("t2t_vit_12_32", depth=1)  # width 256 -> scales (86, 85, 85)
    with pytest.raises(ValueError, match=r"width 256 .* \(86, 85, 85\)"):
        lifevit.lifeify(model, init="preserve")
    assert not any(isinstance(m, LIFE) for m in model.modules())
    lifevit.lifeify(model, init="preserve", strict=False)  # least squares, logged
    assert type(model).__name__ == "LIFET2TVisionTransformer"


def test_clear_errors():
    with pytest.raises(ValueError, match="does not know the architecture ResNet; it converts: .*SwinTransformerV2"):
        lifevit.lifeify(timm.create_model("resnet18", num_classes=2))
    with pytest.raises(ValueError, match="already has LIFE"):
        lifevit.lifeify(timm.create_model("deit_tiny_patch4_32_life", depth=1))
    with pytest.raises(ValueError, match="init must be one of"):
        lifevit.lifeify(timm.create_model("deit_tiny_patch4_32", depth=1), init="zeros")


@pytest.mark.parametrize(
    "plain, life, kwargs",
    [
        ("deit_tiny_patch16_224", "deit_tiny_patch16_224_life", VIT_SMALL),
        ("deit_tiny_distilled_patch16_224", "deit_tiny_distilled_patch16_224_life", VIT_SMALL),
        ("swinv2_tiny_window8_256", "swinv2_tiny_window8_256_life", SWIN_SMALL),
    ],
)
def test_converted_weights_load_strictly_into_the_registered_life_model(plain, life, kwargs):
    # so a fine-tuned lifeified model is saved and rebuilt under the registered LIFE name
    model = lifevit.lifeify(_randomise(timm.create_model(plain, **kwargs))).eval()
    rebuilt = timm.create_model(life, **kwargs).eval()
    rebuilt.load_state_dict(model.state_dict(), strict=True)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(_logits(rebuilt(x)), _logits(model(x)))
