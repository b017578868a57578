"""How good is an explanation map: perturbation, deletion / insertion, mask AP / IoU and the pointing game.

Token maps are ``(B, h, w)`` scores on the model's token grid; the image is cut into ``h x w`` cells (the patches;
an image side that is not a multiple of the grid is cut into cells of ``ceil(side / grid)`` pixels, the last one
shorter). "Removing" a token replaces its cell by ``baseline`` (0 = the data mean for normalised images).

* **Perturbation** (Chefer et al., 2021): remove the most (*positive*, lower is better) or the least (*negative*,
  higher is better) relevant fraction ``f`` of the tokens, ``f = 0, 0.1, ..., 0.9``, and measure the accuracy
  (in %) of the model on the perturbed images; the AUC is the trapezoid rule over ``f`` (so at most 90), with the
  clean accuracy at ``f = 0``.
* **Deletion / insertion** (Petsiuk et al., 2018, RISE): the probability of the explained class while the tokens
  are removed from the image (deletion, lower is better) or inserted into the baseline image (insertion, higher
  is better), most relevant first, ``f = 0, 1/n, ..., 1``; AUC by the trapezoid rule over ``f`` in [0, 1].
* **Mask AP / IoU** (the ImageNet-segmentation protocol of Chefer et al.): the pixel map against a binary mask;
  AP ranks pixels by the map, IoU thresholds the map at its mean.
* **Pointing game** (Zhang et al., 2016): a hit when the map's peak falls on the mask.
"""

from __future__ import annotations

import math
from typing import Callable, Dict, Sequence, Union

import numpy as np
import torch

__all__ = [
    "deletion_insertion",
    "mask_ap",
    "mask_iou",
    "perturbation_curve",
    "perturbation_test",
    "pointing_game",
    "token_mask_to_pixels",
    "trapezoid_auc",
]

ScoreFn = Callable[[torch.Tensor], torch.Tensor]


def trapezoid_auc(fractions: Sequence[float], values: Sequence[float]) -> float:
    """Area under ``values`` over ``fractions`` by the trapezoid rule."""
    f = np.asarray(fractions, dtype=np.float64)
    v = np.asarray(values, dtype=np.float64)
    if f.shape != v.shape or f.ndim != 1 or len(f) < 2:
        raise ValueError(f"need two 1-d sequences of equal length >= 2, got shapes {f.shape} and {v.shape}")
    return float(((v[1:] + v[:-1]) * np.diff(f)).sum() / 2)


def token_mask_to_pixels(token_mask: torch.Tensor, image_size: Sequence[int]) -> torch.Tensor:
    """``(B, h, w)`` token mask -> ``(B, 1, H, W)`` pixel mask: every pixel takes the value of its token's cell."""
    B, h, w = token_mask.shape
    H, W = image_size
    ch, cw = math.ceil(H / h), math.ceil(W / w)
    pixels = token_mask.repeat_interleave(ch, 1).repeat_interleave(cw, 2)[:, :H, :W]  # (B, H, W)
    return pixels[:, None]


def _ranks(token_maps: torch.Tensor, most_first: bool) -> torch.Tensor:
    """Position of each token in the removal order ``(B, h * w)`` (0 = removed first); ties broken by index."""
    B = token_maps.shape[0]
    flat = token_maps.reshape(B, -1).float()
    order = flat.argsort(dim=1, descending=most_first, stable=True)  # (B, N) token ids, first removed first
    return order.argsort(dim=1)  # (B, N) rank of each token


def perturbation_curve(
    score_fn: ScoreFn,
    images: torch.Tensor,
    token_maps: torch.Tensor,
    fractions: Sequence[float],
    *,
    most_first: bool = True,
    insert: bool = False,
    baseline: Union[float, torch.Tensor] = 0.0,
) -> torch.Tensor:
    """Scores of the images with a growing fraction of their tokens removed (or inserted into ``baseline``).

    Args:
        score_fn: Perturbed images ``(B, C, H, W)`` -> per-image score ``(B,)`` (e.g. correct or not, the
            probability of the explained class).
        images: ``(B, C, H, W)``.
        token_maps: ``(B, h, w)`` relevance of each token.
        fractions: Fractions of the ``h * w`` tokens removed (``round(f * h * w)`` of them) at each step.
        most_first: Remove (insert) the most relevant tokens first; False: the least relevant first.
        insert: Start from ``baseline`` and put the image's tokens back instead of removing them.
        baseline: Value (or ``(B, C, H, W)`` image) a removed token's cell takes.

    Returns:
        ``(len(fractions), B)`` scores.
    """
    if images.ndim != 4 or token_maps.ndim != 3 or images.shape[0] != token_maps.shape[0]:
        raise ValueError(
            f"expected images (B, C, H, W) and token maps (B, h, w) of the same B, got {tuple(images.shape)} and "
            f"{tuple(token_maps.shape)}"
        )
    B = images.shape[0]
    N = token_maps.shape[1] * token_maps.shape[2]
    rank = _ranks(token_maps.to(images.device), most_first).view(B, *token_maps.shape[1:])  # (B, h, w)
    base = torch.as_tensor(baseline, dtype=images.dtype, device=images.device).expand_as(images)
    out = []
    for f in fractions:
        if not 0.0 <= f <= 1.0:
            raise ValueError(f"fractions must be in [0, 1], got {f}")
        chosen = token_mask_to_pixels((rank < round(f * N)).to(images.dtype), images.shape[-2:])  # (B, 1, H, W)
        keep = chosen if insert else 1 - chosen
        out.append(score_fn(images * keep + base * (1 - keep)).float())
    return torch.stack(out)


def perturbation_test(
    model_fn: Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    labels: torch.Tensor,
    token_maps: torch.Tensor,
    steps: int = 10,
    max_fraction: float = 0.9,
    baseline: float = 0.0,
) -> Dict[str, object]:
    """Positive and negative perturbation AUC (accuracy in %, trapezoid rule over 0-90 %, clean accuracy at 0).

    Args:
        model_fn: Images -> logits ``(B, K)``.
        images: ``(B, C, H, W)``.
        labels: ``(B,)`` class each image must be recognised as (the ground truth, or the explained class).
        token_maps: ``(B, h, w)`` relevance.
        steps: Removal steps of ``max_fraction / (steps - 1)``: 10 gives 0, 0.1, ..., 0.9.

    Returns:
        ``positive_auc`` (most relevant removed first, lower is better), ``negative_auc`` (higher is better),
        ``fractions`` and the accuracy curves ``positive`` / ``negative`` (in %).
    """
    fractions = np.linspace(0.0, max_fraction, steps).round(6).tolist()

    def correct(x: torch.Tensor) -> torch.Tensor:
        return (model_fn(x).argmax(-1) == labels.to(x.device)).float() * 100.0

    result: Dict[str, object] = {"fractions": fractions}
    for name, most_first in (("positive", True), ("negative", False)):
        curve = perturbation_curve(correct, images, token_maps, fractions, most_first=most_first, baseline=baseline)
        acc = curve.mean(1).tolist()
        result[name] = acc
        result[f"{name}_auc"] = trapezoid_auc(fractions, acc)
    return result


def deletion_insertion(
    prob_fn: Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    token_maps: torch.Tensor,
    steps: int = 10,
    deletion_baseline: Union[float, torch.Tensor] = 0.0,
    insertion_baseline: Union[float, torch.Tensor, None] = None,
) -> Dict[str, object]:
    """Deletion and insertion AUC (Petsiuk et al., 2018) of the explained class's probability.

    Args:
        prob_fn: Images -> probability of the explained class per image ``(B,)``.
        images: ``(B, C, H, W)``.
        token_maps: ``(B, h, w)`` relevance.
        steps: Steps over [0, 1] (``f = 0, 1/steps, ..., 1``).
        deletion_baseline: What deleted tokens become (0 = the mean for normalised images).
        insertion_baseline: The image tokens are inserted into (default: a blurred copy of the image, as RISE).

    Returns:
        ``deletion_auc`` (lower is better), ``insertion_auc`` (higher is better), ``fractions`` and the mean
        probability curves ``deletion`` / ``insertion``.
    """
    fractions = np.linspace(0.0, 1.0, steps + 1).round(6).tolist()
    if insertion_baseline is None:
        insertion_baseline = _blur(images)
    dele = perturbation_curve(prob_fn, images, token_maps, fractions, baseline=deletion_baseline).mean(1).tolist()
    ins = perturbation_curve(prob_fn, images, token_maps, fractions, insert=True, baseline=insertion_baseline)
    ins = ins.mean(1).tolist()
    return {
        "fractions": fractions,
        "deletion": dele,
        "insertion": ins,
        "deletion_auc": trapezoid_auc(fractions, dele),
        "insertion_auc": trapezoid_auc(fractions, ins),
    }


def _blur(images: torch.Tensor, sigma: float = 5.0) -> torch.Tensor:
    from torchvision.transforms.functional import gaussian_blur

    side = min(images.shape[-2:])
    k = min(int(2 * math.ceil(2 * sigma) + 1), 2 * (side // 2) - 1 if side > 2 else 1)  # reflect-pad fits
    return gaussian_blur(images, [k, k], [sigma, sigma])


def mask_ap(heatmap: np.ndarray, mask: np.ndarray) -> float:
    """Average precision of the pixels ranked by ``heatmap`` against the binary ``mask`` (same shape).

    ``AP = Σ_n (R_n - R_{n-1}) P_n`` over the ranks at which a positive pixel is reached (ties: the lower rank);
    NaN when the mask is empty.
    """
    s = np.asarray(heatmap, dtype=np.float64).reshape(-1)
    y = np.asarray(mask).reshape(-1).astype(bool)
    if s.shape != y.shape:
        raise ValueError(f"heatmap and mask must have the same shape, got {np.shape(heatmap)} and {np.shape(mask)}")
    positives = int(y.sum())
    if positives == 0:
        return float("nan")
    order = np.argsort(-s, kind="stable")
    s, y = s[order], y[order]
    tp = np.cumsum(y)
    # one operating point per distinct score (ties are taken together)
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]
    tp = tp[last]
    precision = tp / (last + 1)
    recall = tp / positives
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def mask_iou(heatmap: np.ndarray, mask: np.ndarray) -> float:
    """IoU of ``heatmap > mean(heatmap)`` with the binary ``mask`` (NaN when both are empty)."""
    h = np.asarray(heatmap, dtype=np.float64)
    y = np.asarray(mask).astype(bool)
    if h.shape != y.shape:
        raise ValueError(f"heatmap and mask must have the same shape, got {h.shape} and {y.shape}")
    pred = h > h.mean()
    union = np.logical_or(pred, y).sum()
    return float(np.logical_and(pred, y).sum() / union) if union else float("nan")


def pointing_game(heatmap: np.ndarray, mask: np.ndarray) -> bool:
    """True when the peak of ``heatmap`` (the first one, row-major) lies on ``mask``."""
    h = np.asarray(heatmap)
    y = np.asarray(mask).astype(bool)
    if h.shape != y.shape:
        raise ValueError(f"heatmap and mask must have the same shape, got {h.shape} and {y.shape}")
    return bool(y.reshape(-1)[int(np.argmax(h))])
