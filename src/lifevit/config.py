"""Typed configuration of a classification run, merged once from a YAML file and command-line overrides.

A YAML file mirrors :class:`TrainConfig`: top-level scalars (``epochs``, ``seed``, ...) and one mapping per
group (``model``, ``data``, ``aug``, ``optim``, ``distill``). An unknown key anywhere is a ``ValueError``
naming the valid keys. Overrides are dotted ``key=value`` strings (``optim.lr=1e-3``) parsed as YAML values.

Example ``configs/fashion_mnist/vit_lite_life.yaml``::

    model: {name: vit_lite_patch4_28_life}
    data: {dataset: fashion_mnist, train_samples: 5000}
    epochs: 20
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Union, get_args, get_origin, get_type_hints

import yaml

__all__ = [
    "AugConfig",
    "DataConfig",
    "DistillConfig",
    "ModelConfig",
    "OptimConfig",
    "TrainConfig",
    "apply_overrides",
    "check_model_kwargs",
    "config_from_dict",
    "config_to_dict",
    "dataclass_from_dict",
    "load_config",
]


@dataclass
class ModelConfig:
    """The network. ``num_classes`` / ``img_size`` / ``in_chans`` default to the data set's."""

    name: str = "vit_lite_patch4_28_life"
    num_classes: Optional[int] = None
    img_size: Optional[int] = None
    in_chans: Optional[int] = None
    drop_path: float = 0.1
    drop: float = 0.0
    kwargs: Dict[str, Any] = field(default_factory=dict)  # passed on to timm.create_model


@dataclass
class DataConfig:
    """The data set and how it is batched."""

    dataset: str = "fashion_mnist"
    root: Optional[str] = None
    train_samples: Optional[int] = None  # class-balanced subset of the training split
    subset_seed: int = 0
    batch_size: int = 128  # per process
    eval_batch_size: int = 500
    workers: int = 0  # DataLoader workers for the on-disk data sets
    loader: str = "auto"  # auto | tensor (in-memory, batch augmentation) | timm (PIL transforms)


@dataclass
class AugConfig:
    """Augmentation and regularisation (timm components). DeiT's recipe: see ``configs/``."""

    crop_padding: int = 2  # tensor loader: pad-and-random-crop
    scale: List[float] = field(default_factory=lambda: [0.08, 1.0])  # timm loader: RandomResizedCrop scale
    hflip: float = 0.5
    randaugment: Optional[str] = None  # timm auto_augment string, e.g. rand-m9-mstd0.5-inc1 (timm loader)
    color_jitter: Optional[float] = None
    mixup: float = 0.0
    cutmix: float = 0.0
    mixup_prob: float = 1.0
    mixup_switch_prob: float = 0.5
    label_smoothing: float = 0.1
    reprob: float = 0.0  # random erasing probability
    remode: str = "pixel"
    repeated_aug: bool = False  # only used with several processes


@dataclass
class OptimConfig:
    """Optimizer (``timm.optim.create_optimizer_v2``) and schedule (``timm.scheduler.create_scheduler_v2``)."""

    opt: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 0.05
    momentum: float = 0.9
    sched: str = "cosine"
    warmup_epochs: float = 2  # may be fractional: warm-up is counted in optimizer steps
    warmup_lr: float = 1e-6
    min_lr: float = 1e-5
    clip_grad: Optional[float] = 1.0
    clip_mode: str = "norm"


@dataclass
class DistillConfig:
    """Knowledge distillation through the distillation token (``deit_*_distilled_*`` models)."""

    teacher: Optional[str] = None  # a lifevit checkpoint (file or run folder) or a timm model name
    type: str = "none"  # none | soft | hard
    alpha: float = 0.5
    tau: float = 1.0


@dataclass
class TrainConfig:
    """A whole classification run."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    aug: AugConfig = field(default_factory=AugConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    epochs: int = 20
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: bool = True  # bf16 autocast on GPU (never on CPU)
    ema: bool = True
    ema_decay: float = 0.999
    eval_interval: int = 1  # evaluate every N epochs (and always after the last)
    checkpoint_interval: int = 1
    threads: Optional[int] = None  # torch.set_num_threads (default: torch's choice)
    progress: bool = True
    tensorboard: bool = True


def check_model_kwargs(kwargs: Mapping[str, Any], where: str) -> None:
    """Refuse ``timm.create_model`` keyword arguments that timm would silently drop.

    timm drops every ``None``-valued keyword, so a YAML typo such as ``{patch_size:6}`` (no space after the
    colon: one key ``"patch_size:6"`` with no value) would build the default model without a word.
    """
    if not isinstance(kwargs, Mapping):
        raise ValueError(f"{where} must be a mapping of keyword arguments, got {kwargs!r}")
    for key, value in kwargs.items():
        if not isinstance(key, str) or not key.isidentifier():
            raise ValueError(f"{where} has the key {key!r}, which is not a keyword name; in YAML write {{key: value}}")
        if value is None:
            raise ValueError(f"{where}.{key} has no value; in YAML write {{{key}: value}} (with a space after ':')")


def _check_choices(cfg: TrainConfig) -> None:
    check_model_kwargs(cfg.model.kwargs, "model.kwargs")
    if cfg.epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {cfg.epochs}")
    if cfg.distill.type not in ("none", "soft", "hard"):
        raise ValueError(f"distill.type must be none, soft or hard, got {cfg.distill.type!r}")
    if cfg.distill.type != "none" and not cfg.distill.teacher:
        raise ValueError(f"distill.type={cfg.distill.type!r} needs distill.teacher (a checkpoint or timm model name)")
    if cfg.data.loader not in ("auto", "tensor", "timm"):
        raise ValueError(f"data.loader must be auto, tensor or timm, got {cfg.data.loader!r}")
    if cfg.data.train_samples is not None and cfg.data.train_samples < 1:
        raise ValueError(f"data.train_samples must be >= 1, got {cfg.data.train_samples}")
    if cfg.eval_interval < 1 or cfg.checkpoint_interval < 1:
        raise ValueError("eval_interval and checkpoint_interval must be >= 1")


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def dataclass_from_dict(cls: type, data: Mapping[str, Any], where: str = "") -> Any:
    """Build the (nested) dataclass ``cls`` from a mapping, the one way every lifevit config is read.

    Missing keys take their defaults; an unknown key is a ``ValueError`` naming the valid ones; nested
    dataclass fields are built recursively; numbers written as strings become numbers, lists become tuples
    where a tuple is annotated, and a ``bool`` field accepts only true/false. ``where`` prefixes key names in
    messages (``"optim."``).
    """
    if not isinstance(data, Mapping):
        raise ValueError(f"{where or 'config'}: expected a mapping of keys, got {type(data).__name__}")
    hints = get_type_hints(cls)
    names = [f.name for f in fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ValueError(
            f"unknown config key(s) {', '.join(repr(f'{where}{k}') for k in unknown)}; "
            f"valid keys{' of ' + where.rstrip('.') if where else ''}: {', '.join(names)}"
        )
    kwargs = {}
    for name, value in data.items():
        tp = hints[name]
        kwargs[name] = (
            dataclass_from_dict(tp, value, f"{where}{name}.")
            if _is_dataclass_type(tp)
            else _coerce(tp, value, where + name)
        )
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, key: str) -> Any:
    """Numbers written as strings (YAML reads ``1e-3`` as a string) become the annotated int / float."""
    allowed = set(get_args(tp)) if get_origin(tp) is Union else {tp}
    if allowed == {bool} and not isinstance(value, bool):
        raise ValueError(f"config key {key!r} expects true or false, got {value!r}")
    if isinstance(value, list) and any(t is tuple or get_origin(t) is tuple for t in allowed):
        return tuple(value)  # JSON / YAML lists where a tuple is annotated (e.g. a checkpoint's saved config)
    if isinstance(value, str) and (float in allowed or int in allowed):
        try:
            return int(value) if int in allowed and float not in allowed else float(value)
        except ValueError:
            raise ValueError(f"config key {key!r} expects a number, got {value!r}") from None
    if isinstance(value, int) and not isinstance(value, bool) and float in allowed and int not in allowed:
        return float(value)
    return value


def config_from_dict(data: Mapping[str, Any]) -> TrainConfig:
    """A :class:`TrainConfig` from a nested dict (defaults for missing keys; ``ValueError`` on unknown ones)."""
    cfg = dataclass_from_dict(TrainConfig, data or {}, "")
    _check_choices(cfg)
    return cfg


def config_to_dict(cfg: TrainConfig) -> Dict[str, Any]:
    """Nested plain dict (YAML/JSON-serialisable) of a config."""
    return dataclasses.asdict(cfg)


def _merge(base: Dict[str, Any], update: Mapping[str, Any]) -> Dict[str, Any]:
    out = dict(base)
    for k, v in update.items():
        out[k] = _merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), dict) else v
    return out


def apply_overrides(data: Dict[str, Any], overrides: Iterable[str]) -> Dict[str, Any]:
    """Apply ``group.key=value`` strings (values parsed as YAML) to a nested config dict."""
    out = dict(data)
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override must look like key=value (e.g. optim.lr=1e-3), got {item!r}")
        key, raw = item.split("=", 1)
        value = yaml.safe_load(raw) if raw != "" else None
        nested: Any = value
        for part in reversed(key.strip().split(".")):
            nested = {part: nested}
        out = _merge(out, nested)
    return out


def load_config(
    path: Optional[Union[str, os.PathLike]] = None,
    overrides: Iterable[str] = (),
    base: Optional[Mapping[str, Any]] = None,
) -> TrainConfig:
    """Merge defaults, ``base`` (e.g. a run's saved config), a YAML file and overrides, in that order.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: Unknown keys or invalid values.
    """
    data: Dict[str, Any] = dict(base or {})
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file {path} not found")
        loaded = yaml.safe_load(path.read_text()) or {}
        if not isinstance(loaded, Mapping):
            raise ValueError(f"{path}: expected a YAML mapping at the top level, got {type(loaded).__name__}")
        data = _merge(data, loaded)
    data = apply_overrides(data, overrides)
    return config_from_dict(data)
