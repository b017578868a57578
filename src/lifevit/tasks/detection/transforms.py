"""Detection transforms (torchvision ``transforms.v2``, which moves the boxes with the image) and batching.

Presets:

* ``canvas``: random horizontal flip and a random affine (translate 10 %, scale 0.8-1.2) -- items may leave
  the image partly; boxes are clipped and the ones left under 2 px dropped.
* ``voc``: the SSD-style recipe -- photometric distortion, zoom-out (p=0.5), IoU crop, horizontal flip.
* ``none``: no augmentation.

All presets then resize so that the longest side is ``img_size`` (keeping the aspect ratio), convert to float
and normalise. :func:`collate` pads a batch bottom/right to a common size divisible by the backbone stride and
returns a mask of the valid pixels.
"""

from __future__ import annotations

import math
from typing import Callable, Dict, List, Sequence, Tuple

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

__all__ = ["DetectionTransform", "build_transforms", "collate", "targets_to_normalized"]

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _labels_getter(inputs):
    target = inputs[1]
    return target["labels"], target["iscrowd"]


class DetectionTransform:
    """Apply a v2 pipeline to ``(PIL image, target dict)`` and add ``size`` (H, W) of the result.

    Args:
        pipeline: A ``v2`` transform that takes ``(image, target)`` with ``target["boxes"]`` as ``BoundingBoxes``.
    """

    def __init__(self, pipeline: Callable) -> None:
        self.pipeline = pipeline

    def __call__(self, image, target: Dict[str, torch.Tensor]):
        H, W = image.height, image.width
        target = dict(target)
        target["boxes"] = tv_tensors.BoundingBoxes(target["boxes"], format="XYXY", canvas_size=(H, W))
        image, target = self.pipeline(image, target)
        target["boxes"] = target["boxes"].as_subclass(torch.Tensor)
        target["size"] = torch.tensor(image.shape[-2:])
        return image, target

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.pipeline})"


def build_transforms(
    train: bool,
    img_size: int,
    augment: str = "canvas",
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> DetectionTransform:
    """The transform of a split.

    Args:
        train: Training (augmented) or evaluation (resize only).
        img_size: Longest side after resizing.
        augment: ``canvas``, ``voc`` or ``none`` (see module docs).
        mean / std: Normalisation.
    """
    presets = {"canvas", "voc", "none"}
    if augment not in presets:
        raise ValueError(f"augment must be one of {sorted(presets)}, got {augment!r}")
    if img_size < 16:
        raise ValueError(f"img_size must be >= 16 pixels, got {img_size}")
    ops: List[Callable] = [v2.ToImage()]
    if train and augment == "canvas":
        ops += [v2.RandomHorizontalFlip(), v2.RandomAffine(degrees=0, translate=(0.1, 0.1), scale=(0.8, 1.2))]
    elif train and augment == "voc":
        fill = {tv_tensors.Image: [int(255 * m) for m in mean], "others": 0}
        ops += [
            v2.RandomPhotometricDistort(p=0.5),
            v2.RandomZoomOut(fill=fill, side_range=(1.0, 2.0), p=0.5),
            v2.RandomIoUCrop(),
            v2.RandomHorizontalFlip(),
        ]
    ops += [
        v2.Resize(size=None, max_size=img_size, antialias=True),
        v2.ClampBoundingBoxes(),
        v2.SanitizeBoundingBoxes(min_size=2.0 if train else 1.0, labels_getter=_labels_getter),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(mean=list(mean), std=list(std)),
    ]
    return DetectionTransform(v2.Compose(ops))


def collate(
    batch: Sequence[Tuple[torch.Tensor, Dict[str, torch.Tensor]]], size_divisibility: int = 1
) -> Tuple[torch.Tensor, torch.Tensor, List[Dict[str, torch.Tensor]]]:
    """Pad images bottom/right to one size and stack them.

    Returns:
        ``images`` (B, 3, H, W), ``mask`` (B, H, W) bool with True on real pixels, and the targets.
    """
    images = [img for img, _ in batch]
    H = max(img.shape[-2] for img in images)
    W = max(img.shape[-1] for img in images)
    d = max(1, int(size_divisibility))
    H, W = int(math.ceil(H / d) * d), int(math.ceil(W / d) * d)
    out = images[0].new_zeros(len(images), images[0].shape[0], H, W)  # (B, C, H, W)
    mask = torch.zeros(len(images), H, W, dtype=torch.bool)
    for i, img in enumerate(images):
        h, w = img.shape[-2:]
        out[i, :, :h, :w] = img
        mask[i, :h, :w] = True
    return out, mask, [t for _, t in batch]


def targets_to_normalized(targets: Sequence[Dict[str, torch.Tensor]]) -> List[Dict[str, torch.Tensor]]:
    """Targets for the matcher / criterion: boxes as (cx, cy, w, h) normalised by the image ``size``."""
    from torchvision.ops import box_convert

    out = []
    for t in targets:
        h, w = (float(v) for v in t["size"])
        scale = t["boxes"].new_tensor([w, h, w, h])
        out.append({"labels": t["labels"], "boxes": box_convert(t["boxes"] / scale, "xyxy", "cxcywh")})
    return out
