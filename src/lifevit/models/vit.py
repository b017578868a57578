"""DeiT / ViT models with and without LIFE, registered in timm's registry.

The LIFE versions are timm's own ``VisionTransformer`` / ``VisionTransformerDistilled`` built with
``attn_layer=LIFEAttention`` plus :class:`~lifevit.layers.TokenGridMixin`, which tells the LIFE layers the
patch grid. Small-image variants (CIFAR 32 px, Tiny-ImageNet 64 px, Fashion-MNIST 28 px) use patch size 4.

Registered names (``timm.create_model(name, ...)`` after ``import lifevit``):

=================================  ======  =====  =====  ======  ======================================
name                               width   depth  heads  patch   default input / classes
=================================  ======  =====  =====  ======  ======================================
deit_{tiny,small,base}_patch16_224_life      192/384/768 12  3/6/12  16    3x224x224 / 1000
deit_{tiny,small}_distilled_patch16_224_life 192/384     12  3/6     16    3x224x224 / 1000
deit_{tiny,small}_patch4_32[_life]           192/384     12  3/6     4     3x32x32 / 100 (CIFAR)
deit_{tiny,small}_patch4_64[_life]           192/384     12  3/6     4     3x64x64 / 200 (Tiny-ImageNet)
vit_lite_patch4_28[_life]                    96          6   3       4     1x28x28 / 10 (Fashion-MNIST)
=================================  ======  =====  =====  ======  ======================================
"""

from __future__ import annotations

from typing import Any, Dict, Type

from timm.models import build_model_with_cfg, generate_default_cfgs
from timm.models.deit import VisionTransformerDistilled
from timm.models.vision_transformer import VisionTransformer

from ..data.fashion_mnist import FASHION_MNIST_MEAN, FASHION_MNIST_STD
from ..layers import LIFEAttention, TokenGridMixin
from ._registry import cfg, check_pretrained, register, small_image_cfg, with_notes

__all__ = ["LIFEVisionTransformer", "LIFEVisionTransformerDistilled", "create_vit"]


class LIFEVisionTransformer(TokenGridMixin, VisionTransformer):
    """timm ``VisionTransformer`` whose attention layers use LIFE (``attn_layer=LIFEAttention`` by default)."""

    def __init__(self, *args, attn_layer: Type[LIFEAttention] = LIFEAttention, **kwargs) -> None:
        super().__init__(*args, attn_layer=attn_layer, **kwargs)


class LIFEVisionTransformerDistilled(TokenGridMixin, VisionTransformerDistilled):
    """timm ``VisionTransformerDistilled`` (class + distillation token) whose attention layers use LIFE."""

    def __init__(self, *args, attn_layer: Type[LIFEAttention] = LIFEAttention, **kwargs) -> None:
        super().__init__(*args, attn_layer=attn_layer, **kwargs)


def create_vit(variant: str, model_cls: type, pretrained: bool = False, **kwargs: Any) -> VisionTransformer:
    """Build a ViT variant with timm's builder (pretrained config, ``features_only``, kwargs defaults).

    ``life_kernel_sizes`` and ``life_options`` (optional; a dict of LIFE's ``pointwise_bias``, ``pointwise_init``,
    ``shared_norm``, ``prefix_keys_from_scale1``, e.g. ``lifevit.layers.RELEASE_OPTIONS``) configure the LIFE layers
    of the LIFE classes.
    """
    check_pretrained(
        variant,
        pretrained,
        kwargs,
        hint="To start from ImageNet weights, create the plain timm model with pretrained=True and convert it "
        "with lifevit.lifeify(model).",
    )
    kernel_sizes = kwargs.pop("life_kernel_sizes", None)
    life_options = kwargs.pop("life_options", None)
    if kernel_sizes is not None or life_options is not None:
        if not issubclass(model_cls, TokenGridMixin):
            raise ValueError(f"life_kernel_sizes / life_options given for {variant!r}, which has no LIFE layers")
        if life_options is not None and not isinstance(life_options, dict):
            raise ValueError(f"life_options must be a mapping of LIFE options, got {life_options!r}")
        bind_kernels = (3, 5) if kernel_sizes is None else kernel_sizes
        kwargs["attn_layer"] = LIFEAttention.bind(kernel_sizes=bind_kernels, **(life_options or {}))
    out_indices = kwargs.pop("out_indices", 3)
    return build_model_with_cfg(
        model_cls,
        variant,
        pretrained=pretrained,
        feature_cfg=dict(out_indices=out_indices, feature_cls="getter"),
        **kwargs,
    )


def _vit_cfg(**kwargs) -> Dict[str, Any]:
    # a ViT takes its native size only (a learned position embedding per patch), as timm's ViT/DeiT configs say
    return cfg(fixed_input_size=True, **kwargs)


default_cfgs = generate_default_cfgs(
    with_notes(
        {
            "deit_tiny_patch16_224_life": _vit_cfg(),
            "deit_small_patch16_224_life": _vit_cfg(),
            "deit_base_patch16_224_life": _vit_cfg(),
            "deit_tiny_distilled_patch16_224_life": _vit_cfg(classifier=("head", "head_dist")),
            "deit_small_distilled_patch16_224_life": _vit_cfg(classifier=("head", "head_dist")),
            **{
                f"deit_{size}_patch4_{res}{suffix}": small_image_cfg(res, fixed_input_size=True)
                for size in ("tiny", "small")
                for res in (32, 64)
                for suffix in ("", "_life")
            },
            **{
                f"vit_lite_patch4_28{suffix}": _vit_cfg(
                    input_size=(1, 28, 28), num_classes=10, mean=FASHION_MNIST_MEAN, std=FASHION_MNIST_STD
                )
                for suffix in ("", "_life")
            },
        }
    )
)

_TINY: Dict[str, Any] = dict(embed_dim=192, depth=12, num_heads=3)
_SMALL: Dict[str, Any] = dict(embed_dim=384, depth=12, num_heads=6)
_BASE: Dict[str, Any] = dict(embed_dim=768, depth=12, num_heads=12)
_LITE: Dict[str, Any] = dict(embed_dim=96, depth=6, num_heads=3, mlp_ratio=2.0)


def _vit(variant: str, model_cls: type, pretrained: bool, arch: Dict[str, Any], kwargs: Dict[str, Any]):
    return create_vit(variant, model_cls, pretrained, **dict(arch, **kwargs))


# ImageNet-size DeiT with LIFE (the plain ones are timm's own deit_*_patch16_224)
@register
def deit_tiny_patch16_224_life(pretrained: bool = False, **kwargs) -> VisionTransformer:
    return _vit("deit_tiny_patch16_224_life", LIFEVisionTransformer, pretrained, dict(patch_size=16, **_TINY), kwargs)


@register
def deit_small_patch16_224_life(pretrained: bool = False, **kwargs) -> VisionTransformer:
    return _vit("deit_small_patch16_224_life", LIFEVisionTransformer, pretrained, dict(patch_size=16, **_SMALL), kwargs)


@register
def deit_base_patch16_224_life(pretrained: bool = False, **kwargs) -> VisionTransformer:
    return _vit("deit_base_patch16_224_life", LIFEVisionTransformer, pretrained, dict(patch_size=16, **_BASE), kwargs)


@register
def deit_tiny_distilled_patch16_224_life(pretrained: bool = False, **kwargs) -> VisionTransformer:
    name = "deit_tiny_distilled_patch16_224_life"
    return _vit(name, LIFEVisionTransformerDistilled, pretrained, dict(patch_size=16, **_TINY), kwargs)


@register
def deit_small_distilled_patch16_224_life(pretrained: bool = False, **kwargs) -> VisionTransformer:
    name = "deit_small_distilled_patch16_224_life"
    return _vit(name, LIFEVisionTransformerDistilled, pretrained, dict(patch_size=16, **_SMALL), kwargs)


# CIFAR size (32 px, 8x8 grid)
@register
def deit_tiny_patch4_32(pretrained: bool = False, **kwargs) -> VisionTransformer:
    return _vit("deit_tiny_patch4_32", VisionTransformer, pretrained, dict(patch_size=4, img_size=32, **_TINY), kwargs)


@register
def deit_tiny_patch4_32_life(pretrained: bool = False, **kwargs) -> VisionTransformer:
    arch = dict(patch_size=4, img_size=32, **_TINY)
    return _vit("deit_tiny_patch4_32_life", LIFEVisionTransformer, pretrained, arch, kwargs)


@register
def deit_small_patch4_32(pretrained: bool = False, **kwargs) -> VisionTransformer:
    arch = dict(patch_size=4, img_size=32, **_SMALL)
    return _vit("deit_small_patch4_32", VisionTransformer, pretrained, arch, kwargs)


@register
def deit_small_patch4_32_life(pretrained: bool = False, **kwargs) -> VisionTransformer:
    arch = dict(patch_size=4, img_size=32, **_SMALL)
    return _vit("deit_small_patch4_32_life", LIFEVisionTransformer, pretrained, arch, kwargs)


# Tiny-ImageNet size (64 px, 16x16 grid)
@register
def deit_tiny_patch4_64(pretrained: bool = False, **kwargs) -> VisionTransformer:
    return _vit("deit_tiny_patch4_64", VisionTransformer, pretrained, dict(patch_size=4, img_size=64, **_TINY), kwargs)


@register
def deit_tiny_patch4_64_life(pretrained: bool = False, **kwargs) -> VisionTransformer:
    arch = dict(patch_size=4, img_size=64, **_TINY)
    return _vit("deit_tiny_patch4_64_life", LIFEVisionTransformer, pretrained, arch, kwargs)


@register
def deit_small_patch4_64(pretrained: bool = False, **kwargs) -> VisionTransformer:
    arch = dict(patch_size=4, img_size=64, **_SMALL)
    return _vit("deit_small_patch4_64", VisionTransformer, pretrained, arch, kwargs)


@register
def deit_small_patch4_64_life(pretrained: bool = False, **kwargs) -> VisionTransformer:
    arch = dict(patch_size=4, img_size=64, **_SMALL)
    return _vit("deit_small_patch4_64_life", LIFEVisionTransformer, pretrained, arch, kwargs)


# CPU-scale pair for the embedded default (Fashion-MNIST, 28 px, 7x7 grid)
@register
def vit_lite_patch4_28(pretrained: bool = False, **kwargs) -> VisionTransformer:
    arch = dict(patch_size=4, img_size=28, in_chans=1, **_LITE)
    return _vit("vit_lite_patch4_28", VisionTransformer, pretrained, arch, kwargs)


@register
def vit_lite_patch4_28_life(pretrained: bool = False, **kwargs) -> VisionTransformer:
    arch = dict(patch_size=4, img_size=28, in_chans=1, **_LITE)
    return _vit("vit_lite_patch4_28_life", LIFEVisionTransformer, pretrained, arch, kwargs)
