"""Turn head outputs into per-image detections in pixels."""

from __future__ import annotations

from typing import Dict, List

import torch
from torch import nn
from torchvision.ops import box_convert

__all__ = ["PostProcess", "BOX_FORMATS"]

BOX_FORMATS = ("xyxy", "xywh", "cxcywh")


class PostProcess(nn.Module):
    """Top-``num_select`` (query, class) pairs by sigmoid score, boxes scaled to the image size.

    With sigmoid classification one query may appear with several classes; each pair is a detection.

    Args:
        num_select: Detections kept per image (at most Q * K).
        box_format: ``xyxy`` (corners), ``xywh`` (COCO: top-left corner and size) or ``cxcywh`` (centre, size).
    """

    def __init__(self, num_select: int = 100, box_format: str = "xyxy") -> None:
        super().__init__()
        if box_format not in BOX_FORMATS:
            raise ValueError(f"box_format must be one of {BOX_FORMATS}, got {box_format!r}")
        if num_select < 1:
            raise ValueError(f"num_select must be >= 1, got {num_select}")
        self.num_select = num_select
        self.box_format = box_format

    @torch.no_grad()
    def forward(self, outputs: Dict[str, torch.Tensor], target_sizes: torch.Tensor) -> List[Dict[str, torch.Tensor]]:
        """Detections per image.

        Args:
            outputs: ``pred_logits`` (B, Q, K) and ``pred_boxes`` (B, Q, 4) normalised (cx, cy, w, h).
            target_sizes: (B, 2) image (height, width) in pixels the boxes are scaled to.

        Returns:
            Per image ``scores`` (S,), ``labels`` (S,) and ``boxes`` (S, 4) in ``box_format``, best first.
        """
        logits, boxes = outputs["pred_logits"], outputs["pred_boxes"]
        B, Q, K = logits.shape
        if target_sizes.shape != (B, 2):
            raise ValueError(f"target_sizes must be (B, 2) = ({B}, 2) (height, width), got {tuple(target_sizes.shape)}")
        prob = logits.float().sigmoid().flatten(1)  # (B, Q*K)
        scores, idx = prob.topk(min(self.num_select, Q * K), dim=1)  # (B, S)
        query, labels = idx // K, idx % K
        xyxy = box_convert(boxes.float(), "cxcywh", "xyxy")  # (B, Q, 4)
        xyxy = xyxy.gather(1, query[..., None].expand(-1, -1, 4))  # (B, S, 4)
        h, w = target_sizes.float().unbind(1)
        xyxy = xyxy * torch.stack((w, h, w, h), dim=1)[:, None, :]
        xyxy = torch.minimum(xyxy.clamp(min=0), torch.stack((w, h, w, h), dim=1)[:, None, :])
        out = box_convert(xyxy, "xyxy", self.box_format) if self.box_format != "xyxy" else xyxy
        return [{"scores": s, "labels": lab, "boxes": b} for s, lab, b in zip(scores, labels, out)]
