"""Segmentation metrics from a torchmetrics confusion matrix: per-class IoU, mIoU, pixel accuracy.

IoU of class c = TP / (TP + FP + FN) over all evaluated pixels (ignored pixels excluded). A class that appears
neither in the targets nor in the predictions has no IoU (NaN) and is left out of the mean, as in the
Cityscapes and mmsegmentation evaluations.
"""

from __future__ import annotations

import math
from typing import Any, Dict, Optional, Sequence

import torch
from torchmetrics.classification import MulticlassConfusionMatrix

from lifevit.data.cityscapes import IGNORE_INDEX

__all__ = ["SegmentationMetrics", "iou_from_confusion"]


def iou_from_confusion(confusion: torch.Tensor) -> torch.Tensor:
    """Per-class IoU (K,) from a (K, K) confusion matrix (rows = target, columns = prediction); NaN if unseen."""
    confusion = confusion.double()
    tp = confusion.diag()
    union = confusion.sum(0) + confusion.sum(1) - tp
    return torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, math.nan))


class SegmentationMetrics:
    """Accumulates predictions and targets over a data set.

    Args:
        num_classes: Classes K.
        ignore_index: Target value that is not evaluated.
        class_names: Names for the per-class results (default ``class_0`` ...).
        device: Where the confusion matrix lives.
    """

    def __init__(
        self,
        num_classes: int,
        ignore_index: int = IGNORE_INDEX,
        class_names: Optional[Sequence[str]] = None,
        device: torch.device | str = "cpu",
    ) -> None:
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"got {len(class_names)} class names for {num_classes} classes")
        self.num_classes = num_classes
        self.class_names = tuple(class_names) if class_names else tuple(f"class_{i}" for i in range(num_classes))
        self.confmat = MulticlassConfusionMatrix(num_classes, ignore_index=ignore_index, validate_args=False).to(device)

    def reset(self) -> None:
        self.confmat.reset()

    def update(self, preds: torch.Tensor, targets: torch.Tensor) -> None:
        """Add label maps ``preds`` and ``targets`` of the same shape ((H, W) or (B, H, W))."""
        if preds.shape != targets.shape:
            raise ValueError(f"predictions {tuple(preds.shape)} and targets {tuple(targets.shape)} differ in shape")
        self.confmat.update(preds.reshape(-1), targets.reshape(-1).to(preds.device))

    def confusion(self) -> torch.Tensor:
        """(K, K) pixel counts, rows = target, columns = prediction."""
        return self.confmat.compute()

    def compute(self) -> Dict[str, Any]:
        """``mIoU``, ``pixel_acc``, ``mAcc`` (mean class recall) and ``per_class_iou`` ({name: IoU or NaN})."""
        cm = self.confusion().double().cpu()
        iou = iou_from_confusion(cm)
        support = cm.sum(1)
        recall = torch.where(support > 0, cm.diag() / support.clamp(min=1), torch.full_like(support, math.nan))
        total = cm.sum()
        return {
            "mIoU": float(iou.nanmean()) if not iou.isnan().all() else math.nan,
            "pixel_acc": float(cm.diag().sum() / total) if total > 0 else math.nan,
            "mAcc": float(recall.nanmean()) if not recall.isnan().all() else math.nan,
            "per_class_iou": {n: float(v) for n, v in zip(self.class_names, iou)},
        }
