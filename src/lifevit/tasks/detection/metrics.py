"""Detection metrics: VOC mAP@0.5 and COCO mAP@[.5:.95] (torchmetrics, pycocotools backend) and F1 at IoU 0.5.

* ``map_50`` ("VOC mAP@0.5"): mean over classes of the average precision at IoU 0.5, computed by torchmetrics'
  ``MeanAveragePrecision`` (COCO's 101-point interpolated precision, not VOC2007's 11-point). VOC ``difficult``
  objects (``iscrowd`` in the targets) are ignored: matching them is neither a true nor a false positive.
* ``map``: COCO-style mean over IoU 0.50:0.05:0.95; ``map_75``, ``map_small/medium/large`` as torchmetrics.
* ``f1`` / ``precision`` / ``recall`` at IoU 0.5: detections with score >= ``score_threshold`` (default 0.3) are
  matched greedily, best score first, to the unmatched ground-truth box of the same class with the highest IoU
  (>= 0.5); matches are true positives, other kept detections false positives, unmatched non-difficult ground
  truth false negatives; counts are summed over the data set (micro-average over classes). Detections matched
  to a difficult box are not counted. The default threshold in the configs is 0.3: focal-loss detectors give
  lower scores than softmax ones (a correct detection often scores 0.3-0.6).
* ``f1_best`` / ``f1_best_threshold``: the highest F1 over the thresholds 0.05, 0.10, ..., 0.95, and where.
"""

from __future__ import annotations

from typing import Dict, Sequence, Tuple

import torch
from torchmetrics.detection import MeanAveragePrecision
from torchvision.ops import box_iou

__all__ = ["DetectionEvaluator", "f1_counts", "greedy_match"]


def greedy_match(
    pred: Dict[str, torch.Tensor], target: Dict[str, torch.Tensor], iou_threshold: float = 0.5, min_score: float = 0.0
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Greedy VOC-style matching of the detections scoring >= ``min_score``, best score first.

    Returns:
        ``scores`` (D,) sorted descending, ``outcome`` (D,) int: 1 true positive, 0 false positive, -1 matched a
        difficult box (not counted), and the number of non-difficult ground-truth boxes. Since matching goes
        best score first, the result for a higher threshold is the prefix of these detections scoring above it.
    """
    keep = pred["scores"] >= min_score
    p_scores, order = pred["scores"][keep].sort(descending=True)
    p_boxes, p_labels = pred["boxes"][keep][order], pred["labels"][keep][order]
    t_boxes, t_labels = target["boxes"], target["labels"]
    difficult = target.get("iscrowd", torch.zeros_like(t_labels)).bool()
    used = torch.zeros(len(t_boxes), dtype=torch.bool)
    outcome = torch.zeros(len(p_boxes), dtype=torch.int64)
    if len(p_boxes) and len(t_boxes):
        iou = box_iou(p_boxes, t_boxes)  # (D, M)
        iou[p_labels[:, None] != t_labels[None, :]] = -1.0  # only the same class can match
        for i in range(len(p_boxes)):
            ious = iou[i].masked_fill(used, -1.0)
            j = int(ious.argmax())
            if ious[j] >= iou_threshold:
                used[j] = True
                outcome[i] = -1 if difficult[j] else 1
    return p_scores, outcome, int((~difficult).sum())


def f1_counts(
    pred: Dict[str, torch.Tensor],
    target: Dict[str, torch.Tensor],
    iou_threshold: float = 0.5,
    score_threshold: float = 0.3,
) -> Dict[str, int]:
    """True / false positives and false negatives of one image (xyxy boxes in the same pixel frame)."""
    _, outcome, num_gt = greedy_match(pred, target, iou_threshold, score_threshold)
    tp = int((outcome == 1).sum())
    return {"tp": tp, "fp": int((outcome == 0).sum()), "fn": num_gt - tp}


class DetectionEvaluator:
    """Accumulates detections and ground truth of a data set; :meth:`compute` gives the metrics.

    Args:
        score_threshold: Score from which a detection counts for F1 / precision / recall (0.3 in the configs).
        iou_threshold: IoU for a true positive in F1.
        class_metrics: Also report per-class COCO mAP (``map_class_<index>``).
    """

    def __init__(self, score_threshold: float = 0.3, iou_threshold: float = 0.5, class_metrics: bool = False) -> None:
        self.score_threshold, self.iou_threshold = score_threshold, iou_threshold
        self.map = MeanAveragePrecision(box_format="xyxy", iou_type="bbox", class_metrics=class_metrics)
        self.counts = {"tp": 0, "fp": 0, "fn": 0}
        self.sweep = [(round(0.05 * i, 2), {"tp": 0, "fp": 0, "fn": 0}) for i in range(1, 20)]
        self.num_images = 0

    def update(self, preds: Sequence[Dict[str, torch.Tensor]], targets: Sequence[Dict[str, torch.Tensor]]) -> None:
        """Add a batch: ``preds`` from :class:`PostProcess` (xyxy) and targets with ``boxes``, ``labels``,
        optional ``iscrowd``, in the same pixel frame."""
        p = [{k: d[k].detach().cpu() for k in ("boxes", "scores", "labels")} for d in preds]
        t = [
            {
                "boxes": d["boxes"].cpu(),
                "labels": d["labels"].cpu(),
                "iscrowd": d.get("iscrowd", torch.zeros_like(d["labels"])).cpu(),
            }
            for d in targets
        ]
        self.map.update(p, t)
        for pi, ti in zip(p, t):
            low = min(self.score_threshold, self.sweep[0][0])
            scores, outcome, num_gt = greedy_match(pi, ti, self.iou_threshold, low)
            for thr, counts in [(self.score_threshold, self.counts), *self.sweep]:
                above = scores >= thr
                tp = int((outcome[above] == 1).sum())
                counts["tp"] += tp
                counts["fp"] += int((outcome[above] == 0).sum())
                counts["fn"] += num_gt - tp
        self.num_images += len(p)

    def compute(self) -> Dict[str, float]:
        """``map_50``, ``map``, ``map_75``, ``f1``, ``precision``, ``recall``, ``f1_best`` (and ``map_class_<c>``,
        COCO mAP per class, when asked)."""
        res = self.map.compute()
        # torchmetrics reports -1 for "not applicable" (e.g. no large objects): left out
        out = {
            k: float(v)
            for k, v in res.items()
            if torch.is_tensor(v) and v.numel() == 1 and k != "classes" and float(v) != -1.0
        }
        if "map_per_class" in res and res["map_per_class"].numel() > 1:
            for c, v in zip(res["classes"].tolist(), res["map_per_class"].tolist()):
                out[f"map_class_{c}"] = float(v)  # COCO mAP@[.5:.95] of class c
        precision, recall, f1 = _prf(self.counts)
        best_thr, best_f1 = max(((thr, _prf(c)[2]) for thr, c in self.sweep), key=lambda t: t[1])
        out.update(
            precision=precision,
            recall=recall,
            f1=f1,
            score_threshold=self.score_threshold,
            f1_best=best_f1,
            f1_best_threshold=best_thr,
            num_images=self.num_images,
        )
        return out


def _prf(counts: Dict[str, int]):
    tp, fp, fn = counts["tp"], counts["fp"], counts["fn"]
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    return precision, recall, 2 * precision * recall / (precision + recall) if precision + recall else 0.0
