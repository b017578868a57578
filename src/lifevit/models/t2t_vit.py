"""T2T-ViT (Tokens-to-Token ViT, Yuan et al. 2021) with and without LIFE, on timm's ``VisionTransformer``.

The T2T stem (:class:`T2TEmbed`) replaces the patch embedding: the image is *soft split* into overlapping
patches (``nn.Unfold``), each split's tokens go through a light token transformer (a linear-complexity
Performer, :class:`TokenPerformer`) that shrinks them to ``token_dim`` channels, and the re-structurized token
map is soft split again. Three splits with strides 4, 2, 2 give a 14x14 grid at 224 px, the same grid as a
16 px patch ViT. The backbone is timm's ``VisionTransformer`` (T2T-ViT-12: width 256, 12 blocks, 4 heads,
MLP ratio 2, no qkv bias) given the stem as ``embed_layer``; the LIFE version gets ``attn_layer=LIFEAttention``
and :class:`~lifevit.layers.TokenGridMixin` with a :meth:`token_grid` that follows the stem's strides.

How LIFE sits in T2T-ViT-12: LIFE is only in the 12 backbone blocks (the stem Performers stay as they are),
with 1 prefix token (class token). Width 256 is not divisible by 3 scales, so q, k and v are each split
(86, 85, 85) over scales 1, 2, 3 (scale 1 takes the remainder). The 4 heads (64 channels each) therefore
straddle scales: head 0 = scale-1 channels 0-63, head 1 = scale-1 64-85 + scale-2 0-41, and so on, which is
harmless since attention only needs q, k and v in the same channel order. See ``docs/backbones.md`` for the
parameter count compared with the paper.

Position embedding: T2T-ViT adds a fixed (not learned) sinusoidal table. Here the stem adds a fixed 2-D
sin-cos embedding (timm's ``build_sincos2d_pos_embed``) to the patch tokens, computed for the input's grid,
so any input size works; timm's learned ``pos_embed`` is disabled (``pos_embed='none'``). A fixed vector
added to the learned class token would be absorbed by it, so the class token gets none.

Small-image variants keep the stem's kernels (7, 3, 3) but use strides (2, 2, 1): a 32 px CIFAR image gives an
8x8 grid and a 64 px Tiny-ImageNet image a 16x16 grid, the same grids as the patch-4 DeiT variants.

Registered names:

======================  ================  =============  ====================================
name                    stem strides      grid           default input / classes
======================  ================  =============  ====================================
t2t_vit_12[_life]       (4, 2, 2)         14x14          3x224x224 / 1000
t2t_vit_12_32[_life]    (2, 2, 1)         8x8            3x32x32 / 100 (CIFAR)
t2t_vit_12_64[_life]    (2, 2, 1)         16x16          3x64x64 / 200 (Tiny-ImageNet)
======================  ================  =============  ====================================
"""

from __future__ import annotations

import math
from typing import Any, Dict, Optional, Sequence, Tuple, Type, Union

import torch
from timm.layers import Mlp, build_sincos2d_pos_embed, to_2tuple
from timm.models import generate_default_cfgs
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from ..layers import LIFEAttention, TokenGridMixin
from ._registry import cfg, register, small_image_cfg, with_notes
from .vit import create_vit

__all__ = ["TokenPerformer", "T2TEmbed", "T2TVisionTransformer", "LIFET2TVisionTransformer"]


class TokenPerformer(nn.Module):
    """Single-head token transformer with linear-complexity Performer attention (FAVOR+ positive features).

    Softmax attention ``exp(q.k)`` is approximated with random features ``phi(x) = exp(W x - |x|^2 / 2) / sqrt(m)``
    (``W``: ``m`` fixed orthogonal random directions), so ``softmax(q k^T) v ~= phi(q) (phi(k)^T v) / (phi(q)
    sum_j phi(k_j))``, linear in the number of tokens. The channel count changes from ``dim`` to ``out_dim``, so
    the attention's residual path carries ``v`` (as in T2T-ViT) instead of the input.

    Args:
        dim: Input token channels (``in_chans * kernel**2`` after a soft split).
        out_dim: Output token channels.
        kernel_ratio: Random features per output channel (``m = out_dim * kernel_ratio``).
        mlp_ratio: MLP hidden width over ``out_dim``.

    Shapes:
        x: (B, N, dim) -> (B, N, out_dim)
    """

    def __init__(
        self, dim: int, out_dim: int, kernel_ratio: float = 0.5, mlp_ratio: float = 1.0, device=None, dtype=None
    ) -> None:
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.out_dim = out_dim
        self.num_features = max(1, int(out_dim * kernel_ratio))
        self.norm1 = nn.LayerNorm(dim, **dd)
        self.kqv = nn.Linear(dim, 3 * out_dim, **dd)
        self.proj = nn.Linear(out_dim, out_dim, **dd)
        self.norm2 = nn.LayerNorm(out_dim, **dd)
        self.mlp = Mlp(out_dim, int(out_dim * mlp_ratio), out_dim, **dd)
        # fixed random projection: saved with the model so a checkpoint reproduces its outputs, never trained
        self.register_buffer("features", torch.empty(self.num_features, out_dim, **dd))
        self.reset_features()

    @torch.no_grad()
    def reset_features(self) -> None:
        """Draw new orthogonal random feature directions, scaled by sqrt(m) as in Performer."""
        w = torch.empty(self.num_features, self.out_dim, device=self.features.device)
        nn.init.orthogonal_(w)
        self.features.copy_(w * math.sqrt(self.num_features))

    def reset_parameters(self) -> None:
        """Re-draw the random features (timm's ``init_weights(needs_reset=True)`` calls this)."""
        self.reset_features()

    def _positive_features(self, x: torch.Tensor) -> torch.Tensor:
        half_sq_norm = x.pow(2).sum(-1, keepdim=True) / 2  # (B, N, 1)
        proj = x @ self.features.t()  # (B, N, m)
        return torch.exp(proj - half_sq_norm) / math.sqrt(self.num_features)

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        k, q, v = self.kqv(x).chunk(3, dim=-1)  # each (B, N, out_dim)
        phi_q, phi_k = self._positive_features(q), self._positive_features(k)  # (B, N, m)
        kv = phi_k.transpose(1, 2) @ v  # (B, m, out_dim)
        normaliser = phi_q @ phi_k.sum(1, keepdim=True).transpose(1, 2)  # (B, N, 1)
        y = (phi_q @ kv) / (normaliser + 1e-8)  # (B, N, out_dim)
        return v + self.proj(y)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.attention(self.norm1(x))
        return x + self.mlp(self.norm2(x))


def _conv_out(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


def _check_img_size(H: int, W: int, img_size: Tuple[int, int]) -> None:
    """Refuse an input of another size than ``img_size``; inside an FX trace the check becomes a graph node."""
    if not torch.jit.is_scripting():  # TorchScript compiles no torch.fx types
        if isinstance(H, torch.fx.Proxy) or isinstance(W, torch.fx.Proxy):
            torch._assert(
                (H == img_size[0]) & (W == img_size[1]), f"T2TEmbed expects {img_size[0]}x{img_size[1]} images"
            )
            return
    if H != img_size[0] or W != img_size[1]:
        raise ValueError(f"T2TEmbed expects {img_size[0]}x{img_size[1]} images, got {H}x{W}")


class T2TEmbed(nn.Module):
    """Tokens-to-Token stem: soft split -> token Performer -> re-structurize, repeated, then a linear projection.

    Has the interface timm's ``VisionTransformer`` expects of an ``embed_layer`` (``img_size``, ``patch_size``,
    ``grid_size``, ``num_patches``, ``feat_ratio``, ``dynamic_feat_size``, ``output_fmt``), and adds a fixed
    2-D sin-cos position embedding to its tokens.

    Args:
        img_size: Default input size.
        patch_size: Ignored (the strides define the reduction); accepted for timm's ``embed_layer`` call.
        in_chans: Input channels.
        embed_dim: Output token channels (the backbone width).
        token_dim: Channels of the tokens inside the stem.
        kernel_sizes: Soft-split kernel of each of the three splits.
        strides: Soft-split stride of each split.
        paddings: Soft-split zero padding of each split (default ``kernel // 2``, the T2T paper's (2, 1, 1) at
            224 px with kernels (7, 3, 3) and strides (4, 2, 2) gives the same 14x14 grid).
        output_fmt: ``'NLC'`` (B, N, C) or ``'NHWC'`` (B, H, W, C, what timm asks for with ``dynamic_img_size``).
        strict_img_size: Require inputs of ``img_size``.

    Shapes:
        x: (B, in_chans, H, W) -> (B, H' * W', embed_dim) or (B, H', W', embed_dim)
    """

    def __init__(
        self,
        img_size: Union[int, Tuple[int, int]] = 224,
        patch_size: Any = None,
        in_chans: int = 3,
        embed_dim: int = 256,
        token_dim: int = 64,
        kernel_sizes: Sequence[int] = (7, 3, 3),
        strides: Sequence[int] = (4, 2, 2),
        paddings: Optional[Sequence[int]] = None,
        output_fmt: str = "NLC",
        strict_img_size: bool = True,
        bias: bool = True,
        dynamic_img_pad: bool = False,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        if not (len(kernel_sizes) == len(strides) == 3):
            raise ValueError(f"T2TEmbed needs 3 kernel sizes and 3 strides, got {kernel_sizes} and {strides}")
        if dynamic_img_pad:
            raise ValueError("T2TEmbed does not support dynamic_img_pad=True (soft splits pad themselves)")
        if output_fmt not in ("NLC", "NHWC"):
            raise ValueError(f"output_fmt must be 'NLC' or 'NHWC', got {output_fmt!r}")
        if embed_dim % 4:
            raise ValueError(
                f"embed_dim must be divisible by 4 for the 2-D sin-cos position embedding, got {embed_dim}"
            )
        paddings = tuple(k // 2 for k in kernel_sizes) if paddings is None else tuple(paddings)
        self.kernel_sizes, self.strides, self.paddings = tuple(kernel_sizes), tuple(strides), paddings
        self.img_size = to_2tuple(img_size)
        self.patch_size = (math.prod(strides),) * 2  # overall reduction, reported like a patch size
        self.grid_size = self.dynamic_feat_size(self.img_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.output_fmt = output_fmt
        self.strict_img_size = strict_img_size
        self.embed_dim = embed_dim

        k = self.kernel_sizes
        self.soft_splits = nn.ModuleList(
            nn.Unfold(k[i], stride=s, padding=p) for i, (s, p) in enumerate(zip(strides, paddings))
        )
        self.token_layers = nn.ModuleList(
            [
                TokenPerformer(in_chans * k[0] ** 2, token_dim, **dd),
                TokenPerformer(token_dim * k[1] ** 2, token_dim, **dd),
            ]
        )
        self.proj = nn.Linear(token_dim * k[2] ** 2, embed_dim, **dd)

    def feat_ratio(self, as_scalar: bool = True) -> Union[int, Tuple[int, int]]:
        return self.patch_size[0] if as_scalar else self.patch_size

    def dynamic_feat_size(self, img_size: Tuple[int, int]) -> Tuple[int, int]:
        """Token grid (H', W') for an input of ``img_size``."""
        h, w = int(img_size[0]), int(img_size[1])
        for k, s, p in zip(self.kernel_sizes, self.strides, self.paddings):
            h, w = _conv_out(h, k, s, p), _conv_out(w, k, s, p)
        return h, w

    def set_input_size(
        self,
        img_size: Optional[Union[int, Tuple[int, int]]] = None,
        patch_size: Optional[Union[int, Tuple[int, int]]] = None,
    ) -> None:
        """Change the default input size (timm's ``set_input_size`` protocol; nothing to resample: the stem has
        no per-position weights). The reduction is set by the soft-split strides, so ``patch_size`` must stay."""
        if patch_size is not None and to_2tuple(patch_size) != self.patch_size:
            raise ValueError(
                f"T2TEmbed's reduction is fixed by its strides {self.strides} (patch size {self.patch_size}); "
                f"got patch_size={patch_size}"
            )
        if img_size is not None:
            self.img_size = to_2tuple(img_size)
            self.grid_size = self.dynamic_feat_size(self.img_size)
            self.num_patches = self.grid_size[0] * self.grid_size[1]

    def __prepare_scriptable__(self):
        raise RuntimeError(
            "T2T-ViT does not support TorchScript (deprecated in PyTorch 2.x): its position embedding uses timm's "
            "build_sincos2d_pos_embed, which cannot be scripted; use torch.export, ONNX or FX instead"
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, H, W = x.shape[0], x.shape[-2], x.shape[-1]  # no tuple unpacking: FX traces this
        if self.strict_img_size:
            _check_img_size(H, W, self.img_size)
            H, W = self.img_size  # static sizes from here on: the token grid is a constant of the traced graph
        h, w = H, W
        for i, split in enumerate(self.soft_splits):
            k, s, p = self.kernel_sizes[i], self.strides[i], self.paddings[i]
            x = split(x)  # (B, C * k * k, L)
            h, w = _conv_out(h, k, s, p), _conv_out(w, k, s, p)
            x = x.transpose(1, 2)  # (B, L, C * k * k)
            if i < len(self.token_layers):
                x = self.token_layers[i](x)  # (B, L, token_dim)
                x = x.transpose(1, 2).reshape(B, -1, h, w)  # (B, token_dim, h, w): re-structurize
        x = self.proj(x)  # (B, h * w, embed_dim)
        pos = build_sincos2d_pos_embed((h, w), self.embed_dim, device=x.device, dtype=x.dtype)  # (h * w, C)
        x = x + pos.unsqueeze(0)
        if self.output_fmt == "NHWC":
            x = x.reshape(B, h, w, -1)  # (B, h, w, embed_dim)
        return x


class T2TVisionTransformer(VisionTransformer):
    """timm ``VisionTransformer`` with the T2T stem and no learned position embedding.

    Args:
        token_dim: Channels inside the T2T stem.
        t2t_kernel_sizes: Soft-split kernels.
        t2t_strides: Soft-split strides.
        **kwargs: Passed to ``VisionTransformer`` (``embed_dim``, ``depth``, ``num_heads``, ``attn_layer``, ...).
    """

    def __init__(
        self,
        *args,
        token_dim: int = 64,
        t2t_kernel_sizes: Sequence[int] = (7, 3, 3),
        t2t_strides: Sequence[int] = (4, 2, 2),
        **kwargs,
    ) -> None:
        def embed_layer(**embed_kwargs):
            return T2TEmbed(token_dim=token_dim, kernel_sizes=t2t_kernel_sizes, strides=t2t_strides, **embed_kwargs)

        kwargs.setdefault("pos_embed", "none")
        super().__init__(*args, embed_layer=embed_layer, **kwargs)


class LIFET2TVisionTransformer(TokenGridMixin, T2TVisionTransformer):
    """T2T-ViT whose backbone attention uses LIFE; the LIFE grid follows the T2T stem's strides."""

    def __init__(self, *args, attn_layer: Type[LIFEAttention] = LIFEAttention, **kwargs) -> None:
        super().__init__(*args, attn_layer=attn_layer, **kwargs)

    def token_grid(self, img_size: Tuple[int, int]) -> Tuple[int, int]:
        pe = self.patch_embed
        if pe.strict_img_size:  # the stem refuses other sizes: the grid is static (and FX-traceable)
            return tuple(pe.grid_size)
        return pe.dynamic_feat_size((int(img_size[0]), int(img_size[1])))


def _t2t_cfg(res: int = 224) -> Dict[str, Any]:
    # fixed size as for timm's ViTs (the stem refuses other sizes unless dynamic_img_size=True); the first layer
    # that sees pixels is the first token Performer's projection
    extra = dict(fixed_input_size=True, first_conv="patch_embed.token_layers.0.kqv")
    return cfg(**extra) if res == 224 else small_image_cfg(res, **extra)


default_cfgs = generate_default_cfgs(
    with_notes(
        {
            **{f"t2t_vit_12{suffix}": _t2t_cfg() for suffix in ("", "_life")},
            **{f"t2t_vit_12_{res}{suffix}": _t2t_cfg(res) for res in (32, 64) for suffix in ("", "_life")},
        }
    )
)

_T2T_12: Dict[str, Any] = dict(embed_dim=256, depth=12, num_heads=4, mlp_ratio=2.0, qkv_bias=False, token_dim=64)
_SMALL_STRIDES: Dict[str, Any] = dict(t2t_strides=(2, 2, 1))


def _t2t(variant: str, model_cls: type, pretrained: bool, arch: Dict[str, Any], kwargs: Dict[str, Any]):
    return create_vit(variant, model_cls, pretrained, **dict(arch, **kwargs))


@register
def t2t_vit_12(pretrained: bool = False, **kwargs) -> VisionTransformer:
    return _t2t("t2t_vit_12", T2TVisionTransformer, pretrained, dict(img_size=224, **_T2T_12), kwargs)


@register
def t2t_vit_12_life(pretrained: bool = False, **kwargs) -> VisionTransformer:
    return _t2t("t2t_vit_12_life", LIFET2TVisionTransformer, pretrained, dict(img_size=224, **_T2T_12), kwargs)


@register
def t2t_vit_12_32(pretrained: bool = False, **kwargs) -> VisionTransformer:
    arch = dict(img_size=32, **_T2T_12, **_SMALL_STRIDES)
    return _t2t("t2t_vit_12_32", T2TVisionTransformer, pretrained, arch, kwargs)


@register
def t2t_vit_12_32_life(pretrained: bool = False, **kwargs) -> VisionTransformer:
    arch = dict(img_size=32, **_T2T_12, **_SMALL_STRIDES)
    return _t2t("t2t_vit_12_32_life", LIFET2TVisionTransformer, pretrained, arch, kwargs)


@register
def t2t_vit_12_64(pretrained: bool = False, **kwargs) -> VisionTransformer:
    arch = dict(img_size=64, **_T2T_12, **_SMALL_STRIDES)
    return _t2t("t2t_vit_12_64", T2TVisionTransformer, pretrained, arch, kwargs)


@register
def t2t_vit_12_64_life(pretrained: bool = False, **kwargs) -> VisionTransformer:
    arch = dict(img_size=64, **_T2T_12, **_SMALL_STRIDES)
    return _t2t("t2t_vit_12_64_life", LIFET2TVisionTransformer, pretrained, arch, kwargs)
