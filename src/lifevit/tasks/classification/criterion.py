"""Classification criteria: the base loss (timm's) and hard / soft distillation through a distillation token."""

from __future__ import annotations

from typing import Tuple, Union

import torch
import torch.nn.functional as F
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from torch import nn

__all__ = ["ClassificationCriterion", "DistillationCriterion", "base_criterion"]

Outputs = Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]


def base_criterion(mixup_active: bool, label_smoothing: float) -> nn.Module:
    """Soft-target CE with Mixup/CutMix (they smooth the targets themselves), else label-smoothing CE, else CE."""
    if mixup_active:
        return SoftTargetCrossEntropy()
    if label_smoothing > 0:
        return LabelSmoothingCrossEntropy(smoothing=label_smoothing)
    return nn.CrossEntropyLoss()


class ClassificationCriterion(nn.Module):
    """``loss(inputs, outputs, targets)``: the base loss on the logits (a (cls, dist) pair is averaged first)."""

    def __init__(self, base: nn.Module) -> None:
        super().__init__()
        self.base = base

    def forward(self, inputs: torch.Tensor, outputs: Outputs, targets: torch.Tensor) -> torch.Tensor:
        if isinstance(outputs, (tuple, list)):
            outputs = (outputs[0] + outputs[1]) / 2
        return self.base(outputs, targets)


class DistillationCriterion(nn.Module):
    """DeiT-style distillation: the class token learns the labels, the distillation token the teacher.

    ``loss = (1 - alpha) * base(cls_logits, targets) + alpha * distill(dist_logits, teacher(inputs))`` where the
    distillation term is, for ``kind="soft"``, ``tau^2 * KL(softmax(teacher / tau) || softmax(dist / tau))``
    averaged over the batch, and for ``kind="hard"`` the cross-entropy with the teacher's arg-max.

    Args:
        base: Loss of the class-token logits against the (possibly mixed) targets.
        teacher: Frozen teacher network (kept in eval mode, no gradients).
        kind: ``soft`` or ``hard``.
        alpha: Weight of the distillation term.
        tau: Softmax temperature of the soft term.
    """

    def __init__(self, base: nn.Module, teacher: nn.Module, kind: str = "hard", alpha: float = 0.5, tau: float = 1.0):
        super().__init__()
        if kind not in ("soft", "hard"):
            raise ValueError(f"distillation kind must be 'soft' or 'hard', got {kind!r}")
        self.base, self.kind, self.alpha, self.tau = base, kind, float(alpha), float(tau)
        self.teacher = teacher.eval().requires_grad_(False)

    def train(self, mode: bool = True) -> DistillationCriterion:
        super().train(mode)
        self.teacher.eval()  # never in training mode
        return self

    def forward(self, inputs: torch.Tensor, outputs: Outputs, targets: torch.Tensor) -> torch.Tensor:
        if not isinstance(outputs, (tuple, list)):
            raise ValueError(
                "distillation needs (class, distillation) logits: use a deit_*_distilled_* model in training mode "
                "with set_distilled_training(True)"
            )
        cls_logits, dist_logits = outputs
        loss = self.base(cls_logits, targets)
        with torch.no_grad():
            t = self.teacher(inputs)
            t = (t[0] + t[1]) / 2 if isinstance(t, (tuple, list)) else t
        if t.shape != dist_logits.shape:
            raise ValueError(f"teacher logits {tuple(t.shape)} do not match the student's {tuple(dist_logits.shape)}")
        if self.kind == "soft":
            T = self.tau
            log_p = F.log_softmax(dist_logits.float() / T, dim=-1)
            log_q = F.log_softmax(t.float() / T, dim=-1)
            distill = F.kl_div(log_p, log_q, reduction="batchmean", log_target=True) * (T * T)
        else:
            distill = F.cross_entropy(dist_logits, t.argmax(dim=-1))
        return (1 - self.alpha) * loss + self.alpha * distill
