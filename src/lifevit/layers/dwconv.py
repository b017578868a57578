"""LIFE's depthwise convolutions over channels-last token maps: a small native CPU kernel, or PyTorch's.

A token map is a (B, H*W, G, cg) view (channels of each group dense, any other strides) of B images of H x W
pixels with C = G * cg channels: the patch tokens of LIFE's (B, N, 3, D) buffer are one (G = 3: q, k and v).

* ``depthwise_conv``: the k x k depthwise convolution (zero padding k // 2), optionally flipped (the input gradient)
  and added to another map, written into a given map or a new dense one.
* ``depthwise_weight_grad``: its weight gradient, (C, 1, k, k) contiguous (the layout DDP's buckets expect).
* ``depthwise_backward``: what a backward pass needs, at once: the convolution recomputed, the input gradient (added
  to a map) and the weight gradient, each image read once.
* ``life_scales`` / ``life_scales_backward``: a whole LIFE cascade (scale-1 projection, depthwise convolutions,
  pointwise projections, every scale into its slot of the (B, N, 3, D) output) and its backward pass in one native
  call, a tile of a few images at a time so that every intermediate stays in the core's cache. The projections are
  PyTorch's own BLAS (MKL's ``sgemm``, single-threaded inside the kernel's threads); without MKL (or on a big-endian
  machine) they return None and LIFE runs the scales as separate operations.

On CPU, for float32 in eager mode where autograd is not recording (LIFE's autograd function and no-grad
inference), all of them run as ``native/dwconv.c``, built with the system's C compiler the first time it is needed and
cached (``$LIFEVIT_CACHE`` or ``~/.cache/lifevit``, ``native/``, else a private temporary folder: one build per
source, compiler, flags and CPU). It reads and writes the maps in place, where PyTorch's (oneDNN) kernels need a
dense grid copied in and out; its 5 x 5 weight gradient takes a fifth of oneDNN's time at LIFE's shapes and its
convolutions a little less than oneDNN's (8 x 8 maps of 192 channels, batch 64, inputs out of cache, 2 threads:
0.75 against 3.55 ms, 0.42-0.53 against 0.46-0.63 ms; ``docs/performance.md``). It is compiled for the CPU it runs
on (vectors of 16, 8 or 4 floats: AVX-512, AVX2 or SSE2). Under ``torch.compile`` on CPU in float32 the same kernel
runs as two graph operators (``lifevit::dwconv``, ``lifevit::dwconv_wgrad``, at the end of this file). Everything
else (GPU, bf16, ``torch.export``, dispatch modes, no C compiler, ``LIFEVIT_NATIVE=0``) runs the same arithmetic as
PyTorch ops; results agree to float32 rounding. ``native_status()`` says which one is in use.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import is_in_torch_dispatch_mode

__all__ = [
    "depthwise_conv", "depthwise_conv_tokens", "depthwise_weight_grad", "depthwise_backward", "life_scales",
    "life_scales_backward", "native_status", "native_phases", "NATIVE_PHASES",
]  # fmt: skip

_SOURCE = Path(__file__).with_name("native") / "dwconv.c"
_FLAG_SETS = [  # tuned for this CPU first, then portable
    ["-O3", "-march=native", "-std=gnu99", "-fPIC", "-shared", "-fopenmp"],
    ["-O3", "-std=gnu99", "-fPIC", "-shared", "-fopenmp"],
]
# LIFEVIT_NATIVE_PHASES=1: a build that times the cascade's phases (``native_phases``; a build of its own)
_PHASE_FLAGS = ["-DLIFE_PHASES"]
NATIVE_PHASES = ("matmul_scale1", "matmul", "read_rows", "pad", "conv", "wgrad", "bias", "write_rows")  # C's order
_lock = threading.Lock()
_lib: Optional[ctypes.CDLL] = None
_status: Optional[str] = None  # None: not tried yet; "native: ..." or "aten: <why>"


# ------------------------------------------------------------------------------------------------ building
def _cpu_identity() -> str:
    """What ``-march=native`` depends on: the CPU's model and feature flags."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        return "\n".join(sorted({ln for ln in lines if ln.startswith(("model name", "flags", "Features"))}))
    except OSError:
        return platform.processor() or platform.machine()


def _cache_dir() -> Path:
    """``$LIFEVIT_CACHE/native``, else ``~/.cache/lifevit/native``; if that is not writable, a private per-user
    temporary folder (created 0700 and used only if this user owns it and nobody else can write to it: a shared
    folder could hold a planted library)."""
    base = Path(os.environ.get("LIFEVIT_CACHE") or Path.home() / ".cache" / "lifevit")
    try:
        (base / "native").mkdir(parents=True, exist_ok=True)
        if os.access(base / "native", os.W_OK):
            return base / "native"
    except OSError:
        pass
    uid = os.getuid() if hasattr(os, "getuid") else None
    private = Path(tempfile.gettempdir()) / f"lifevit-native-{uid if uid is not None else 'user'}"
    try:
        private.mkdir(mode=0o700, exist_ok=True)
        st = private.stat()
        if (uid is None or st.st_uid == uid) and not st.st_mode & 0o022 and os.access(private, os.W_OK):
            return private
    except OSError:
        pass
    raise RuntimeError(f"no writable folder for the compiled kernel ({base / 'native'} is not writable)")


def _compile(cc: str, flags: list, target: Path) -> Optional[str]:
    """Compile the kernel into ``target`` (built aside, then renamed: concurrent builds are safe); the error or None."""
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        proc = subprocess.run([cc, *flags, str(_SOURCE), "-o", tmp], capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            return f"{cc} {' '.join(flags)} failed: " + (proc.stderr.strip().splitlines() or ["no message"])[-1]
        os.replace(tmp, target)
        return None
    except (OSError, subprocess.SubprocessError) as err:
        return f"{cc} could not run: {err}"
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _build() -> ctypes.CDLL:
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is None:
        raise RuntimeError("no C compiler found (set CC, or install gcc)")
    source = _SOURCE.read_bytes()
    cache = _cache_dir()
    errors = []
    phases = _PHASE_FLAGS if os.environ.get("LIFEVIT_NATIVE_PHASES", "0") == "1" else []
    for flags in ([*f, *phases] for f in _FLAG_SETS):
        key = hashlib.sha256(b"\0".join([source, cc.encode(), " ".join(flags).encode(), _cpu_identity().encode()]))
        target = cache / f"dwconv-{key.hexdigest()[:16]}.so"
        if not target.exists():
            err = _compile(cc, flags, target)
            if err:
                errors.append(err)
                continue
        lib = ctypes.CDLL(str(target))
        long_, int_, ptr = ctypes.c_long, ctypes.c_int, ctypes.c_void_p
        stride3 = [long_] * 3  # batch, pixel, group strides of a map
        lib.life_dw_supports.restype, lib.life_dw_supports.argtypes = ctypes.c_int, [int_]
        lib.life_cascade_stream_bytes.restype, lib.life_cascade_stream_bytes.argtypes = long_, []
        lib.life_cascade_phases.restype, lib.life_cascade_phases.argtypes = ctypes.c_int, [ptr]
        lib.life_dw_conv.restype = lib.life_dw_wgrad.restype = ctypes.c_int
        # x (map with its strides), weight, flip, out, add, copy (maps), then B, H, W, G, cg, k, threads
        lib.life_dw_conv.argtypes = [ptr, *stride3, ptr, int_, *[ptr, *stride3] * 3, *[int_] * 7]
        # x, g (maps with their strides), gw, then B, H, W, G, cg, k, threads
        lib.life_dw_wgrad.argtypes = [ptr, *stride3, ptr, *stride3, ptr, *[int_] * 7]
        # x, g (maps), weight, then the maps xo, io, add, then gw, B, H, W, G, cg, k, threads
        lib.life_dw_backward.restype = ctypes.c_int
        lib.life_dw_backward.argtypes = [ptr, *stride3, ptr, *stride3, ptr, *[ptr, *stride3] * 3, ptr, *[int_] * 7]
        # x (batch, token strides), dim, w1, b1, S, widths, kernels, dws, pws, pbs, out, B, N, P, H, W, tile, sgemm,
        # threads
        lib.life_cascade.restype = ctypes.c_int
        lib.life_cascade.argtypes = [ptr, long_, long_, int_, ptr, ptr, int_, *[ptr] * 6, *[int_] * 6, ptr, int_]
        # out, g, S, widths, kernels, dws, pws, gy1, gdws, gpws, gpbs, x, dim, w1, gx, gw1, gb1, B, N, P, H, W, tile,
        # sgemm, threads
        lib.life_cascade_backward.restype = ctypes.c_int
        lib.life_cascade_backward.argtypes = [ptr, ptr, int_, *[ptr] * 9, int_, *[ptr] * 4, *[int_] * 6, ptr, int_]
        return lib
    raise RuntimeError("; ".join(errors))


def _native() -> Optional[ctypes.CDLL]:
    global _lib, _status
    if _status is None:
        with _lock:
            if _status is None:
                if os.environ.get("LIFEVIT_NATIVE", "1") == "0":
                    _status = "aten: LIFEVIT_NATIVE=0"
                else:
                    try:
                        _lib = _build()
                        _status = f"native: {_SOURCE.name}"
                    except (OSError, RuntimeError) as err:
                        _status = f"aten: the native kernel could not be built ({err})"
    return _lib


def native_status() -> str:
    """Which kernels LIFE's depthwise convolutions use here: ``"native: ..."`` or ``"aten: <why not native>"``."""
    _native()
    return str(_status)


def native_phases() -> Optional[dict]:
    """Where the native cascade's first thread spent its time since the last call (and reset the sums), seconds:
    ``{"forward": {phase: s}, "backward": {phase: s}}`` over ``NATIVE_PHASES``; None unless the kernel was built with
    ``LIFEVIT_NATIVE_PHASES=1`` (set before LIFE first runs; ``benchmarks/life_overhead.py --native-phases``)."""
    lib = _native()
    if lib is None:
        return None
    sums = (ctypes.c_double * (2 * len(NATIVE_PHASES)))()
    if lib.life_cascade_phases(sums) != len(NATIVE_PHASES):
        return None
    n = len(NATIVE_PHASES)
    return {p: dict(zip(NATIVE_PHASES, sums[i * n : (i + 1) * n])) for i, p in enumerate(("forward", "backward"))}


# ------------------------------------------------------------------------------------------------ the operations
def _groups_of(*maps: Optional[torch.Tensor]) -> int:
    """The groups G that these maps share: those of the first (B, HW, G, cg) one, else 1 (all (B, HW, C))."""
    return next((m.shape[2] for m in maps if m is not None and m.ndim == 4), 1)


def _as_map(t: torch.Tensor, G: int) -> torch.Tensor:
    """(B, HW, C) or (B, HW, G, cg) -> a (B, HW, G, cg) view."""
    return t if t.ndim == 4 else t.unflatten(-1, (G, -1))


_is_functorch_wrapped = getattr(torch._C._functorch, "is_functorch_wrapped_tensor", lambda t: False)
_PLAIN_TYPES = (torch.Tensor, torch.nn.Parameter)


def _plain_cpu_float(m: torch.Tensor) -> bool:
    """A plain strided float32 CPU tensor with dense channels (no subclass, no functorch wrapper)."""
    return (
        type(m) in _PLAIN_TYPES
        and m.dtype == torch.float32
        and m.device.type == "cpu"
        and m.layout == torch.strided
        and m.stride(-1) == 1
        and m.numel() > 0  # an empty batch: PyTorch's kernels return the empty result
        and not _is_functorch_wrapped(m)
    )


def _lib_for(k: int, *maps: Optional[torch.Tensor]) -> Optional[ctypes.CDLL]:
    """The native kernel when it can take these maps (plain float32 CPU tensors, eager, nobody watching the
    operators: a dispatch mode such as ``FlopCounterMode`` must see the convolution), else None."""
    if torch.compiler.is_compiling() or is_in_torch_dispatch_mode():
        return None
    grad = torch.is_grad_enabled()  # autograd must see PyTorch ops
    ok = all(m is None or (_plain_cpu_float(m) and not (grad and m.requires_grad)) for m in maps)
    lib = _native() if ok else None
    return lib if lib is not None and lib.life_dw_supports(k) else None


def _as_operator(name: str):
    """A ``torch.profiler`` range, so that the profiler lists the native call as an operator; nothing (it costs
    several microseconds a call) while no profiler runs."""
    return torch.profiler.record_function(name) if torch.autograd._profiler_enabled() else contextlib.nullcontext()


def _c_map(m: torch.Tensor) -> Tuple[int, int, int, int]:
    """A (B, HW, G, cg) map as the kernel takes it: data pointer, batch, pixel and group strides (in floats)."""
    return m.data_ptr(), m.stride(0), m.stride(1), m.stride(2)


def _grid(m: torch.Tensor, H: int, W: int) -> torch.Tensor:
    """(B, HW, G, cg) map -> (B, C, H, W) channels-last dense (a copy unless ``m`` is dense)."""
    C = m.shape[2] * m.shape[3]
    return m.reshape(m.shape[0], H, W, C).permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)


def _to_map(conv: torch.Tensor, shape, add: Optional[torch.Tensor], out: Optional[torch.Tensor]) -> torch.Tensor:
    """``add + conv`` for a (B, C, H, W) channels-last result of PyTorch's, as a map of ``shape`` (B, H*W, C) or
    (B, H*W, G, cg): written into ``out`` if given, else a new tensor (``conv`` itself, viewed, without ``add``)."""
    conv = conv.permute(0, 2, 3, 1).reshape(shape)  # a view when conv is channels-last
    if add is None:
        return conv if out is None else out.copy_(conv)
    return torch.add(add, conv) if out is None else torch.add(add, conv, out=out)


def depthwise_conv(
    x: torch.Tensor,
    weight: torch.Tensor,
    H: int,
    W: int,
    flip: bool = False,
    add: Optional[torch.Tensor] = None,
    out: Optional[torch.Tensor] = None,
    copy_to: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """``add + conv(x)``, with ``weight`` (C, 1, k, k) spatially flipped when ``flip`` (the input gradient of the
    convolution); written into ``out`` if given, else into a new dense tensor, returned. With ``copy_to``, ``x`` is
    also copied there (the native kernel does it while it reads ``x``: one pass over ``x`` instead of two).

    Shapes: x, add, out, copy_to (B, H*W, C) or (B, H*W, G, cg) (views with dense channels; copy_to must not overlap
    the others); the result has ``add``'s shape (``out``'s, or else ``x``'s)."""
    shape = next(t for t in (out, add, x) if t is not None).shape  # the result's: (B, H*W, C) or (B, H*W, G, cg)
    k, G = weight.shape[-1], _groups_of(out, add, copy_to, x)
    xm, cm = _as_map(x, G), None if copy_to is None else _as_map(copy_to, G)
    lib = _lib_for(k, xm, add, out, cm, weight)
    if lib is None:
        if cm is not None:
            cm.copy_(xm)
        w = weight.flip(-1, -2) if flip else weight
        conv = F.conv2d(_grid(xm, H, W), w, None, padding=k // 2, groups=weight.shape[0])  # (B, C, H, W)
        return _to_map(conv, shape, add, out)
    res = out if out is not None else x.new_empty(shape)
    om, am = _as_map(res, G), None if add is None else _as_map(add, G)
    B, _, G, cg = xm.shape
    w = weight.contiguous()  # (C, 1, k, k): the kernel reads the taps as they are (flips them itself)
    a, c = (_c_map(m) if m is not None else (None, 0, 0, 0) for m in (am, cm))
    with _as_operator("lifevit::depthwise_conv"):
        rc = lib.life_dw_conv(*_c_map(xm), w.data_ptr(), int(flip), *_c_map(om), *a, *c, B, H, W, G, cg, k,
                              torch.get_num_threads())  # fmt: skip
    if rc != 0:
        raise RuntimeError(f"LIFE's native depthwise convolution failed (code {rc}); set LIFEVIT_NATIVE=0")
    return res


def depthwise_conv_tokens(
    y: torch.Tensor, weight: torch.Tensor, P: int, H: int, W: int, copy_to: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """Tokens (B, P + H*W, C) -> a new dense (B, P + H*W, C): the P prefix tokens as they are, the patch tokens through
    ``depthwise_conv``; ``y`` is also copied into ``copy_to`` ((B, N, G, cg), a view not overlapping ``y``) on the
    way. The native kernel writes the convolution into place and copies while it reads; PyTorch's convolution (GPU,
    bf16) needs a dense grid, so there the copy goes first and one concatenation joins the prefix tokens: the fewest
    operations (a GPU's eager LIFE waits on the host's work per operation, ``docs/performance.md``)."""
    B, N, C = y.shape
    k, G = weight.shape[-1], _groups_of(copy_to)
    patches, slot = _as_map(y[:, P:], G), None if copy_to is None else copy_to[:, P:]
    if _lib_for(k, patches, slot, weight) is None:
        if copy_to is not None:
            copy_to.copy_(y.view(copy_to.shape))
        conv = F.conv2d(_grid(patches, H, W), weight, None, padding=k // 2, groups=C)  # (B, C, H, W) channels-last
        conv = _to_map(conv, (B, H * W, C), None, None)  # a dense view (not depthwise_conv: two more views a call)
        return torch.cat((y[:, :P], conv), dim=1) if P else conv
    x = y.new_empty(B, N, C)
    if P:
        x[:, :P] = y[:, :P]
        if copy_to is not None:
            copy_to[:, :P] = y[:, :P].view(copy_to[:, :P].shape)
    depthwise_conv(y[:, P:], weight, H, W, out=x[:, P:], copy_to=slot)
    return x


def depthwise_weight_grad(x: torch.Tensor, g: torch.Tensor, weight: torch.Tensor, H: int, W: int) -> torch.Tensor:
    """Weight gradient (C, 1, k, k), contiguous, of ``depthwise_conv(x, weight)`` for the output gradient ``g``.

    Shapes: x, g (B, H*W, C) or (B, H*W, G, cg) views with dense channels; weight (C, 1, k, k)."""
    C, k = weight.shape[0], weight.shape[-1]
    G = _groups_of(x, g)
    xm, gm = _as_map(x, G), _as_map(g, G)
    lib = _lib_for(k, xm, gm, weight)
    if lib is None:
        _, g_w, _ = torch.ops.aten.convolution_backward(
            _grid(gm, H, W), _grid(xm, H, W), weight, None, [1, 1], [k // 2] * 2, [1, 1], False, [0, 0], C,
            [False, True, False],
        )  # fmt: skip
        return g_w.reshape(-1).view(weight.shape)
    B, _, G, cg = xm.shape
    gw = x.new_empty(weight.shape)  # (C, 1, k, k) contiguous, as the kernel writes it
    with _as_operator("lifevit::depthwise_weight_grad"):
        rc = lib.life_dw_wgrad(*_c_map(xm), *_c_map(gm), gw.data_ptr(), B, H, W, G, cg, k, torch.get_num_threads())
    if rc != 0:
        raise RuntimeError(f"LIFE's native depthwise weight gradient failed (code {rc}); set LIFEVIT_NATIVE=0")
    return gw


def depthwise_backward(
    x: torch.Tensor,
    g: torch.Tensor,
    weight: torch.Tensor,
    H: int,
    W: int,
    add: Optional[torch.Tensor] = None,
    out_x: Optional[torch.Tensor] = None,
    out_g: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """What a backward pass of ``y = depthwise_conv(x, weight)`` with output gradient ``g`` needs, at once:
    ``(depthwise_conv(x, weight)`` recomputed (into ``out_x``), ``add + depthwise_conv(g, weight, flip=True)`` (the
    input gradient, into ``out_g``), ``depthwise_weight_grad(x, g, weight))``. The native kernel reads each image of
    ``x`` and ``g`` once for all three. Shapes as in ``depthwise_conv``; new tensors where no ``out_*`` is given."""
    k = weight.shape[-1]
    G = _groups_of(x, g, add, out_x, out_g)
    xm, gm, am, om, im = (None if t is None else _as_map(t, G) for t in (x, g, add, out_x, out_g))
    lib = _lib_for(k, xm, gm, am, om, im, weight)
    if lib is None:  # PyTorch's: each map into a dense grid once, both gradients from one call
        C = weight.shape[0]
        xg, gg = _grid(xm, H, W), _grid(gm, H, W)  # (B, C, H, W) channels-last
        conv = F.conv2d(xg, weight, None, padding=k // 2, groups=C)
        g_in, g_w, _ = torch.ops.aten.convolution_backward(
            gg, xg, weight, None, [1, 1], [k // 2] * 2, [1, 1], False, [0, 0], C, [True, True, False]
        )  # g_in: the flipped convolution of g
        res_x = _to_map(conv, x.shape if out_x is None else out_x.shape, None, out_x)
        res_g = _to_map(g_in, (g if add is None else add).shape if out_g is None else out_g.shape, add, out_g)
        return res_x, res_g, g_w.reshape(-1).view(weight.shape)
    res_x = x.new_empty(x.shape) if out_x is None else out_x
    res_g = g.new_empty((g if add is None else add).shape) if out_g is None else out_g
    om, im = _as_map(res_x, G), _as_map(res_g, G)
    B, _, G, cg = xm.shape
    gw = x.new_empty(weight.shape)  # (C, 1, k, k) contiguous, as the kernel writes it
    w = weight.contiguous()  # (C, 1, k, k); kept alive (a reference) while the kernel reads it
    a = (None, 0, 0, 0) if am is None else _c_map(am)
    with _as_operator("lifevit::depthwise_backward"):
        rc = lib.life_dw_backward(*_c_map(xm), *_c_map(gm), w.data_ptr(), *_c_map(om), *_c_map(im), *a, gw.data_ptr(),
                                  B, H, W, G, cg, k, torch.get_num_threads())  # fmt: skip
    if rc != 0:
        raise RuntimeError(f"LIFE's native depthwise backward failed (code {rc}); set LIFEVIT_NATIVE=0")
    return res_x, res_g, gw


def _blas_sgemm() -> Optional[int]:
    """The address of the Fortran ``sgemm_`` of PyTorch's own BLAS (MKL, linked into ``libtorch_cpu``), else None.

    Only MKL: inside our OpenMP threads it runs one thread per call (an OpenBLAS built with its own threads would
    start more); little-endian only (the kernel passes 64-bit integers that an LP64 BLAS reads as 32-bit)."""
    global _sgemm
    if _sgemm is None:
        _sgemm = 0
        if sys.byteorder == "little" and torch.backends.mkl.is_available():
            for name in ("libtorch_cpu.so", "libtorch_cpu.dylib"):
                path = Path(torch.__file__).parent / "lib" / name
                try:
                    _sgemm = ctypes.cast(ctypes.CDLL(str(path)).sgemm_, ctypes.c_void_p).value or 0
                except (OSError, AttributeError):
                    continue
                break
    return _sgemm or None


_sgemm: Optional[int] = None
_TILE_BYTES = 256 * 1024  # a tile's scale (rows x 3 c_s floats): with the next scale's input it stays in a core's L2


def _cascade_lib(ks, widths, *maps: Optional[torch.Tensor]) -> Optional[ctypes.CDLL]:
    """The native kernel when it can run a cascade of these scales (2..8 of them, every kernel size supported, no
    autocast, MKL's sgemm found) over these maps, else None."""
    if not 1 < len(widths) <= 8 or torch.is_autocast_enabled("cpu"):
        return None
    lib = _lib_for(ks[0], *maps)
    if lib is None or not all(lib.life_dw_supports(k) for k in ks) or _blas_sgemm() is None:
        return None
    return lib


def _tile(N: int, widths) -> int:
    """Images per tile: as many as keep one tile's widest scale, (tile * N, 3 c) floats, within ``_TILE_BYTES``."""
    return max(1, _TILE_BYTES // (N * 3 * max(widths) * 4))


def _ptr(t: Optional[torch.Tensor]) -> Optional[int]:
    return None if t is None else t.data_ptr()


def _ptrs(ts) -> ctypes.Array:
    return (ctypes.c_void_p * len(ts))(*[_ptr(t) for t in ts])


def life_scales(x, w1, b1, dws, pws, pbs, P: int, H: int, W: int, widths) -> Optional[torch.Tensor]:
    """A LIFE layer's scales in one native call (``life_cascade`` in ``native/dwconv.c``), or None where the native
    kernel cannot take them (the caller then runs them as separate operations; the results agree to float32 rounding).

    ``x`` (B, N, dim) goes through the scale-1 projection ``w1`` (3 c_1, dim) / ``b1`` first, or is scale 1 itself,
    (B, N, 3 c_1), when ``w1`` is None; ``dws``, ``pws``, ``pbs``: the depthwise weights, pointwise weights and
    biases (or None) of scales 2..S. Returns the new (B, N, 3, D) buffer. A few images at a time, every scale stays
    in cache: the layer reads ``x`` and writes the result once (the separate operations move several times the
    layer's bytes through memory). CPU float32, eager, no autocast, nothing recording gradients; needs PyTorch's MKL.
    """
    ks = [w.shape[-1] for w in dws]
    lib = _cascade_lib(ks, widths, x, w1, b1, *dws, *pws, *pbs)
    if lib is None:
        return None
    B, N = x.shape[:2]
    out = x.new_empty(B, N, 3, sum(widths))
    dws, pws, pbs = ([None if t is None else t.contiguous() for t in ts] for ts in (dws, pws, pbs))
    w1c, b1c = (None if t is None else t.contiguous() for t in (w1, b1))
    S, dim = len(widths), x.shape[-1]
    tile = _tile(N, widths)
    with _as_operator("lifevit::life_scales"):
        rc = lib.life_cascade(
            x.data_ptr(), x.stride(0), x.stride(1), dim, _ptr(w1c), _ptr(b1c), S, (ctypes.c_int * S)(*widths),
            (ctypes.c_int * (S - 1))(*ks), _ptrs(dws), _ptrs(pws), _ptrs(pbs), out.data_ptr(), B, N, P, H, W, tile,
            _blas_sgemm(), torch.get_num_threads(),
        )  # fmt: skip
    if rc != 0:
        raise RuntimeError(f"LIFE's native cascade failed (code {rc}); set LIFEVIT_NATIVE=0")
    return out


def life_scales_backward(out, g, dws, pws, has_bias, P: int, H: int, W: int, widths, x=None, w1=None, needs=None):
    """The backward pass of ``life_scales``, in one native call (``life_cascade_backward``), or None where the native
    kernel cannot take it.

    ``out`` (B, N, 3, D): the forward result (it holds every scale, so the depthwise inputs); ``g``: its gradient.
    Without ``w1``, from scale 1 on: returns ``(g_y1, g_dws, g_pws, g_pbs, None, None)``, the gradient at scale 1
    (B, N, 3 c_1) and the weight gradients of scales 2..S (contiguous; ``g_pbs[s]`` None where ``has_bias[s]`` is
    false). With the scale-1 projection's input ``x`` (B, N, dim) and weight ``w1`` (3 c_1, dim), through it as well,
    from each tile's scale-1 gradient in cache: ``(g_x, ..., g_w1, g_b1)``; ``needs`` (x, w1, b1: bools; default all
    three) says which of these to compute (None for the others). Tile by tile in cache, as the forward pass; the
    depthwise convolutions recomputed from ``out``."""
    ks = [w.shape[-1] for w in dws]
    out, g = out.contiguous(), g.contiguous()  # g may be expanded (the gradient of a sum)
    lib = _cascade_lib(ks, widths, out, g, x, w1, *dws, *pws)
    if lib is None:
        return None
    B, N = out.shape[:2]
    dws, pws = [w.contiguous() for w in dws], [w.contiguous() for w in pws]
    g_dws = [out.new_empty(w.shape) for w in dws]
    g_pws = [out.new_empty(w.shape) for w in pws]
    g_pbs = [out.new_empty(w.shape[0]) if b else None for w, b in zip(pws, has_bias)]
    S, dim = len(widths), 0
    g_y1 = g_x = g_w1 = g_b1 = None
    if w1 is None:
        g_y1 = out.new_empty(B, N, 3 * widths[0])
    else:
        x, w1, dim = x.contiguous(), w1.contiguous(), x.shape[-1]
        g_x, g_w1, g_b1 = (t if need else None for t, need in zip(
            (x.new_empty(x.shape), w1.new_empty(w1.shape), w1.new_empty(w1.shape[0])), needs or (True, True, True)
        ))  # fmt: skip
    tile = _tile(N, widths)
    with _as_operator("lifevit::life_scales_backward"):
        rc = lib.life_cascade_backward(
            out.data_ptr(), g.data_ptr(), S, (ctypes.c_int * S)(*widths), (ctypes.c_int * (S - 1))(*ks), _ptrs(dws),
            _ptrs(pws), _ptr(g_y1), _ptrs(g_dws), _ptrs(g_pws), _ptrs(g_pbs), _ptr(x), dim, _ptr(w1), _ptr(g_x),
            _ptr(g_w1), _ptr(g_b1), B, N, P, H, W, tile, _blas_sgemm(), torch.get_num_threads(),
        )  # fmt: skip
    if rc != 0:
        raise RuntimeError(f"LIFE's native cascade backward failed (code {rc}); set LIFEVIT_NATIVE=0")
    return (g_y1 if w1 is None else g_x), g_dws, g_pws, g_pbs, g_w1, g_b1


# ------------------------------------------------------------------------------------------------ compiled code
# torch.compile cannot trace into the native kernel (a ctypes call); as operators of their own, the convolution and
# its weight gradient become calls in the compiled graph, with this autograd formula, instead of PyTorch's depthwise
# convolution backward (oneDNN's 5 x 5 weight gradient: several times the native kernel's time, see above).
@torch.library.custom_op(
    "lifevit::dwconv", mutates_args=(), schema="(Tensor x, Tensor weight, int H, int W, bool flip) -> Tensor"
)
def _conv_op(x: torch.Tensor, weight: torch.Tensor, H: int, W: int, flip: bool) -> torch.Tensor:
    with torch.no_grad():  # below autograd already: let the native kernel take tensors that require gradients
        return depthwise_conv(x, weight, H, W, flip=flip).contiguous()


@torch.library.custom_op(
    "lifevit::dwconv_wgrad", mutates_args=(), schema="(Tensor x, Tensor g, Tensor weight, int H, int W) -> Tensor"
)
def _wgrad_op(x: torch.Tensor, g: torch.Tensor, weight: torch.Tensor, H: int, W: int) -> torch.Tensor:
    with torch.no_grad():
        return depthwise_weight_grad(x, g, weight, H, W)


@_conv_op.register_fake
def _(x, weight, H, W, flip):
    return x.new_empty(x.shape)


@_wgrad_op.register_fake
def _(x, g, weight, H, W):
    return weight.new_empty(weight.shape)


def _conv_op_setup(ctx, inputs, output):
    x, weight, H, W, flip = inputs
    ctx.save_for_backward(x, weight)
    ctx.geometry = (H, W, flip)


def _conv_op_backward(ctx, g):
    x, weight = ctx.saved_tensors
    H, W, flip = ctx.geometry
    g_x = _conv_op(g, weight, H, W, not flip) if ctx.needs_input_grad[0] else None
    g_w = None
    if ctx.needs_input_grad[1]:
        g_w = _wgrad_op(x, g, weight, H, W)
        g_w = g_w.flip(-1, -2) if flip else g_w
    return g_x, g_w, None, None, None


_conv_op.register_autograd(_conv_op_backward, setup_context=_conv_op_setup)


@torch.compiler.assume_constant_result  # run while tracing (it may build the kernel), not traced
def _native_supports(k: int) -> bool:
    lib = _native()
    return lib is not None and bool(lib.life_dw_supports(k))


def depthwise_conv_traced(x: torch.Tensor, weight: torch.Tensor, H: int, W: int) -> torch.Tensor:
    """``depthwise_conv(x, weight, H, W)`` for traced code: under ``torch.compile`` on CPU in float32 the native
    kernel as an operator of the graph (``lifevit::dwconv``, differentiable); otherwise, and always under
    ``torch.export`` (exported programs and ONNX need PyTorch's operators), PyTorch's convolution. Shapes as in
    ``depthwise_conv``; the result is dense."""
    native = (
        torch.compiler.is_compiling()
        and not torch.compiler.is_exporting()
        and x.device.type == "cpu"
        and x.dtype == weight.dtype == torch.float32
        and _native_supports(weight.shape[-1])
    )
    return _conv_op(x, weight, H, W, False) if native else depthwise_conv(x, weight, H, W)
