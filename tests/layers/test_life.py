"""LIFE layer: layout, receptive fields, prefix-token isolation, errors."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lifevit import LIFE
from lifevit.layers import split_widths


def reference_life(m: LIFE, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
    """LIFE written out in NCHW, one token group and one scale at a time, as the paper describes it."""
    B, N, _ = x.shape
    P = m.num_prefix_tokens
    qkv_by_scale = []
    y = F.linear(x, m.linear.weight, m.linear.bias)  # (B, N, 3*c1)
    qkv_by_scale.append(y)
    for dw, pw in zip(m.depthwise, m.pointwise):
        prefix = F.linear(y[:, :P], pw.weight, pw.bias)  # prefix: pointwise only
        grid = y[:, P:].transpose(1, 2).reshape(B, -1, H, W).contiguous()  # (B, C, H, W) NCHW
        grid = F.conv2d(grid, dw.weight, None, padding=dw.padding, groups=dw.groups)
        patches = F.linear(grid.flatten(2).transpose(1, 2), pw.weight, pw.bias)
        y = torch.cat([prefix, patches], dim=1)
        qkv_by_scale.append(y)
    q = torch.cat([s.chunk(3, dim=-1)[0] for s in qkv_by_scale], dim=-1)
    k = torch.cat([s.chunk(3, dim=-1)[1] for s in qkv_by_scale], dim=-1)
    v = torch.cat([s.chunk(3, dim=-1)[2] for s in qkv_by_scale], dim=-1)
    return torch.cat([q, k, v], dim=-1)


@pytest.mark.parametrize("prefix", [0, 1, 2, 5])
@pytest.mark.parametrize("dim,grid", [(48, (4, 4)), (100, (3, 5)), (64, (7, 2))])
def test_matches_reference_and_shapes(prefix, dim, grid):
    H, W = grid
    m = LIFE(dim, num_prefix_tokens=prefix)
    x = torch.randn(2, prefix + H * W, dim)
    out = m(x, grid_size=grid)  # autograd on: the scales are concatenated
    assert out.shape == (2, prefix + H * W, 3 * dim)
    with torch.no_grad():
        reference = reference_life(m, x, H, W)
        out_no_grad = m(x, grid_size=grid)  # autograd off: the scales are written into one buffer
    torch.testing.assert_close(out, reference, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out_no_grad, reference, rtol=1e-5, atol=1e-5)


def test_widths_split_rule():
    assert split_widths(192, 3) == (64, 64, 64)
    assert split_widths(256, 3) == (86, 85, 85)
    assert split_widths(10, 4) == (3, 3, 2, 2)
    m = LIFE(256, kernel_sizes=(3, 5))
    assert m.widths == (86, 85, 85)
    assert m.linear.out_features == 3 * 86
    assert [pw.out_features for pw in m.pointwise] == [3 * 85, 3 * 85]
    with pytest.raises(ValueError, match="cannot split 2 channels over 3 scales"):
        split_widths(2, 3)


def test_layout_is_q_k_v_each_concatenated_over_scales():
    """out[..., :D] is q = [q1 q2 q3]; q1 comes from the first third of the scale-1 linear output."""
    m = LIFE(24, num_prefix_tokens=1, kernel_sizes=(3, 5))
    x = torch.randn(1, 1 + 9, 24)
    out = m(x, grid_size=(3, 3)).view(1, 10, 3, 24)
    y1 = m.linear(x).view(1, 10, 3, 8)  # scale 1: [q1 | k1 | v1]
    for j in range(3):  # q, k, v
        torch.testing.assert_close(out[:, :, j, :8], y1[:, :, j])


def _input_grad_support(m: LIFE, grid, P, token, channels):
    H, W = grid
    x = torch.randn(1, P + H * W, m.dim, requires_grad=True)
    out = m(x, grid_size=grid).view(1, P + H * W, 3, m.out_dim)
    out[0, token, :, channels].sum().backward()
    g = x.grad[0].abs().sum(-1)  # (P + H*W,)
    return g[:P], g[P:].view(H, W)


@pytest.mark.parametrize("scale,radius", [(0, 0), (1, 1), (2, 3)])
def test_receptive_field_per_scale(scale, radius):
    """Scale 1 sees only the token, scale 2 its 3x3 and scale 3 its 7x7 neighbourhood (kernels 3 then 5)."""
    torch.manual_seed(1)
    H, W, P = 11, 11, 1
    m = LIFE(12, num_prefix_tokens=P, kernel_sizes=(3, 5))
    c = m.widths[0]
    channels = slice(scale * c, (scale + 1) * c)
    r0, c0 = 5, 5
    prefix_grad, patch_grad = _input_grad_support(m, (H, W), P, P + r0 * W + c0, channels)
    support = patch_grad > 0
    expected = torch.zeros(H, W, dtype=torch.bool)
    expected[r0 - radius : r0 + radius + 1, c0 - radius : c0 + radius + 1] = True
    assert torch.equal(support, expected)
    assert prefix_grad.sum() == 0  # patch outputs never depend on prefix tokens


def test_receptive_field_clipped_at_border_and_non_square():
    H, W, P = 4, 9, 2
    m = LIFE(12, num_prefix_tokens=P)
    prefix_grad, patch_grad = _input_grad_support(m, (H, W), P, P + 0 * W + 8, slice(8, 12))  # top-right, scale 3
    expected = torch.zeros(H, W, dtype=torch.bool)
    expected[0:4, 5:9] = True  # 7x7 window centred at (0, 8), clipped to the grid
    assert torch.equal(patch_grad > 0, expected)
    assert prefix_grad.sum() == 0


@pytest.mark.parametrize("P", [1, 2, 5])
def test_prefix_tokens_isolated_and_pointwise_only(P):
    H, W = 3, 4
    m = LIFE(18, num_prefix_tokens=P)
    x = torch.randn(2, P + H * W, 18, requires_grad=True)
    out = m(x, grid_size=(H, W))
    out[:, :P].sum().backward()
    assert x.grad[:, P:].abs().sum() == 0  # prefix outputs never depend on patch tokens
    assert (x.grad[:, :P].abs().sum(-1) > 0).all()
    # each prefix token is processed alone: scale s = pointwise_{s-1}(...(linear(x))) for q, k and v alike
    y = m.linear(x[:, :P])
    expected = [y]
    for pw in m.pointwise:
        y = pw(y)
        expected.append(y)
    q = torch.cat([e.chunk(3, -1)[0] for e in expected], -1)
    k = torch.cat([e.chunk(3, -1)[1] for e in expected], -1)
    v = torch.cat([e.chunk(3, -1)[2] for e in expected], -1)
    torch.testing.assert_close(out[:, :P], torch.cat([q, k, v], -1))
    # changing another prefix token does not change this one (no mixing between prefix tokens either)
    x2 = x.detach().clone()
    x2[:, P - 1] += 1.0
    if P > 1:
        torch.testing.assert_close(m(x2, grid_size=(H, W))[:, : P - 1], out[:, : P - 1].detach())


def test_no_scales_is_plain_linear():
    m = LIFE(16, num_prefix_tokens=1, kernel_sizes=())
    lin = nn.Linear(16, 48)
    lin.load_state_dict({"weight": m.linear.weight, "bias": m.linear.bias})
    x = torch.randn(2, 10, 16)
    torch.testing.assert_close(m(x, grid_size=(3, 3)), lin(x))


def test_four_scales_and_custom_kernels():
    m = LIFE(40, num_prefix_tokens=1, kernel_sizes=(3, 3, 7))
    assert m.widths == (10, 10, 10, 10)
    x = torch.randn(1, 1 + 36, 40)
    torch.testing.assert_close(m(x, grid_size=(6, 6)), reference_life(m, x, 6, 6), rtol=1e-5, atol=1e-5)


def test_every_parameter_gets_a_gradient():
    m = LIFE(30, num_prefix_tokens=2, norm_layer=nn.LayerNorm)
    x = torch.randn(2, 2 + 12, 30)
    m(x, grid_size=(3, 4)).square().mean().backward()
    missing = [n for n, p in m.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert not missing


def test_qkv_norm_normalises_each_of_q_k_v():
    m = LIFE(32, num_prefix_tokens=1, norm_layer=nn.LayerNorm)
    out = m(torch.randn(2, 17, 32) * 5 + 3, grid_size=(4, 4)).view(2, 17, 3, 32)
    torch.testing.assert_close(out.mean(-1), torch.zeros(2, 17, 3), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.var(-1, unbiased=False), torch.ones(2, 17, 3), atol=1e-3, rtol=0)


def test_grid_from_attribute_and_square_inference():
    m = LIFE(12, num_prefix_tokens=1)
    x = torch.randn(1, 1 + 16, 12)
    a = m(x)  # 16 patches -> inferred 4x4
    m.grid_size = (4, 4)
    torch.testing.assert_close(m(x), a)
    m.grid_size = (2, 8)
    assert not torch.allclose(m(x), a)  # the grid really changes the neighbourhoods


def test_non_contiguous_and_bf16_input():
    m = LIFE(16, num_prefix_tokens=1)
    x = torch.randn(16, 2, 1 + 12).permute(1, 2, 0)  # (B, N, C) view with odd strides
    torch.testing.assert_close(m(x, grid_size=(3, 4)), m(x.contiguous(), grid_size=(3, 4)))
    out = m.to(torch.bfloat16)(x.to(torch.bfloat16), grid_size=(3, 4))
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()


def test_bad_inputs_raise_clear_errors():
    m = LIFE(12, num_prefix_tokens=1)
    with pytest.raises(ValueError, match=r"17 tokens = 1 prefix \+ 16 patch tokens, but the grid 3x5 has 15 patches"):
        m(torch.randn(1, 17, 12), grid_size=(3, 5))
    with pytest.raises(ValueError, match="not a square grid; pass grid_size"):
        m(torch.randn(1, 1 + 15, 12))
    with pytest.raises(ValueError, match=r"expects tokens of shape \(B, N, 12\), got \(1, 17, 10\)"):
        m(torch.randn(1, 17, 10))
    with pytest.raises(ValueError, match=r"expects tokens of shape"):
        m(torch.randn(17, 12))
    with pytest.raises(ValueError, match="odd positive integers"):
        LIFE(12, kernel_sizes=(3, 4))
    with pytest.raises(ValueError, match="num_prefix_tokens must be >= 0"):
        LIFE(12, num_prefix_tokens=-1)


# ---------------------------------------------------------------------------------------- training path and options
@pytest.mark.parametrize("prefix,grid", [(0, (4, 4)), (1, (3, 5)), (2, (2, 3))])
@pytest.mark.parametrize("dim,bias", [(30, False), (48, True)], ids=["groups-of-10", "groups-of-16-biased"])
def test_training_gradients_match_the_reference(prefix, grid, dim, bias):
    """The autograd function (depthwise recomputed in backward) gives the reference's gradients (groups of 16
    channels: the native kernel's direct stores; pointwise biases)."""
    H, W = grid
    m = LIFE(dim, num_prefix_tokens=prefix, pointwise_init="kaiming_uniform", pointwise_bias=bias)
    x = torch.randn(2, prefix + H * W, dim, requires_grad=True)
    out = m(x, grid_size=grid)
    g = torch.randn_like(out)
    ours = torch.autograd.grad(out, [x, *m.parameters()], g)
    ref = reference_life(m, x, H, W)
    theirs = torch.autograd.grad(ref, [x, *m.parameters()], g)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    for (name, _), a, b in zip([("x", x), *m.named_parameters()], ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)


def test_training_path_keeps_only_the_output_for_backward():
    """Saved for backward: the linear's input and LIFE's output (which attention keeps anyway), no depthwise maps."""
    m = LIFE(48, num_prefix_tokens=1)
    x = torch.randn(4, 1 + 64, 48, requires_grad=True)
    storages = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = m(x, grid_size=(8, 8))
    activations = {
        p: n for p, n in storages.items() if p not in {q.untyped_storage().data_ptr() for q in m.parameters()}
    }
    assert set(activations) == {x.untyped_storage().data_ptr(), out.untyped_storage().data_ptr()}


def test_depthwise_weight_gradients_are_contiguous():
    m = LIFE(24, num_prefix_tokens=1)
    m(torch.randn(2, 17, 24), grid_size=(4, 4)).sum().backward()
    for dw in m.depthwise:
        assert dw.weight.grad.stride() == dw.weight.stride()  # the layout DDP's buckets expect


@pytest.mark.parametrize("grad", [False, True])
def test_one_output_dtype_under_autocast(grad):
    m = LIFE(24, num_prefix_tokens=1)
    x = torch.randn(2, 17, 24)
    with torch.set_grad_enabled(grad), torch.autocast("cpu", dtype=torch.bfloat16):
        out = m(x, grid_size=(4, 4))
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), m(x, grid_size=(4, 4)).detach(), rtol=0.05, atol=0.05)
    if grad:
        out.float().sum().backward()
        assert all(p.grad.dtype == torch.float32 for p in m.parameters())


def test_autocast_training_gradients_match_ordinary_autograd():
    """Under bf16 autocast the autograd function (weights cast once in forward and kept so for backward) gives the
    gradients that ordinary autograd over the traced formulation gives, each in its parameter's dtype."""
    from lifevit.layers.life import _scales_cat

    m = LIFE(24, num_prefix_tokens=1, grid_size=(4, 4), pointwise_bias=True)
    x = torch.randn(2, 17, 24)
    g = torch.randn(2, 17, 72, dtype=torch.bfloat16)

    def grads(forward):
        xx = x.clone().requires_grad_()
        m.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            forward(xx).backward(g)
        return [xx.grad] + [p.grad for p in m.parameters()]

    dws, pws, pbs = [d.weight for d in m.depthwise], [p.weight for p in m.pointwise], [p.bias for p in m.pointwise]
    ours = grads(m)
    ref = grads(lambda t: _scales_cat(m.linear(t), 1, 4, 4, m.widths, dws, pws, pbs).reshape(2, 17, 72))
    for a, b, p in zip(ours, ref, [x] + list(m.parameters())):
        assert a.dtype == b.dtype == p.dtype
        assert ((a - b).norm() / b.norm()).item() < 2e-2


def test_pointwise_bias_option():
    m = LIFE(24, qkv_bias=True, pointwise_bias=False)
    assert m.linear.bias is not None and all(pw.bias is None for pw in m.pointwise)
    biased = LIFE(24, pointwise_bias=True)
    assert sum(p.numel() for p in m.parameters()) == sum(p.numel() for p in biased.parameters()) - 2 * 24
    assert all(pw.bias is None for pw in LIFE(24).pointwise)  # the default, as in the release
    assert all(pw.bias is not None for pw in LIFE(24, pointwise_bias=None).pointwise)  # None: as qkv_bias


@pytest.mark.parametrize("init,std", [("trunc_normal", 0.02), ("kaiming_uniform", (3 * 192) ** -0.5)])
def test_pointwise_init_survives_timm_model_init(init, std):
    """timm re-initialises every nn.Linear with std 0.02; LIFE's pointwise projections keep the chosen init."""
    import timm

    from lifevit.layers import LIFEAttention
    from lifevit.models.vit import LIFEVisionTransformer

    model = LIFEVisionTransformer(
        img_size=32,
        patch_size=4,
        embed_dim=192,
        depth=2,
        num_heads=3,
        attn_layer=LIFEAttention.bind(pointwise_init=init),
    )
    for layer in (b.attn.qkv for b in model.blocks):
        for pw in layer.pointwise:  # 192 -> 192; kaiming-uniform's std is 1 / sqrt(3 * fan_in) = 0.0417
            assert pw.weight.std().item() == pytest.approx(std, rel=0.1)
        assert layer.linear.weight.std().item() == pytest.approx(0.02, rel=0.1)  # scale 1: timm's init
    swin = timm.create_model("swinv2_tiny_patch1_window8_32_life", depths=(1, 1, 1, 1))
    pw = swin.layers[2].blocks[0].attn.qkv.pointwise[0]  # 384 channels, the default kaiming-uniform init
    assert pw.weight.std().item() == pytest.approx((3 * 384) ** -0.5, rel=0.1)


def test_shared_norm_is_one_layernorm_for_q_k_v():
    m = LIFE(32, num_prefix_tokens=1, norm_layer=nn.LayerNorm, shared_norm=True)
    assert m.q_norm is None and isinstance(m.qkv_norm, nn.LayerNorm)
    nn.init.normal_(m.qkv_norm.weight)
    nn.init.normal_(m.qkv_norm.bias)
    plain = LIFE(32, num_prefix_tokens=1)
    plain.load_state_dict({k: v for k, v in m.state_dict().items() if not k.startswith("qkv_norm")})
    x = torch.randn(2, 17, 32)
    raw = plain(x, grid_size=(4, 4)).view(2, 17, 3, 32)
    expected = F.layer_norm(raw, (32,), m.qkv_norm.weight, m.qkv_norm.bias)  # the same weights for q, k and v
    torch.testing.assert_close(m(x, grid_size=(4, 4)).view(2, 17, 3, 32), expected)
    separate = LIFE(32, norm_layer=nn.LayerNorm, shared_norm=False)
    assert sum(p.numel() for p in separate.parameters()) - sum(p.numel() for p in m.parameters()) == 2 * 2 * 32


def test_bad_options_raise_clear_errors():
    from lifevit.layers import LIFEAttention

    with pytest.raises(ValueError, match="pointwise_init must be one of"):
        LIFE(12, pointwise_init="xavier")
    with pytest.raises(ValueError, match=r"prefix_keys_from_scale1 needs equal scale widths, got \(3, 3, 2\)"):
        LIFE(8, prefix_keys_from_scale1=True)
    with pytest.raises(ValueError, match="got unknown pointwise_std"):
        LIFEAttention.bind(pointwise_std=0.1)
