"""Registration of lifevit models in timm's registry, refusing names that timm (or anyone) already uses.

Also the registry metadata timm's tools read: the pretrained configs (input size, whether it is fixed, pooled
feature size, normalisation, first conv, classifier, license) and which models cannot be scripted.
"""

from __future__ import annotations

import fnmatch
from typing import Any, Callable, Dict, List, Tuple

import timm
from timm.models import register_model

__all__ = [
    "register",
    "list_lifevit_models",
    "cfg",
    "small_image_cfg",
    "check_pretrained",
    "CIFAR100_MEAN",
    "CIFAR100_STD",
    "TORCHSCRIPT_EXCLUDE_FILTERS",
]

CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)

_LIFEVIT_MODELS: List[str] = []

# Models that cannot be scripted with TorchScript (fnmatch filters, as timm's tests keep EXCLUDE_JIT_FILTERS).
# TorchScript is deprecated in torch 2.x; these models support torch.export, torch.compile, ONNX and FX instead.
# LIFE models: LIFE's autograd function and grid handling; T2T-ViT: timm's sin-cos position embedding (ndgrid(*t)).
TORCHSCRIPT_EXCLUDE_FILTERS: Tuple[str, ...] = ("*_life", "t2t_vit_*")
_NOT_SCRIPTABLE_NOTE = "not TorchScript-scriptable (TorchScript is deprecated); use torch.export, ONNX or FX"


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
    """A timm pretrained-config dict for a model that has no downloadable weights.

    ``fixed_input_size`` defaults to False (a CNN); ViT-style models pass True, as timm's own configs do.
    """
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

    return {
        "url": "",
        "num_classes": num_classes,
        "input_size": input_size,
        "pool_size": None,
        "crop_pct": 1.0 if input_size[-1] < 224 else 0.875,
        "interpolation": "bicubic",
        "fixed_input_size": False,
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


def is_scriptable(name: str) -> bool:
    """False for lifevit models listed in :data:`TORCHSCRIPT_EXCLUDE_FILTERS`."""
    return not any(fnmatch.fnmatch(name, f) for f in TORCHSCRIPT_EXCLUDE_FILTERS)


def with_notes(default_cfgs: Dict[str, Dict[str, Any]]) -> Dict[str, Dict[str, Any]]:
    """Add the TorchScript note to the configs of models that cannot be scripted."""
    return {
        name: c if is_scriptable(name) else dict(c, notes=(*c.get("notes", ()), _NOT_SCRIPTABLE_NOTE))
        for name, c in default_cfgs.items()
    }


def check_pretrained(variant: str, pretrained: bool, kwargs: Dict[str, Any], hint: str = "") -> None:
    """Refuse ``pretrained=True`` unless weights were given: lifevit registers no downloadable weights, but a
    folder or Hub repository written by ``lifevit export`` (``local-dir:`` / ``hf-hub:`` names) has them."""
    if not pretrained:
        return
    for key in ("pretrained_cfg", "pretrained_cfg_overlay"):
        source = kwargs.get(key)
        source = source.to_dict() if hasattr(source, "to_dict") else (source if isinstance(source, dict) else {})
        if any(source.get(k) for k in ("file", "hf_hub_id", "url", "state_dict")):
            return
    raise ValueError(
        f"lifevit has no pretrained weights for {variant!r}; load an exported run with "
        f"timm.create_model('local-dir:FOLDER', pretrained=True) or 'hf-hub:USER/REPO'.{(' ' + hint) if hint else ''}"
    )
