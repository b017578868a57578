"""LIFE: the Local InFormation Enhancer, a multi-scale qkv projection for ViT self-attention.

Paper: Akkaya, Kathiresan, Arani, Zonooz, "Enhancing performance of vision transformers on small datasets
through local inductive bias incorporation", Pattern Recognition 2024.

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

Layout: tokens arrive channels-last, (B, N, C). The depthwise conv runs on a channels-last *view* of the
patch tokens (no NCHW copy) and the pointwise convs are ``nn.Linear`` over (B, N, C). Without autograd the
scales are written straight into one output buffer instead of being concatenated; with autograd they are
concatenated once, because the backward pass of in-place slice writes copies the whole gradient per write.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple

import torch
from torch import nn

__all__ = ["LIFE", "split_widths"]


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


class LIFE(nn.Module):
    """Multi-scale qkv projection: a drop-in replacement for ``nn.Linear(dim, 3 * out_dim)``.

    Args:
        dim: Input channels of each token.
        num_prefix_tokens: Tokens at the start of the sequence that are not on the patch grid
            (1 for a class token, 2 with a distillation token, more with register tokens, 0 for none).
        kernel_sizes: Depthwise kernel of each scale after the first, applied in cascade. ``()`` gives a
            plain linear qkv projection. Kernels must be odd so the grid keeps its size.
        qkv_bias: Learnable bias on every projection (the scale-1 linear and the pointwise convs).
        out_dim: Channels of each of q, k and v (default ``dim``).
        norm_layer: If given, a normalisation layer (e.g. ``nn.LayerNorm``) applied to each of q, k and v.
        grid_size: Default (H, W) patch grid, used when ``forward`` gets none. Models set it per input.

    Shapes:
        x: (B, P + H * W, dim) -> (B, P + H * W, 3 * out_dim), laid out [q | k | v].
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
        out_dim = out_dim or dim
        self.dim = dim
        self.out_dim = out_dim
        self.num_prefix_tokens = num_prefix_tokens
        self.kernel_sizes = kernel_sizes
        self.widths = split_widths(out_dim, len(kernel_sizes) + 1)  # (c_1, ..., c_S)
        self.grid_size = grid_size

        c = self.widths
        self.linear = nn.Linear(dim, 3 * c[0], bias=qkv_bias, **dd)  # scale 1
        self.depthwise = nn.ModuleList(
            nn.Conv2d(3 * c[i], 3 * c[i], k, padding=k // 2, groups=3 * c[i], bias=False, **dd)
            for i, k in enumerate(kernel_sizes)
        )
        self.pointwise = nn.ModuleList(
            nn.Linear(3 * c[i], 3 * c[i + 1], bias=qkv_bias, **dd) for i in range(len(kernel_sizes))
        )
        if norm_layer is not None:
            self.q_norm, self.k_norm, self.v_norm = (norm_layer(out_dim, **dd) for _ in range(3))
        else:
            self.q_norm = self.k_norm = self.v_norm = None

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, out_dim={self.out_dim}, widths={self.widths}, "
            f"kernel_sizes={self.kernel_sizes}, num_prefix_tokens={self.num_prefix_tokens}"
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

    # Two ways to assemble [q_1 ... q_S | k_1 ... | v_1 ...], with the same result. Without autograd, every scale is
    # written into one pre-allocated buffer (no concatenation copies). With autograd, in-place writes into slices
    # of a buffer would make every backward slice-copy clone the whole gradient buffer, so the scales are
    # concatenated instead (whose backward only takes views).
    def _project_into_buffer(self, x: torch.Tensor, B: int, N: int, H: int, W: int) -> torch.Tensor:
        P = self.num_prefix_tokens
        out = x.new_empty(B, N, 3, self.out_dim)  # every scale writes its share of q, k and v here
        y = self.linear(x)  # (B, N, 3*c1), scale 1 for every token
        out[..., : self.widths[0]] = y.view(B, N, 3, self.widths[0])
        offset = self.widths[0]
        prefix, patches = y[:, :P], y[:, P:]  # (B, P, 3*c1), (B, H*W, 3*c1)
        for dw, pw, c in zip(self.depthwise, self.pointwise, self.widths[1:]):
            patches = pw(self._depthwise(dw, patches, B, H, W))  # (B, H*W, 3*c)
            out[:, P:, :, offset : offset + c] = patches.view(B, H * W, 3, c)
            if P:
                prefix = pw(prefix)  # (B, P, 3*c): prefix tokens skip the depthwise conv
                out[:, :P, :, offset : offset + c] = prefix.view(B, P, 3, c)
            offset += c
        return out

    def _project_with_cat(self, x: torch.Tensor, B: int, N: int, H: int, W: int) -> torch.Tensor:
        P = self.num_prefix_tokens
        y = self.linear(x)  # (B, N, 3*c1), scale 1 for every token
        scales = [y.view(B, N, 3, self.widths[0])]
        # the prefix as its own (small) tensor, so that autograd does not keep all of y alive for it
        prefix, patches = y[:, :P].contiguous(), y[:, P:]  # (B, P, 3*c1), (B, H*W, 3*c1)
        for dw, pw, c in zip(self.depthwise, self.pointwise, self.widths[1:]):
            patches = pw(self._depthwise(dw, patches, B, H, W))  # (B, H*W, 3*c)
            if P:
                prefix = pw(prefix)  # (B, P, 3*c): prefix tokens skip the depthwise conv
                scales.append(torch.cat((prefix, patches), dim=1).view(B, N, 3, c))
            else:
                scales.append(patches.view(B, N, 3, c))
        return torch.cat(scales, dim=-1) if len(scales) > 1 else scales[0]  # (B, N, 3, D)

    @staticmethod
    def _depthwise(dw: nn.Conv2d, patches: torch.Tensor, B: int, H: int, W: int) -> torch.Tensor:
        """Depthwise conv of (B, H*W, C) patch tokens on their grid, channels-last in and out: (B, H*W, C)."""
        C = patches.shape[-1]
        grid = patches.reshape(B, H, W, C).permute(0, 3, 1, 2)  # (B, C, H, W), a channels-last view
        grid = dw(grid.contiguous(memory_format=torch.channels_last))
        return grid.permute(0, 2, 3, 1).reshape(B, H * W, C)

    def forward(self, x: torch.Tensor, grid_size: Optional[Tuple[int, int]] = None) -> torch.Tensor:
        if x.ndim != 3 or x.shape[-1] != self.dim:
            raise ValueError(f"LIFE expects tokens of shape (B, N, {self.dim}), got {tuple(x.shape)}")
        B, N, _ = x.shape
        H, W = self._grid(N, grid_size)
        D = self.out_dim
        if torch.is_grad_enabled():
            out = self._project_with_cat(x, B, N, H, W)  # (B, N, 3, D)
        else:
            out = self._project_into_buffer(x, B, N, H, W)  # (B, N, 3, D)
        if self.q_norm is not None:
            q, k, v = out.unbind(2)  # each (B, N, D)
            out = torch.stack((self.q_norm(q), self.k_norm(k), self.v_norm(v)), dim=2)
        return out.view(B, N, 3 * D)
