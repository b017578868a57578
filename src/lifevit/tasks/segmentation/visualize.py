"""Colourised label maps and overlays for ``lifevit segment predict``."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from lifevit.data.cityscapes import IGNORE_INDEX

__all__ = ["colorize", "overlay"]


def colorize(labels: np.ndarray, colors: Sequence[Sequence[int]]) -> np.ndarray:
    """Train-id map (H, W) -> RGB uint8 (H, W, 3); ``IGNORE_INDEX`` and ids without a colour are black."""
    palette = np.zeros((256, 3), np.uint8)
    palette[: len(colors)] = np.asarray(colors, np.uint8).reshape(-1, 3)
    palette[IGNORE_INDEX] = 0
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"expected a label map (H, W), got shape {labels.shape}")
    return palette[labels.astype(np.int64).clip(0, 255)]


def overlay(image: np.ndarray, mask_rgb: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend a colourised mask over an RGB uint8 image: ``(1 - alpha) * image + alpha * mask``."""
    if image.shape != mask_rgb.shape:
        raise ValueError(f"image {image.shape} and mask {mask_rgb.shape} differ in shape")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    blend = (1.0 - alpha) * image.astype(np.float32) + alpha * mask_rgb.astype(np.float32)
    return blend.round().clip(0, 255).astype(np.uint8)
