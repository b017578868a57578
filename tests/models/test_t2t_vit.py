"""T2T-ViT-12 with and without LIFE: the T2T stem, forward/backward, grids and parameter counts."""

import pytest
import timm
import torch

import lifevit  # noqa: F401  (registers the models)
from lifevit import LIFE
from lifevit.models.t2t_vit import T2TEmbed, TokenPerformer
from lifevit.profile import count_params

T2T_MODELS = [
    "t2t_vit_12",
    "t2t_vit_12_life",
    "t2t_vit_12_32",
    "t2t_vit_12_32_life",
    "t2t_vit_12_64",
    "t2t_vit_12_64_life",
]


@pytest.mark.parametrize("name", T2T_MODELS)
def test_forward_backward_every_parameter_gets_grad(name):
    size = 64 if name in ("t2t_vit_12", "t2t_vit_12_life") else 32  # 4x4 / 8x8 grids keep the test fast
    model = timm.create_model(name, num_classes=7, depth=2, img_size=size)
    out = model(torch.randn(2, 3, size, size))
    assert out.shape == (2, 7) and torch.isfinite(out).all()
    out.square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"parameters without gradient: {missing[:5]}"
    lifes = [m for m in model.modules() if isinstance(m, LIFE)]
    assert len(lifes) == (2 if name.endswith("_life") else 0)


@pytest.mark.parametrize(
    "img_size, strides, grid", [(224, (4, 2, 2), (14, 14)), (32, (2, 2, 1), (8, 8)), (64, (2, 2, 1), (16, 16))]
)
def test_t2t_stem_grid(img_size, strides, grid):
    embed = T2TEmbed(img_size=img_size, embed_dim=32, token_dim=8, strides=strides)
    assert embed.grid_size == grid and embed.num_patches == grid[0] * grid[1]
    out = embed(torch.randn(1, 3, img_size, img_size))
    assert out.shape == (1, grid[0] * grid[1], 32)


def test_t2t_stem_rejects_wrong_size_when_strict():
    embed = T2TEmbed(img_size=32, embed_dim=32, token_dim=8, strides=(2, 2, 1))
    with pytest.raises(ValueError, match="expects 32x32 images, got 40x32"):
        embed(torch.randn(1, 3, 40, 32))


def test_token_performer_matches_explicit_random_feature_attention():
    torch.manual_seed(1)
    layer = TokenPerformer(12, 8, kernel_ratio=0.5)
    x = torch.randn(2, 10, 12)
    k, q, v = layer.kqv(x).chunk(3, dim=-1)
    phi_q, phi_k = layer._positive_features(q), layer._positive_features(k)
    assert (phi_q > 0).all()
    attn = phi_q @ phi_k.transpose(1, 2)  # (B, N, N): approximated exp(q.k), un-normalised
    attn = attn / attn.sum(-1, keepdim=True)
    expected = v + layer.proj(attn @ v)
    torch.testing.assert_close(layer.attention(x), expected, rtol=1e-4, atol=1e-5)


def test_life_grid_follows_dynamic_image_size():
    model = timm.create_model("t2t_vit_12_32_life", depth=1, dynamic_img_size=True, num_classes=3)
    x = torch.randn(1, 3, 40, 24)
    assert model(x).shape == (1, 3)
    (life,) = [m for m in model.modules() if isinstance(m, LIFE)]
    assert life.grid_size == (10, 6) == model.patch_embed.dynamic_feat_size((40, 24))
    assert life.num_prefix_tokens == 1


def test_param_counts_full_size_100_classes():
    plain = timm.create_model("t2t_vit_12", num_classes=100)
    life = timm.create_model("t2t_vit_12_life", num_classes=100)
    assert round(count_params(plain) / 1e6, 2) == 6.66  # the paper's T2T-ViT-12 row
    layers = [m for m in life.modules() if isinstance(m, LIFE)]
    assert len(layers) == 12 and all(m.widths == (86, 85, 85) for m in layers)
    # no qkv bias: linear 256 -> 258, depthwise 258 * 3^2 + 255 * 5^2, pointwise 258 -> 255 -> 255
    per_block = 256 * 258 + (258 * 9 + 255 * 25) + (258 * 255 + 255 * 255) - 256 * 768
    assert count_params(life) - count_params(plain) == 12 * per_block == 107_424


def test_forward_intermediates_give_the_grid():
    model = timm.create_model("t2t_vit_12_64_life", depth=2, img_size=32)
    feats = model.forward_intermediates(torch.randn(1, 3, 32, 32), intermediates_only=True)
    assert [tuple(f.shape) for f in feats] == [(1, 256, 8, 8)] * 2
