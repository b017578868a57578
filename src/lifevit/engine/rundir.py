"""Run folders: refuse to overwrite finished work, log metrics per epoch (JSON lines + TensorBoard)."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

__all__ = ["prepare_output_dir", "MetricsLogger", "write_json", "read_jsonl"]

_logger = logging.getLogger(__name__)


RUN_FILES = {"config.yaml", "metrics.jsonl", "tensorboard", "checkpoints", "curves.png"}
"""What the engine writes into a run folder before its first checkpoint (and so may write again)."""


def _unstarted_run(path: Path) -> bool:
    """A run folder the engine made that stopped before its first checkpoint: only engine files, no weights."""
    entries = {p.name for p in path.iterdir()}
    if "config.yaml" not in entries or not entries <= RUN_FILES:
        return False
    ckpts = path / "checkpoints"
    return not ckpts.is_dir() or not any(ckpts.glob("*.safetensors"))


def _clear_unstarted(path: Path) -> None:
    import shutil

    for name in RUN_FILES:
        p = path / name
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()


def prepare_output_dir(path: Union[str, os.PathLike], resume: bool = False, create: bool = True) -> str:
    """Check (and make) a run folder; returns ``"new"``, ``"resume"`` or ``"restart"``.

    * ``"new"``: the folder did not exist or was empty.
    * ``"resume"`` (``resume`` only): it holds ``checkpoints/last.safetensors``.
    * ``"restart"``: it holds a run that stopped before its first checkpoint (only the files the engine writes,
      no weights); those files are removed and the run starts again, so a run killed early needs no cleaning
      by hand. Anything else in the folder is never touched.

    Args:
        path: The run folder.
        resume: Continue the run in ``path``.
        create: Make / clean the folder (the main process); other processes only check.

    Raises:
        ValueError: ``path`` is a file, or holds other files and ``resume`` is false, or is not a run folder.
        FileNotFoundError: ``resume`` and ``path`` does not exist.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"output path {path} is a file; expected a folder (new or empty, or a run to resume)")
    if resume and not path.is_dir():
        raise FileNotFoundError(f"cannot resume: run folder {path} does not exist")
    if path.is_dir() and any(path.iterdir()):
        if resume and (path / "checkpoints" / "last.safetensors").is_file():
            return "resume"
        if _unstarted_run(path):
            _logger.info("%s holds a run that stopped before its first checkpoint; starting it again", path)
            if create:
                _clear_unstarted(path)
            return "restart"
        if resume:
            raise ValueError(
                f"cannot resume {path}: it holds no checkpoints/last.safetensors (is it a lifevit run folder?)"
            )
        raise ValueError(
            f"output folder {path} already exists and is not empty; choose another --output, or continue it "
            f"with --resume {path}"
        )
    if create:
        path.mkdir(parents=True, exist_ok=True)
    return "new"


def _json_default(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist"):  # numpy / torch scalars and arrays
        return obj.tolist()
    if isinstance(obj, (set, tuple)):
        return list(obj)
    return str(obj)


def write_json(path: Union[str, os.PathLike], obj: Any) -> Path:
    """Write ``obj`` as indented JSON, atomically (dataclasses, paths, numpy and torch values are converted)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(obj, indent=2, default=_json_default, allow_nan=True) + "\n"
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)
    return path


def read_jsonl(path: Union[str, os.PathLike]) -> List[Dict[str, Any]]:
    """Records of a JSON-lines file (blank lines skipped)."""
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


class MetricsLogger:
    """Appends one JSON record per :meth:`log` call to ``metrics.jsonl`` and, when TensorBoard is installed,
    writes every numeric value as a scalar (step = the record's ``epoch``, else a running count).

    Args:
        out_dir: Run folder.
        filename: Name of the JSON-lines file.
        tensorboard: Also log to TensorBoard (in ``out_dir/tensorboard``) if it is installed.
    """

    def __init__(self, out_dir: Union[str, os.PathLike], filename: str = "metrics.jsonl", tensorboard: bool = True):
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.out_dir / filename
        self._step = 0
        self._writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._writer = SummaryWriter(log_dir=str(self.out_dir / "tensorboard"))
            except ImportError:
                _logger.debug("tensorboard is not installed; logging to %s only", self.path)

    def records(self) -> List[Dict[str, Any]]:
        """Records logged so far (read back from the file)."""
        return read_jsonl(self.path) if self.path.is_file() else []

    def truncate(self, keep_epochs_below: int) -> None:
        """Drop records with ``epoch >= keep_epochs_below`` (used when resuming from an earlier checkpoint)."""
        kept = [r for r in self.records() if r.get("epoch", -1) < keep_epochs_below]
        with open(self.path, "w") as f:
            f.writelines(json.dumps(r, default=_json_default) + "\n" for r in kept)
        self._step = len(kept)

    def log(self, record: Dict[str, Any]) -> None:
        """Append ``record`` (a flat dict) to the JSON-lines file and TensorBoard."""
        with open(self.path, "a") as f:
            f.write(json.dumps(record, default=_json_default) + "\n")
        step = int(record.get("epoch", self._step))
        self._step += 1
        if self._writer is not None:
            for key, value in record.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "epoch":
                    if math.isfinite(value):
                        self._writer.add_scalar(key.replace("_", "/", 1) if "/" not in key else key, value, step)
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __enter__(self) -> MetricsLogger:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def find_runs(root: Union[str, os.PathLike], summary: str = "summary.json") -> List[Path]:
    """Run folders under ``root`` holding a ``summary.json`` (sorted)."""
    root = Path(root)
    return sorted(p.parent for p in root.glob(f"**/{summary}")) if root.is_dir() else []


def load_json(path: Union[str, os.PathLike]) -> Optional[Any]:
    """JSON content of ``path`` or ``None`` when it does not exist."""
    path = Path(path)
    return json.loads(path.read_text()) if path.is_file() else None
