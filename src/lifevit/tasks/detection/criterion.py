"""Set-prediction loss: Hungarian matching, then sigmoid focal classification + L1 + GIoU box losses.

Computed for the final decoder layer, every earlier decoder layer (``aux_outputs``, suffix ``_{i}``) and the
two-stage encoder proposals (``enc_outputs``, suffix ``_enc``). Every term is normalised by the number of
target boxes in the batch (at least 1). Unmatched predictions are pushed towards "no class" by the focal loss
(all-zero one-hot target). ``weight_dict`` tells how the terms add up; :meth:`SetCriterion.total` does it.
"""

from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import torch
from torch import nn
from torchvision.ops import box_convert, generalized_box_iou_loss, sigmoid_focal_loss

from .matcher import HungarianMatcher

__all__ = ["SetCriterion"]


class SetCriterion(nn.Module):
    """DETR-style set loss with focal classification.

    Args:
        num_classes: Object classes.
        matcher: The matcher (its costs usually mirror the loss weights).
        cls_weight / l1_weight / giou_weight: Loss weights.
        focal_alpha / focal_gamma: Focal loss parameters.
        aux_loss: Also supervise the earlier decoder layers.
        enc_loss: Also supervise the encoder proposals.
    """

    def __init__(
        self,
        num_classes: int,
        matcher: HungarianMatcher,
        cls_weight: float = 2.0,
        l1_weight: float = 5.0,
        giou_weight: float = 2.0,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        aux_loss: bool = True,
        enc_loss: bool = True,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.matcher = matcher
        self.base_weights = {"loss_cls": cls_weight, "loss_bbox": l1_weight, "loss_giou": giou_weight}
        self.focal_alpha, self.focal_gamma = focal_alpha, focal_gamma
        self.aux_loss, self.enc_loss = aux_loss, enc_loss

    def weight(self, key: str) -> float:
        """Weight of a loss term (``loss_cls``, ``loss_bbox_2``, ``loss_giou_enc``, ...)."""
        for base, w in self.base_weights.items():
            if key == base or key.startswith(base + "_"):
                return w
        raise KeyError(key)

    def total(self, losses: Dict[str, torch.Tensor]) -> torch.Tensor:
        """Weighted sum of the loss terms."""
        return sum(self.weight(k) * v for k, v in losses.items())

    def _single(
        self,
        outputs: Dict[str, torch.Tensor],
        targets: Sequence[Dict[str, torch.Tensor]],
        indices: List[Tuple[torch.Tensor, torch.Tensor]],
        num_boxes: float,
    ) -> Dict[str, torch.Tensor]:
        logits, boxes = outputs["pred_logits"], outputs["pred_boxes"]  # (B, Q, K), (B, Q, 4)
        batch_idx = torch.cat([torch.full_like(src, b) for b, (src, _) in enumerate(indices)]).to(logits.device)
        src_idx = torch.cat([src for src, _ in indices]).to(logits.device)
        tgt_labels = torch.cat([t["labels"][j] for t, (_, j) in zip(targets, indices)]).to(logits.device)
        tgt_boxes = torch.cat([t["boxes"][j] for t, (_, j) in zip(targets, indices)]).to(logits.device)

        onehot = torch.zeros_like(logits)  # (B, Q, K)
        onehot[batch_idx, src_idx, tgt_labels] = 1.0
        loss_cls = sigmoid_focal_loss(
            logits.float(), onehot.float(), alpha=self.focal_alpha, gamma=self.focal_gamma, reduction="sum"
        )
        matched = boxes[batch_idx, src_idx].float()  # (M, 4)
        if len(matched):
            loss_bbox = (matched - tgt_boxes.float()).abs().sum()
            loss_giou = generalized_box_iou_loss(
                box_convert(matched, "cxcywh", "xyxy"),
                box_convert(tgt_boxes.float(), "cxcywh", "xyxy"),
                reduction="sum",
            )
        else:  # keep the graph connected so every parameter still gets a (zero) gradient
            loss_bbox = loss_giou = boxes.sum() * 0.0
        return {
            "loss_cls": loss_cls / num_boxes,
            "loss_bbox": loss_bbox / num_boxes,
            "loss_giou": loss_giou / num_boxes,
        }

    def forward(
        self, outputs: Dict[str, object], targets: Sequence[Dict[str, torch.Tensor]]
    ) -> Dict[str, torch.Tensor]:
        """Loss terms (unweighted) of a batch.

        Args:
            outputs: Head outputs (``pred_logits``, ``pred_boxes``, optional ``aux_outputs``, ``enc_outputs``).
            targets: Per image ``labels`` (M_b,) and normalised cxcywh ``boxes`` (M_b, 4).
        """
        # boxes in the global batch, per process (as DETR): N processes average to the loss of one process that
        # sees the whole global batch
        num_boxes = float(sum(len(t["labels"]) for t in targets))
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            total = torch.tensor([num_boxes], dtype=torch.float64)
            torch.distributed.all_reduce(total)
            num_boxes = total.item() / torch.distributed.get_world_size()
        num_boxes = max(num_boxes, 1.0)
        groups = [("", outputs)]
        if self.aux_loss:
            groups += [(f"_{i}", aux) for i, aux in enumerate(outputs.get("aux_outputs", []))]
        if self.enc_loss and "enc_outputs" in outputs:
            groups.append(("_enc", outputs["enc_outputs"]))
        losses: Dict[str, torch.Tensor] = {}
        for suffix, out in groups:
            indices = self.matcher(out, targets)
            for k, v in self._single(out, targets, indices, num_boxes).items():
                losses[k + suffix] = v
        return losses
