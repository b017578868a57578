"""Registration of lifevit models in timm's registry, refusing names that timm (or anyone) already uses."""

from __future__ import annotations

from typing import Any, Callable, Dict, List

import timm
from timm.models import register_model

__all__ = ["register", "list_lifevit_models", "cfg", "small_image_cfg", "CIFAR100_MEAN", "CIFAR100_STD"]

CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)

_LIFEVIT_MODELS: List[str] = []


def register(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``timm.models.register_model`` that fails instead of silently overwriting an existing model name."""
    name = fn.__name__
    if name in timm.list_models() and name not in _LIFEVIT_MODELS:
        raise RuntimeError(f"model name {name!r} is already registered in timm; lifevit names must not collide")
    if name not in _LIFEVIT_MODELS:
        _LIFEVIT_MODELS.append(name)
        register_model(fn)
    return fn


def list_lifevit_models(filter: str = "") -> List[str]:
    """Names of the models lifevit registers, optionally those containing ``filter``."""
    return sorted(n for n in _LIFEVIT_MODELS if filter in n)


def cfg(input_size=(3, 224, 224), num_classes: int = 1000, mean=None, std=None, **kwargs) -> Dict[str, Any]:
    """A timm pretrained-config dict for a model that has no downloadable weights."""
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

    return {
        "url": "",
        "num_classes": num_classes,
        "input_size": input_size,
        "pool_size": None,
        "crop_pct": 1.0 if input_size[-1] < 224 else 0.875,
        "interpolation": "bicubic",
        "mean": mean or IMAGENET_DEFAULT_MEAN,
        "std": std or IMAGENET_DEFAULT_STD,
        "first_conv": "patch_embed.proj",
        "classifier": "head",
        "license": "mit",
        **kwargs,
    }


def small_image_cfg(res: int, **kwargs) -> Dict[str, Any]:
    """Config of a small-image variant: 32 px is CIFAR (100 classes, CIFAR-100 statistics), 64 px is
    Tiny-ImageNet (200 classes, ImageNet statistics)."""
    if res not in (32, 64):
        raise ValueError(f"small-image variants are 32 px (CIFAR) or 64 px (Tiny-ImageNet), got {res}")
    cifar = res == 32
    return cfg(
        input_size=(3, res, res),
        num_classes=100 if cifar else 200,
        mean=CIFAR100_MEAN if cifar else None,
        std=CIFAR100_STD if cifar else None,
        **kwargs,
    )
