"""Side-by-side overlays of explanation maps on their image (matplotlib, no global pyplot state)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

__all__ = ["normalize_map", "save_overlay"]


def normalize_map(heatmap: np.ndarray) -> np.ndarray:
    """Scale a map to [0, 1] (min -> 0, max -> 1; a constant map becomes all 0)."""
    heatmap = np.asarray(heatmap, dtype=np.float32)
    lo, hi = float(heatmap.min()), float(heatmap.max())
    return (heatmap - lo) / (hi - lo) if hi > lo else np.zeros_like(heatmap)


def save_overlay(
    image: np.ndarray,
    maps: Sequence[np.ndarray],
    titles: Sequence[str],
    out_path: Union[str, os.PathLike],
    image_title: str = "input",
    alpha: float = 0.5,
    cmap: str = "jet",
    panel_size: float = 2.6,
    suptitle: Optional[str] = None,
) -> Path:
    """Write a PNG: the image, then each map (normalised to [0, 1]) blended over it, side by side.

    Args:
        image: ``(H, W)`` grey or ``(H, W, 3)`` RGB image, uint8 or float in [0, 1].
        maps: ``(H, W)`` maps, one panel each.
        titles: One title per map.
        out_path: PNG file to write (its folder is created).
        image_title: Title of the first panel.
        alpha: Opacity of the maps.
        cmap: Matplotlib colour map.
        panel_size: Inches per panel.
        suptitle: Optional figure title.

    Returns:
        The written path.
    """
    if len(maps) != len(titles):
        raise ValueError(f"expected one title per map, got {len(maps)} maps and {len(titles)} titles")
    img = np.asarray(image)
    if img.dtype == np.uint8:
        img = img.astype(np.float32) / 255.0
    if img.ndim == 3 and img.shape[-1] == 1:
        img = img[..., 0]
    H, W = img.shape[:2]
    for m in maps:
        if np.asarray(m).shape != (H, W):
            raise ValueError(f"every map must have the image size {(H, W)}, got {np.asarray(m).shape}")
    n = 1 + len(maps)
    fig = Figure(figsize=(panel_size * n, panel_size + (0.4 if suptitle else 0.2)))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, n, squeeze=False)[0]
    grey = dict(cmap="gray", vmin=0.0, vmax=1.0) if img.ndim == 2 else {}
    axes[0].imshow(np.clip(img, 0, 1), **grey)
    axes[0].set_title(image_title, fontsize=9)
    for ax, m, title in zip(axes[1:], maps, titles):
        ax.imshow(np.clip(img, 0, 1), **grey)
        ax.imshow(normalize_map(m), cmap=cmap, alpha=alpha, vmin=0.0, vmax=1.0)
        ax.set_title(title, fontsize=9)
    for ax in axes:
        ax.set_axis_off()
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    fig.tight_layout()
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    return out
