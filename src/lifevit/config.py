"""Typed configuration, the one way every lifevit run is configured.

Every task's run config is a dataclass with the same top-level sections: ``model``, ``data`` and ``train``
(:class:`TrainConfig`, the engine's settings, identical for every task), plus the task's own sections
(classification: ``aug``, ``distill``; detection: ``loss``, ``inference``; segmentation: ``loss``,
``inference``). A YAML file mirrors the dataclass; an unknown key anywhere is a ``ValueError`` naming the valid
keys, and a value of the wrong type (``epochs: 2.5``, ``device: 0``) is a ``ValueError`` naming the key.

The command line builds a config once, with one precedence for every task (later wins)::

    the task's defaults  <  the resumed run's config.yaml  <  --config FILE  <  named flags (--epochs ...)  <  --set

``--set a.b.c=VALUE`` reaches any key at any depth; VALUE is read as YAML (``--set train.lr=1e-3``,
``--set model.kwargs={depth: 4}``).
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Dict, Iterable, Mapping, Optional, Type, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

__all__ = [
    "TrainConfig",
    "apply_overrides",
    "build_config",
    "check_model_kwargs",
    "config_to_dict",
    "dataclass_from_dict",
    "load_yaml",
    "merge",
]

T = TypeVar("T")

SCHEDULES = ("cosine", "poly", "step", "multistep", "plateau", "tanh")
DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


@dataclass
class TrainConfig:
    """The ``train`` section: everything the engine (:func:`lifevit.engine.fit`) owns, the same for every task.

    Attributes:
        epochs: Passes over the training set.
        batch_size: Images per step *per process* (the global batch is ``batch_size * processes``).
        seed: Seed of weights, data order and augmentation (fixed seeds repeat exactly on the same machine and
            software; other CPUs and libraries give slightly different numbers).
        device: ``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``.
        threads: torch CPU threads per process (``None``: torch's default).
        amp: bf16 autocast on CUDA (never on CPU).
        opt: Optimizer name for ``timm.optim.create_optimizer_v2`` (adamw, sgd, lamb, ...).
        lr: Peak learning rate.
        weight_decay: Weight decay (not applied to biases, norms and the embeddings a model lists in
            ``no_weight_decay()``).
        momentum: Momentum of SGD-like optimizers.
        backbone_lr: Peak learning rate of the parameters under ``backbone.`` of a detection / segmentation model
            (DETR's ``lr_backbone``); ``None``: ``lr``.
        sched: Schedule name for ``timm.scheduler.create_scheduler_v2``: cosine, poly, step, multistep,
            plateau, tanh; stepped every optimizer update.
        warmup_epochs: Linear warm-up length (fractions count in updates).
        warmup_lr: Learning rate the warm-up starts from.
        warmup_prefix: The decay starts after the warm-up (``True``) or counts from step 0 (timm's default).
        min_lr: Learning rate at the end of the decay.
        decay_rate: ``poly``: the power; ``step`` / ``plateau``: the factor.
        decay_epochs: ``step``: epochs between decays.
        clip_grad: Gradient clipping threshold (``None``: off).
        clip_mode: ``norm``, ``value`` or ``agc`` (``timm.utils.dispatch_clip_grad``).
        ema: Keep an exponential moving average of the weights (``timm.utils.ModelEmaV3``), evaluated too.
        ema_decay: Its decay.
        eval_interval: Evaluate every N epochs (and after the last one).
        checkpoint_interval: Write ``checkpoints/last`` every N epochs (and after the last one).
        max_minutes: Time budget: stop after the epoch during which training time passed it (0: none).
        progress: Progress bar (throughput, ETA) on a terminal.
        tensorboard: Also log to ``tensorboard/`` when TensorBoard is installed.
    """

    epochs: int = 20
    batch_size: int = 128
    seed: int = 0
    device: str = "auto"
    threads: Optional[int] = None
    amp: bool = True
    opt: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 0.05
    momentum: float = 0.9
    backbone_lr: Optional[float] = None
    sched: str = "cosine"
    warmup_epochs: float = 0.0
    warmup_lr: float = 1e-6
    warmup_prefix: bool = False
    min_lr: float = 1e-5
    decay_rate: float = 0.1
    decay_epochs: float = 30.0
    clip_grad: Optional[float] = None
    clip_mode: str = "norm"
    ema: bool = False
    ema_decay: float = 0.999
    eval_interval: int = 1
    checkpoint_interval: int = 1
    max_minutes: float = 0.0
    progress: bool = True
    tensorboard: bool = True

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"train.epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ValueError(f"train.batch_size must be >= 1, got {self.batch_size}")
        if not DEVICE_PATTERN.match(self.device):
            raise ValueError(f"train.device must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"train.threads must be >= 1 (or null for torch's default), got {self.threads}")
        if self.eval_interval < 1 or self.checkpoint_interval < 1:
            raise ValueError(
                f"train.eval_interval and train.checkpoint_interval must be >= 1, got {self.eval_interval}, "
                f"{self.checkpoint_interval}"
            )
        if self.lr < 0 or self.weight_decay < 0 or self.min_lr < 0 or self.max_minutes < 0:
            raise ValueError("train.lr, train.weight_decay, train.min_lr and train.max_minutes must be >= 0")
        if self.sched not in SCHEDULES:
            raise ValueError(f"train.sched must be one of {', '.join(SCHEDULES)}, got {self.sched!r}")
        if self.clip_mode not in ("norm", "value", "agc"):
            raise ValueError(f"train.clip_mode must be norm, value or agc, got {self.clip_mode!r}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"train.ema_decay must be in [0, 1), got {self.ema_decay}")


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


# ``lifevit.layers.LIFE_OPTIONS``, spelled out so that reading a config imports no torch (a test keeps them equal)
LIFE_OPTION_NAMES = ("pointwise_bias", "pointwise_init", "shared_norm", "prefix_keys_from_scale1")


def check_life_options(options: Mapping[str, Any], where: str) -> None:
    """Refuse LIFE options other than ``lifevit.layers.LIFE_OPTIONS`` (one line naming the valid ones)."""
    valid = LIFE_OPTION_NAMES
    if not isinstance(options, Mapping):
        raise ValueError(f"{where} must be a mapping of LIFE options, got {options!r}")
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(
            f"{where} has unknown LIFE option(s) {', '.join(map(repr, unknown))}; valid: {', '.join(valid)}"
        )


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def dataclass_from_dict(cls: Type[T], data: Optional[Mapping[str, Any]], where: str = "") -> T:
    """Build the (nested) dataclass ``cls`` from a mapping.

    Missing keys take their defaults; an unknown key is a ``ValueError`` naming the valid ones; nested dataclass
    fields are built recursively; values are checked against the annotation (see :func:`_coerce`). ``where``
    prefixes key names in messages (``"train."``).
    """
    data = {} if data is None else data
    if not isinstance(data, Mapping):
        raise ValueError(f"{where.rstrip('.') or 'config'}: expected a mapping of keys, got {data!r}")
    hints = get_type_hints(cls)
    names = [f.name for f in fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ValueError(
            f"unknown config key(s) {', '.join(repr(f'{where}{k}') for k in unknown)}; "
            f"valid keys{' of ' + where.rstrip('.') if where else ''}: {', '.join(names)}"
        )
    kwargs = {}
    factories = {f.name: f.default_factory for f in fields(cls) if f.default_factory is not dataclasses.MISSING}
    for name, value in data.items():
        tp = hints[name]
        if _is_dataclass_type(tp):
            if not isinstance(value, Mapping):
                raise ValueError(f"config key {where + name!r} must be a mapping of keys, got {value!r}")
            # a partial section keeps the defaults this config gives the section (e.g. a task's train defaults)
            base = dataclasses.asdict(factories[name]()) if name in factories else {}
            kwargs[name] = dataclass_from_dict(tp, merge(base, value), f"{where}{name}.")
        else:
            kwargs[name] = _coerce(tp, value, where + name)
    try:
        return cls(**kwargs)
    except TypeError as err:  # a value of a type __post_init__ cannot compare, e.g. a list where a number belongs
        raise ValueError(f"{where.rstrip('.') or 'config'}: {err}") from None


def _coerce(tp: Any, value: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp`` and convert what YAML reads loosely.

    ``1e-3`` (a string to YAML) becomes a float; an int where a float belongs becomes a float; a float with a
    fractional part where an int belongs (``epochs: 2.5``), a number where a string belongs, or anything but
    true/false where a bool belongs is a ``ValueError``; lists become tuples where a tuple is annotated.
    """
    allowed = set(get_args(tp)) if get_origin(tp) is Union else {tp}
    if value is None:
        if type(None) in allowed or Any in allowed:
            return None
        raise ValueError(f"config key {key!r} needs a value, got null")
    simple = {t for t in allowed if t in (bool, int, float, str)}
    if isinstance(value, list) and any(t is tuple or get_origin(t) is tuple for t in allowed):
        return tuple(value)
    if not simple or simple != allowed - {type(None)}:
        return value  # containers, Any, unions of other types: checked where they are used
    if bool in simple:
        if isinstance(value, bool):
            return value
        raise ValueError(f"config key {key!r} expects true or false, got {value!r}")
    if isinstance(value, bool):
        raise ValueError(f"config key {key!r} expects a {'/'.join(sorted(t.__name__ for t in simple))}, got {value!r}")
    if int in simple and float not in simple:
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                raise ValueError(f"config key {key!r} expects an integer, got {value!r}") from None
        if isinstance(value, float):
            if not value.is_integer():
                raise ValueError(f"config key {key!r} expects an integer, got {value!r}")
            return int(value)
        if isinstance(value, int):
            return value
        raise ValueError(f"config key {key!r} expects an integer, got {value!r}")
    if float in simple:
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str) and str not in simple:
            try:
                return float(value)
            except ValueError:
                raise ValueError(f"config key {key!r} expects a number, got {value!r}") from None
    if str in simple:
        if isinstance(value, str):
            return value
        raise ValueError(f"config key {key!r} expects a string, got {value!r}")
    raise ValueError(f"config key {key!r} expects a {'/'.join(sorted(t.__name__ for t in simple))}, got {value!r}")


def config_to_dict(cfg: Any) -> Dict[str, Any]:
    """Nested plain dict (YAML/JSON-serialisable) of a config dataclass; tuples become lists."""

    def plain(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        return v

    return plain(dataclasses.asdict(cfg))


def merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> Dict[str, Any]:
    """Recursive merge of nested dicts; ``update`` wins."""
    out = dict(base)
    for k, v in update.items():
        out[k] = merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), Mapping) else v
    return out


def apply_overrides(data: Mapping[str, Any], overrides: Iterable[str]) -> Dict[str, Any]:
    """Apply ``a.b.c=value`` strings (any depth; values parsed as YAML) to a nested config dict."""
    out = dict(data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        parts = key.strip().split(".")
        if not sep or not all(p.strip() for p in parts):
            raise ValueError(f"--set expects KEY=VALUE with a dotted key (e.g. train.lr=1e-3), got {item!r}")
        try:
            value = yaml.safe_load(raw) if raw.strip() != "" else None
        except yaml.YAMLError as err:
            raise ValueError(f"--set {item!r}: the value is not valid YAML ({_yaml_problem(err)})") from None
        nested: Any = value
        for part in reversed(parts):
            nested = {part.strip(): nested}
        out = merge(out, nested)
    return out


def _yaml_problem(err: yaml.YAMLError) -> str:
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else str(problem)


def load_yaml(path: Union[str, os.PathLike]) -> Dict[str, Any]:
    """A YAML config file as a dict.

    Raises:
        FileNotFoundError: No file at ``path``.
        ValueError: Not valid YAML, or not a mapping at the top level (one line naming the file and the place).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} not found (expected a YAML file such as configs/.../*.yaml)")
    try:
        loaded = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ValueError(f"config file {path} is not valid YAML: {_yaml_problem(err)}") from None
    except UnicodeDecodeError:
        raise ValueError(f"config file {path} is not a text (YAML) file") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, Mapping):
        raise ValueError(f"config file {path}: expected a mapping of sections at the top level, got {loaded!r:.60}")
    return dict(loaded)


def build_config(
    cls: Type[T],
    path: Optional[Union[str, os.PathLike]] = None,
    overrides: Iterable[str] = (),
    base: Optional[Mapping[str, Any]] = None,
    flags: Optional[Mapping[str, Any]] = None,
) -> T:
    """The one merge: ``cls`` defaults < ``base`` (a resumed run's config) < the YAML file < ``flags`` (dotted key
    -> value, the named command-line flags) < ``overrides`` (``--set`` strings).

    Top-level ``name`` and ``description`` keys in a file are labels for people and are dropped.
    """
    data: Dict[str, Any] = dict(base or {})
    if path is not None:
        data = merge(data, load_yaml(path))
    for key, value in (flags or {}).items():
        nested: Any = value
        for part in reversed(key.split(".")):
            nested = {part: nested}
        data = merge(data, nested)
    data = apply_overrides(data, overrides)
    data = {k: v for k, v in data.items() if k not in ("name", "description")}
    return dataclass_from_dict(cls, data)
