"""Registration of lifevit models in timm's registry, refusing names that timm (or anyone) already uses."""

from __future__ import annotations

from typing import Any, Callable, Dict, List

import timm
from timm.models import register_model

__all__ = ["register", "list_lifevit_models"]

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
