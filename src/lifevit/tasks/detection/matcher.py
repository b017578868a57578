"""Hungarian matching between predictions and ground-truth boxes (one-to-one, per image).

Cost of assigning prediction i to target j (the costs of Deformable DETR / DINO):
``cls_weight * focal_cost(p_i[c_j]) + l1_weight * |b_i - b_j|_1 - giou_weight * GIoU(b_i, b_j)`` where
``focal_cost(p) = alpha (1 - p)^gamma (-log p) - (1 - alpha) p^gamma (-log(1 - p))``, boxes normalised (cx, cy, w, h).
"""

from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import torch
from scipy.optimize import linear_sum_assignment
from torch import nn
from torchvision.ops import box_convert, generalized_box_iou

__all__ = ["HungarianMatcher"]


class HungarianMatcher(nn.Module):
    """Optimal one-to-one assignment of predictions to targets.

    Args:
        cls_weight / l1_weight / giou_weight: Weights of the three costs.
        focal_alpha / focal_gamma: Parameters of the focal classification cost.
    """

    def __init__(
        self,
        cls_weight: float = 2.0,
        l1_weight: float = 5.0,
        giou_weight: float = 2.0,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
    ) -> None:
        super().__init__()
        if cls_weight == 0 and l1_weight == 0 and giou_weight == 0:
            raise ValueError("at least one matching cost weight must be non-zero")
        self.cls_weight, self.l1_weight, self.giou_weight = cls_weight, l1_weight, giou_weight
        self.focal_alpha, self.focal_gamma = focal_alpha, focal_gamma

    @torch.no_grad()
    def forward(
        self, outputs: Dict[str, torch.Tensor], targets: Sequence[Dict[str, torch.Tensor]]
    ) -> List[Tuple[torch.Tensor, torch.Tensor]]:
        """Match a batch.

        Args:
            outputs: ``pred_logits`` (B, Q, K) and ``pred_boxes`` (B, Q, 4) normalised cxcywh.
            targets: Per image, ``labels`` (M_b,) and ``boxes`` (M_b, 4) normalised cxcywh.

        Returns:
            Per image, ``(pred_idx, target_idx)`` int64 tensors of length ``min(Q, M_b)``.
        """
        B, Q, _ = outputs["pred_logits"].shape
        sizes = [len(t["boxes"]) for t in targets]
        if sum(sizes) == 0:
            empty = torch.empty(0, dtype=torch.int64)
            return [(empty, empty) for _ in range(B)]
        prob = outputs["pred_logits"].flatten(0, 1).float().sigmoid()  # (B*Q, K)
        boxes = outputs["pred_boxes"].flatten(0, 1).float()  # (B*Q, 4)
        tgt_labels = torch.cat([t["labels"] for t in targets])  # (M,)
        tgt_boxes = torch.cat([t["boxes"] for t in targets]).float()  # (M, 4)

        a, g = self.focal_alpha, self.focal_gamma
        p = prob[:, tgt_labels]  # (B*Q, M)
        neg = (1 - a) * p.pow(g) * -(1 - p + 1e-8).log()
        pos = a * (1 - p).pow(g) * -(p + 1e-8).log()
        cost_cls = pos - neg
        cost_l1 = torch.cdist(boxes, tgt_boxes, p=1)
        cost_giou = -generalized_box_iou(box_convert(boxes, "cxcywh", "xyxy"), box_convert(tgt_boxes, "cxcywh", "xyxy"))
        cost = self.cls_weight * cost_cls + self.l1_weight * cost_l1 + self.giou_weight * cost_giou
        cost = cost.view(B, Q, -1).cpu()  # (B, Q, M)

        out = []
        for b, c in enumerate(cost.split(sizes, dim=-1)):
            rows, cols = linear_sum_assignment(c[b].numpy())
            out.append((torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64)))
        return out
