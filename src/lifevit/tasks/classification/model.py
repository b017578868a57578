"""The classifier of a config (any timm / lifevit model) and a distillation teacher."""

from __future__ import annotations

from typing import Any, Dict, Tuple

import torch
from torch import nn

from ...engine.checkpoint import create_model_from_checkpoint, load_checkpoint, resolve_checkpoint
from .config import ModelConfig

__all__ = ["build_model", "build_teacher"]


def build_model(m: ModelConfig, num_classes: int, in_chans: int, img_size: int) -> Tuple[nn.Module, Dict[str, Any]]:
    """``timm.create_model`` for ``cfg.model`` and the kwargs that rebuild it (stored in checkpoints).

    ``img_size`` is passed only to models that take it (ViTs; not ResNets).
    """
    import timm

    import lifevit.models  # noqa: F401  (registers lifevit models)

    if m.name not in timm.list_models():
        raise ValueError(
            f"unknown model {m.name!r}; lifevit models: {', '.join(lifevit.models.list_lifevit_models())} "
            "(or any timm model name)"
        )
    kwargs: Dict[str, Any] = dict(num_classes=num_classes, in_chans=in_chans, drop_path_rate=m.drop_path)
    if m.drop:
        kwargs["drop_rate"] = m.drop
    kwargs.update(m.kwargs)
    default_size = (
        timm.models.get_pretrained_cfg(m.name).input_size[-1] if timm.models.get_pretrained_cfg(m.name) else 0
    )
    if img_size != default_size:
        kwargs["img_size"] = img_size
    try:
        model = timm.create_model(m.name, **kwargs)
    except TypeError as err:
        if "img_size" not in str(err) or "img_size" not in kwargs:
            raise
        kwargs.pop("img_size")  # convolutional networks take any input size
        model = timm.create_model(m.name, **kwargs)
    return model, kwargs


def build_teacher(spec: str, num_classes: int, device: torch.device) -> nn.Module:
    """A frozen teacher: a lifevit checkpoint (file or run folder; its EMA weights when it has them) or a timm
    model name (created with ``pretrained=True``)."""
    import timm

    try:
        path = resolve_checkpoint(spec)
    except FileNotFoundError:
        path = None
    if path is not None:
        ckpt = load_checkpoint(path)
        teacher = create_model_from_checkpoint(ckpt, use_ema=ckpt.ema_state is not None)
    elif spec in timm.list_models():
        teacher = timm.create_model(spec, pretrained=True, num_classes=num_classes)
    else:
        raise FileNotFoundError(f"teacher {spec!r} is neither a lifevit checkpoint nor a timm model name")
    if getattr(teacher, "num_classes", num_classes) != num_classes:
        raise ValueError(f"teacher predicts {teacher.num_classes} classes but the student {num_classes}")
    return teacher.to(device).eval().requires_grad_(False)
