"""LIFE's whole cascade in one native call (``dwconv.life_scales`` / ``life_scales_backward``) against the same
layer run as separate operations: forward (no-grad and training) and every gradient, and where it steps aside."""

import os
import shutil
import subprocess
import sys

import pytest
import torch

from lifevit.layers import dwconv
from lifevit.layers import life as life_module
from lifevit.layers.dwconv import life_scales, life_scales_backward
from lifevit.layers.life import LIFE

HAS_NATIVE = (shutil.which("cc") or shutil.which("gcc")) and dwconv._blas_sgemm() is not None
pytestmark = pytest.mark.skipif(not HAS_NATIVE, reason="no C compiler or no MKL sgemm in this PyTorch")

# dim, kernels, prefix tokens, pointwise bias, qkv bias, batch, grid: LIFE's split (48 -> 16 x 3), odd widths
# (64 -> 22, 21, 21), two scales, four scales with a 7 x 7 kernel, no prefix, a grid smaller than the kernel
CASES = [
    (48, (3, 5), 1, False, True, 3, (4, 4)),
    (64, (3, 5), 2, True, False, 5, (5, 3)),
    (40, (3,), 0, False, True, 2, (3, 3)),
    (36, (3, 5, 7), 1, True, True, 4, (6, 5)),
    (24, (5, 3), 1, False, True, 3, (2, 1)),
]


@pytest.fixture(params=[(1, 1 << 30), (3, 1)], ids=["1-thread-1-tile", "3-threads-tiles-of-1"])
def setting(request, monkeypatch):
    """Threads and the tile budget: every image of a thread in one tile, or a tile per image."""
    threads, tile_bytes = request.param
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    monkeypatch.setattr(dwconv, "_TILE_BYTES", tile_bytes)
    yield
    torch.set_num_threads(before)


def make(dim, kernels, P, pw_bias, qkv_bias, grid):
    torch.manual_seed(0)
    layer = LIFE(dim, num_prefix_tokens=P, kernel_sizes=kernels, qkv_bias=qkv_bias, grid_size=grid,
                 pointwise_bias=pw_bias)  # fmt: skip
    with torch.no_grad():  # the release's zero biases would hide a bias that goes missing
        for p in layer.parameters():
            if p.ndim == 1:
                p.normal_()
    return layer


def train_step(layer, x0, nan_at=None):
    """One forward and backward pass with a fixed, uneven output gradient (a NaN at index ``nan_at`` if given):
    the output, the input's gradient and every parameter's gradient by name."""
    layer.zero_grad()
    x = x0.clone().requires_grad_()
    out = layer(x)
    g = torch.linspace(-1, 1, out.numel()).view(out.shape)
    if nan_at is not None:
        g[nan_at] = float("nan")
    out.backward(g)
    return out.detach(), x.grad, {n: p.grad.clone() for n, p in layer.named_parameters()}


def separate(monkeypatch):
    """Run LIFE as separate operations, as before the cascade existed."""
    monkeypatch.setattr(life_module, "life_scales", lambda *a, **k: None)
    monkeypatch.setattr(life_module, "life_scales_backward", lambda *a, **k: None)


def calls(monkeypatch):
    """Count the native cascade's calls (forward, backward) that returned a result."""
    count = {"forward": 0, "backward": 0}

    def counted(name, fn):
        def run(*a, **k):
            out = fn(*a, **k)
            count[name] += out is not None
            return out

        return run

    monkeypatch.setattr(life_module, "life_scales", counted("forward", life_scales))
    monkeypatch.setattr(life_module, "life_scales_backward", counted("backward", life_scales_backward))
    return count


@pytest.mark.parametrize("case", CASES, ids=[f"dim{c[0]}-k{c[1]}-P{c[2]}" for c in CASES])
def test_inference_matches_separate_operations(case, setting, monkeypatch):
    dim, kernels, P, pw_bias, qkv_bias, B, grid = case
    layer = make(dim, kernels, P, pw_bias, qkv_bias, grid)
    x = torch.randn(B, P + grid[0] * grid[1], dim)
    with monkeypatch.context() as m:
        separate(m)
        with torch.no_grad():
            expected = layer(x)
    count = calls(monkeypatch)
    with torch.no_grad():
        got = layer(x)
    assert count["forward"] == 1
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("threads", [2, 3])
def test_forward_tiles_taken_in_turn(threads, monkeypatch):
    """The forward's tiles go to whichever thread is free: whole tiles (3 images here) over the head of the batch,
    tiles of 2 over its last threads * 3 images (11 images: [0, 3) [3, 5) then tiles of 2, or all 11 in tiles of 2 on
    3 threads). Every image computed once and right, and the same result however the threads' timing falls."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    monkeypatch.setattr(dwconv, "_tile", lambda N, widths: 3)
    try:
        layer = make(48, (3, 5), 1, False, True, (4, 4))
        x0 = torch.randn(11, 17, 48)
        with monkeypatch.context() as m:
            separate(m)
            with torch.no_grad():
                expected = layer(x0)
        count = calls(monkeypatch)
        with torch.no_grad():
            got = [layer(x0) for _ in range(5)]
        assert count["forward"] == 5
        for out in got:
            torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
            assert torch.equal(out, got[0])
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("view", ["channels-strided", "tokens-strided"])
def test_inference_reads_strided_tokens(view, monkeypatch):
    """Input tokens that are a view: every other token of a longer sequence (the cascade reads it in place), or
    channels every other float (the kernel needs dense channels: the separate operations run)."""
    layer = make(48, (3, 5), 1, False, True, (4, 4))
    base = torch.randn(3, 17, 96) if view == "channels-strided" else torch.randn(3, 34, 48)
    x = base[..., ::2] if view == "channels-strided" else base[:, ::2]  # (3, 17, 48), not contiguous
    with monkeypatch.context() as m:
        separate(m)
        with torch.no_grad():
            expected = layer(x.contiguous())
    count = calls(monkeypatch)
    with torch.no_grad():
        got = layer(x)
    assert count["forward"] == (view == "tokens-strided")
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case", CASES, ids=[f"dim{c[0]}-k{c[1]}-P{c[2]}" for c in CASES])
def test_training_matches_separate_operations(case, setting, monkeypatch):
    dim, kernels, P, pw_bias, qkv_bias, B, grid = case
    layer = make(dim, kernels, P, pw_bias, qkv_bias, grid)
    x0 = torch.randn(B, P + grid[0] * grid[1], dim)
    with monkeypatch.context() as m:
        separate(m)
        expected = train_step(layer, x0)
    count = calls(monkeypatch)
    got = train_step(layer, x0)
    assert count == {"forward": 1, "backward": 1}
    torch.testing.assert_close(got[0], expected[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got[1], expected[1], rtol=1e-4, atol=1e-5)
    assert got[2].keys() == expected[2].keys()
    for name in expected[2]:
        torch.testing.assert_close(got[2][name], expected[2][name], rtol=1e-4, atol=1e-4, msg=name)
        assert got[2][name].is_contiguous(), name  # the layout DDP's buckets expect


@pytest.mark.parametrize("dim", [48, 64], ids=["widths-of-16", "odd-widths"])
def test_large_result_streamed(dim, monkeypatch):
    """A result of ``life_cascade_stream_bytes()`` or more goes to memory with streaming stores (where its scales'
    slots are whole vectors: widths 16, 16, 16; the odd widths 22, 21, 21 copy as before): the same result, the same
    gradients."""
    stream_bytes = dwconv._native().life_cascade_stream_bytes()
    if stream_bytes < 0:
        pytest.skip("no streaming stores on this CPU")
    layer = make(dim, (3, 5), 1, False, True, (30, 30))
    B = stream_bytes // (901 * 3 * dim * 4) + 1
    assert B * 901 * 3 * dim * 4 >= stream_bytes
    x0 = torch.randn(B, 901, dim)
    with monkeypatch.context() as m:
        separate(m)
        with torch.no_grad():
            expected_inference = layer(x0)
        expected = train_step(layer, x0)
    count = calls(monkeypatch)
    with torch.no_grad():
        got_inference = layer(x0)
    got = train_step(layer, x0)
    assert count == {"forward": 2, "backward": 1}
    torch.testing.assert_close(got_inference, expected_inference, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got[0], expected[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got[1], expected[1], rtol=1e-4, atol=1e-4)
    for name in expected[2]:  # sums over 8000 tokens, of gradients up to about 300: float32 rounding of the sums
        scale = expected[2][name].abs().max().item()
        torch.testing.assert_close(got[2][name], expected[2][name], rtol=1e-4, atol=5e-5 * scale, msg=name)


def test_gradients_match_double_precision(monkeypatch):
    """The native backward in float32 against autograd's separate operations in float64."""
    layer = make(64, (3, 5), 1, True, True, (4, 4))
    x = torch.randn(3, 17, 64)
    count = calls(monkeypatch)
    xf = x.clone().requires_grad_()
    layer(xf).square().sum().backward()
    got = [xf.grad] + [p.grad for p in layer.parameters()]
    assert count == {"forward": 1, "backward": 1}
    layer.zero_grad()
    double = layer.double()
    xd = x.double().requires_grad_()
    double(xd).square().sum().backward()  # float64: no native kernel
    for g, ref in zip(got, [xd.grad] + [p.grad for p in double.parameters()]):
        torch.testing.assert_close(g.double(), ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("training", [False, True], ids=["inference", "training"])
def test_padded_projections_spread_no_nan(training, monkeypatch):
    """Odd widths (64 -> 22, 21, 21: rows of 66 and 63 floats) run padded matmuls with zero weight columns; what
    lies in the padding must not reach the result: a NaN token gives NaNs exactly where the separate operations do."""
    layer = make(64, (3, 5), 1, True, True, (5, 5))
    x = torch.randn(3, 26, 64)
    x[1, 7, 5] = float("nan")  # a patch token of the second image
    x[2, 0, 0] = float("inf")  # the third image's class token
    with monkeypatch.context() as m, torch.set_grad_enabled(training):
        separate(m)
        expected = layer(x.clone().requires_grad_(training)).detach()
    count = calls(monkeypatch)
    with torch.set_grad_enabled(training):
        got = layer(x.clone().requires_grad_(training)).detach()
    assert count["forward"] == 1
    assert expected.isnan().any() and not expected[0].isnan().any()
    assert torch.equal(got.isnan(), expected.isnan())
    finite = expected.isfinite()
    torch.testing.assert_close(got[finite], expected[finite], rtol=1e-5, atol=1e-5)


def test_padded_backward_spreads_no_nan(monkeypatch):
    """The backward pass's padded matmuls: a NaN in the output gradient gives NaNs exactly where the separate
    operations' gradients have them, and the same finite values elsewhere."""
    layer = make(64, (3, 5), 1, True, True, (5, 5))
    x0 = torch.randn(3, 26, 64)
    nan_at = (1, 9, 2 * 64 + 5)  # one value of the second image's gradient, in scale 1's part of v
    with monkeypatch.context() as m:
        separate(m)
        _, gx, gp = train_step(layer, x0, nan_at)
        expected = [gx, *gp.values()]
    count = calls(monkeypatch)
    _, gx, gp = train_step(layer, x0, nan_at)
    got = [gx, *gp.values()]
    assert count == {"forward": 1, "backward": 1}
    assert expected[0].isnan().any() and not expected[0][0].isnan().any()
    for a, b in zip(got, expected):
        assert torch.equal(a.isnan(), b.isnan())
        torch.testing.assert_close(a[b.isfinite()], b[b.isfinite()], rtol=1e-4, atol=1e-4)


def test_same_result_every_call():
    layer = make(48, (3, 5), 1, False, True, (4, 4))
    x = torch.randn(4, 17, 48)
    with torch.no_grad():
        assert torch.equal(layer(x), layer(x))
    grads = []
    for _ in range(2):
        layer.zero_grad()
        layer(x).sum().backward()
        grads.append([p.grad.clone() for p in layer.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*grads))


def _inputs(B=2, P=1, dim=48, grid=(4, 4)):
    layer = make(dim, (3, 5), P, False, True, grid)
    x = torch.randn(B, P + grid[0] * grid[1], dim)
    dws = [m.weight.detach() for m in layer.depthwise]
    pws = [m.weight.detach() for m in layer.pointwise]
    pbs = [None for _ in layer.pointwise]
    return layer, x, (x, layer.linear.weight.detach(), layer.linear.bias.detach(), dws, pws, pbs, P, *grid,
                      layer.widths)  # fmt: skip


def test_steps_aside_where_it_cannot_run(monkeypatch):
    layer, x, args = _inputs()
    assert life_scales(*args) is not None
    with torch.no_grad():
        expected = layer(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert life_scales(*args) is None  # autocast: PyTorch's operations choose the dtypes
    assert life_scales(args[0].double(), *args[1:]) is None  # float64
    assert life_scales(args[0].requires_grad_(), *args[1:]) is None  # autograd must see the operations
    args[0].requires_grad_(False)
    assert life_scales(*args[:3], args[3][:1], args[4][:1], args[5][:1], *args[6:9], args[9][:1]) is None  # 1 scale
    monkeypatch.setattr(dwconv, "_sgemm", 0)  # no MKL sgemm found in this PyTorch
    assert life_scales(*args) is None
    with torch.no_grad():  # and the layer runs as separate operations
        torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)


def test_switched_off_runs_separate_operations(monkeypatch, tmp_path):
    layer, x, args = _inputs()
    with torch.no_grad():
        expected = layer(x)
    monkeypatch.setattr(dwconv, "_lib", None)
    monkeypatch.setattr(dwconv, "_status", None)
    monkeypatch.setenv("LIFEVIT_CACHE", str(tmp_path))
    monkeypatch.setenv("LIFEVIT_NATIVE", "0")
    assert life_scales(*args) is None
    with torch.no_grad():
        torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)


def test_a_hooked_or_replaced_projection_is_called(monkeypatch):
    """The one-call inference reads the scale-1 weights itself only when calling the projection would do no more."""
    layer, x, _ = _inputs()
    count = calls(monkeypatch)
    seen = []
    handle = layer.linear.register_forward_hook(lambda m, i, o: seen.append(o.shape))
    with torch.no_grad():
        hooked = layer(x)
    handle.remove()
    assert seen == [(2, 17, 3 * layer.widths[0])] and count["forward"] == 0

    class Scaled(torch.nn.Linear):  # a subclass (a LoRA, a quantized linear) does its own thing
        def forward(self, t):
            return 2 * super().forward(t)

    with torch.no_grad():
        plain = layer(x)
        scaled = Scaled(layer.dim, 3 * layer.widths[0])
        scaled.load_state_dict(layer.linear.state_dict())
        layer.linear = scaled
        doubled = layer(x)
    assert count["forward"] == 1  # the plain call only
    torch.testing.assert_close(hooked, plain, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(doubled, plain)


def test_profiler_lists_the_cascade():
    layer, x, _ = _inputs()
    with torch.profiler.profile() as prof:
        with torch.no_grad():
            layer(x)
        layer(x.requires_grad_()).sum().backward()
    names = {e.key for e in prof.key_averages()}
    assert {"lifevit::life_scales", "lifevit::life_scales_backward"} <= names, names


@pytest.mark.parametrize("native", [True, False], ids=["native", "separate"])
def test_training_takes_the_projection_in_only_when_calling_it_would_do_no_more(native, monkeypatch):
    """In training the cascade's node runs the scale-1 projection itself (from the tokens) when it is a plain, unhooked
    ``nn.Linear``; a hooked one is called as it is, under autograd. Both give the same output and gradients, natively
    and as separate operations."""
    layer = make(48, (3, 5), 1, True, True, (4, 4))
    x0 = torch.randn(3, 17, 48)
    if not native:
        separate(monkeypatch)
    count = calls(monkeypatch) if native else None
    fused = train_step(layer, x0)
    seen = []
    handle = layer.linear.register_forward_hook(lambda m, i, o: seen.append(o.shape))
    hooked = train_step(layer, x0)
    handle.remove()
    assert seen == [(3, 17, 3 * layer.widths[0])]
    if native:
        assert count == {"forward": 2, "backward": 2}
    torch.testing.assert_close(fused[0], hooked[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fused[1], hooked[1], rtol=1e-4, atol=1e-5)
    for name in hooked[2]:
        torch.testing.assert_close(fused[2][name], hooked[2][name], rtol=1e-4, atol=1e-4, msg=name)


def test_training_computes_only_the_gradients_asked_for():
    """A frozen scale-1 projection and tokens that need no gradient: none is made for them, the others are right."""
    layer = make(48, (3, 5), 1, False, True, (4, 4))
    x = torch.randn(3, 17, 48)
    layer(x).square().sum().backward()
    expected = {n: p.grad.clone() for n, p in layer.named_parameters() if not n.startswith("linear.")}
    layer.zero_grad(set_to_none=True)
    layer.linear.requires_grad_(False)
    layer(x).square().sum().backward()
    assert layer.linear.weight.grad is None and layer.linear.bias.grad is None and x.grad is None
    for n, p in layer.named_parameters():
        if n in expected:
            assert torch.equal(p.grad, expected[n]), n


def test_phase_timing_build(tmp_path):
    """``LIFEVIT_NATIVE_PHASES=1`` builds a kernel that times the cascade's phases (``native_phases``, for
    ``benchmarks/life_overhead.py --native-phases``); the ordinary build has none."""
    child = (
        "import torch\n"
        "from lifevit.layers import LIFE, dwconv\n"
        "m = LIFE(48, grid_size=(4, 4))\n"
        "m(torch.randn(3, 17, 48)).sum().backward()\n"
        "p = dwconv.native_phases()\n"
        "print(None if p is None else sorted(k for k, v in p['forward'].items() if v > 0), "
        "None if p is None else sorted(k for k, v in p['backward'].items() if v > 0))\n"
    )
    out = {}
    for phases in ("0", "1"):
        env = dict(os.environ, LIFEVIT_NATIVE_PHASES=phases, LIFEVIT_CACHE=str(tmp_path))
        proc = subprocess.run([sys.executable, "-c", child], env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        out[phases] = proc.stdout.strip()
    assert out["0"] == "None None"
    forward, backward = out["1"].split("] [")
    for phase in ("matmul_scale1", "matmul", "pad", "conv", "write_rows"):
        assert f"'{phase}'" in forward, out["1"]
    for phase in ("matmul_scale1", "matmul", "read_rows", "pad", "conv", "wgrad", "bias"):
        assert f"'{phase}'" in backward, out["1"]
