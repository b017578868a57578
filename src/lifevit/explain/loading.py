"""Rebuild any lifevit checkpoint (classification, segmentation, detection) with the preprocessing it was trained
with, for explanations of image files."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Callable, List, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
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


def _open(path: Union[str, os.PathLike], mode: str) -> Image.Image:
    from lifevit.data.images import read_image

    return read_image(path, mode)


def _normalise(pixels: np.ndarray, mean, std) -> torch.Tensor:
    x = torch.from_numpy(np.array(pixels, dtype=np.float32)) / 255.0
    x = x[None] if x.ndim == 2 else x.permute(2, 0, 1)  # (C, H, W)
    m = torch.as_tensor(mean, dtype=torch.float32).view(-1, 1, 1)
    s = torch.as_tensor(std, dtype=torch.float32).view(-1, 1, 1)
    return (x - m) / s


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
        from lifevit.tasks.segmentation.task import load_model

        model, cfg, _ = load_model(checkpoint, device)

        def preprocess(path):
            pixels = np.asarray(_open(path, "RGB"))
            return _normalise(pixels, cfg.data.mean, cfg.data.std), pixels

        return ExplainableModel(model, task, list(ckpt.meta["class_names"]), preprocess, ckpt.meta["model"])

    if task == "detection":
        from lifevit.tasks.detection.task import load_model
        from lifevit.tasks.detection.transforms import IMAGENET_MEAN, IMAGENET_STD

        model, cfg, classes = load_model(checkpoint, device)
        divisor = model.size_divisibility

        def preprocess(path):
            img = _open(path, "RGB")
            scale = cfg.data.img_size / max(img.size)
            size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
            # pad to the backbone stride so every token is a full cell (the map is cropped back by the caller)
            pixels = np.asarray(img.resize(size, Image.BILINEAR))
            x = _normalise(pixels, IMAGENET_MEAN, IMAGENET_STD)
            H, W = x.shape[-2:]
            x = F.pad(x, (0, math.ceil(W / divisor) * divisor - W, 0, math.ceil(H / divisor) * divisor - H))
            return x, pixels

        return ExplainableModel(model, task, list(classes), preprocess, ckpt.meta["model"])

    raise ValueError(
        f"{ckpt.path} is a {task!r} checkpoint; explain supports 'classification', 'segmentation' and 'detection'"
    )
