"""LIFE: the Local InFormation Enhancer, a multi-scale qkv projection for ViT self-attention.

Paper: Akkaya, Kathiresan, Arani, Zonooz, "Enhancing performance of vision transformers on small datasets
through local inductive bias incorporation", Pattern Recognition 2024. Reference release: NeurAI-Lab/LIFE
(``MultiscaleQKV``); every difference from it is listed in ``docs/life.md``.

LIFE replaces the ``nn.Linear(dim, 3 * dim)`` that produces queries, keys and values. With S scales
(``len(kernel_sizes) + 1``) the output channels of each of q, k and v are split into widths c_1 ... c_S
(summing to ``out_dim``), and

* scale 1 is a linear projection of every token to 3 * c_1 channels, laid out [q_1 | k_1 | v_1];
* scale s > 1 takes the *whole* output of scale s - 1 (q, k and v channels together), arranges the patch
  tokens as an H x W map, applies a depthwise k_s x k_s conv (zero padding, stride 1) and then a pointwise
  (1x1) projection to 3 * c_s channels [q_s | k_s | v_s]. The scales are a cascade: scale 3 reads scale 2.
* prefix tokens (class, distillation, register tokens) have no position on the grid: they skip the
  depthwise convs and go through the pointwise projections only, identically for q, k and v.

The result is laid out ``[q_1 q_2 ... q_S | k_1 ... k_S | v_1 ... v_S]``, i.e. exactly what a plain qkv
linear layer produces, so any attention that does ``qkv.reshape(B, N, 3, heads, head_dim)`` can use it.

Receptive fields that follow (with the default kernels (3, 5)): scale-1 channels of a patch token depend
only on that token, scale 2 on its 3x3 neighbourhood, scale 3 on its 7x7 neighbourhood (3 + 5 - 1).
Patch outputs never depend on prefix tokens and prefix outputs never depend on patch tokens.

Width split: ``out_dim`` is divided as evenly as possible, earlier scales taking the remainder, e.g.
192 -> (64, 64, 64) and 256 -> (86, 85, 85) for three scales.

Cost. In eager mode every scale is written straight into one output buffer (no concatenation). On CPU in float32
the whole cascade runs as one native call a few images at a time, every scale in cache (``dwconv.life_scales``:
the layer reads its input and writes its output once), from the input tokens (scale 1 included) where ``linear`` is
a plain, unhooked ``nn.Linear``, else from scale 1 on (the projection called as it is), in training with a backward
pass of the same kind (``dwconv.life_scales_backward``); elsewhere the scales run as separate operations. In
training the scales (2..S, or all of them) run inside one autograd function that keeps nothing but that output
buffer (which the attention keeps anyway, as q, k and v) and the tokens (which the projection would keep), and
recomputes the cheap depthwise convolutions in backward, so LIFE's training memory is close to the plain
projection's. Its depthwise weight gradients are returned contiguous, the layout
DistributedDataParallel's buckets expect. Under ``torch.compile`` / ``torch.export`` the scales are traced as new
tensors joined by one concatenation, with ordinary autograd (the compiler plans recomputation itself; in-place
writes into a buffer compile into a slow copy kernel). The depthwise convolutions, their input
and weight gradients read the patch tokens in place as channels-last maps (``dwconv.py``: on CPU a small native
kernel, elsewhere PyTorch's convolutions); the convolution that reads a scale also copies it into the output.
"""

from __future__ import annotations

import math
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable
from torch.nn.modules import module as _hooks

from .dwconv import (
    depthwise_backward,
    depthwise_conv_tokens,
    depthwise_conv_traced,
    life_scales,
    life_scales_backward,
)

__all__ = [
    "LIFE", "Pointwise", "split_widths", "POINTWISE_INITS", "LIFE_OPTIONS", "RELEASE_OPTIONS", "LIFEVIT_0_1_OPTIONS",
    "life_options_of_state_dict",
]  # fmt: skip

POINTWISE_INITS = ("trunc_normal", "kaiming_uniform")
# the LIFE choices a model passes on to its layers (``LIFEAttention.bind``)
LIFE_OPTIONS = ("pointwise_bias", "pointwise_init", "shared_norm", "prefix_keys_from_scale1")
# NeurAI-Lab/LIFE's MultiscaleQKV: bias-free 1x1 convs with PyTorch's default init, one LayerNorm for q, k and v.
# These are LIFE's defaults since 2026-12-02: they won the small-data grid (docs/small_data.md).
RELEASE_OPTIONS = {"pointwise_bias": False, "pointwise_init": "kaiming_uniform", "shared_norm": True}
# lifevit 0.1's defaults (pointwise bias as the qkv bias, timm's truncated normal, one norm each): the options the
# canvas detection / segmentation records were measured with (their configs pin them)
LIFEVIT_0_1_OPTIONS = {"pointwise_bias": None, "pointwise_init": "trunc_normal", "shared_norm": False}


def life_options_of_state_dict(state: Mapping[str, object]) -> Dict[str, object]:
    """The LIFE options a state dict's layout needs, beyond today's defaults (``{}`` when it has today's layout).

    A lifevit 0.1 model keeps pointwise biases (``...pointwise.0.bias``: ``pointwise_bias=None``, as its qkv bias) and
    one norm each for q, k and v (``...q_norm.weight``: ``shared_norm=False``); rebuilding the model with these
    options lets its weights load.
    """
    opts: Dict[str, object] = {}
    if any(k.endswith(".pointwise.0.bias") for k in state):
        opts["pointwise_bias"] = None
    if any(k.endswith("qkv.q_norm.weight") for k in state):
        opts["shared_norm"] = False
    return opts


def split_widths(dim: int, num_scales: int) -> Tuple[int, ...]:
    """Split ``dim`` channels over ``num_scales`` scales as evenly as possible, earlier scales first.

    Example: ``split_widths(256, 3) == (86, 85, 85)``.
    """
    if num_scales < 1:
        raise ValueError(f"num_scales must be >= 1, got {num_scales}")
    if dim < num_scales:
        raise ValueError(f"cannot split {dim} channels over {num_scales} scales: need at least one channel per scale")
    base, extra = divmod(dim, num_scales)
    return tuple(base + (1 if i < extra else 0) for i in range(num_scales))


class Pointwise(nn.Module):
    """A 1x1 convolution over channels-last tokens: (..., in_features) -> (..., out_features).

    Deliberately not an ``nn.Linear``: model-wide initialisers (timm's truncated normal for every ``nn.Linear``)
    pass it by, so the initialisation that :class:`LIFE` chose for it (``pointwise_init``) is the one it keeps.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None, dtype=None) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features, device=device, dtype=dtype))
        self.bias = nn.Parameter(torch.empty(out_features, device=device, dtype=dtype)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """PyTorch's default for ``nn.Conv2d`` / ``nn.Linear``: kaiming-uniform (a = sqrt(5)), uniform bias."""
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1 / math.sqrt(self.in_features)
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


def _plain_linear(m: nn.Module) -> bool:
    """``m`` is an ``nn.Linear`` as PyTorch made it, with no hooks (its own or global): calling it is ``F.linear``."""
    return type(m) is nn.Linear and not (
        m._forward_hooks or m._forward_pre_hooks or _hooks._global_forward_hooks or _hooks._global_forward_pre_hooks
    )


def _cpu_float32(*ts: torch.Tensor) -> bool:
    """float32 CPU tensors, no autocast: where the native cascade can run the scale-1 projection as well in
    training (its fallback, the same arithmetic as operations, then computes in float32 like the projection)."""
    return not torch.is_autocast_enabled("cpu") and all(t.device.type == "cpu" and t.dtype == torch.float32 for t in ts)


# ------------------------------------------------------------------------------------------- the computation
# Scales 2..S from the scale-1 output y1, written into out (B, N, 3, D). Eager: one plain function for the forward
# pass (no-grad and inside the autograd function) and the autograd function's backward below; the depthwise
# convolutions read and write the patch tokens as (B, H*W, G, c) maps in place (``dwconv``). Traced (compiled,
# exported): ``_scales_cat``, the same arithmetic without in-place writes.
def _projection_input(prefix: torch.Tensor, N: int, C: int) -> torch.Tensor:
    """A new (B, N, C) buffer for a pointwise projection's input, its prefix tokens filled in (``prefix``: (B, P, C) or
    (B, P, 3, c)): they skip the depthwise conv, whose output the caller writes into ``x[:, P:]``."""
    B, P = prefix.shape[:2]
    x = prefix.new_empty(B, N, C)
    if P:
        x[:, :P].view(prefix.shape).copy_(prefix)
    return x


def _scales_into(out, y1, P, H, W, widths, dws: List, pws: List, pbs: List) -> torch.Tensor:
    """Write scale 1 (``y1``: (B, N, 3*c1)) and scales 2..S (depthwise ``dws``, pointwise ``pws`` / ``pbs``) into
    ``out`` (B, N, 3, D; allocated in ``y1``'s dtype when ``None``), each scale at its channel offset of q, k and v;
    returns ``out``.

    Callers hand over their only reference to ``y1`` (``_scales_into(out, self.linear(x), ...)``): it is freed as
    soon as scale 2 has read it, so that no more than one map of the previous scale is alive at a time."""
    B, N = y1.shape[:2]
    out = y1.new_empty(B, N, 3, sum(widths)) if out is None else out
    dt = out.dtype
    cs = widths[0]
    y = y1  # the current scale s for every token, (B, N, 3*c_s) dense: it goes to out[..., offset : offset + c_s]
    del y1
    offset = 0
    for wd, wp, bp, c in zip(dws, pws, pbs, widths[1:]):
        slot = out[:, :, :, offset : offset + cs]  # (B, N, 3, c_s): scale s's place in the output
        # the next scale's input: patch tokens through the conv, prefix tokens as they are; y into its slot on the way
        x = depthwise_conv_tokens(y, wd.to(dt), P, H, W, copy_to=slot)  # (B, N, 3*c_s)
        y = None  # scale s is in ``out`` now: free it before the next allocation
        y = F.linear(x, wp.to(dt), None if bp is None else bp.to(dt))  # (B, N, 3*c): one projection for all tokens
        x = None  # likewise
        offset, cs = offset + cs, c
    out[:, :, :, offset:] = y.view(B, N, 3, cs)  # the last scale (every other one was copied on the way)
    return out


def _scales_cat(y1, P, H, W, widths, dws: List, pws: List, pbs: List) -> torch.Tensor:
    """The same as ``_scales_into`` without writing into a buffer: every scale a new tensor, joined by ``torch.cat``
    ((B, N, 3, D)). For traced code (``torch.compile``, ``torch.export``): compilers turn the buffer's slot writes
    into one select per element (inductor: a copy kernel several times slower than the whole eager layer) and
    handle a concatenation well."""
    B, N = y1.shape[:2]
    ys = [y1.view(B, N, 3, widths[0])]  # each scale for every token, (B, N, 3, c_s)
    for wd, wp, bp in zip(dws, pws, pbs):
        y = ys[-1]
        conv = depthwise_conv_traced(y[:, P:], wd.to(y.dtype), H, W)  # (B, H*W, 3, c_s): the patch tokens' conv
        x = (torch.cat((y[:, :P], conv), dim=1) if P else conv).flatten(2)  # (B, N, 3*c_s): prefixes skip the conv
        ys.append(F.linear(x, wp.to(y.dtype), None if bp is None else bp.to(y.dtype)).view(B, N, 3, -1))
    return torch.cat(ys, dim=-1)


class _Scales(torch.autograd.Function):
    """Scales 2..S as one autograd node that saves only its output and recomputes the depthwise convs; with the
    scale-1 weights ``w1`` / ``b1`` given, scale 1 as well (``x``: the tokens, (B, N, dim); else ``x`` is scale 1
    itself, (B, N, 3 c_1), and ``w1``, ``b1`` are None), which then saves ``x`` too (as the projection would)."""

    @staticmethod
    def forward(ctx, x, w1, b1, P, H, W, widths, *params):
        S1 = len(widths) - 1
        dws, pws, pbs = list(params[:S1]), list(params[S1 : 2 * S1]), list(params[2 * S1 :])
        ctx.dtypes = [w.dtype for w in dws], [w.dtype for w in pws]  # the parameters', for their gradients
        out = life_scales(x, w1, b1, dws, pws, pbs, P, H, W, widths)  # (B, N, 3, D): native, in cache
        if out is None:  # the weights in scale 1's dtype (autocast) once, kept so for backward (a few KiB)
            dws, pws, pbs = ([None if w is None else w.to(x.dtype) for w in ws] for ws in (dws, pws, pbs))
            out = _scales_into(None, x if w1 is None else F.linear(x, w1, b1), P, H, W, widths, dws, pws, pbs)
        ctx.geometry = (P, H, W, widths, [b is not None for b in pbs], w1 is not None)
        ctx.save_for_backward(out, *dws, *pws, *(() if w1 is None else (x, w1)))
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        P, H, W, widths, has_bias, scale1 = ctx.geometry
        out, *weights = ctx.saved_tensors
        S1 = len(widths) - 1
        dws, pws = weights[:S1], weights[S1 : 2 * S1]
        x, w1 = weights[2 * S1 :] if scale1 else (None, None)
        needs = ctx.needs_input_grad[:3]  # x (or y1), w1, b1
        # in cache, one call: the gradient at x (with w1) or at scale 1, w1's and b1's (or None), the scales' own
        dt_dw, dt_pw = ctx.dtypes  # the parameters' own (under autocast not the saved copies')
        native = life_scales_backward(out, g, dws, pws, has_bias, P, H, W, widths, x, w1, needs)
        if native is not None:
            g_x, g_dw, g_pw, g_pb, g_w1, g_b1 = native
            return (g_x, g_w1, g_b1, None, None, None, None, *g_dw, *g_pw, *g_pb)
        B, N = out.shape[:2]
        dt = g.dtype
        starts = [sum(widths[:s]) for s in range(len(widths))]

        def slot(t, s, lo, hi):  # tokens lo:hi of scale s of a (B, N, 3, D) tensor: a (B, n, 3, c_s) view, no copy
            return t[:, lo:hi, :, starts[s] : starts[s] + widths[s]]

        def part(t, s, lo, hi):  # the same, dense (B, n, 3*c_s)
            return slot(t, s, lo, hi).reshape(B, hi - lo, 3 * widths[s])

        g_dw, g_pw, g_pb = [None] * S1, [None] * S1, [None] * S1
        g_y1 = g.new_empty(B, N, 3 * widths[0])  # the result: (B, N, 3*c1), written in place below (no cat)
        gy = part(g, S1, 0, N)  # (B, N, 3*c_S): the gradient reaching scale s (starting at S), every token
        for s in range(S1, 0, -1):
            wd, wp = dws[s - 1].to(dt), pws[s - 1].to(dt)
            c = widths[s - 1]
            x_map = slot(out, s - 1, P, N)  # scale s-1's patch tokens: this scale's depthwise input
            gx = gy @ wp  # (B, N, 3*c_{s-1}): the gradient at the projection's input
            g_conv = gx[:, P:].view(B, N - P, 3, c)  # its patch tokens: the gradient at the depthwise conv's output
            # gradient reaching scale s-1: its own slot of g plus what flowed back through scale s (prefix tokens
            # directly, patch tokens through the conv), read from g's slots in place; scale 1's straight into g_y1
            into = g_y1.view(B, N, 3, c) if s == 1 else g.new_empty(B, N, 3, c)
            torch.add(slot(g, s - 1, 0, P), gx[:, :P].view(B, P, 3, c), out=into[:, :P])
            x_s = _projection_input(slot(out, s - 1, 0, P), N, 3 * c)  # the projection's input, recomputed: ...
            # ... its patch tokens through the conv, with the conv's input and weight gradients, in one pass
            _, _, g_dw_s = depthwise_backward(x_map, g_conv, wd, H, W, slot(g, s - 1, P, N), x_s[:, P:], into[:, P:])
            g_dw[s - 1] = g_dw_s.to(dt_dw[s - 1])  # contiguous (DDP)
            g_pw[s - 1] = (gy.flatten(0, 1).t() @ x_s.flatten(0, 1)).to(dt_pw[s - 1])  # (3*c_s, 3*c_{s-1})
            if has_bias[s - 1]:
                g_pb[s - 1] = gy.sum((0, 1)).to(dt_pw[s - 1])
            gy, gx, g_conv, x_s = into.view(B, N, 3 * c), None, None, None
        if not scale1:
            return (g_y1, None, None, None, None, None, None, *g_dw, *g_pw, *g_pb)
        g_x = g_y1 @ w1.to(dt) if needs[0] else None  # (B, N, dim): through the scale-1 projection
        g_w1 = (g_y1.flatten(0, 1).t() @ x.flatten(0, 1).to(dt)).to(w1.dtype) if needs[1] else None  # (3 c1, dim)
        g_b1 = g_y1.sum((0, 1)).to(w1.dtype) if needs[2] else None
        return (g_x, g_w1, g_b1, None, None, None, None, *g_dw, *g_pw, *g_pb)


class LIFE(nn.Module):
    """Multi-scale qkv projection: a drop-in replacement for ``nn.Linear(dim, 3 * out_dim)``.

    Args:
        dim: Input channels of each token.
        num_prefix_tokens: Tokens at the start of the sequence that are not on the patch grid
            (1 for a class token, 2 with a distillation token, more with register tokens, 0 for none).
        kernel_sizes: Depthwise kernel of each scale after the first, applied in cascade. ``()`` gives a
            plain linear qkv projection. Kernels must be odd so the grid keeps its size.
        qkv_bias: Learnable bias on the scale-1 linear projection.
        out_dim: Channels of each of q, k and v (default ``dim``).
        norm_layer: If given, a normalisation layer (e.g. ``nn.LayerNorm``) applied to each of q, k and v.
        grid_size: Default (H, W) patch grid, used when ``forward`` gets none. Models set it per input.
        pointwise_bias: Learnable bias on the pointwise projections (default ``False``, as in the release;
            ``None``: the same as ``qkv_bias``).
        pointwise_init: ``"kaiming_uniform"`` (default: PyTorch's default for a 1x1 conv, which the release keeps)
            or ``"trunc_normal"`` (std 0.02, zero bias: timm's linear init). Model-wide inits do not override it.
        shared_norm: With ``norm_layer``, one norm shared by q, k and v (default, as in the release) or one each.
        prefix_keys_from_scale1: The release's class-token keys: the key of every prefix token is its scale-1 key
            repeated over all scales, ``[k_1 k_1 ... k_1]`` (needs equal widths). Only to run models trained with
            the release (``lifevit.release``); lifevit's own definition gives prefix keys every scale.

    Shapes:
        x: (B, P + H * W, dim) -> (B, P + H * W, 3 * out_dim), laid out [q | k | v]. The output has the dtype of
        the scale-1 projection (under autocast: the autocast dtype), with and without autograd.
    """

    def __init__(
        self,
        dim: int,
        num_prefix_tokens: int = 1,
        kernel_sizes: Sequence[int] = (3, 5),
        qkv_bias: bool = True,
        out_dim: Optional[int] = None,
        norm_layer: Optional[type[nn.Module]] = None,
        grid_size: Optional[Tuple[int, int]] = None,
        pointwise_bias: Optional[bool] = False,
        pointwise_init: str = "kaiming_uniform",
        shared_norm: bool = True,
        prefix_keys_from_scale1: bool = False,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        kernel_sizes = tuple(int(k) for k in kernel_sizes)
        if any(k < 1 or k % 2 == 0 for k in kernel_sizes):
            raise ValueError(f"kernel_sizes must be odd positive integers, got {kernel_sizes}")
        if num_prefix_tokens < 0:
            raise ValueError(f"num_prefix_tokens must be >= 0, got {num_prefix_tokens}")
        if pointwise_init not in POINTWISE_INITS:
            raise ValueError(f"pointwise_init must be one of {POINTWISE_INITS}, got {pointwise_init!r}")
        out_dim = out_dim or dim
        self.dim = dim
        self.out_dim = out_dim
        self.num_prefix_tokens = num_prefix_tokens
        self.kernel_sizes = kernel_sizes
        self.widths = split_widths(out_dim, len(kernel_sizes) + 1)  # (c_1, ..., c_S)
        self.grid_size = grid_size
        self.pointwise_init = pointwise_init
        if prefix_keys_from_scale1 and len(set(self.widths)) > 1:
            raise ValueError(f"prefix_keys_from_scale1 needs equal scale widths, got {self.widths} for {out_dim}")
        self.prefix_keys_from_scale1 = prefix_keys_from_scale1

        c = self.widths
        pointwise_bias = qkv_bias if pointwise_bias is None else pointwise_bias
        self.linear = nn.Linear(dim, 3 * c[0], bias=qkv_bias, **dd)  # scale 1
        self.depthwise = nn.ModuleList(
            nn.Conv2d(3 * c[i], 3 * c[i], k, padding=k // 2, groups=3 * c[i], bias=False, **dd)
            for i, k in enumerate(kernel_sizes)
        )
        self.pointwise = nn.ModuleList(
            Pointwise(3 * c[i], 3 * c[i + 1], bias=pointwise_bias, **dd) for i in range(len(kernel_sizes))
        )
        self.q_norm = self.k_norm = self.v_norm = self.qkv_norm = None
        if norm_layer is not None and shared_norm:
            self.qkv_norm = norm_layer(out_dim, **dd)
        elif norm_layer is not None:
            self.q_norm, self.k_norm, self.v_norm = (norm_layer(out_dim, **dd) for _ in range(3))
        self.init_weights()

    def init_weights(self) -> None:
        """(Re-)initialise the pointwise projections as ``pointwise_init`` says; timm's model init calls this."""
        for pw in self.pointwise:
            if self.pointwise_init == "kaiming_uniform":
                pw.reset_parameters()
            else:
                nn.init.trunc_normal_(pw.weight, std=0.02)
                if pw.bias is not None:
                    nn.init.zeros_(pw.bias)

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, out_dim={self.out_dim}, widths={self.widths}, "
            f"kernel_sizes={self.kernel_sizes}, num_prefix_tokens={self.num_prefix_tokens}, "
            f"pointwise_init={self.pointwise_init}"
        )

    def _grid(self, num_tokens: int, grid_size: Optional[Tuple[int, int]]) -> Tuple[int, int]:
        num_patches = num_tokens - self.num_prefix_tokens
        grid_size = grid_size or self.grid_size
        if grid_size is None:  # no grid given: only a square grid can be inferred
            side = math.isqrt(max(num_patches, 0))
            if num_patches <= 0 or side * side != num_patches:
                raise ValueError(
                    f"LIFE got {num_tokens} tokens ({self.num_prefix_tokens} prefix + {num_patches} patch tokens), "
                    "which is not a square grid; pass grid_size=(H, W)"
                )
            return side, side
        H, W = int(grid_size[0]), int(grid_size[1])
        if H * W != num_patches:
            raise ValueError(
                f"LIFE got {num_tokens} tokens = {self.num_prefix_tokens} prefix + {num_patches} patch tokens, "
                f"but the grid {H}x{W} has {H * W} patches"
            )
        return H, W

    def forward(self, x: torch.Tensor, grid_size: Optional[Tuple[int, int]] = None) -> torch.Tensor:
        if x.ndim != 3 or x.shape[-1] != self.dim:
            raise ValueError(f"LIFE expects tokens of shape (B, N, {self.dim}), got {tuple(x.shape)}")
        B, N, _ = x.shape
        H, W = self._grid(N, grid_size)
        D, P = self.out_dim, self.num_prefix_tokens
        dws = [m.weight for m in self.depthwise]
        pws, pbs = [m.weight for m in self.pointwise], [m.bias for m in self.pointwise]
        eager = not (torch.compiler.is_compiling() or torch.compiler.is_exporting())
        # self.linear(x): (B, N, 3*c1), scale 1 for every token (handed over, not kept: see _scales_into)
        if not eager:  # traced: every scale a new tensor
            out = _scales_cat(self.linear(x), P, H, W, self.widths, dws, pws, pbs)  # (B, N, 3, D)
        elif torch.is_grad_enabled() and len(self.widths) > 1:
            if _plain_linear(self.linear) and _cpu_float32(x, self.linear.weight):  # one native call, scale 1 too
                w1, b1 = self.linear.weight, self.linear.bias
                out = _Scales.apply(x, w1, b1, P, H, W, self.widths, *dws, *pws, *pbs)  # (B, N, 3, D)
            else:  # the projection runs as it is (hooks, subclasses, autocast, GPU), the scales 2..S after it
                out = _Scales.apply(self.linear(x), None, None, P, H, W, self.widths, *dws, *pws, *pbs)
        else:  # no autograd: scale 1 as well in one native call where it can, else as operations
            out = None
            if _plain_linear(self.linear):  # nobody hooks or replaces it: its weights may be read directly
                out = life_scales(x, self.linear.weight, self.linear.bias, dws, pws, pbs, P, H, W, self.widths)
            if out is None:
                out = _scales_into(None, self.linear(x), P, H, W, self.widths, dws, pws, pbs)  # (B, N, 3, D)
        if self.prefix_keys_from_scale1 and P:
            k1 = out[:, :P, 1:2, : self.widths[0]].repeat(1, 1, 1, len(self.widths))  # (B, P, 1, D): [k_1 ... k_1]
            out = torch.cat((torch.cat((out[:, :P, :1], k1, out[:, :P, 2:]), dim=2), out[:, P:]), dim=1)
        if self.qkv_norm is not None:
            out = self.qkv_norm(out)  # one norm over the D channels of each of q, k and v
        elif self.q_norm is not None:
            q, k, v = out.unbind(2)  # each (B, N, D)
            out = torch.stack((self.q_norm(q), self.k_norm(k), self.v_norm(v)), dim=2)
        return out.view(B, N, 3 * D)
