"""Checkpoints that cannot run code: tensors in safetensors, everything else in JSON, written atomically.

A checkpoint named ``name`` (``last`` or ``best``) in a folder is

* ``{name}.safetensors``: the model weights under their own keys and, when EMA is kept, the EMA weights under
  ``ema::<key>``. Its metadata holds ``meta`` (JSON: ``task``, ``model``, the run's config, class names, ...),
  the epoch and a random checkpoint id. This file alone rebuilds the model (:func:`create_model_from_checkpoint`
  and each task's ``load_model``); ``eval``, ``predict``, ``explain`` and ``export`` read nothing else.
* only with training state (``last``): ``{name}.state.safetensors`` (optimizer tensors, RNG states of every
  process) and ``{name}.state.json`` (optimizer hyper-parameters, scheduler state, counters, the id). Only
  ``--resume`` reads them (:func:`load_training_state`).

No file is ever unpickled. A ``{name}.train.pt`` left by lifevit 0.1 (a pickle) is never opened: resuming from it
is refused with a message. Each file is written to a temporary file and moved into place with ``os.replace``, the
training state first and the weights last; the ids must match, so a crash between the moves is detected.
"""

from __future__ import annotations

import json
import logging
import os
import random
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple, Union

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

__all__ = [
    "Checkpoint",
    "create_model_from_checkpoint",
    "load_checkpoint",
    "load_training_state",
    "resolve_checkpoint",
    "save_checkpoint",
]

_logger = logging.getLogger(__name__)

EMA_PREFIX = "ema::"
WEIGHTS_SUFFIX = ".safetensors"
STATE_TENSORS_SUFFIX = ".state.safetensors"
STATE_JSON_SUFFIX = ".state.json"
LEGACY_PICKLE_SUFFIX = ".train.pt"
FORMAT = "lifevit-2"


@dataclass
class Checkpoint:
    """A checkpoint's weights file, read.

    Attributes:
        meta: What the writer stored to rebuild the model (``task``, ``model``, ``config``, ...).
        epoch: Epochs completed when it was written.
        model_state: Model ``state_dict`` (CPU tensors).
        ema_state: EMA ``state_dict`` (same keys as the model), or ``None``.
        id: Random id shared with the training state written beside it.
        path: The weights file it was read from.
    """

    meta: Dict[str, Any]
    epoch: int
    model_state: Dict[str, torch.Tensor]
    ema_state: Optional[Dict[str, torch.Tensor]] = None
    id: str = ""
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
    return {prefix + k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}


def _ema_state_dict(ema: Any) -> Dict[str, torch.Tensor]:
    return (getattr(ema, "module", None) or ema).state_dict()


def _unwrap(model: nn.Module) -> nn.Module:
    model = getattr(model, "module", model)  # DDP
    return getattr(model, "_orig_mod", model)  # torch.compile


# ------------------------------------------------------------------ training state <-> (tensors, JSON)
def _split_optimizer(sd: Dict[str, Any]) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    """An optimizer ``state_dict`` as tensors (``optimizer.<param>.<key>``) and JSON (groups, scalar entries)."""
    tensors: Dict[str, torch.Tensor] = {}
    scalars: Dict[str, Dict[str, Any]] = {}
    for pid, entry in sd["state"].items():
        for key, value in entry.items():
            if torch.is_tensor(value):
                tensors[f"optimizer.{pid}.{key}"] = value
            else:
                scalars.setdefault(str(pid), {})[key] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _join_optimizer(tensors: Dict[str, torch.Tensor], js: Dict[str, Any]) -> Dict[str, Any]:
    state: Dict[int, Dict[str, Any]] = {}
    for name, value in tensors.items():
        if name.startswith("optimizer."):
            _, pid, key = name.split(".", 2)
            state.setdefault(int(pid), {})[key] = value
    for pid, entry in js.get("scalars", {}).items():
        state.setdefault(int(pid), {}).update(entry)
    return {"state": state, "param_groups": js["param_groups"]}


def rng_state_parts(prefix: str) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    """This process's Python, NumPy and torch (and CUDA) generator states as tensors + JSON scalars."""
    py_version, py_state, py_gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    tensors = {
        f"{prefix}python": torch.tensor(py_state, dtype=torch.int64),
        f"{prefix}numpy": torch.from_numpy(np.asarray(np_keys, dtype=np.int64)),
        f"{prefix}torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"{prefix}cuda.{i}"] = s
    js = {"python": [py_version, py_gauss], "numpy": [np_name, int(np_pos), int(np_has_gauss), float(np_gauss)]}
    return tensors, js


def set_rng_state_parts(tensors: Dict[str, torch.Tensor], js: Dict[str, Any], prefix: str) -> None:
    """Restore what :func:`rng_state_parts` returned."""
    py_version, py_gauss = js["python"]
    random.setstate((py_version, tuple(int(v) for v in tensors[f"{prefix}python"].tolist()), py_gauss))
    np_name, np_pos, np_has_gauss, np_gauss = js["numpy"]
    keys = tensors[f"{prefix}numpy"].numpy().astype(np.uint32)
    np.random.set_state((np_name, keys, int(np_pos), int(np_has_gauss), float(np_gauss)))
    torch.set_rng_state(tensors[f"{prefix}torch"])
    cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith(f"{prefix}cuda."))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)


def _state_paths(weights_path: Path) -> Tuple[Path, Path, Path]:
    stem = weights_path.name[: -len(WEIGHTS_SUFFIX)]
    d = weights_path.parent
    return d / f"{stem}{STATE_TENSORS_SUFFIX}", d / f"{stem}{STATE_JSON_SUFFIX}", d / f"{stem}{LEGACY_PICKLE_SUFFIX}"


def save_checkpoint(
    out_dir: Union[str, os.PathLike],
    *,
    model: nn.Module,
    meta: Dict[str, Any],
    epoch: int,
    optimizer: Optional[torch.optim.Optimizer] = None,
    scheduler: Any = None,
    ema: Any = None,
    extra: Optional[Dict[str, Any]] = None,
    rng: Optional[Dict[str, Tuple[Dict[str, torch.Tensor], Dict[str, Any]]]] = None,
    name: str = "last",
) -> Path:
    """Write ``{name}.safetensors`` (+ the training state when any of optimizer / scheduler / extra / rng is given).

    Args:
        out_dir: Folder of the checkpoint (created if needed).
        model: The model (DDP / compiled wrappers are unwrapped).
        meta: JSON-serialisable description; must contain ``task`` and ``model``.
        epoch: Epochs completed.
        optimizer: Its state is saved (tensors in safetensors, the rest in JSON).
        scheduler: A timm scheduler (or anything with a JSON-serialisable ``state_dict``).
        ema: ``timm.utils.ModelEmaV3`` (or a module); its weights go into the weights file.
        extra: JSON-serialisable counters (best score, seconds trained, ...).
        rng: Per-rank RNG states, ``{rank: rng_state_parts(...)}`` (see :mod:`lifevit.engine.rng`).
        name: ``last``, ``best``, ...

    Returns:
        The weights file.
    """
    for key in ("task", "model"):
        if key not in meta:
            raise ValueError(f"checkpoint meta must contain {key!r}; got keys {sorted(meta)}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt_id = uuid.uuid4().hex
    tensors = _cpu_tensors(_unwrap(model).state_dict())
    if ema is not None:
        tensors.update(_cpu_tensors(_ema_state_dict(ema), EMA_PREFIX))
    metadata = {"meta": json.dumps(meta, default=str), "epoch": str(int(epoch)), "id": ckpt_id, "format": FORMAT}
    weights_path = out_dir / f"{name}{WEIGHTS_SUFFIX}"
    tensors_path, json_path, _ = _state_paths(weights_path)

    if optimizer is not None or scheduler is not None or extra or rng:
        state_tensors: Dict[str, torch.Tensor] = {}
        state_json: Dict[str, Any] = {"id": ckpt_id, "epoch": int(epoch), "format": FORMAT, "extra": extra or {}}
        if optimizer is not None:
            opt_tensors, state_json["optimizer"] = _split_optimizer(optimizer.state_dict())
            state_tensors.update(opt_tensors)
        if scheduler is not None:
            state_json["scheduler"] = scheduler.state_dict()
        if rng:
            state_json["rng"] = {}
            for rank, (t, js) in rng.items():
                state_tensors.update({f"rng.{rank}.{k}": v for k, v in t.items()})
                state_json["rng"][str(rank)] = js
        text = json.dumps(state_json, indent=1)  # fails loudly on anything that is not plain data
        _atomic_write(tensors_path, lambda tmp: save_file(_cpu_tensors(state_tensors), tmp, metadata={"id": ckpt_id}))
        _atomic_write(json_path, lambda tmp: Path(tmp).write_text(text))
    else:
        for p in (tensors_path, json_path):
            if p.exists():
                p.unlink()
    _atomic_write(weights_path, lambda tmp: save_file(tensors, tmp, metadata=metadata))
    _logger.debug("saved checkpoint %s (epoch %d)", weights_path, epoch)
    return weights_path


def resolve_checkpoint(path: Union[str, os.PathLike]) -> Path:
    """The weights file for ``path``: the file itself, ``{path}.safetensors``, or ``last.safetensors`` in a run
    folder (``RUN/checkpoints/last.safetensors``) or a checkpoints folder."""
    path = Path(path)
    candidates = [path]
    if path.is_dir():
        candidates = [path / "checkpoints" / f"last{WEIGHTS_SUFFIX}", path / f"last{WEIGHTS_SUFFIX}"]
    elif path.suffix != WEIGHTS_SUFFIX:
        candidates.append(path.with_name(path.name + WEIGHTS_SUFFIX))
    for c in candidates:
        if c.is_file():
            return c
    raise FileNotFoundError(
        f"no checkpoint at {path}; expected a {WEIGHTS_SUFFIX} file written by lifevit or a run folder holding "
        f"checkpoints/last{WEIGHTS_SUFFIX}. Looked for: {', '.join(str(c) for c in candidates)}"
    )


def _readable_sibling(path: Path) -> Optional[Path]:
    for other in ("best", "last"):
        p = path.with_name(f"{other}{WEIGHTS_SUFFIX}")
        if p != path and p.is_file():
            try:
                with safe_open(str(p), framework="pt") as f:
                    if "meta" in (f.metadata() or {}):
                        return p
            except (SafetensorError, OSError, ValueError):
                continue
    return None


def load_checkpoint(path: Union[str, os.PathLike], map_location: str = "cpu") -> Checkpoint:
    """Read a checkpoint's weights file (a file, its stem, or a run folder). The training state is not read.

    Raises:
        FileNotFoundError: Nothing at ``path``.
        ValueError: The file is empty, truncated, not safetensors, or not written by lifevit (the message names
            the file and, when there is one, a readable checkpoint beside it).
    """
    weights_path = resolve_checkpoint(path)
    model_state: Dict[str, torch.Tensor] = {}
    ema_state: Dict[str, torch.Tensor] = {}
    try:
        if weights_path.stat().st_size == 0:
            raise SafetensorError("the file is empty")
        with safe_open(str(weights_path), framework="pt", device=map_location) as f:
            metadata = f.metadata() or {}
            if "meta" not in metadata:
                raise ValueError(f"{weights_path} is not a lifevit checkpoint (no 'meta' in its safetensors metadata)")
            for key in f.keys():
                if key.startswith(EMA_PREFIX):
                    ema_state[key[len(EMA_PREFIX) :]] = f.get_tensor(key)
                else:
                    model_state[key] = f.get_tensor(key)
        meta = json.loads(metadata["meta"])
    except (SafetensorError, OSError, json.JSONDecodeError, RuntimeError) as err:
        sibling = _readable_sibling(weights_path)
        hint = f"; {sibling} is readable: use --checkpoint {sibling}" if sibling else ""
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ValueError(
            f"{weights_path} is not a readable lifevit checkpoint (expected a safetensors file; it is empty, "
            f"truncated or of another format: {reason}){hint}"
        ) from None
    return Checkpoint(
        meta=meta,
        epoch=int(metadata.get("epoch", 0)),
        model_state=model_state,
        ema_state=ema_state or None,
        id=metadata.get("id", ""),
        path=weights_path,
    )


def load_training_state(ckpt: Checkpoint) -> Dict[str, Any]:
    """The training state written beside ``ckpt``'s weights: ``optimizer`` (a state_dict), ``scheduler``,
    ``extra``, ``rng`` (``{rank: (tensors, json)}``), ``epoch``. Nothing is unpickled.

    Raises:
        ValueError: No training state beside the weights (or only a legacy pickle, which is never opened), or one
            that belongs to other weights (the run stopped while writing), or one that is not readable.
    """
    weights_path = Path(ckpt.path)
    tensors_path, json_path, legacy = _state_paths(weights_path)
    if not json_path.is_file() or not tensors_path.is_file():
        if legacy.exists():
            raise ValueError(
                f"{legacy} is a pickled training state (written by lifevit 0.1) and is never opened, because "
                f"unpickling a file can run code; resume needs {json_path.name} and {tensors_path.name}. "
                f"Start a new run (--checkpoint {weights_path} initialises its weights from this one)"
            )
        raise ValueError(
            f"{weights_path} has no training state to resume from (expected {json_path.name} and "
            f"{tensors_path.name} beside it; 'best' checkpoints keep weights only)"
        )
    try:
        js = json.loads(json_path.read_text())
        with safe_open(str(tensors_path), framework="pt") as f:
            file_id = (f.metadata() or {}).get("id")
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(
            f"the training state beside {weights_path} is not readable ({str(err).splitlines()[0]}); "
            "it must be the JSON + safetensors pair lifevit writes"
        ) from None
    if not isinstance(js, dict) or js.get("id") != ckpt.id or file_id != ckpt.id:
        raise ValueError(
            f"the training state beside {weights_path} belongs to other weights (the run stopped while writing "
            "its checkpoint); it cannot be resumed"
        )
    rng = {
        rank: ({k[len(f"rng.{rank}.") :]: v for k, v in tensors.items() if k.startswith(f"rng.{rank}.")}, r_js)
        for rank, r_js in js.get("rng", {}).items()
    }
    return {
        "epoch": int(js.get("epoch", ckpt.epoch)),
        "optimizer": _join_optimizer(tensors, js["optimizer"]) if "optimizer" in js else None,
        "scheduler": js.get("scheduler"),
        "extra": js.get("extra", {}),
        "rng": rng,
    }


def create_model_from_checkpoint(ckpt: Union[Checkpoint, str, os.PathLike], use_ema: bool = False) -> nn.Module:
    """Rebuild a classifier from its checkpoint alone: ``timm.create_model(meta['model'], **meta['model_kwargs'])``.

    Args:
        ckpt: A loaded :class:`Checkpoint` or a path for :func:`load_checkpoint`.
        use_ema: Load the EMA weights (``ValueError`` if the checkpoint has none).
    """
    import timm

    import lifevit.models  # noqa: F401  (registers lifevit models)

    if not isinstance(ckpt, Checkpoint):
        ckpt = load_checkpoint(ckpt)
    name = ckpt.meta["model"]
    if "model_kwargs" not in ckpt.meta:
        raise ValueError(f"{ckpt.path} is a {ckpt.meta.get('task')!r} checkpoint, not a timm classifier")
    if name not in timm.list_models():
        raise ValueError(f"checkpoint {ckpt.path} was written for model {name!r}, which is not registered here")
    kwargs = dict(ckpt.meta["model_kwargs"])
    from lifevit.layers import life_options_of_state_dict

    older = life_options_of_state_dict(ckpt.model_state)  # a lifevit 0.1 LIFE layout, e.g. pointwise biases
    if older:
        kwargs["life_options"] = {**older, **kwargs.get("life_options", {})}
    model = timm.create_model(name, **kwargs)
    if use_ema and ckpt.ema_state is None:
        raise ValueError(f"checkpoint {ckpt.path} has no EMA weights; use use_ema=False")
    load_weights(model, ckpt.ema_state if use_ema else ckpt.model_state, ckpt.path)
    return model


def load_weights(model: nn.Module, state: Dict[str, torch.Tensor], source: Any) -> None:
    """``model.load_state_dict(state)`` with a one-line error naming ``source`` when keys or shapes differ."""
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
        detail = "; ".join(lines[1:3]) if len(lines) > 1 else lines[0]
        raise ValueError(f"the weights in {source} do not fit this model: {detail[:300]}") from None
