"""SwinV2 with LIFE in every window attention, on timm's ``SwinTransformerV2``.

timm's ``WindowAttention`` projects the tokens of one window with ``qkv`` (a bias-free linear layer) plus
learned ``q_bias`` and ``v_bias`` (and a zero, non-learned key bias); with ``q_bias`` set to ``None`` its
forward pass calls ``self.qkv(x)`` alone. :class:`LIFEWindowAttention` uses exactly that path: ``qkv`` becomes a
:class:`~lifevit.layers.LIFE` with its own biases (q, k and v, as in every LIFE), ``q_bias``/``v_bias`` and the
``k_bias`` buffer are removed, and everything else (cosine attention, continuous position bias, masks) is timm's
code, unchanged. No parameter of the original projection is left behind unused.

Per-window LIFE (as in the paper): each window of ``window_size`` tokens is its own sequence, so LIFE works
on a ``window_size`` grid with no prefix tokens and its depthwise convolutions zero-pad at the window border.
Nothing crosses a window border, so the windows of a block stay independent and the cost stays linear in the
image size.

Shifted windows: in odd blocks timm rolls the feature map by half a window before partitioning, and masks
attention between tokens that came from different sides of the roll. The mask applies to the attention
logits only; LIFE's convolutions run on the window as it is laid out after the roll. So in the windows on the
bottom and right border of a shifted block a convolution can mix tokens that are adjacent in the rolled map
but come from opposite edges of the image (it behaves as a circular padding of the image there), while
interior windows see true neighbours. Inside every window, shifted or not, outputs depend only on tokens of
the same window. ``tests/models/test_swinv2.py`` checks both statements.

When the feature map of a stage is smaller than the window, timm shrinks the window to the feature map;
:meth:`LIFEWindowAttention.set_window_size` keeps LIFE's grid equal to the window in use.

Registered names (the plain 256 px model is timm's own ``swinv2_tiny_window8_256``):

==================================  =====  ======  =============================================
name                                patch  window  default input / classes
==================================  =====  ======  =============================================
swinv2_tiny_window8_256_life        4      8       3x256x256 / 1000
swinv2_tiny_patch1_window8_32[_life]  1    8       3x32x32 / 100 (CIFAR), stages 32/16/8/4 px
swinv2_tiny_patch1_window8_64[_life]  1    8       3x64x64 / 200 (Tiny-ImageNet), stages 64/32/16/8 px
==================================  =====  ======  =============================================

The small versions follow the reference LIFE release (patch size 1, window 8); in the last stage of the 32 px
model the 4x4 feature map is smaller than the window, so that stage attends over the whole map, unshifted.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Dict, Optional, Sequence, Tuple

from timm.layers import to_2tuple
from timm.models import build_model_with_cfg, generate_default_cfgs
from timm.models.swin_transformer_v2 import SwinTransformerV2, WindowAttention, checkpoint_filter_fn

from ..layers import LIFE
from ._registry import cfg, check_pretrained, register, small_image_cfg, with_notes

__all__ = ["LIFEWindowAttention", "LIFESwinTransformerV2", "create_swinv2"]


class LIFEWindowAttention(WindowAttention):
    """timm SwinV2 ``WindowAttention`` whose qkv projection (weight and q/v biases) is one LIFE over the window.

    Build one from an existing ``WindowAttention`` with :meth:`from_window_attention`; timm's blocks construct
    their attention themselves, so :class:`LIFESwinTransformerV2` converts them after construction.
    """

    qkv: LIFE

    @classmethod
    def from_window_attention(
        cls, attn: WindowAttention, kernel_sizes: Sequence[int] = (3, 5), life_options: Optional[Dict[str, Any]] = None
    ) -> LIFEWindowAttention:
        """Turn ``attn`` into a :class:`LIFEWindowAttention` in place (freshly initialised LIFE) and return it.

        The LIFE has biases when ``attn`` had ``q_bias``/``v_bias``. The old projection's weights are dropped;
        :func:`lifevit.lifeify` initialises the LIFE from them instead.
        """
        if isinstance(attn, LIFEWindowAttention):
            raise ValueError("this WindowAttention already uses LIFE")
        if not isinstance(attn, WindowAttention):
            raise ValueError(f"expected a timm SwinV2 WindowAttention, got {type(attn).__name__}")
        weight = attn.qkv.weight
        attn.qkv = LIFE(
            attn.dim,
            num_prefix_tokens=0,
            kernel_sizes=kernel_sizes,
            qkv_bias=attn.q_bias is not None,
            grid_size=tuple(attn.window_size),
            **(life_options or {}),
            device=weight.device,
            dtype=weight.dtype,
        )
        # LIFE carries the biases now; timm's forward takes the bias-free path when q_bias is None
        for name in ("q_bias", "v_bias"):
            if name in attn._parameters:
                del attn._parameters[name]
            attn.register_parameter(name, None)
        attn.register_buffer("k_bias", None, persistent=False)
        attn.qkv_bias_separate = False
        attn.__class__ = cls
        return attn

    def set_window_size(self, window_size: Tuple[int, int]) -> None:
        super().set_window_size(window_size)
        self.qkv.grid_size = tuple(to_2tuple(self.window_size))


class LIFESwinTransformerV2(SwinTransformerV2):
    """timm ``SwinTransformerV2`` with :class:`LIFEWindowAttention` in every block.

    Args:
        life_kernel_sizes: LIFE depthwise kernels after scale 1.
        life_options: Further LIFE options (``pointwise_bias``, ``pointwise_init``, ``shared_norm``).
        **kwargs: Passed to ``SwinTransformerV2``.
    """

    def __init__(
        self, *args, life_kernel_sizes: Sequence[int] = (3, 5), life_options: Optional[Dict[str, Any]] = None, **kwargs
    ) -> None:
        super().__init__(*args, **kwargs)
        init = partial(self._init_weights, needs_reset=False)  # timm's init: trunc-normal linears, zero biases
        for stage in self.layers:
            for block in stage.blocks:
                attn = LIFEWindowAttention.from_window_attention(block.attn, life_kernel_sizes, life_options)
                attn.qkv.apply(init)

    def __prepare_scriptable__(self):
        raise RuntimeError(
            f"{type(self).__name__} uses LIFE, which does not support TorchScript (deprecated in PyTorch 2.x); "
            "use torch.export.export, torch.onnx.export, torch.compile or FX (timm.models.create_feature_extractor)"
        )


def create_swinv2(variant: str, model_cls: type, pretrained: bool = False, **kwargs: Any) -> SwinTransformerV2:
    """Build a SwinV2 variant with timm's builder (``features_only`` and kwargs defaults work as for timm's)."""
    check_pretrained(
        variant,
        pretrained,
        kwargs,
        hint="To start from ImageNet weights, create timm's swinv2_tiny_window8_256 with pretrained=True and "
        "convert it with lifevit.lifeify(model).",
    )
    if ("life_kernel_sizes" in kwargs or "life_options" in kwargs) and not issubclass(model_cls, LIFESwinTransformerV2):
        raise ValueError(f"life_kernel_sizes / life_options given for {variant!r}, which has no LIFE layers")
    depths = kwargs.get("depths", (1, 1, 1, 1))
    out_indices = kwargs.pop("out_indices", tuple(range(len(depths))))
    return build_model_with_cfg(
        model_cls,
        variant,
        pretrained=pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(flatten_sequential=True, out_indices=out_indices),
        **kwargs,
    )


def _swin_cfg(res: int, patch_size: int) -> Dict[str, Any]:
    # the last of the 4 stages has reduction 8 * patch_size: that is the unpooled feature map (pool_size)
    side = res // (8 * patch_size)
    extra = dict(classifier="head.fc", fixed_input_size=True, pool_size=(side, side))
    if res in (32, 64):
        return small_image_cfg(res, **extra)
    return cfg(input_size=(3, res, res), crop_pct=0.9, **extra)


default_cfgs = generate_default_cfgs(
    with_notes(
        {
            "swinv2_tiny_window8_256_life": _swin_cfg(256, patch_size=4),
            **{
                f"swinv2_tiny_patch1_window8_{res}{suffix}": _swin_cfg(res, patch_size=1)
                for res in (32, 64)
                for suffix in ("", "_life")
            },
        }
    )
)

_TINY: Dict[str, Any] = dict(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), window_size=8)


def _swin(variant: str, model_cls: type, pretrained: bool, arch: Dict[str, Any], kwargs: Dict[str, Any]):
    return create_swinv2(variant, model_cls, pretrained, **dict(arch, **kwargs))


@register
def swinv2_tiny_window8_256_life(pretrained: bool = False, **kwargs) -> SwinTransformerV2:
    arch = dict(img_size=256, patch_size=4, **_TINY)
    return _swin("swinv2_tiny_window8_256_life", LIFESwinTransformerV2, pretrained, arch, kwargs)


@register
def swinv2_tiny_patch1_window8_32(pretrained: bool = False, **kwargs) -> SwinTransformerV2:
    arch = dict(img_size=32, patch_size=1, **_TINY)
    return _swin("swinv2_tiny_patch1_window8_32", SwinTransformerV2, pretrained, arch, kwargs)


@register
def swinv2_tiny_patch1_window8_32_life(pretrained: bool = False, **kwargs) -> SwinTransformerV2:
    arch = dict(img_size=32, patch_size=1, **_TINY)
    return _swin("swinv2_tiny_patch1_window8_32_life", LIFESwinTransformerV2, pretrained, arch, kwargs)


@register
def swinv2_tiny_patch1_window8_64(pretrained: bool = False, **kwargs) -> SwinTransformerV2:
    arch = dict(img_size=64, patch_size=1, **_TINY)
    return _swin("swinv2_tiny_patch1_window8_64", SwinTransformerV2, pretrained, arch, kwargs)


@register
def swinv2_tiny_patch1_window8_64_life(pretrained: bool = False, **kwargs) -> SwinTransformerV2:
    arch = dict(img_size=64, patch_size=1, **_TINY)
    return _swin("swinv2_tiny_patch1_window8_64_life", LIFESwinTransformerV2, pretrained, arch, kwargs)
