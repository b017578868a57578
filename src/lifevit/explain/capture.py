"""Capture the attention probabilities of every self-attention layer of a model, for one batch.

How it works. An *attention module* is any module with a ``num_heads`` attribute and an ``attn_drop``
sub-module: timm's ``Attention`` (and so :class:`~lifevit.layers.LIFEAttention`), timm's SwinV2
``WindowAttention`` and the T2T-ViT attention layers all qualify. In the explicit (non-fused) path they call
``attn_drop(softmax(q k^T * scale + bias))``, so a forward hook on ``attn_drop`` sees the probabilities
*before* dropout. The fused path (``F.scaled_dot_product_attention``) never materialises them, so while
capturing, every module's ``fused_attn`` flag is switched off; the flag and every hook are restored in a
``finally`` block, so the model is exactly as it was afterwards (same flags, no hooks, same parameters).
The qkv projection used is the module's own (a LIFE layer for the ``*_life`` models): nothing is re-implemented.

Capture cannot fail silently: a hook on each attention module checks that *every* call produced exactly one
attention tensor of the expected shape ``(B_, heads, N, N)``; otherwise a ``RuntimeError`` names the module.

Token layout of the records:

* ViT / DeiT / T2T-ViT: ``(B, heads, N, N)`` in sequence order, prefix tokens (class, distillation,
  register) first, then the patch tokens row-major on the grid.
* SwinV2: window attention ``(nW * B, heads, n, n)`` is scattered into a global ``(B, heads, H * W, H * W)``
  matrix on the stage's token grid, the cyclic shift undone (see :func:`windows_to_global`). Entries between
  tokens of different windows are 0.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

__all__ = [
    "AttentionRecord",
    "AttentionRecorder",
    "attention_modules",
    "capture_attention",
    "record_gradient",
    "windows_to_global",
]

_logger = logging.getLogger(__name__)


@dataclass
class AttentionRecord:
    """Attention probabilities of one self-attention call.

    Attributes:
        name: Qualified name of the attention module in the model.
        attn: Probabilities ``(B, heads, N, N)``; row i (a query token) sums to 1 over the keys.
        num_prefix_tokens: Tokens at the start of the sequence that are not on the grid.
        grid_size: (H, W) patch grid of the remaining ``N - num_prefix_tokens`` tokens, or None if unknown.
        windowed: True if the record was assembled from window attention (SwinV2).
        source: The probability tensor exactly as the module fed it to ``attn_drop`` (window attention
            ``(nW * B, heads, n, n)`` for SwinV2; the same tensor as ``attn`` otherwise). With
            ``AttentionRecorder(detach=False)`` it is part of the autograd graph: gradients of the output are taken
            with respect to it (:func:`record_gradient` maps them to the layout of ``attn``).
        window: SwinV2: (grid, window, shift) that :func:`windows_to_global` used, else None.
    """

    name: str
    attn: torch.Tensor
    num_prefix_tokens: int = 0
    grid_size: Optional[Tuple[int, int]] = None
    windowed: bool = False
    source: Optional[torch.Tensor] = field(default=None, repr=False)
    window: Optional[Tuple[Tuple[int, int], Tuple[int, int], Tuple[int, int]]] = None

    @property
    def num_tokens(self) -> int:
        return self.attn.shape[-1]


def attention_modules(model: nn.Module) -> List[Tuple[str, nn.Module]]:
    """(name, module) of every attention module in ``model`` (see the module docstring for the rule)."""
    return [
        (name, m)
        for name, m in model.named_modules()
        if hasattr(m, "num_heads") and isinstance(getattr(m, "attn_drop", None), nn.Module)
    ]


def _is_window_block(module: nn.Module) -> bool:
    """A Swin-style block: it partitions its (B, H, W, C) input into windows around its ``attn`` child."""
    return (
        hasattr(module, "window_size")
        and hasattr(module, "shift_size")
        and isinstance(getattr(module, "attn", None), nn.Module)
    )


def window_token_index(
    grid_size: Tuple[int, int], window_size: Tuple[int, int], shift_size: Tuple[int, int]
) -> torch.Tensor:
    """Global (row-major) token index of each window position, as timm's SwinV2 block partitions it.

    The block rolls its (H, W) map by ``-shift``, zero-pads it to a multiple of the window and cuts it into
    windows in row-major window order. Position (r, c) of window (wi, wj) is therefore shifted-map position
    (y, x) = (wi * wh + r, wj * ww + c), which is original position ((y + sh) mod H, (x + sw) mod W), or padding
    when y >= H or x >= W.

    Returns:
        Long tensor (nW, wh * ww): global index ``row * W + col`` of each window token, -1 for padding.
    """
    H, W = grid_size
    wh, ww = window_size
    sh, sw = shift_size
    Hp, Wp = math.ceil(H / wh) * wh, math.ceil(W / ww) * ww
    y = torch.arange(Hp).view(Hp // wh, 1, wh, 1).expand(Hp // wh, Wp // ww, wh, ww)  # (nWh, nWw, wh, ww)
    x = torch.arange(Wp).view(1, Wp // ww, 1, ww).expand(Hp // wh, Wp // ww, wh, ww)
    index = ((y + sh) % H) * W + (x + sw) % W
    index = torch.where((y < H) & (x < W), index, torch.full_like(index, -1))
    return index.reshape(-1, wh * ww)  # (nW, wh*ww)


def windows_to_global(
    attn: torch.Tensor,
    grid_size: Tuple[int, int],
    window_size: Tuple[int, int],
    shift_size: Tuple[int, int] = (0, 0),
    renormalize: bool = True,
) -> torch.Tensor:
    """Scatter SwinV2 window attention back to the global token grid, undoing the cyclic shift.

    Args:
        attn: Window attention ``(nW * B, heads, n, n)`` with ``n = wh * ww``, windows ordered as timm's
            ``window_partition`` of the shifted, padded map.
        grid_size: (H, W) token grid of the stage (before padding).
        window_size: (wh, ww).
        shift_size: (sh, sw) cyclic shift of the block (0 for W-MSA).
        renormalize: Renormalise the rows after dropping padding columns (probabilities); False scatters the
            values only (e.g. gradients with respect to the window attention).

    Returns:
        ``(B, heads, H * W, H * W)``: entry (i, j) is the attention of token i to token j (row-major global
        indices), 0 when they are in different windows. Probability mass on zero-padding tokens (only when H or
        W is not a multiple of the window) is dropped and the rows renormalised to sum to 1.
    """
    H, W = grid_size
    index = window_token_index(grid_size, window_size, shift_size).to(attn.device)  # (nW, n)
    nW, n = index.shape
    BnW, heads, n1, n2 = attn.shape
    if n1 != n or n2 != n or BnW % nW:
        raise ValueError(
            f"window attention of shape {tuple(attn.shape)} does not match grid {H}x{W} with window "
            f"{tuple(window_size)}: expected (B * {nW}, heads, {n}, {n})"
        )
    B = BnW // nW
    win = attn.reshape(B, nW, heads, n, n).permute(0, 2, 1, 3, 4)  # (B, heads, nW, n, n)
    rows = index[:, :, None].expand(nW, n, n)
    cols = index[:, None, :].expand(nW, n, n)
    valid = (rows >= 0) & (cols >= 0)  # (nW, n, n)
    out = attn.new_zeros(B, heads, H * W, H * W)
    out[:, :, rows[valid], cols[valid]] = win[:, :, valid]  # each (row, col) pair occurs once
    if renormalize and (index < 0).any():  # padding tokens: drop their columns, renormalise the rows
        out = out / out.sum(-1, keepdim=True).clamp_min(torch.finfo(out.dtype).tiny)
    return out


def record_gradient(record: AttentionRecord, grad: torch.Tensor) -> torch.Tensor:
    """The gradient with respect to ``record.source`` in the layout of ``record.attn`` ``(B, heads, N, N)``.

    For a window record the window gradients are scattered like the probabilities (entries between windows are 0,
    padding is dropped without renormalising); for the others it is ``grad`` itself.
    """
    if record.window is None:
        return grad
    grid, window, shift = record.window
    return windows_to_global(grad, grid, window, shift, renormalize=False)


def _infer_layout(num_tokens: int, grid_size: Optional[Tuple[int, int]]) -> Tuple[int, Optional[Tuple[int, int]]]:
    """(num_prefix_tokens, grid) for a sequence of ``num_tokens``, given the model's patch grid if known."""
    if grid_size is not None and 0 <= num_tokens - grid_size[0] * grid_size[1] <= 16:
        return num_tokens - grid_size[0] * grid_size[1], tuple(grid_size)
    for prefix in (0, 1, 2):  # a sequence of another size (e.g. a T2T soft-split stage): square grid, if any
        side = math.isqrt(num_tokens - prefix)
        if side * side == num_tokens - prefix:
            return prefix, (side, side)
    return 0, None


def model_token_grid(model: nn.Module, img_hw: Tuple[int, int]) -> Optional[Tuple[int, int]]:
    """Patch grid (H, W) that ``model`` uses for an input of size ``img_hw``, if it has a ViT-style stem."""
    if hasattr(model, "token_grid"):
        return tuple(int(s) for s in model.token_grid(tuple(img_hw)))
    pe = getattr(model, "patch_embed", None)
    if pe is None:
        return None
    if hasattr(pe, "dynamic_feat_size") and getattr(model, "dynamic_img_size", False):
        return tuple(int(s) for s in pe.dynamic_feat_size(tuple(img_hw)))
    if getattr(pe, "grid_size", None) is not None:
        return tuple(int(s) for s in pe.grid_size)
    return None


class AttentionRecorder:
    """Context manager that records the attention probabilities of every attention module of ``model``.

    Example::

        with AttentionRecorder(model) as recorder:
            logits = model(images)
        records = recorder.records  # one AttentionRecord per attention call, in call order

    Args:
        model: Any module; its attention modules are found with :func:`attention_modules`.
        grid_size: Patch grid of the input, used to label prefix tokens of ViT-style records (default: read from
            the model's ViT-style stem for each input, see :func:`model_token_grid`).
        detach: Store detached tensors (default). Set False to keep the autograd graph.
        to_cpu: Move each record to the CPU as it is produced (saves accelerator memory).
        include: Only attention modules whose qualified name starts with one of these prefixes
            (e.g. ``["backbone."]``); the others are left untouched.

    Raises:
        ValueError: ``model`` has no attention module.
        RuntimeError: (during the forward pass) an attention module ran without producing probabilities.
    """

    def __init__(
        self,
        model: nn.Module,
        grid_size: Optional[Tuple[int, int]] = None,
        detach: bool = True,
        to_cpu: bool = False,
        include: Optional[Sequence[str]] = None,
    ) -> None:
        self.model = model
        self.grid_size = grid_size
        self.detach = detach
        self.to_cpu = to_cpu
        self.records: List[AttentionRecord] = []
        self._modules = attention_modules(model)
        if include is not None:
            self._modules = [(n, m) for n, m in self._modules if any(n.startswith(p) for p in include)]
        if not self._modules:
            where = "" if include is None else f" under {list(include)}"
            raise ValueError(
                f"{type(model).__name__} has no attention module{where} (a module with `num_heads` and an "
                "`attn_drop` sub-module); attention capture supports timm ViT/DeiT, T2T-ViT and SwinV2 attention"
            )
        self._handles: List[Any] = []
        self._saved_flags: Dict[nn.Module, bool] = {}
        self._pending: Dict[nn.Module, List[torch.Tensor]] = {}
        self._window_ctx: List[Tuple[Tuple[int, int], Tuple[int, int], Tuple[int, int]]] = []
        self._batch_size: Optional[int] = None
        self._input_grid: Optional[Tuple[int, int]] = None

    # -- hooks --------------------------------------------------------------------------------------------
    def _on_probs(self, owner: nn.Module):
        def hook(_module: nn.Module, args: Tuple[torch.Tensor, ...], _output: torch.Tensor) -> None:
            probs = args[0]
            self._pending.setdefault(owner, []).append(probs.detach() if self.detach else probs)

        return hook

    def _on_attention_start(self, module: nn.Module, args: Tuple[Any, ...]) -> None:
        self._pending[module] = []

    def _on_attention_end(self, name: str):
        def hook(module: nn.Module, args: Tuple[Any, ...], _output: Any) -> None:
            got = self._pending.pop(module, [])
            x = args[0] if args else None
            if len(got) != 1:
                raise RuntimeError(
                    f"attention capture failed for {name!r} ({type(module).__name__}): expected 1 attention-"
                    f"probability tensor from its `attn_drop`, got {len(got)}; its forward does not route the "
                    "softmax through `attn_drop` (unsupported attention implementation)"
                )
            probs = got[0]
            heads = module.num_heads
            if isinstance(x, torch.Tensor) and x.ndim == 3:
                Bx, N, _ = x.shape
                if tuple(probs.shape) != (Bx, heads, N, N):
                    raise RuntimeError(
                        f"attention capture for {name!r}: expected probabilities of shape {(Bx, heads, N, N)}, "
                        f"got {tuple(probs.shape)}"
                    )
            if self._window_ctx:
                grid, window, shift = self._window_ctx[-1]
                glob = windows_to_global(probs, grid, window, shift)
                record = AttentionRecord(name, glob, 0, grid, windowed=True, source=probs, window=(grid, window, shift))
            else:
                if self._batch_size is not None and probs.shape[0] != self._batch_size:
                    raise RuntimeError(
                        f"attention capture for {name!r}: got attention for {probs.shape[0]} sequences but the "
                        f"batch has {self._batch_size} images (window attention outside a recognised Swin block?)"
                    )
                prefix, grid = _infer_layout(probs.shape[-1], self.grid_size or self._input_grid)
                record = AttentionRecord(name, probs, prefix, grid, source=probs)
            if self.to_cpu:
                record.attn = record.attn.cpu()
                if self.detach:  # nothing to differentiate: keep no accelerator copy
                    record.source = record.attn if record.window is None else record.source.cpu()
            self.records.append(record)

        return hook

    def _on_model_start(self, module: nn.Module, args: Tuple[Any, ...]) -> None:
        x = args[0] if args else None
        images = isinstance(x, torch.Tensor) and x.ndim == 4
        self._batch_size = int(x.shape[0]) if images else None
        self._input_grid = model_token_grid(module, tuple(x.shape[-2:])) if images else None

    def _on_block_start(self, module: nn.Module, args: Tuple[Any, ...]) -> None:
        x = args[0]
        if x.ndim != 4:
            raise RuntimeError(f"expected a (B, H, W, C) input to the window block, got shape {tuple(x.shape)}")
        grid = (int(x.shape[1]), int(x.shape[2]))
        window = tuple(int(s) for s in module.window_size)
        shift = tuple(int(s) for s in module.shift_size)
        self._window_ctx.append((grid, window, shift))

    def _on_block_end(self, module: nn.Module, args: Tuple[Any, ...], output: Any) -> None:
        self._window_ctx.pop()

    # -- context manager ----------------------------------------------------------------------------------
    def __enter__(self) -> AttentionRecorder:
        self.records = []
        try:
            for name, module in self._modules:
                if hasattr(module, "fused_attn"):
                    self._saved_flags[module] = module.fused_attn
                    module.fused_attn = False  # materialise the probabilities (restored in __exit__)
                self._handles.append(module.attn_drop.register_forward_hook(self._on_probs(module)))
                self._handles.append(module.register_forward_pre_hook(self._on_attention_start))
                self._handles.append(module.register_forward_hook(self._on_attention_end(name)))
            self._handles.append(self.model.register_forward_pre_hook(self._on_model_start))
            for module in self.model.modules():
                if _is_window_block(module):
                    self._handles.append(module.register_forward_pre_hook(self._on_block_start))
                    self._handles.append(module.register_forward_hook(self._on_block_end))
        except BaseException:
            self._restore()
            raise
        return self

    def _restore(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        for module, flag in self._saved_flags.items():
            module.fused_attn = flag
        self._saved_flags.clear()
        self._pending.clear()
        self._window_ctx.clear()
        self._batch_size = None
        self._input_grid = None

    def __exit__(self, *exc: Any) -> None:
        self._restore()


def capture_attention(
    model: nn.Module,
    images: torch.Tensor,
    *,
    grid_size: Optional[Tuple[int, int]] = None,
    modules: Optional[Sequence[str]] = None,
    to_cpu: bool = False,
) -> Tuple[Any, List[AttentionRecord]]:
    """Run ``model(images)`` without gradients and return its output and every attention record.

    Args:
        model: The model (left in its current train/eval mode; call ``model.eval()`` first for explanations).
        images: Input batch (B, C, H, W).
        grid_size: Patch grid of ``images``; by default read from the model (ViT-style ``patch_embed``).
        modules: Capture only attention modules whose name starts with one of these prefixes (e.g. ``["blocks"]``).
        to_cpu: Move records to the CPU as they are produced.

    Returns:
        (model output, list of :class:`AttentionRecord` in call order).
    """
    if images.ndim != 4:
        raise ValueError(f"images must be a (B, C, H, W) batch, got shape {tuple(images.shape)}")
    if grid_size is None:
        grid_size = model_token_grid(model, tuple(images.shape[-2:]))
    with torch.no_grad(), AttentionRecorder(model, grid_size=grid_size, to_cpu=to_cpu, include=modules) as recorder:
        output = model(images)
    records = recorder.records
    if not records:
        raise RuntimeError(f"no attention module of {type(model).__name__} ran during the forward pass")
    _logger.debug("captured %d attention maps", len(records))
    return output, records
