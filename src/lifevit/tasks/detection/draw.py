"""Draw detections (boxes, class names, scores) on an image with torchvision's ``draw_bounding_boxes``."""

from __future__ import annotations

from typing import Dict, Sequence

import torch
from PIL import Image
from torchvision.transforms.functional import pil_to_tensor, to_pil_image
from torchvision.utils import draw_bounding_boxes

__all__ = ["draw_detections"]

_PALETTE = ["#e6194b", "#3cb44b", "#ffe119", "#4363d8", "#f58231", "#911eb4", "#46f0f0", "#f032e6", "#bcf60c",
            "#fabebe", "#008080", "#e6beff", "#9a6324", "#fffac8", "#800000", "#aaffc3", "#808000", "#ffd8b1",
            "#000075", "#808080"]  # fmt: skip


def draw_detections(image: Image.Image, det: Dict[str, torch.Tensor], classes: Sequence[str]) -> Image.Image:
    """``image`` with each box of ``det`` (xyxy pixels) drawn in its class colour and labelled ``name score``.

    Small images are upscaled (nearest) to at least 384 px on the long side so the labels stay readable.
    """
    W, H = image.size
    scale = max(1, int(384 // max(W, H)))
    if scale > 1:
        image = image.resize((W * scale, H * scale), Image.NEAREST)
    img = pil_to_tensor(image.convert("RGB"))  # (3, H, W) uint8
    if len(det["boxes"]) == 0:
        return to_pil_image(img)
    labels = [f"{classes[int(c)]} {float(s):.2f}" for c, s in zip(det["labels"], det["scores"])]
    colors = [_PALETTE[int(c) % len(_PALETTE)] for c in det["labels"]]
    drawn = draw_bounding_boxes(img, det["boxes"].float() * scale, labels=labels, colors=colors, width=2)
    return to_pil_image(drawn)
