"""From model outputs to label maps: whole-image and sliding-window inference, resizing and arg-max.

Sliding-window inference (for full 1024 x 2048 Cityscapes frames) runs the model on overlapping windows of a
fixed size and averages the logits of every pixel over the windows that cover it. Windows larger than the image
are clamped to it, so an image no larger than the window is predicted in one pass, exactly like whole-image
inference. Either can average in the prediction of the horizontally flipped image (``flip``) and of the image
resized by other factors (``scales``: the multi-scale test of mmsegmentation / Segmenter).
"""

from __future__ import annotations

from typing import Callable, Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["SegmentationPostProcess", "infer_logits", "sliding_window_logits", "window_starts"]

Model = Callable[[torch.Tensor], Dict[str, torch.Tensor]]


def window_starts(size: int, window: int, stride: int) -> List[int]:
    """Start offsets of windows of ``window`` pixels every ``stride`` pixels covering ``size`` (last one flush)."""
    if window < 1 or stride < 1:
        raise ValueError(f"window and stride must be >= 1, got {window}, {stride}")
    window = min(window, size)
    starts = list(range(0, size - window + 1, stride))
    if starts[-1] + window < size:
        starts.append(size - window)
    return starts


@torch.no_grad()
def sliding_window_logits(
    model: Model,
    images: torch.Tensor,
    window: Tuple[int, int],
    stride: Tuple[int, int],
    batch_size: int = 4,
) -> torch.Tensor:
    """Logits of whole images from overlapping windows.

    Args:
        model: Returns ``{"logits": (n, K, h, w)}`` for windows (n, C, h, w).
        images: (B, C, H, W).
        window: (h, w) of a window; clamped to (H, W).
        stride: (h, w) step between windows.
        batch_size: Windows per forward pass.

    Returns:
        (B, K, H, W): for every pixel, the mean of the logits of the windows that contain it.
    """
    B, _, H, W = images.shape
    wh, ww = min(window[0], H), min(window[1], W)
    boxes = [(y, x) for y in window_starts(H, wh, stride[0]) for x in window_starts(W, ww, stride[1])]
    logits = None
    count = images.new_zeros(1, 1, H, W)
    for i in range(0, len(boxes), max(batch_size, 1)):
        chunk = boxes[i : i + batch_size]
        crops = torch.cat([images[:, :, y : y + wh, x : x + ww] for y, x in chunk])  # (len(chunk)*B, C, wh, ww)
        out = model(crops)["logits"].float()  # (len(chunk)*B, K, wh, ww)
        if logits is None:
            logits = images.new_zeros(B, out.shape[1], H, W, dtype=torch.float32)
        for j, (y, x) in enumerate(chunk):
            logits[:, :, y : y + wh, x : x + ww] += out[j * B : (j + 1) * B]
            count[:, :, y : y + wh, x : x + ww] += 1
    return logits / count


@torch.no_grad()
def infer_logits(
    model: Model,
    images: torch.Tensor,
    mode: str = "whole",
    window: Tuple[int, int] = (512, 512),
    stride: Tuple[int, int] = (341, 341),
    batch_size: int = 4,
    flip: bool = False,
    scales: Sequence[float] = (1.0,),
) -> torch.Tensor:
    """(B, K, H, W) logits of ``images`` (B, C, H, W) by ``whole``-image or ``slide``-window inference.

    With ``flip``, the logits of the horizontally flipped images (flipped back) are averaged in: the flip test-time
    augmentation of mmsegmentation / Segmenter, twice the compute. With several ``scales``, the images are also
    resized (bilinear) by each factor, predicted the same way (whole, or by windows of the same size), and the
    logits, resized back to (H, W), are averaged: multi-scale testing, about ``sum(s**2 for s in scales)`` times
    the compute of one scale.
    """
    if mode not in ("whole", "slide"):
        raise ValueError(f"inference mode must be 'whole' or 'slide', got {mode!r}")
    scales = tuple(float(s) for s in scales)
    if not scales or any(not s > 0 for s in scales):
        raise ValueError(f"inference scales must be one or more factors > 0, got {scales}")
    _, _, H, W = images.shape

    def predict(x: torch.Tensor) -> torch.Tensor:
        if mode == "whole":
            return model(x)["logits"].float()
        return sliding_window_logits(model, x, window, stride, batch_size)

    def predict_flip(x: torch.Tensor) -> torch.Tensor:
        logits = predict(x)  # (B, K, h, w)
        if flip:
            logits = 0.5 * (logits + predict(x.flip(-1)).flip(-1))
        return logits

    total = None
    for s in scales:
        size = (max(round(H * s), 1), max(round(W * s), 1))
        if size == (H, W):
            logits = predict_flip(images)  # (B, K, H, W)
        else:
            resized = F.interpolate(images, size=size, mode="bilinear", align_corners=False)  # (B, C, H*s, W*s)
            logits = F.interpolate(predict_flip(resized), size=(H, W), mode="bilinear", align_corners=False)
        total = logits if total is None else total + logits
    return total / len(scales)  # (B, K, H, W)


class SegmentationPostProcess(nn.Module):
    """Logits -> label maps at the requested sizes (bilinear resize of the logits, then arg-max)."""

    @torch.no_grad()
    def forward(self, outputs: Dict[str, torch.Tensor], target_sizes: Sequence[Tuple[int, int]]) -> List[torch.Tensor]:
        """
        Args:
            outputs: ``{"logits": (B, K, h, w)}``.
            target_sizes: (H, W) of each image's output.

        Returns:
            B label maps, int64 (H_i, W_i).
        """
        logits = outputs["logits"]
        if len(target_sizes) != logits.shape[0]:
            raise ValueError(f"got {len(target_sizes)} target sizes for a batch of {logits.shape[0]}")
        preds = []
        for lg, (h, w) in zip(logits, target_sizes):
            if tuple(lg.shape[-2:]) != (h, w):
                lg = F.interpolate(lg[None], size=(h, w), mode="bilinear", align_corners=False)[0]  # (K, h, w)
            preds.append(lg.argmax(0))
        return preds
