"""One call from a model and a batch to explanation maps: :func:`explain`.

Works for the three kinds of lifevit models:

* classifiers (timm ViT / DeiT / T2T-ViT / SwinV2, with or without LIFE): ``method="rollout"`` gives the
  class-token roll-out (one class-agnostic map per image);
* segmentation models (:class:`lifevit.tasks.segmentation.Segmenter`): per-token class probabilities are the
  softmax of the logits averaged over each token's pixels; ``"dense-rollout"`` gives one map per class;
* detection models (:class:`lifevit.tasks.detection.Detector`): the tokens inside the predicted boxes of class c,
  weighted by the box scores, give the map of class c.

For dense models only the backbone's attention (and a detection head's self-attention encoder, which works on
the same token grid) is rolled out; a Segmenter mask-transformer decoder mixes class embeddings into its
sequence and is left out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .capture import capture_attention, model_token_grid
from .rollout import Rollout, box_token_weights, class_token_map, dense_rollout, rollout_records, token_class_weights

__all__ = [
    "GRADIENT_METHODS",
    "METHODS",
    "TASKS",
    "Explanation",
    "dense_token_weights",
    "explain",
    "infer_task",
    "segmentation_token_probs",
]

METHODS = ("rollout", "dense-rollout", "chefer", "gradcam", "random")
GRADIENT_METHODS = ("chefer", "gradcam")
TASKS = ("classification", "segmentation", "detection")


@dataclass
class Explanation:
    """Maps for a batch.

    Attributes:
        method: One of :data:`METHODS`.
        task: ``classification``, ``segmentation`` or ``detection``.
        classes: Class index of each of the K maps (``-1``: the class-agnostic class-token roll-out).
        token_maps: ``(B, K, h, w)`` roll-out mass on the input tokens (class-token row or the weighted rows).
        maps: ``(B, K, H, W)`` token maps up-sampled (bilinear) to the image size.
        predicted: ``(B, K)`` True where the model predicts class k in image b (dense tasks; the map comes from
            the fallback weights otherwise, see ``docs/explain.md``); all True for classifiers and ``rollout``.
        rollout: The roll-out the maps were read from (``rollout`` / ``dense-rollout``; ``chefer``: the
            relevance R of the last mapped class, ``matrix`` holding R; None for the others).
        output: The model's raw output for the batch.
        detections: Detection models: per image ``boxes`` (xyxy pixels), ``labels``, ``scores`` above the threshold.
    """

    method: str
    task: str
    classes: List[int]
    token_maps: np.ndarray
    maps: np.ndarray
    predicted: np.ndarray
    rollout: Optional[Rollout] = field(default=None, repr=False)
    output: Any = field(default=None, repr=False)
    detections: Optional[List[Dict[str, torch.Tensor]]] = field(default=None, repr=False)


def infer_task(model: nn.Module) -> str:
    """``segmentation`` / ``detection`` for lifevit's dense models, ``classification`` otherwise."""
    from lifevit.tasks.detection import Detector
    from lifevit.tasks.segmentation import Segmenter

    if isinstance(model, Segmenter):
        return "segmentation"
    if isinstance(model, Detector):
        return "detection"
    return "classification"


def _backbone_and_prefixes(model: nn.Module, task: str) -> Tuple[nn.Module, Optional[Tuple[str, ...]]]:
    """The timm model that holds the patch grid, and the record-name prefixes that take part in the roll-out."""
    if task == "segmentation":
        return model.backbone.model, ("backbone.",)
    if task == "detection":
        backbone = getattr(model.backbone, "model", None) or model.backbone.body  # (older checkpoints: body)
        return backbone, ("backbone.", "head.encoder.")
    return model, None


def segmentation_token_probs(logits: torch.Tensor, grid_size: Tuple[int, int]) -> torch.Tensor:
    """Per-token class probabilities ``(B, H * W, K)``: the pixel softmax averaged over each token's cell.

    Args:
        logits: ``(B, K, H_img, W_img)`` segmentation logits.
        grid_size: (H, W) token grid; an image that is not a multiple of it is treated as zero-padded at the
            bottom / right like the model does (padding pixels are left out of the average).
    """
    B, K, Hi, Wi = logits.shape
    H, W = grid_size
    sh, sw = math.ceil(Hi / H), math.ceil(Wi / W)
    probs = logits.float().softmax(1)
    probs = F.pad(probs, (0, W * sw - Wi, 0, H * sh - Hi))  # (B, K, H*sh, W*sw)
    valid = F.pad(torch.ones(1, 1, Hi, Wi, device=logits.device), (0, W * sw - Wi, 0, H * sh - Hi))
    summed = F.avg_pool2d(probs, (sh, sw))  # (B, K, H, W)
    count = F.avg_pool2d(valid, (sh, sw)).clamp_min(1e-12)
    return (summed / count).flatten(2).transpose(1, 2)  # (B, H*W, K)


def _box_weights(dets: Sequence[Dict[str, torch.Tensor]], img_size, grid, num_classes: int) -> torch.Tensor:
    boxes, labels, scores = ([d[k] for d in dets] for k in ("boxes", "labels", "scores"))
    return box_token_weights(boxes, labels, scores, img_size, grid, num_classes)  # (B, H*W, K)


def _upsample(token_maps: torch.Tensor, img_size: Tuple[int, int]) -> torch.Tensor:
    """(B, K, h, w) -> (B, K, H, W): bilinear to the (padded) multiple of the grid, cropped to the image."""
    _, _, h, w = token_maps.shape
    H, W = img_size
    padded = (h * math.ceil(H / h), w * math.ceil(W / w))
    return F.interpolate(token_maps, size=padded, mode="bilinear", align_corners=False)[..., :H, :W]


@torch.no_grad()
def explain(
    model: nn.Module,
    images: torch.Tensor,
    method: str = "rollout",
    *,
    classes: Optional[Sequence[int]] = None,
    head_fusion: str = "mean",
    discard_ratio: float = 0.0,
    score_threshold: float = 0.3,
    token_index: int = 0,
    seed: int = 0,
) -> Explanation:
    """Explanation maps for a batch of (normalised) images.

    Args:
        model: A classifier, :class:`~lifevit.tasks.segmentation.Segmenter` or
            :class:`~lifevit.tasks.detection.Detector`, in eval mode.
        images: ``(B, C, H, W)`` normalised as the model was trained.
        method: ``rollout`` (class-token roll-out), ``dense-rollout`` (Dense Attention Roll-Out, dense tasks),
            ``chefer`` (gradient-weighted attention relevance, Chefer et al. 2021), ``gradcam`` (Grad-CAM on the
            last block's tokens) or ``random`` (uniform random token scores). Definitions: ``docs/explain.md``.
        classes: Class indices to map. Dense tasks: default every class. Classifiers (``chefer``, ``gradcam``,
            ``random``): default one map per image for its predicted class; ignored by ``rollout``.
        head_fusion: Roll-out: ``mean``, ``max`` or ``min`` over heads.
        discard_ratio: Roll-out: fraction of the lowest attentions discarded per row and layer.
        score_threshold: Detection: boxes at or above this score define the tokens (and targets) of their class.
        token_index: Classifier roll-out / relevance: which prefix token's row to read (0 = class token,
            1 = distillation); a classifier with ``global_pool='avg'`` reads the mean of the patch rows instead.
        seed: ``random``: seed of the random maps.

    Returns:
        An :class:`Explanation`.

    Raises:
        ValueError: An unknown method, ``dense-rollout`` on a classifier, a class index out of range.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    task = infer_task(model)
    if method == "dense-rollout" and task == "classification":
        raise ValueError(
            "dense-rollout needs per-token class predictions: use a segmentation or detection model "
            f"(got the classifier {type(model).__name__}); use method='rollout' for classifiers"
        )
    backbone, prefixes = _backbone_and_prefixes(model, task)
    img_size = tuple(images.shape[-2:])
    stride = int(getattr(getattr(model, "backbone", None), "stride", 1)) if task == "segmentation" else 1
    padded = tuple(math.ceil(s / stride) * stride for s in img_size)  # the Segmenter pads to its stride
    grid = model_token_grid(backbone, padded)
    B = images.shape[0]
    average_pool = task == "classification" and getattr(model, "global_pool", "token") == "avg"

    if method in GRADIENT_METHODS:
        from .methods import gradient_maps

        with torch.enable_grad():
            res = gradient_maps(
                model, images, task, method, grid=grid, prefixes=prefixes, classes=classes,
                score_threshold=score_threshold, token_index=token_index, average_pool=average_pool,
            )  # fmt: skip
        maps_img = _upsample(res["token_maps"], img_size)
        return Explanation(
            method=method,
            task=task,
            classes=res["classes"],
            token_maps=res["token_maps"].cpu().numpy(),
            maps=maps_img.cpu().numpy(),
            predicted=res["predicted"].cpu().numpy(),
            rollout=res.get("relevance"),
            output=res["output"],
            detections=res.get("detections"),
        )

    output, records = capture_attention(model, images, grid_size=grid, modules=prefixes)
    rollout = rollout_records(records, head_fusion=head_fusion, discard_ratio=discard_ratio)
    detections = None
    if method == "rollout":
        token_maps = class_token_map(rollout, token_index=token_index, average_pool=average_pool)[:, None]
        class_ids = [-1]
        predicted = torch.ones(B, 1, dtype=torch.bool)
    elif task == "classification":  # random on a classifier
        class_ids = [-1] if classes is None else _check_classes(classes, output.shape[-1])
        predicted = torch.ones(B, len(class_ids), dtype=torch.bool)
        token_maps = None
    else:
        weights, fallback, detections = dense_token_weights(model, output, task, rollout.out_grid, img_size,
                                                            score_threshold)  # fmt: skip
        K = weights.shape[-1]
        class_ids = list(range(K)) if classes is None else _check_classes(classes, K)
        predicted = (weights.sum(1) > 0)[:, class_ids].cpu()  # (B, K')
        token_maps = None
        if method == "dense-rollout":
            maps, _ = dense_rollout(rollout, weights.to(rollout.matrix), fallback_weights=fallback.to(rollout.matrix))
            token_maps = maps[:, class_ids]
    if method == "random":
        h, w = rollout.in_grid
        gen = torch.Generator().manual_seed(int(seed))
        token_maps = torch.rand(B, len(class_ids), h, w, generator=gen)
        rollout = None
    maps_img = _upsample(token_maps.float().cpu(), img_size)
    return Explanation(
        method=method,
        task=task,
        classes=class_ids,
        token_maps=token_maps.cpu().numpy(),
        maps=maps_img.cpu().numpy(),
        predicted=predicted.numpy(),
        rollout=rollout,
        output=output,
        detections=detections,
    )


def _check_classes(classes: Sequence[int], K: int) -> List[int]:
    class_ids = [int(c) for c in classes]
    bad = [c for c in class_ids if not 0 <= c < K]
    if bad:
        raise ValueError(f"classes must be in [0, {K}), got {bad}")
    return class_ids


def dense_token_weights(
    model: nn.Module,
    output: Dict[str, Any],
    task: str,
    out_grid: Optional[Tuple[int, int]],
    img_size: Tuple[int, int],
    score_threshold: float,
) -> Tuple[torch.Tensor, torch.Tensor, Optional[List[Dict[str, torch.Tensor]]]]:
    """Token weights ``w_ic`` of Dense Attention Roll-Out and their fallback, ``(B, N, K)`` each (``docs/explain.md``).

    Segmentation: the tokens predicted as c weighted by p_ic (fallback p_ic); detection: the tokens inside the
    boxes of class c scoring >= ``score_threshold`` (fallback: every box of class c among the top 100). Also returns
    the kept detections (detection models, else None).
    """
    if out_grid is None:
        raise ValueError("the roll-out's output tokens have no grid; cannot place per-token predictions")
    if task == "segmentation":
        probs = segmentation_token_probs(output["logits"], out_grid)  # (B, N, K)
        return token_class_weights(probs), probs, None
    from lifevit.tasks.detection import PostProcess

    B = output["pred_logits"].shape[0]
    sizes = torch.tensor([img_size] * B, device=output["pred_logits"].device)
    dets = PostProcess(num_select=100)(output, sizes)
    K = output["pred_logits"].shape[-1]
    kept = [{k: v[d["scores"] >= score_threshold] for k, v in d.items()} for d in dets]
    weights = _box_weights(kept, img_size, out_grid, K)  # boxes above the threshold
    fallback = _box_weights(dets, img_size, out_grid, K)  # every box, for classes with none above it
    return weights, fallback, [{k: v.cpu() for k, v in d.items()} for d in kept]
