"""Joint image / label transforms (torchvision ``transforms.v2`` with ``tv_tensors.Mask`` targets).

Training: random scale of ``base_size`` (aspect kept, ``ScaleJitter``), random crop padded with ignore labels
where the scaled image is smaller, horizontal flip, then float conversion and normalisation. Evaluation: only
the conversion and normalisation (full-size images, predicted whole or by sliding windows).
"""

from __future__ import annotations

from typing import Sequence, Tuple

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from lifevit.data.cityscapes import IGNORE_INDEX

__all__ = ["SegmentationTransform"]


class SegmentationTransform:
    """``(uint8 image (3, H, W), int64 target (H, W)) -> (float image (3, h, w), int64 target (h, w))``.

    Args:
        train: Apply the random augmentation.
        base_size: (H, W) the random scale is relative to.
        scale_range: Range of the random scale factor.
        crop_size: (H, W) of the training crop.
        hflip: Flip probability.
        mean: Normalisation mean (0..1 scale).
        std: Normalisation std.
    """

    def __init__(
        self,
        train: bool,
        base_size: Tuple[int, int] = (1024, 2048),
        scale_range: Tuple[float, float] = (0.5, 2.0),
        crop_size: Tuple[int, int] = (512, 512),
        hflip: float = 0.5,
        mean: Sequence[float] = (0.485, 0.456, 0.406),
        std: Sequence[float] = (0.229, 0.224, 0.225),
    ) -> None:
        steps = []
        if train:
            steps += [
                # ScaleJitter scales by s * min(target_size[1] / H, target_size[0] / W): it takes (W, H)
                v2.ScaleJitter(target_size=(base_size[1], base_size[0]), scale_range=tuple(scale_range)),
                v2.RandomCrop(
                    tuple(crop_size), pad_if_needed=True, fill={tv_tensors.Image: 0, tv_tensors.Mask: IGNORE_INDEX}
                ),
                v2.RandomHorizontalFlip(hflip),
            ]
        steps += [
            v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True),
            v2.Normalize(mean=list(mean), std=list(std)),
        ]
        self.transform = v2.Compose(steps)

    def __call__(self, image: torch.Tensor, target: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        image, target = self.transform(tv_tensors.Image(image), tv_tensors.Mask(target))
        return image.as_subclass(torch.Tensor), target.as_subclass(torch.Tensor)
