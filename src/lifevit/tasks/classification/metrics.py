"""Classification metrics: top-1 / top-5, loss, per-class accuracy and the confusion matrix over a loader."""

from __future__ import annotations

import math
from typing import Any, Dict, Iterable

import torch
from torch import nn

from ...engine.distributed import all_reduce_sum

__all__ = ["evaluate"]


@torch.inference_mode()
def evaluate(
    model: nn.Module, loader: Iterable, num_classes: int, *, device: torch.device, amp: bool = True
) -> Dict[str, Any]:
    """Accuracy of ``model`` over ``loader`` (summed over processes when distributed).

    Returns:
        ``top1``, ``top5`` (top-min(5, K)), ``loss`` (cross-entropy), ``num_samples``, ``per_class_acc`` (list of
        K percentages, NaN for classes absent from the data) and ``confusion`` ((K, K) int64 tensor, rows = true).
    """
    model.eval()
    k = min(5, num_classes)
    confusion = torch.zeros(num_classes * num_classes, dtype=torch.int64, device=device)
    sums = torch.zeros(3, dtype=torch.float64, device=device)  # loss, top-k hits, samples
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp and device.type == "cuda"):
            logits = model(x)
        logits = (logits[0] + logits[1]) / 2 if isinstance(logits, (tuple, list)) else logits
        logits = logits.float()
        pred = logits.argmax(-1)
        confusion += torch.bincount(y * num_classes + pred, minlength=num_classes * num_classes)
        topk = logits.topk(k, dim=-1).indices  # (B, k)
        sums[0] += nn.functional.cross_entropy(logits, y, reduction="sum").double()
        sums[1] += (topk == y[:, None]).any(-1).sum().double()
        sums[2] += len(y)
    if torch.distributed.is_initialized():
        all_reduce_sum(confusion)
        all_reduce_sum(sums)
    confusion = confusion.view(num_classes, num_classes).cpu()  # (K true, K predicted)
    n = max(sums[2].item(), 1.0)
    per_class_n = confusion.sum(1).double()
    per_class = torch.where(per_class_n > 0, 100.0 * confusion.diag().double() / per_class_n.clamp(min=1), math.nan)
    return {
        "top1": 100.0 * confusion.diag().sum().item() / n,
        "top5": 100.0 * sums[1].item() / n,
        "loss": sums[0].item() / n,
        "num_samples": int(sums[2].item()),
        "per_class_acc": per_class.tolist(),
        "confusion": confusion,
    }
