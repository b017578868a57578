"""Checkpoints: model (and EMA) weights as safetensors, training state beside them, written atomically.

A checkpoint named ``name`` in ``out_dir`` is two files:

* ``{name}.safetensors``: the model weights under their own keys and, when EMA is kept, the EMA weights under
  ``ema::<key>``. The safetensors metadata holds ``meta`` (JSON: task, model name, model kwargs, ...), the epoch
  and a random checkpoint id. ``meta`` is enough to rebuild the model (see :func:`create_model_from_checkpoint`).
* ``{name}.train.pt`` (only when there is training state): optimizer / scheduler / scaler state and ``extra``
  (RNG states, best metric, ...), with the same checkpoint id.

Each file is written to a temporary file in ``out_dir`` and moved into place with ``os.replace``, the training
state first and the weights last. A reader checks that the ids match, so a crash between the two moves is
detected instead of silently pairing new weights with old optimizer state.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Union

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

__all__ = ["Checkpoint", "save_checkpoint", "load_checkpoint", "create_model_from_checkpoint", "resolve_checkpoint"]

_logger = logging.getLogger(__name__)

EMA_PREFIX = "ema::"
WEIGHTS_SUFFIX = ".safetensors"
STATE_SUFFIX = ".train.pt"


@dataclass
class Checkpoint:
    """A loaded checkpoint.

    Attributes:
        meta: What the writer stored to rebuild the model (``task``, ``model``, ``model_kwargs``, ...).
        epoch: Epochs completed when it was written.
        model_state: Model ``state_dict`` (CPU tensors).
        ema_state: EMA model ``state_dict`` (same keys as the model), or ``None``.
        training_state: ``optimizer`` / ``scheduler`` / ``scaler`` states and ``extra``, or ``None``.
        path: The weights file it was read from.
    """

    meta: Dict[str, Any]
    epoch: int
    model_state: Dict[str, torch.Tensor]
    ema_state: Optional[Dict[str, torch.Tensor]] = None
    training_state: Optional[Dict[str, Any]] = None
    path: Optional[Path] = field(default=None, repr=False)


def _atomic_write(path: Path, write: Callable[[str], None]) -> None:
    """Call ``write(tmp_path)`` on a temporary file next to ``path``, then move it onto ``path``."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _cpu_tensors(state: Dict[str, torch.Tensor], prefix: str = "") -> Dict[str, torch.Tensor]:
    # safetensors refuses tensors sharing storage; clone so tied weights are stored twice.
    return {prefix + k: v.detach().to("cpu").contiguous().clone() for k, v in state.items() if torch.is_tensor(v)}


def _ema_state_dict(ema: Any) -> Dict[str, torch.Tensor]:
    """Weights of an EMA wrapper (timm ``ModelEmaV3`` keeps them in ``.module``) or of a plain module/state."""
    if isinstance(ema, dict):
        return ema
    module = getattr(ema, "module", ema)
    return module.state_dict()


def save_checkpoint(
    out_dir: Union[str, os.PathLike],
    *,
    model: nn.Module,
    meta: Dict[str, Any],
    epoch: int,
    optimizer: Optional[torch.optim.Optimizer] = None,
    scheduler: Any = None,
    scaler: Any = None,
    ema: Any = None,
    name: str = "last",
    extra: Optional[Dict[str, Any]] = None,
) -> Path:
    """Write a checkpoint atomically and return the path of its weights file.

    Args:
        out_dir: Folder to write into (created if missing).
        model: The model; a DDP / compiled wrapper is unwrapped.
        meta: JSON-serialisable description, at least ``task`` and ``model`` (the registered name) plus the
            kwargs needed to rebuild it (``model_kwargs``).
        epoch: Epochs completed.
        optimizer: Optimizer whose state is kept for resuming.
        scheduler: Scheduler with ``state_dict()`` (timm or torch).
        scaler: ``torch.amp.GradScaler``.
        ema: EMA of the weights (timm ``ModelEmaV3``, a module or a state dict).
        name: File stem, e.g. ``last`` or ``best``.
        extra: Anything else needed to resume (RNG states, best metric); stored with the training state.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for key in ("task", "model"):
        if key not in meta:
            raise ValueError(f"checkpoint meta must contain {key!r}; got keys {sorted(meta)}")
    model = getattr(model, "module", model)  # DDP
    model = getattr(model, "_orig_mod", model)  # torch.compile
    ckpt_id = uuid.uuid4().hex
    tensors = _cpu_tensors(model.state_dict())
    if ema is not None:
        tensors.update(_cpu_tensors(_ema_state_dict(ema), EMA_PREFIX))
    metadata = {"meta": json.dumps(meta, default=str), "epoch": str(int(epoch)), "id": ckpt_id, "format": "lifevit-1"}

    state: Dict[str, Any] = {}
    if optimizer is not None:
        state["optimizer"] = optimizer.state_dict()
    if scheduler is not None:
        state["scheduler"] = scheduler.state_dict()
    if scaler is not None:
        state["scaler"] = scaler.state_dict()
    if extra:
        state["extra"] = extra
    weights_path = out_dir / f"{name}{WEIGHTS_SUFFIX}"
    state_path = out_dir / f"{name}{STATE_SUFFIX}"
    if state:
        state.update(id=ckpt_id, epoch=int(epoch))
        _atomic_write(state_path, lambda tmp: torch.save(state, tmp))
    elif state_path.exists():
        state_path.unlink()
    _atomic_write(weights_path, lambda tmp: save_file(tensors, tmp, metadata=metadata))
    _logger.debug("saved checkpoint %s (epoch %d)", weights_path, epoch)
    return weights_path


def resolve_checkpoint(path: Union[str, os.PathLike]) -> Path:
    """The weights file for ``path``: the file itself, ``{path}.safetensors``, or ``last.safetensors`` in a folder."""
    path = Path(path)
    candidates = [path]
    if path.is_dir():
        candidates = [path / f"last{WEIGHTS_SUFFIX}", path / "checkpoints" / f"last{WEIGHTS_SUFFIX}"]
    elif path.suffix != WEIGHTS_SUFFIX:
        candidates.append(path.with_name(path.name + WEIGHTS_SUFFIX))
    for c in candidates:
        if c.is_file():
            return c
    raise FileNotFoundError(
        f"no checkpoint at {path}; expected a {WEIGHTS_SUFFIX} file written by lifevit or a run folder holding "
        f"last{WEIGHTS_SUFFIX}. Looked for: {', '.join(str(c) for c in candidates)}"
    )


def load_checkpoint(path: Union[str, os.PathLike], map_location: str = "cpu") -> Checkpoint:
    """Read a checkpoint written by :func:`save_checkpoint` (a weights file, its stem, or a run folder)."""
    weights_path = resolve_checkpoint(path)
    model_state: Dict[str, torch.Tensor] = {}
    ema_state: Dict[str, torch.Tensor] = {}
    with safe_open(str(weights_path), framework="pt", device=map_location) as f:
        metadata = f.metadata() or {}
        if "meta" not in metadata:
            raise ValueError(f"{weights_path} is not a lifevit checkpoint (no 'meta' in its safetensors metadata)")
        for key in f.keys():
            if key.startswith(EMA_PREFIX):
                ema_state[key[len(EMA_PREFIX) :]] = f.get_tensor(key)
            else:
                model_state[key] = f.get_tensor(key)
    state_path = weights_path.with_name(weights_path.name[: -len(WEIGHTS_SUFFIX)] + STATE_SUFFIX)
    training_state = None
    if state_path.is_file():
        training_state = torch.load(state_path, map_location=map_location, weights_only=False)
        if training_state.get("id") != metadata.get("id"):
            _logger.warning(
                "%s does not belong to %s (the run stopped while writing); ignoring the training state",
                state_path,
                weights_path,
            )
            training_state = None
    return Checkpoint(
        meta=json.loads(metadata["meta"]),
        epoch=int(metadata.get("epoch", 0)),
        model_state=model_state,
        ema_state=ema_state or None,
        training_state=training_state,
        path=weights_path,
    )


def create_model_from_checkpoint(ckpt: Union[Checkpoint, str, os.PathLike], use_ema: bool = False) -> nn.Module:
    """Rebuild a model from a checkpoint alone: ``timm.create_model(meta['model'], **meta['model_kwargs'])``.

    Args:
        ckpt: A loaded :class:`Checkpoint` or a path for :func:`load_checkpoint`.
        use_ema: Load the EMA weights (raises ``ValueError`` if the checkpoint has none).
    """
    import timm

    import lifevit.models  # noqa: F401  (registers lifevit models)

    if not isinstance(ckpt, Checkpoint):
        ckpt = load_checkpoint(ckpt)
    name = ckpt.meta["model"]
    if name not in timm.list_models():
        raise ValueError(f"checkpoint {ckpt.path} was written for model {name!r}, which is not registered here")
    model = timm.create_model(name, **ckpt.meta.get("model_kwargs", {}))
    if use_ema and ckpt.ema_state is None:
        raise ValueError(f"checkpoint {ckpt.path} has no EMA weights; use use_ema=False")
    model.load_state_dict(ckpt.ema_state if use_ema else ckpt.model_state)
    return model
