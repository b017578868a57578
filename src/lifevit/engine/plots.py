"""Plots of a run: training curves from ``metrics.jsonl`` and a confusion matrix (matplotlib, no display)."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import numpy as np

from .rundir import read_jsonl

__all__ = ["plot_curves", "plot_confusion_matrix", "curve_groups"]

_SKIP = {"epoch", "step", "time", "epoch_seconds", "train_seconds", "eval_seconds", "img_per_s"}
_METRIC_WORDS = ("top1", "top5", "acc", "map", "miou", "iou", "ap50", "ap", "f1")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def curve_groups(records: Sequence[Dict]) -> Dict[str, List[str]]:
    """Numeric keys of ``records`` grouped into panels: ``loss``, ``accuracy / metric``, ``learning rate``."""
    keys: List[str] = []
    for r in records:
        for k, v in r.items():
            if k not in keys and k not in _SKIP and isinstance(v, (int, float)) and not isinstance(v, bool):
                keys.append(k)
    groups: Dict[str, List[str]] = {"loss": [], "accuracy / metric": [], "learning rate": []}
    for k in keys:
        low = k.lower()
        if "loss" in low:
            groups["loss"].append(k)
        elif low == "lr" or low.endswith("_lr") or low.startswith("lr"):
            groups["learning rate"].append(k)
        elif any(w in low for w in _METRIC_WORDS):
            groups["accuracy / metric"].append(k)
    return {name: ks for name, ks in groups.items() if ks}


def plot_curves(
    metrics_jsonl: Union[str, os.PathLike], out_png: Union[str, os.PathLike], title: Optional[str] = None
) -> Path:
    """Plot loss, accuracy/metric and learning-rate curves of a run against the epoch.

    Args:
        metrics_jsonl: A ``metrics.jsonl`` with one record per epoch (``epoch`` plus numeric values).
        out_png: Image to write.
        title: Figure title (default: the run folder's name).

    Raises:
        ValueError: The file has no records with numeric values.
    """
    records = read_jsonl(metrics_jsonl)
    groups = curve_groups(records)
    if not groups:
        raise ValueError(f"{metrics_jsonl} has no numeric metrics to plot (got {len(records)} records)")
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(groups), figsize=(5 * len(groups), 3.6), squeeze=False)
    for ax, (name, keys) in zip(axes[0], groups.items()):
        for key in keys:
            pts = [(r.get("epoch", i), r[key]) for i, r in enumerate(records) if isinstance(r.get(key), (int, float))]
            pts = [(x, y) for x, y in pts if math.isfinite(y)]
            if pts:
                xs, ys = zip(*pts)
                ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, markersize=3, label=key)
        ax.set_xlabel("epoch")
        ax.set_title(name)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title or Path(metrics_jsonl).resolve().parent.name)
    fig.tight_layout()
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return out_png


def plot_confusion_matrix(
    matrix: np.ndarray,
    class_names: Sequence[str],
    out_png: Union[str, os.PathLike],
    title: str = "confusion matrix",
    normalize: bool = True,
) -> Path:
    """Draw a confusion matrix (rows = true class, columns = prediction), row-normalised by default.

    Args:
        matrix: (K, K) counts.
        class_names: K names.
        out_png: Image to write.
        title: Figure title.
        normalize: Show each row as fractions of the true class.
    """
    matrix = np.asarray(matrix, dtype=np.float64)
    k = len(class_names)
    if matrix.shape != (k, k):
        raise ValueError(f"confusion matrix shape {matrix.shape} does not match {k} class names")
    shown = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1) if normalize else matrix
    plt = _pyplot()
    side = min(max(4.0, 0.45 * k + 2), 24)
    fig, ax = plt.subplots(figsize=(side, side))
    im = ax.imshow(shown, cmap="Blues", vmin=0, vmax=1 if normalize else None)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    if k <= 40:
        ax.set_xticks(range(k), class_names, rotation=90, fontsize=8)
        ax.set_yticks(range(k), class_names, fontsize=8)
    if k <= 20:
        for i in range(k):
            for j in range(k):
                v = shown[i, j]
                ax.text(
                    j,
                    i,
                    f"{v:.2f}" if normalize else f"{int(v)}",
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if v > (0.5 if normalize else shown.max() / 2) else "black",
                )
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.tight_layout()
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return out_png
