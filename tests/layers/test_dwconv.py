"""LIFE's depthwise convolutions over token maps: the native CPU kernel against PyTorch, and the fallback."""

import shutil

import pytest
import torch
import torch.nn.functional as F

from lifevit.layers import dwconv
from lifevit.layers.dwconv import (
    depthwise_backward,
    depthwise_conv,
    depthwise_conv_tokens,
    depthwise_weight_grad,
    native_status,
)

HAS_CC = shutil.which("cc") is not None or shutil.which("gcc") is not None


def token_map(B, H, W, G, cg, prefix=0, spare=0):
    """(B, H*W, G, cg) view of a (B, prefix + H*W, G, cg + spare) buffer: none of its strides is dense but channels."""
    return torch.randn(B, prefix + H * W, G, cg + spare)[:, prefix:, :, :cg]


def nchw(m, H, W):
    return m.reshape(m.shape[0], H, W, -1).permute(0, 3, 1, 2)


def reference_conv(x, w, H, W, flip=False):  # (B, HW, G, cg) -> same, through PyTorch's NCHW convolution
    w = w.flip(-1, -2) if flip else w
    y = F.conv2d(nchw(x, H, W).contiguous(), w, padding=w.shape[-1] // 2, groups=w.shape[0])
    return y.permute(0, 2, 3, 1).reshape(x.shape)


def reference_wgrad(x, g, w, H, W):
    k = w.shape[-1]
    _, gw, _ = torch.ops.aten.convolution_backward(
        nchw(g, H, W).contiguous(), nchw(x, H, W).contiguous(), w, None, [1, 1], [k // 2] * 2, [1, 1], False,
        [0, 0], w.shape[0], [False, True, False],
    )  # fmt: skip
    return gw


@pytest.fixture(params=[1, 3], ids=["1-thread", "3-threads"])
def threads(request):
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)


@pytest.fixture
def fresh_kernel(monkeypatch, tmp_path):
    """The kernel's state as in a new process, with its own cache directory."""
    monkeypatch.setattr(dwconv, "_lib", None)
    monkeypatch.setattr(dwconv, "_status", None)
    monkeypatch.setenv("LIFEVIT_CACHE", str(tmp_path))
    return tmp_path


# shapes: LIFE's (3 groups of 16+), a vector across groups (cg 10, 7), channels after the last vector, maps smaller
# than the kernel (1x1, 3x2), and widths that are not whole 8-pixel blocks (also with whole-vector groups: 14 x 32)
SHAPES = [
    (4, 8, 8, 3, 16, 1), (3, 5, 7, 3, 10, 0), (2, 3, 2, 1, 21, 2), (1, 1, 1, 1, 16, 0), (2, 14, 9, 3, 7, 1),
    (2, 6, 14, 2, 32, 1),
]  # fmt: skip


@pytest.mark.skipif(not HAS_CC, reason="no C compiler")
def test_kernel_is_built_where_a_compiler_exists():
    assert native_status() == "native: dwconv.c", native_status()


@pytest.mark.parametrize("k", [3, 5, 7])
@pytest.mark.parametrize("B,H,W,G,cg,P", SHAPES)
def test_conv_matches_pytorch(k, B, H, W, G, cg, P, threads):
    x, w = token_map(B, H, W, G, cg, P, spare=3), torch.randn(G * cg, 1, k, k)
    torch.testing.assert_close(depthwise_conv(x, w, H, W), reference_conv(x, w, H, W), rtol=1e-5, atol=1e-5)
    # dense (B, HW, C) tokens in, the input gradient (flipped), added to one map and written into another in place
    dense, add = x.reshape(B, H * W, G * cg), token_map(B, H, W, G, cg, P)
    buffer = torch.randn(B, P + H * W, G, cg + 2)
    into, expected = buffer[:, P:, :, :cg], buffer.clone()
    expected[:, P:, :, :cg] = add + reference_conv(x, w, H, W, flip=True)
    res = depthwise_conv(dense, w, H, W, flip=True, add=add, out=into)
    assert res.data_ptr() == into.data_ptr() and res.shape == (B, H * W, G, cg)
    torch.testing.assert_close(buffer, expected, rtol=1e-5, atol=1e-5)  # written in place, nothing else touched
    # the input copied into a map of another buffer on the way (what LIFE's forward does with each scale)
    other = torch.randn(B, P + H * W, G, cg + 2)
    kept = other.clone()
    kept[:, P:, :, :cg] = x
    res = depthwise_conv(dense, w, H, W, copy_to=other[:, P:, :, :cg])
    assert res.shape == dense.shape
    torch.testing.assert_close(res, reference_conv(x, w, H, W).reshape(dense.shape), rtol=1e-5, atol=1e-5)
    assert torch.equal(other, kept)


@pytest.mark.parametrize("k", [3, 5, 7])
@pytest.mark.parametrize("B,H,W,G,cg,P", SHAPES)
def test_weight_grad_matches_pytorch(k, B, H, W, G, cg, P, threads):
    x, g, w = token_map(B, H, W, G, cg, P), token_map(B, H, W, G, cg, 0, 1), torch.randn(G * cg, 1, k, k)
    ours = depthwise_weight_grad(x, g, w, H, W)
    assert ours.shape == w.shape and ours.is_contiguous()  # the layout DDP's buckets expect
    torch.testing.assert_close(ours, reference_wgrad(x, g, w, H, W), rtol=1e-5, atol=1e-4)


def _cpu_has(flag):
    try:
        return flag in open("/proc/cpuinfo").read().split()
    except OSError:
        return False


# the kernel's vector width follows the target: 4 floats (SSE2, the portable build), 8 (AVX2), 16 (AVX-512,
# usually what -march=native gives); each build must agree with PyTorch, with groups that are whole vectors of its
# width (direct stores) and groups that are not
@pytest.mark.skipif(not HAS_CC, reason="no C compiler")
@pytest.mark.parametrize("width", ["sse2", "avx2"])
def test_every_vector_width_matches_pytorch(width, fresh_kernel, monkeypatch):
    if width == "avx2" and not (_cpu_has("avx2") and _cpu_has("fma")):
        pytest.skip("this CPU has no AVX2")
    target = {"sse2": [], "avx2": ["-mavx2", "-mfma"]}[width]
    monkeypatch.setattr(dwconv, "_FLAG_SETS", [["-O3", *target, "-std=gnu99", "-fPIC", "-shared", "-fopenmp"]])
    assert native_status() == "native: dwconv.c", native_status()
    for B, H, W, G, cg, P in [(3, 8, 8, 3, 8, 1), (2, 6, 14, 2, 32, 1), (2, 5, 7, 3, 10, 0)]:
        for k in (3, 5, 7):
            x, g, w = token_map(B, H, W, G, cg, P, spare=3), token_map(B, H, W, G, cg), torch.randn(G * cg, 1, k, k)
            add, into = token_map(B, H, W, G, cg), token_map(B, H, W, G, cg, P)
            depthwise_conv(x, w, H, W, flip=True, add=add, out=into)
            torch.testing.assert_close(into, add + reference_conv(x, w, H, W, flip=True), rtol=1e-5, atol=1e-5)
            ours = depthwise_weight_grad(x, g, w, H, W)
            torch.testing.assert_close(ours, reference_wgrad(x, g, w, H, W), rtol=1e-5, atol=1e-4)
            rx, rg, gw = depthwise_backward(x, g, w, H, W, add=add)
            torch.testing.assert_close(rx, reference_conv(x, w, H, W), rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(rg, add + reference_conv(g, w, H, W, flip=True), rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(gw, ours, rtol=1e-5, atol=1e-4)


def test_same_result_every_call():
    """Threads add their partial sums in a fixed order: no run-to-run differences."""
    x, g, w = token_map(8, 8, 8, 3, 32, 1), token_map(8, 8, 8, 3, 32), torch.randn(96, 1, 5, 5)
    first = depthwise_weight_grad(x, g, w, 8, 8)
    assert all(torch.equal(first, depthwise_weight_grad(x, g, w, 8, 8)) for _ in range(3))


@pytest.mark.skipif(not HAS_CC, reason="no C compiler")
def test_profiler_lists_the_native_operations():
    """Under torch.profiler the native calls appear as operators (the benchmark's breakdown counts them); without a
    profiler they skip the profiler's range."""
    from torch.profiler import ProfilerActivity, profile

    x, g, w = token_map(2, 4, 4, 3, 16, 1), token_map(2, 4, 4, 3, 16), torch.randn(48, 1, 3, 3)
    assert native_status().startswith("native")
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        depthwise_conv(x, w, 4, 4)
        depthwise_weight_grad(x, g, w, 4, 4)
        depthwise_backward(x, g, w, 4, 4)
    keys = {e.key for e in prof.key_averages()}
    assert {"lifevit::depthwise_conv", "lifevit::depthwise_weight_grad", "lifevit::depthwise_backward"} <= keys
    assert not torch.autograd._profiler_enabled()


@pytest.mark.parametrize("flip", [False, True])
def test_compiler_operators_pass_opcheck(flip):
    """The operators compiled code calls (``lifevit::dwconv``, ``lifevit::dwconv_wgrad``): schema, fake tensors and
    the autograd formula, checked by PyTorch's own operator tests; values and gradients against PyTorch's conv."""
    x, w, gy = token_map(2, 4, 4, 3, 16, 1), torch.randn(48, 1, 3, 3), torch.randn(2, 16, 3, 16)
    torch.library.opcheck(dwconv._conv_op, (x.requires_grad_(), w.requires_grad_(), 4, 4, flip))
    torch.library.opcheck(dwconv._wgrad_op, (x.detach(), gy, w.detach(), 4, 4))
    y = dwconv._conv_op(x, w, 4, 4, flip)
    xr, wr = x.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    yr = reference_conv(xr, wr, 4, 4, flip=flip)
    torch.testing.assert_close(y, yr)
    for ours, ref in zip(torch.autograd.grad(y, (x, w), gy), torch.autograd.grad(yr, (xr, wr), gy)):
        torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("case", ["kernel 9", "float64", "bf16"])
def test_other_inputs_use_pytorch(case):
    k, dtype = (9 if case == "kernel 9" else 3), {"float64": torch.float64, "bf16": torch.bfloat16}.get(case)
    x, g, w = token_map(2, 6, 6, 3, 8, 1), token_map(2, 6, 6, 3, 8), torch.randn(24, 1, k, k)
    if dtype is not None:
        x, g, w = x.to(dtype), g.to(dtype), w.to(dtype)
    tol = dict(rtol=2e-2, atol=5e-2) if dtype == torch.bfloat16 else {}
    torch.testing.assert_close(depthwise_conv(x, w, 6, 6), reference_conv(x, w, 6, 6), **tol)
    ours = depthwise_weight_grad(x, g, w, 6, 6)
    assert ours.dtype == w.dtype and ours.is_contiguous()
    torch.testing.assert_close(ours, reference_wgrad(x, g, w, 6, 6), **tol)


@pytest.mark.parametrize("k", [3, 5, 7])
@pytest.mark.parametrize("B,H,W,G,cg,P", SHAPES)
def test_backward_in_one_pass_matches_pytorch(k, B, H, W, G, cg, P, threads):
    """``depthwise_backward``: the convolution recomputed, add + the flipped convolution of g, the weight gradient,
    written in place into views of other buffers (nothing else touched)."""
    x, g, add, w = (
        token_map(B, H, W, G, cg, P),
        token_map(B, H, W, G, cg, 0, 1),
        token_map(B, H, W, G, cg, P, 2),
        torch.randn(G * cg, 1, k, k),
    )
    bx, bg = torch.randn(B, P + H * W, G, cg + 2), torch.randn(B, P + H * W, G, cg + 1)
    ex, eg = bx.clone(), bg.clone()
    ex[:, P:, :, :cg], eg[:, P:, :, :cg] = reference_conv(x, w, H, W), add + reference_conv(g, w, H, W, flip=True)
    rx, rg, gw = depthwise_backward(x, g, w, H, W, add=add, out_x=bx[:, P:, :, :cg], out_g=bg[:, P:, :, :cg])
    assert rx.data_ptr() == bx[:, P:].data_ptr() and rg.data_ptr() == bg[:, P:].data_ptr()
    torch.testing.assert_close(bx, ex, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(bg, eg, rtol=1e-5, atol=1e-5)
    assert gw.shape == w.shape and gw.is_contiguous()
    torch.testing.assert_close(gw, reference_wgrad(x, g, w, H, W), rtol=1e-5, atol=1e-4)
    # without add and outputs: new tensors; the same numbers as the three operations one by one
    rx, rg, gw2 = depthwise_backward(x, g, w, H, W)
    assert torch.equal(rx, depthwise_conv(x, w, H, W)) and torch.equal(rg, depthwise_conv(g, w, H, W, flip=True))
    assert torch.equal(gw2, depthwise_weight_grad(x, g, w, H, W))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("k", [3, 5])
def test_backward_through_pytorch_writes_in_place_and_matches(monkeypatch, k, dtype):
    """Without the native kernel (GPU, bf16, no compiler) ``depthwise_backward`` makes one dense grid of each map and
    takes both gradients from one ``convolution_backward``: the same results, written into the given views."""
    monkeypatch.setattr(dwconv, "_lib_for", lambda *maps: None)
    B, H, W, G, cg, P = 2, 5, 7, 3, 6, 1
    x, g, add = token_map(B, H, W, G, cg, P), token_map(B, H, W, G, cg, 0, 1), token_map(B, H, W, G, cg, P, 2)
    x, g, add = (t.to(dtype) for t in (x, g, add))
    w = torch.randn(G * cg, 1, k, k, dtype=dtype)
    bx, bg = torch.randn(B, P + H * W, G, cg + 2, dtype=dtype), torch.randn(B, P + H * W, G, cg + 1, dtype=dtype)
    ex, eg = bx.clone(), bg.clone()
    f32 = [t.float() for t in (x, g, add, w)]
    ex[:, P:, :, :cg] = reference_conv(f32[0], f32[3], H, W).to(dtype)
    eg[:, P:, :, :cg] = (f32[2] + reference_conv(f32[1], f32[3], H, W, flip=True)).to(dtype)
    rx, rg, gw = depthwise_backward(x, g, w, H, W, add=add, out_x=bx[:, P:, :, :cg], out_g=bg[:, P:, :, :cg])
    assert rx.data_ptr() == bx[:, P:].data_ptr() and rg.data_ptr() == bg[:, P:].data_ptr()
    tol = {"rtol": 1e-5, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 2e-2, "atol": 5e-2}
    torch.testing.assert_close(bx, ex, **tol)  # nothing outside the views touched
    torch.testing.assert_close(bg, eg, **tol)
    assert gw.shape == w.shape and gw.dtype == dtype and gw.is_contiguous()
    ref_gw = reference_wgrad(f32[0], f32[1], f32[3], H, W)
    torch.testing.assert_close(gw.float(), ref_gw, rtol=2e-2 if dtype == torch.bfloat16 else 1e-5, atol=5e-2)
    rx, rg, gw2 = depthwise_backward(x, g, w, H, W)  # new tensors
    assert rx.shape == rg.shape == x.shape and torch.equal(gw2, gw)
    torch.testing.assert_close(rx.float(), reference_conv(f32[0], f32[3], H, W), **tol)
    torch.testing.assert_close(rg.float(), reference_conv(f32[1], f32[3], H, W, flip=True), **tol)


@pytest.mark.parametrize("kernels", ["native", "pytorch"])
@pytest.mark.parametrize("P", [0, 2])
def test_conv_tokens_keeps_prefix_tokens_and_fills_the_slot(monkeypatch, kernels, P):
    """``depthwise_conv_tokens``: prefix tokens as they are, patch tokens through the conv, the input copied into a
    slot view of another buffer on the way (nothing else of it touched); the same with either kernel."""
    if kernels == "pytorch":
        monkeypatch.setattr(dwconv, "_lib_for", lambda *maps: None)
    B, H, W, cg = 2, 4, 5, 6
    y = torch.randn(B, P + H * W, 3 * cg)
    w = torch.randn(3 * cg, 1, 5, 5)
    buf = torch.randn(B, P + H * W, 3, cg + 4)
    expected = buf.clone()
    expected[..., :cg] = y.view(B, -1, 3, cg)
    x = depthwise_conv_tokens(y, w, P, H, W, copy_to=buf[..., :cg])
    assert x.shape == y.shape and x.is_contiguous()
    assert torch.equal(x[:, :P], y[:, :P])
    torch.testing.assert_close(x[:, P:], reference_conv(y[:, P:], w, H, W), rtol=1e-5, atol=1e-5)
    assert torch.equal(buf, expected)
    torch.testing.assert_close(depthwise_conv_tokens(y, w, P, H, W), x, rtol=0, atol=0)  # without a slot


def _check_fallback(H=4, W=4):
    x, g, w = token_map(2, H, W, 3, 8, 1), token_map(2, H, W, 3, 8), torch.randn(24, 1, 5, 5)
    add, into = token_map(2, H, W, 3, 8), token_map(2, H, W, 3, 8, 1)
    depthwise_conv(x, w, H, W, flip=True, add=add, out=into)
    torch.testing.assert_close(into, add + reference_conv(x, w, H, W, flip=True))
    torch.testing.assert_close(depthwise_weight_grad(x, g, w, H, W), reference_wgrad(x, g, w, H, W))
    copy = token_map(2, H, W, 3, 8, 1)
    torch.testing.assert_close(depthwise_conv(x, w, H, W, copy_to=copy), reference_conv(x, w, H, W))
    assert torch.equal(copy, x)
    rx, rg, gw = depthwise_backward(x, g, w, H, W, add=add)
    torch.testing.assert_close(rx, reference_conv(x, w, H, W))
    torch.testing.assert_close(rg, add + reference_conv(g, w, H, W, flip=True))
    torch.testing.assert_close(gw, reference_wgrad(x, g, w, H, W))


def test_switched_off(fresh_kernel, monkeypatch):
    monkeypatch.setenv("LIFEVIT_NATIVE", "0")
    _check_fallback()
    assert native_status() == "aten: LIFEVIT_NATIVE=0"
    assert not list(fresh_kernel.rglob("*.so"))


def test_no_compiler_falls_back(fresh_kernel, monkeypatch):
    monkeypatch.setenv("CC", str(fresh_kernel / "no-such-cc"))
    _check_fallback()
    assert native_status().startswith("aten: the native kernel could not be built"), native_status()


@pytest.mark.skipif(not HAS_CC, reason="no C compiler")
def test_built_once_into_the_cache(fresh_kernel):
    _check_fallback()
    built = list((fresh_kernel / "native").glob("dwconv-*.so"))
    assert len(built) == 1 and native_status() == "native: dwconv.c"
    assert not [p for p in (fresh_kernel / "native").iterdir() if p not in built]  # no temporary files left


@pytest.mark.skipif(not HAS_CC or not hasattr(__import__("os"), "getuid"), reason="no C compiler / not POSIX")
def test_unwritable_cache_uses_a_private_temporary_folder(fresh_kernel, monkeypatch, tmp_path):
    blocked = tmp_path / "file-not-folder"
    blocked.write_text("")
    monkeypatch.setenv("LIFEVIT_CACHE", str(blocked))  # mkdir under a file fails
    monkeypatch.setattr(dwconv.tempfile, "gettempdir", lambda: str(tmp_path))
    _check_fallback()
    private = tmp_path / f"lifevit-native-{__import__('os').getuid()}"
    assert native_status() == "native: dwconv.c" and list(private.glob("dwconv-*.so"))
    assert private.stat().st_mode & 0o077 == 0  # nobody else can read or plant a library there


def test_a_shared_temporary_folder_is_refused(fresh_kernel, monkeypatch, tmp_path):
    blocked = tmp_path / "file-not-folder"
    blocked.write_text("")
    monkeypatch.setenv("LIFEVIT_CACHE", str(blocked))
    monkeypatch.setattr(dwconv.tempfile, "gettempdir", lambda: str(tmp_path))
    uid = getattr(__import__("os"), "getuid", lambda: None)()
    shared = tmp_path / f"lifevit-native-{uid if uid is not None else 'user'}"
    shared.mkdir()
    shared.chmod(0o777)  # anyone could have put a library here
    _check_fallback()  # still correct, with PyTorch's kernels
    assert native_status().startswith("aten: the native kernel could not be built"), native_status()


def test_tensors_that_need_gradients_go_through_pytorch():
    """Called with autograd recording, the convolution must be PyTorch's, or gradients would be lost."""
    x, w = token_map(2, 4, 4, 3, 16, 1), torch.randn(48, 1, 3, 3, requires_grad=True)
    y = depthwise_conv(x, w, 4, 4)
    assert y.grad_fn is not None
    (g,) = torch.autograd.grad(y.sum(), w)
    torch.testing.assert_close(g, reference_wgrad(x, torch.ones_like(x), w.detach(), 4, 4))
    with torch.no_grad():
        assert depthwise_conv(x, w, 4, 4).grad_fn is None


def test_empty_batch():
    x, g, w = token_map(0, 4, 4, 3, 16), token_map(0, 4, 4, 3, 16), torch.randn(48, 1, 5, 5)
    assert depthwise_conv(x, w, 4, 4).shape == (0, 16, 3, 16)
    torch.testing.assert_close(depthwise_weight_grad(x, g, w, 4, 4), torch.zeros_like(w))
