"""Loss of the segmentation model: per-pixel cross-entropy that skips ignored pixels, optionally plus a soft Dice
term (Milletari et al. 2016, as in mmseg's ``DiceLoss``) that scores the overlap of each class directly."""

from __future__ import annotations

from typing import Dict, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from lifevit.data.cityscapes import IGNORE_INDEX

__all__ = ["SegmentationCriterion", "soft_dice_loss"]


def soft_dice_loss(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int, eps: float = 1.0) -> torch.Tensor:
    """``1 - mean_k Dice_k`` between the softmax probabilities and the one-hot targets.

    Each class's Dice is ``(2 * sum p_k y_k + eps) / (sum p_k + sum y_k + eps)`` over the labelled pixels of the
    whole batch; the mean runs over the classes present in the targets or whose summed probability exceeds ``eps``
    (a class absent from both contributes nothing). Ignored pixels are left out of every sum.

    Args:
        logits: (B, K, H, W) class scores.
        targets: (B, H, W) train ids, ``ignore_index`` where unlabelled.
        ignore_index: Target value of unlabelled pixels.
        eps: Smoothing of numerator and denominator.
    """
    K = logits.shape[1]
    valid = targets != ignore_index  # (B, H, W)
    probs = logits.float().softmax(dim=1) * valid.unsqueeze(1)  # (B, K, H, W)
    onehot = F.one_hot(targets.masked_fill(~valid, 0), K).permute(0, 3, 1, 2) * valid.unsqueeze(1)  # (B, K, H, W)
    inter = (probs * onehot).sum(dim=(0, 2, 3))  # (K,)
    p_sum, y_sum = probs.sum(dim=(0, 2, 3)), onehot.sum(dim=(0, 2, 3)).to(probs.dtype)  # (K,), (K,)
    dice = (2 * inter + eps) / (p_sum + y_sum + eps)  # (K,)
    present = (y_sum > 0) | (p_sum > eps)
    return 1.0 - dice[present].mean()


class SegmentationCriterion(nn.Module):
    """Cross-entropy over the pixels whose target is not ``ignore_index``, averaged over those pixels, plus
    ``dice_weight`` times :func:`soft_dice_loss`.

    Args:
        num_classes: Classes K; targets must be in ``0 .. K - 1`` or ``ignore_index``.
        ignore_index: Target value of pixels that do not count (Cityscapes: 255).
        class_weights: Optional weight of each class (cross-entropy).
        label_smoothing: Label smoothing of the cross-entropy.
        dice_weight: Weight of the Dice term (0 = cross-entropy only).
    """

    def __init__(
        self,
        num_classes: int,
        ignore_index: int = IGNORE_INDEX,
        class_weights: Optional[Sequence[float]] = None,
        label_smoothing: float = 0.0,
        dice_weight: float = 0.0,
    ) -> None:
        super().__init__()
        if dice_weight < 0:
            raise ValueError(f"dice_weight must be >= 0, got {dice_weight}")
        self.dice_weight = dice_weight
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
            ``{"loss_ce": scalar, "loss": scalar}``, plus ``"loss_dice"`` when ``dice_weight > 0`` (``loss`` is
            what is optimised). A batch with no labelled pixel gives a zero loss that still back-propagates (no NaN).
        """
        logits = outputs["logits"]
        if logits.shape[0] != targets.shape[0] or logits.shape[-2:] != targets.shape[-2:]:
            raise ValueError(f"logits {tuple(logits.shape)} do not match targets {tuple(targets.shape)} (B, H, W)")
        if not (targets != self.ignore_index).any():
            zero = logits.sum() * 0.0
            return {"loss_ce": zero, "loss": zero, **({"loss_dice": zero} if self.dice_weight > 0 else {})}
        loss_ce = F.cross_entropy(
            logits.float(),
            targets,
            weight=self.weight,
            ignore_index=self.ignore_index,
            label_smoothing=self.label_smoothing,
        )
        if self.dice_weight == 0:
            return {"loss_ce": loss_ce, "loss": loss_ce}
        loss_dice = soft_dice_loss(logits, targets, self.ignore_index)
        return {"loss_ce": loss_ce, "loss_dice": loss_dice, "loss": loss_ce + self.dice_weight * loss_dice}
