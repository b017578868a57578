"""SwinV2 with per-window LIFE: forward/backward, no unused parameters, window boundaries and shifts."""

import pytest
import timm
import torch

import lifevit  # noqa: F401  (registers the models)
from lifevit.models.swinv2 import LIFESwinTransformerV2, LIFEWindowAttention
from lifevit.profile import count_params

SMALL = dict(depths=(2, 2), num_heads=(3, 6), embed_dim=24)  # two stages keep the tests fast


@pytest.mark.parametrize(
    "name, img_size",
    [
        ("swinv2_tiny_window8_256_life", 64),
        ("swinv2_tiny_patch1_window8_32", 32),
        ("swinv2_tiny_patch1_window8_32_life", 32),
        ("swinv2_tiny_patch1_window8_64", 32),
        ("swinv2_tiny_patch1_window8_64_life", 32),
    ],
)
def test_forward_backward_every_parameter_gets_grad(name, img_size):
    model = timm.create_model(name, num_classes=7, img_size=img_size, **SMALL)
    out = model(torch.randn(2, 3, img_size, img_size))
    assert out.shape == (2, 7) and torch.isfinite(out).all()
    out.square().mean().backward()
    # no parameter is created and left unused (the replaced q_bias / v_bias are gone)
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"parameters without gradient: {missing[:5]}"
    names = [n for n, _ in model.named_parameters()]
    if name.endswith("_life"):
        assert not any(n.endswith(("q_bias", "v_bias")) for n in names)
        attns = [m for m in model.modules() if isinstance(m, LIFEWindowAttention)]
        assert len(attns) == 4 and all(a.qkv.num_prefix_tokens == 0 for a in attns)


def test_life_grid_is_the_window_in_use():
    model = timm.create_model("swinv2_tiny_patch1_window8_32_life", embed_dim=24)
    for stage in model.layers:
        for block in stage.blocks:
            assert block.attn.qkv.grid_size == tuple(block.window_size)
    # the last stage's 4x4 map is smaller than the window: timm shrinks the window, LIFE follows
    assert model.layers[-1].blocks[0].attn.qkv.grid_size == (4, 4)
    model.set_input_size(img_size=(64, 64), window_size=8)
    assert model.layers[-1].blocks[0].attn.qkv.grid_size == (8, 8)
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 100)


def test_param_count_matches_paper_increment():
    plain = timm.create_model("swinv2_tiny_window8_256", num_classes=100)
    life = timm.create_model("swinv2_tiny_window8_256_life", num_classes=100)
    assert isinstance(life, LIFESwinTransformerV2)
    # per block of width C (C / 3 per scale): depthwise 34 C, pointwise 2 C^2 (bias-free by default, as in the
    # release), linear C^2 + C; the plain projection has 3 C^2 + 2 C (q and v biases): LIFE adds 33 C per block
    widths = [96] * 2 + [192] * 2 + [384] * 6 + [768] * 2
    assert count_params(life) - count_params(plain) == 33 * sum(widths) == 145_728
    old = timm.create_model("swinv2_tiny_window8_256_life", num_classes=100, life_options={"pointwise_bias": True})
    assert count_params(old) - count_params(plain) == 35 * sum(widths) == 154_560  # + 2 C of pointwise biases


def _block_pair(shift: bool):
    """A plain and a LIFE SwinV2 block on a 16x16 map with window 8 (shifted by 4 when ``shift``)."""
    kwargs = dict(img_size=16, patch_size=1, depths=(2,), num_heads=(2,), embed_dim=8, window_size=8)
    plain = timm.create_model("swinv2_tiny_patch1_window8_32", **kwargs).eval()
    life = timm.create_model("swinv2_tiny_patch1_window8_32_life", **kwargs).eval()
    index = 1 if shift else 0
    return plain.layers[0].blocks[index], life.layers[0].blocks[index]


def _changed(block, row: int, col: int) -> torch.Tensor:
    """Positions whose attention output changes when the input token at (row, col) changes."""
    x = torch.randn(1, 16, 16, 8)
    y = x.clone()
    y[0, row, col] += 5.0
    with torch.no_grad():
        return (block._attn(x) - block._attn(y)).abs().amax(-1)[0] > 1e-5  # (16, 16)


def test_unshifted_windows_are_independent():
    _, life = _block_pair(shift=False)
    assert life.shift_size == (0, 0)
    changed = _changed(life, 2, 5)
    assert changed[:8, :8].any()
    assert not changed[8:, :].any() and not changed[:, 8:].any()  # nothing leaves the top-left window


def test_shifted_windows_convolve_across_the_roll_seam_as_documented():
    plain, life = _block_pair(shift=True)
    assert life.shift_size == (4, 4)
    # interior shifted window: rows/cols 4..11 in image coordinates; nothing outside it changes
    changed = _changed(life, 6, 6)
    outside = changed.clone()
    outside[4:12, 4:12] = False
    assert changed[4:12, 4:12].any() and not outside.any()
    # border window: after the roll, image row 0 sits right below image row 15 in the same window. The attention
    # mask keeps them apart in the plain block; LIFE's 3x3/5x5 convs do mix them (circular padding at the seam).
    plain_changed, life_changed = _changed(plain, 0, 6), _changed(life, 0, 6)
    assert not plain_changed[12:, :].any()
    assert life_changed[15, 5:8].all()


def test_features_only_for_dense_heads():
    model = timm.create_model("swinv2_tiny_patch1_window8_32_life", features_only=True, embed_dim=24)
    feats = model(torch.randn(1, 3, 32, 32))
    assert [tuple(f.shape[1:3]) for f in feats] == [(32, 32), (16, 16), (8, 8), (4, 4)]  # NHWC maps
