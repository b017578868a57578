"""Explain image files with a checkpoint and write overlays: the library side of ``lifevit explain``."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

import numpy as np

from ..tasks.inputs import output_names
from .api import explain
from .loading import load_explainable
from .overlay import save_overlay

__all__ = ["ExplainConfig", "explain_files"]


@dataclass
class ExplainConfig:
    """What ``lifevit explain`` does (the CLI merges its flags into this once).

    Attributes:
        checkpoint: lifevit checkpoint (weights file or run folder).
        images: Image files or folders.
        output: Folder for the PNGs, ``explain.json`` and ``maps.npz``.
        method: One of :data:`lifevit.explain.api.METHODS`.
        class_names: Classes to map (dense tasks: default the predicted ones, background left out; classifiers,
            every method but ``rollout``: default the predicted class).
        head_fusion: ``mean``, ``max`` or ``min``.
        discard_ratio: Lowest attentions discarded per row, in [0, 1).
        score_threshold: Detection: box score defining the tokens of a class.
        save_arrays: Also write the maps (image size) to ``maps.npz``.
        device: ``cpu`` or ``cuda``.
        seed: ``random``: seed of the maps.
    """

    checkpoint: str
    images: Sequence[str]
    output: str = "explain"
    method: str = "rollout"
    class_names: Optional[Sequence[str]] = None
    head_fusion: str = "mean"
    discard_ratio: float = 0.0
    score_threshold: float = 0.3
    save_arrays: bool = False
    device: str = "cpu"
    seed: int = 0


def explain_files(cfg: ExplainConfig) -> Dict[str, Any]:
    """Explain every image of ``cfg``; write ``<stem>_<method>.png`` overlays, ``explain.json`` (and ``maps.npz``).

    Returns:
        The summary written to ``explain.json``: checkpoint, model, task and one entry per image (output PNG,
        predicted class for classifiers, mapped classes and detections for dense models).

    Raises:
        FileNotFoundError: A missing checkpoint or image.
        ValueError: A bad option (unknown class name, ``--class`` with ``rollout``, discard ratio out of range).
    """
    if not 0.0 <= cfg.discard_ratio < 1.0:
        raise ValueError(f"--discard-ratio must be in [0, 1), got {cfg.discard_ratio}")
    from .api import METHODS

    if cfg.method not in METHODS:
        raise ValueError(f"--method must be one of {', '.join(METHODS)}; got {cfg.method!r}")
    loaded = load_explainable(cfg.checkpoint, cfg.device)
    names = loaded.class_names
    if cfg.class_names and cfg.method == "rollout":
        raise ValueError("--class selects per-class maps; the class-token roll-out is one class-agnostic map")
    class_ids = None
    if cfg.class_names:
        unknown = [c for c in cfg.class_names if c not in names]
        if unknown:
            raise ValueError(f"--class {unknown} not among the checkpoint's classes {names}")
        class_ids = [names.index(c) for c in cfg.class_names]

    out_dir = Path(cfg.output)
    out_dir.mkdir(parents=True, exist_ok=True)
    entries, arrays = [], {}
    files, out_names = output_names(cfg.images)
    for path, out_name in zip(files, out_names):
        x, pixels = loaded.preprocess(path)
        result = explain(
            loaded.model,
            x[None].to(cfg.device),
            cfg.method,
            classes=class_ids,
            head_fusion=cfg.head_fusion,
            discard_ratio=cfg.discard_ratio,
            score_threshold=cfg.score_threshold,
            seed=cfg.seed,
        )
        H, W = pixels.shape[:2]
        maps = result.maps[0][:, :H, :W]  # (K, H, W) without the stride padding
        entry = {"image": str(path), "name": out_name, "method": cfg.method, "task": loaded.task}
        if result.classes == [-1]:
            title = "class-token roll-out" if cfg.method == "rollout" else cfg.method
            if loaded.task == "classification":
                probs = result.output.softmax(-1)[0]
                top = int(probs.argmax())
                entry.update(prediction=names[top] if top < len(names) else top, score=float(probs[top]))
                title += f"\npred: {entry['prediction']} ({entry['score']:.2f})"
            panels, titles = [maps[0]], [title]
        else:
            keep = [k for k, c in enumerate(result.classes) if class_ids is not None or result.predicted[0, k]]
            if class_ids is None and loaded.task != "classification":  # default: predicted classes, background left out
                keep = [k for k in keep if names[result.classes[k]].lower() != "background"]
            panels = [maps[k] for k in keep]
            titles = [
                f"{names[result.classes[k]]}" + ("" if result.predicted[0, k] else "\n(not predicted)") for k in keep
            ]
            entry["classes"] = [names[result.classes[k]] for k in keep]
            if result.detections is not None:
                det = result.detections[0]
                entry["detections"] = [
                    {"label": names[int(lab)], "score": float(s), "box": [round(float(v), 1) for v in b]}
                    for b, s, lab in zip(det["boxes"], det["scores"], det["labels"])
                ]
        png = save_overlay(
            pixels, panels, titles, out_dir / f"{out_name}_{cfg.method}.png", suptitle=f"{loaded.name}: {cfg.method}"
        )
        entry["output"] = str(png)
        entries.append(entry)
        if cfg.save_arrays:
            arrays[out_name] = np.stack(panels) if panels else np.zeros((0, H, W), np.float32)
    if cfg.save_arrays:
        np.savez_compressed(out_dir / "maps.npz", **arrays)
    summary = {"checkpoint": cfg.checkpoint, "model": loaded.name, "task": loaded.task, "images": entries}
    (out_dir / "explain.json").write_text(json.dumps(summary, indent=2))
    return summary
