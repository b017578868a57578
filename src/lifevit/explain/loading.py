"""Rebuild any lifevit checkpoint (classification, segmentation, detection) with the preprocessing it was trained
with, for explanations of image files."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, List, Tuple, Union

import numpy as np
import torch
from torch import nn

__all__ = ["ExplainableModel", "load_explainable"]


@dataclass
class ExplainableModel:
    """A model rebuilt from a checkpoint, ready for :func:`lifevit.explain.explain`.

    Attributes:
        model: The model in eval mode.
        task: ``classification``, ``segmentation`` or ``detection``.
        class_names: Name of each class index.
        preprocess: Image file -> (normalised ``(C, H, W)`` tensor the model reads, ``(H, W[, 3])`` uint8 image of
            the same size for display).
        name: Model name stored in the checkpoint.
    """

    model: nn.Module
    task: str
    class_names: List[str]
    preprocess: Callable[[Union[str, os.PathLike]], Tuple[torch.Tensor, np.ndarray]]
    name: str


def load_explainable(checkpoint: Union[str, os.PathLike], device: Union[str, torch.device] = "cpu") -> ExplainableModel:
    """Rebuild the model of a lifevit checkpoint (a weights file or a run folder) and its preprocessing.

    Raises:
        FileNotFoundError: No checkpoint at ``checkpoint``.
        ValueError: The checkpoint's task is not one of classification, segmentation, detection.
    """
    from lifevit.engine.checkpoint import load_checkpoint

    ckpt = load_checkpoint(checkpoint)
    task = ckpt.meta.get("task")
    if task == "classification":
        from lifevit.tasks.classification.task import load_model, preprocess

        model, _ = load_model(checkpoint, device)
        num_classes = int(ckpt.meta["model_kwargs"].get("num_classes", 0)) or None
        names = list(ckpt.meta.get("classes") or [str(i) for i in range(num_classes or 0)])
        return ExplainableModel(model, task, names, preprocess(ckpt.meta), ckpt.meta["model"])

    if task == "segmentation":
        from lifevit.tasks.segmentation.task import load_model, preprocess

        model, cfg, _ = load_model(checkpoint, device)
        return ExplainableModel(model, task, list(ckpt.meta["class_names"]), preprocess(cfg.data), ckpt.meta["model"])

    if task == "detection":
        from lifevit.tasks.detection.task import load_model, preprocess

        model, cfg, classes = load_model(checkpoint, device)
        prep = preprocess(cfg, model.size_divisibility)  # padded to the backbone stride: every token a full cell
        return ExplainableModel(model, task, list(classes), prep, ckpt.meta["model"])

    raise ValueError(
        f"{ckpt.path} is a {task!r} checkpoint; explain supports 'classification', 'segmentation' and 'detection'"
    )
