"""Loss of the segmentation model: per-pixel cross-entropy that skips ignored pixels."""

from __future__ import annotations

from typing import Dict, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from lifevit.data.cityscapes import IGNORE_INDEX

__all__ = ["SegmentationCriterion"]


class SegmentationCriterion(nn.Module):
    """Cross-entropy over the pixels whose target is not ``ignore_index``, averaged over those pixels.

    Args:
        num_classes: Classes K; targets must be in ``0 .. K - 1`` or ``ignore_index``.
        ignore_index: Target value of pixels that do not count (Cityscapes: 255).
        class_weights: Optional weight of each class.
        label_smoothing: Label smoothing of the cross-entropy.
    """

    def __init__(
        self,
        num_classes: int,
        ignore_index: int = IGNORE_INDEX,
        class_weights: Optional[Sequence[float]] = None,
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.label_smoothing = label_smoothing
        if class_weights is not None and len(class_weights) != num_classes:
            raise ValueError(f"class_weights has {len(class_weights)} entries, expected one per class ({num_classes})")
        weight = torch.as_tensor(class_weights, dtype=torch.float32) if class_weights is not None else None
        self.register_buffer("weight", weight, persistent=False)

    def forward(self, outputs: Dict[str, torch.Tensor], targets: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Losses of a batch.

        Args:
            outputs: ``{"logits": (B, K, H, W)}``.
            targets: (B, H, W) int64 train ids, ``ignore_index`` where unlabelled.

        Returns:
            ``{"loss_ce": scalar, "loss": scalar}`` (``loss`` is what is optimised). A batch with no labelled
            pixel gives a zero loss that still back-propagates (no NaN).
        """
        logits = outputs["logits"]
        if logits.shape[0] != targets.shape[0] or logits.shape[-2:] != targets.shape[-2:]:
            raise ValueError(f"logits {tuple(logits.shape)} do not match targets {tuple(targets.shape)} (B, H, W)")
        if not (targets != self.ignore_index).any():
            loss = logits.sum() * 0.0
        else:
            loss = F.cross_entropy(
                logits.float(),
                targets,
                weight=self.weight,
                ignore_index=self.ignore_index,
                label_smoothing=self.label_smoothing,
            )
        return {"loss_ce": loss, "loss": loss}
