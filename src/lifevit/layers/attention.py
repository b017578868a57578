"""Self-attention whose qkv projection is LIFE, and the glue that tells LIFE layers their token grid.

``LIFEAttention`` is timm's ``Attention`` with ``self.qkv`` replaced by :class:`~lifevit.layers.life.LIFE`;
the forward pass (fused or explicit attention, qk-norm, gating) is timm's, unchanged. Give it to any timm
block or model as ``attn_layer=LIFEAttention`` (or ``LIFEAttention.bind(kernel_sizes=...)`` for other
kernels). A LIFE layer needs the patch grid of the current input; :class:`TokenGridMixin` sets it from the
image size at the start of every forward pass, so ``dynamic_img_size`` and non-square inputs work.
"""

from __future__ import annotations

from typing import Any, Dict, Iterator, Optional, Sequence, Tuple

import torch
from timm.layers import Attention
from torch import nn

from .life import LIFE, LIFE_OPTIONS

__all__ = ["LIFEAttention", "TokenGridMixin", "life_layers", "set_token_layout"]


class LIFEAttention(Attention):
    """timm ``Attention`` with a LIFE qkv projection.

    Args:
        dim: Token channels.
        num_heads: Attention heads.
        num_prefix_tokens: Prefix tokens in the sequence (models overwrite this with their own count).
        kernel_sizes: LIFE depthwise kernels after scale 1 (class default ``(3, 5)``, see :meth:`bind`).
        qkv_norm: Apply LayerNorm to each of q, k and v inside LIFE.
        life_options: LIFE's ``pointwise_bias``, ``pointwise_init`` and ``shared_norm`` (class default
            ``default_life_options``, see :meth:`bind`; ``lifevit.layers.RELEASE_OPTIONS`` reproduces the release).
        **kwargs: Passed to timm's ``Attention`` (``qkv_bias``, ``qk_norm``, ``attn_drop``, ...).
    """

    default_kernel_sizes: Tuple[int, ...] = (3, 5)
    default_qkv_norm: bool = False
    default_life_options: Dict[str, Any] = {}

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        num_prefix_tokens: int = 1,
        kernel_sizes: Optional[Sequence[int]] = None,
        qkv_norm: Optional[bool] = None,
        qkv_bias: bool = False,
        life_options: Optional[Dict[str, Any]] = None,
        **kwargs,
    ) -> None:
        super().__init__(dim, num_heads=num_heads, qkv_bias=qkv_bias, **kwargs)
        kernel_sizes = self.default_kernel_sizes if kernel_sizes is None else kernel_sizes
        qkv_norm = self.default_qkv_norm if qkv_norm is None else qkv_norm
        self.qkv = LIFE(
            dim,
            num_prefix_tokens=num_prefix_tokens,
            kernel_sizes=kernel_sizes,
            qkv_bias=qkv_bias,
            out_dim=self.attn_dim,
            norm_layer=nn.LayerNorm if qkv_norm else None,
            **{**self.default_life_options, **(life_options or {})},
            device=kwargs.get("device"),
            dtype=kwargs.get("dtype"),
        )

    @classmethod
    def bind(
        cls, kernel_sizes: Sequence[int] = (3, 5), qkv_norm: bool = False, **life_options: Any
    ) -> type[LIFEAttention]:
        """A subclass with other LIFE defaults, for places that take an attention *class* (timm's ``attn_layer``).

        ``life_options``: any of LIFE's ``pointwise_bias``, ``pointwise_init``, ``shared_norm``.
        """
        unknown = sorted(set(life_options) - set(LIFE_OPTIONS))
        if unknown:
            raise ValueError(f"LIFE options are {', '.join(LIFE_OPTIONS)}; got unknown {', '.join(unknown)}")
        ks = tuple(int(k) for k in kernel_sizes)
        opts = "".join(f"_{k}_{v}" for k, v in sorted(life_options.items()))
        name = f"LIFEAttention_k{'_'.join(map(str, ks)) or 'none'}{'_norm' if qkv_norm else ''}{opts}"
        attrs = {"default_kernel_sizes": ks, "default_qkv_norm": bool(qkv_norm), "default_life_options": life_options}
        return type(name, (cls,), attrs)


def life_layers(module: nn.Module) -> Iterator[LIFE]:
    """Every LIFE layer inside ``module``."""
    return (m for m in module.modules() if isinstance(m, LIFE))


def set_token_layout(
    module: nn.Module, grid_size: Optional[Tuple[int, int]] = None, num_prefix_tokens: Optional[int] = None
) -> None:
    """Tell every LIFE layer in ``module`` the patch grid (H, W) and/or the number of prefix tokens."""
    for layer in life_layers(module):
        if grid_size is not None:
            layer.grid_size = (int(grid_size[0]), int(grid_size[1]))
        if num_prefix_tokens is not None:
            layer.num_prefix_tokens = int(num_prefix_tokens)


class TokenGridMixin:
    """For timm ViT-style models (``patch_embed``, ``num_prefix_tokens``) whose attention uses LIFE.

    At construction it gives every LIFE layer the model's prefix-token count; at every
    ``forward_features`` / ``forward_intermediates`` it gives them the patch grid of the input image.
    Models with another stem override :meth:`token_grid`.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        set_token_layout(self, self.token_grid(self.patch_embed.img_size), self.num_prefix_tokens)

    def token_grid(self, img_size: Tuple[int, int]) -> Tuple[int, int]:
        """Patch grid (H, W) for an input image of size ``img_size``."""
        pe = self.patch_embed
        if getattr(self, "dynamic_img_size", False):
            return tuple(pe.dynamic_feat_size(tuple(img_size)))
        return tuple(pe.grid_size)

    def forward_features(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        set_token_layout(self, self.token_grid(x.shape[-2:]))
        return super().forward_features(x, *args, **kwargs)

    def forward_intermediates(self, x: torch.Tensor, *args, **kwargs):
        set_token_layout(self, self.token_grid(x.shape[-2:]))
        return super().forward_intermediates(x, *args, **kwargs)

    def set_input_size(self, *args, **kwargs) -> None:
        """timm's ``set_input_size``, then the LIFE layers get the new default grid."""
        super().set_input_size(*args, **kwargs)
        set_token_layout(self, self.token_grid(self.patch_embed.img_size))

    def __prepare_scriptable__(self):
        raise RuntimeError(
            f"{type(self).__name__} uses LIFE, which does not support TorchScript (deprecated in PyTorch 2.x); "
            "use torch.export.export, torch.onnx.export, torch.compile or FX (timm.models.create_feature_extractor)"
        )
