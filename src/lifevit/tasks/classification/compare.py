"""Train several models (or read their finished runs) and tabulate them like the paper's classification table."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import yaml

from ...config import config_to_dict
from ...engine.rundir import load_json
from .config import ClassificationConfig

__all__ = ["comparison_table", "run_dir_for", "train_or_read"]

_logger = logging.getLogger(__name__)


def run_dir_for(runs_dir: Path, cfg: ClassificationConfig) -> Path:
    """``runs_dir/<dataset>[-n<samples>]/<model>-s<seed>``: where :func:`train_or_read` keeps a run."""
    n = f"-n{cfg.data.train_samples}" if cfg.data.train_samples else ""
    return Path(runs_dir) / f"{cfg.data.dataset}{n}" / f"{cfg.model.name}-s{cfg.train.seed}"


def _state(run_dir: Path) -> str:
    if (run_dir / "summary.json").is_file():
        return "done"
    if (run_dir / "checkpoints" / "last.safetensors").is_file():
        return "resume"
    return "new"  # a folder the engine left before its first checkpoint is started again by the engine


def _command(cfg: ClassificationConfig, run_dir: Path, state: str, threads: Optional[int]) -> List[str]:
    cmd = [sys.executable, "-m", "lifevit", "classify", "train", "--no-progress"]
    if state == "resume":
        cmd += ["--resume", str(run_dir)]
    else:
        cfg_file = run_dir.parent / f".{run_dir.name}.config.yaml"
        cfg_file.parent.mkdir(parents=True, exist_ok=True)
        cfg_file.write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
        cmd += ["--config", str(cfg_file), "--output", str(run_dir)]
    if threads:
        cmd += ["--threads", str(threads)]
    return cmd


def _echo_progress(log: Path, offset: int, name: str) -> int:
    """Log the per-epoch lines a training process appended to ``log`` since ``offset``; returns the new offset."""
    with open(log, "rb") as f:
        f.seek(offset)
        chunk = f.read()
    end = chunk.rfind(b"\n") + 1
    for line in chunk[:end].decode(errors="replace").splitlines():
        if "epoch " in line and "loss" in line:
            _logger.info("[%s] %s", name, line.split(": ", 1)[-1])
    return offset + end


def train_or_read(
    configs: Sequence[ClassificationConfig], runs_dir: Path, jobs: int = 1, threads: Optional[int] = None
) -> List[Dict[str, Any]]:
    """Summaries of the runs of ``configs``: read when finished, resumed when interrupted, trained otherwise.

    Args:
        configs: One resolved config per run.
        runs_dir: Root of the run folders (see :func:`run_dir_for`).
        jobs: Runs trained at the same time, each in its own process (``1``: in this process, one after another).
        threads: torch threads per run (default: the CPU count divided by ``jobs``).

    Raises:
        RuntimeError: A training process failed (its log file is named).
    """
    from ...engine.trainer import fit
    from .task import ClassificationTask

    run_dirs = [run_dir_for(runs_dir, c) for c in configs]
    if len(set(run_dirs)) != len(run_dirs):
        raise ValueError("two runs of the comparison share a folder; give distinct models / data sets / seeds")
    states = [_state(d) for d in run_dirs]
    for d, s in zip(run_dirs, states):
        if s == "done":
            _logger.info("reading the finished run %s", d)
    todo = [i for i, s in enumerate(states) if s != "done"]
    if jobs <= 1:
        for i in todo:
            cfg = (
                configs[i] if threads is None else replace(configs[i], train=replace(configs[i].train, threads=threads))
            )
            _logger.info("training %s on %s -> %s", cfg.model.name, cfg.data.dataset, run_dirs[i])
            fit(ClassificationTask(cfg), run_dirs[i], resume=states[i] == "resume")
    else:
        per_job = threads or max(1, (os.cpu_count() or 1) // jobs)
        pending, running, offsets = list(todo), [], {}
        while pending or running:
            while pending and len(running) < jobs:
                i = pending.pop(0)
                log = run_dirs[i].parent / f"{run_dirs[i].name}.log"
                log.parent.mkdir(parents=True, exist_ok=True)
                cmd = _command(configs[i], run_dirs[i], states[i], per_job)
                _logger.info(
                    "training %s on %s -> %s (log: %s)",
                    configs[i].model.name,
                    configs[i].data.dataset,
                    run_dirs[i],
                    log,
                )
                f = open(log, "w")
                running.append((i, subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT), f, log))
            time.sleep(1.0)
            for i, _, _, log in running:
                offsets[i] = _echo_progress(log, offsets.get(i, 0), configs[i].model.name)
            for item in list(running):
                i, proc, f, log = item
                if proc.poll() is not None:
                    f.close()
                    running.remove(item)
                    if proc.returncode != 0:
                        for _, other, g, _ in running:
                            other.terminate()
                            other.wait()
                            g.close()
                        raise RuntimeError(
                            f"training {configs[i].model.name} failed (exit {proc.returncode}); see {log}"
                        )
                    _logger.info("finished %s", run_dirs[i])
    summaries = []
    for d in run_dirs:
        s = load_json(d / "summary.json")
        if s is None:
            raise RuntimeError(f"{d} has no summary.json after training")
        s["run_dir"] = str(d)
        summaries.append(s)
    return summaries


def comparison_table(summaries: Sequence[Dict[str, Any]], datasets: Sequence[str]) -> str:
    """A markdown table: model, #params (M), GMACs, top-1 per data set (EMA top-1 in brackets when kept).

    Parameters and MACs are those of the model on the first data set it was run on.
    """
    by_model: Dict[str, Dict[str, Dict[str, Any]]] = {}
    for s in summaries:
        by_model.setdefault(s["model"], {})[s["dataset"]] = s
    head = "| model | #params (M) | GMACs | " + " | ".join(f"top-1 {d} (%)" for d in datasets) + " |"
    sep = "|---|---:|---:|" + "---:|" * len(datasets)
    rows = [head, sep]
    for model, runs in by_model.items():
        first = next(iter(runs.values()))
        cells = []
        for d in datasets:
            s = runs.get(d)
            if s is None:
                cells.append("-")
                continue
            ema = f" (EMA {s['ema_top1']:.2f})" if s.get("ema_top1") is not None else ""
            cells.append(f"{s['top1']:.2f}{ema}")
        rows.append(f"| {model} | {first['params'] / 1e6:.2f} | {first['gmacs']:.3f} | " + " | ".join(cells) + " |")
    return "\n".join(rows)
