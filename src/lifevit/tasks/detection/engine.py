"""Detection training and evaluation: data loading, ``train_one_epoch``, ``evaluate``, ``fit``, ``predict``.

``fit`` runs a whole experiment in a run folder (``config.json``, ``metrics.jsonl`` + TensorBoard, ``curves.png``,
``last`` / ``best`` checkpoints via :mod:`lifevit.engine`, ``summary.json``) and resumes from ``last``.
Checkpoints carry the whole :class:`DetectConfig` and the class names, so ``eval`` / ``predict`` rebuild the
detector from the file alone.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import random
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from lifevit.engine import MetricsLogger, load_checkpoint, plot_curves, prepare_output_dir, save_checkpoint, write_json

from .config import DataConfig, DetectConfig, class_names, config_from_dict
from .criterion import SetCriterion
from .metrics import DetectionEvaluator
from .model import Detector, build_criterion, build_detector
from .postprocess import PostProcess
from .transforms import build_transforms, collate, targets_to_normalized

__all__ = [
    "build_dataset",
    "build_loader",
    "train_one_epoch",
    "evaluate",
    "fit",
    "load_detector",
    "evaluate_checkpoint",
    "predict_images",
]

logger = logging.getLogger(__name__)

TASK = "detection"


def build_dataset(cfg: DataConfig, split: str, train: bool) -> Tuple[Dataset, List[str]]:
    """The data set of ``split`` (``train`` or ``val``) with its transforms, and the class names."""
    transforms = build_transforms(train, cfg.img_size, cfg.augment if train else "none")
    if cfg.format == "voc":
        from lifevit.data.voc import VOCDetectionDataset

        names = class_names(cfg.classes)
        image_set = cfg.train_split if split == "train" else cfg.val_split
        year = cfg.year if split == "train" else (cfg.val_year or cfg.year)
        return VOCDetectionDataset(cfg.root, year, image_set, names, transforms), names
    if cfg.format == "coco":
        from lifevit.data.coco import CocoDetectionDataset

        images, ann = (cfg.train_images, cfg.train_ann) if split == "train" else (cfg.val_images, cfg.val_ann)
        if not images or not ann:
            raise ValueError(f"COCO data needs data.{split}_images and data.{split}_ann, got {images!r}, {ann!r}")
        ds = CocoDetectionDataset(images, ann, transforms)
        return ds, list(ds.classes)
    raise ValueError(f"data.format must be 'voc' or 'coco', got {cfg.format!r}")


def build_loader(
    dataset: Dataset, batch_size: int, train: bool, size_divisibility: int, workers: int = 0, seed: int = 0
):
    """A loader that pads batches (see :func:`~lifevit.tasks.detection.transforms.collate`)."""
    gen = torch.Generator().manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=train,
        drop_last=train and len(dataset) > batch_size,
        num_workers=workers,
        collate_fn=functools.partial(collate, size_divisibility=size_divisibility),
        generator=gen,
        persistent_workers=workers > 0,
    )


def _to(targets: Sequence[Dict[str, torch.Tensor]], device: torch.device) -> List[Dict[str, torch.Tensor]]:
    return [{k: v.to(device) for k, v in t.items()} for t in targets]


def param_groups(model: Detector, lr: float, backbone_lr: float, weight_decay: float) -> List[Dict[str, Any]]:
    """AdamW groups: backbone / head, and no weight decay on biases, norms and embeddings (1-D or pos embeds)."""
    groups: Dict[Tuple[bool, bool], List[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        no_decay = p.ndim <= 1 or name.endswith(("pos_embed", "cls_token", "reg_token"))
        groups.setdefault((name.startswith("backbone."), no_decay), []).append(p)
    return [
        {"params": ps, "lr": backbone_lr if bb else lr, "weight_decay": 0.0 if nd else weight_decay}
        for (bb, nd), ps in groups.items()
    ]


def warmup_cosine(total_steps: int, warmup_steps: int, min_factor: float):
    """LR factor per step: linear warm-up from 0.1 %, then cosine decay to ``min_factor``."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return max(1e-3, (step + 1) / warmup_steps)
        t = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_factor + (1 - min_factor) * 0.5 * (1 + math.cos(math.pi * t))

    return factor


def train_one_epoch(
    model: Detector,
    criterion: SetCriterion,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    scheduler: Optional[torch.optim.lr_scheduler.LRScheduler],
    device: torch.device,
    clip_grad: float = 0.0,
    epoch: int = 0,
    progress: bool = True,
) -> Dict[str, float]:
    """One pass over ``loader``.

    Returns:
        The mean of every loss term and of ``loss`` (weighted total), ``lr``, ``img_per_s`` and the CPU seconds.
    """
    model.train()
    criterion.train()
    sums: Dict[str, float] = {}
    n_steps, n_images, start, cpu_start = 0, 0, time.perf_counter(), time.process_time()
    bar = tqdm(loader, desc=f"train {epoch}", disable=not progress, leave=False, dynamic_ncols=True)
    for images, mask, targets in bar:
        images, mask = images.to(device), mask.to(device)
        outputs = model(images, mask)
        losses = criterion(outputs, targets_to_normalized(_to(targets, device)))
        loss = criterion.total(losses)
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"loss is {loss.item()} at epoch {epoch}, step {n_steps}; terms: "
                f"{ {k: round(float(v), 4) for k, v in losses.items()} }"
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if clip_grad > 0:
            nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        sums["loss"] = sums.get("loss", 0.0) + loss.item()
        for k, v in losses.items():
            sums[k] = sums.get(k, 0.0) + v.item()
        n_steps += 1
        n_images += len(images)
        bar.set_postfix(loss=f"{sums['loss'] / n_steps:.3f}")
    if n_steps == 0:
        raise ValueError("the training loader is empty; check the data set and batch size")
    stats = {f"train_{k}": v / n_steps for k, v in sums.items()}
    stats["lr"] = optimizer.param_groups[0]["lr"]
    stats["train_img_per_s"] = n_images / max(time.perf_counter() - start, 1e-9)
    stats["train_cpu_seconds"] = time.process_time() - cpu_start  # all threads; wall time on an idle machine
    return stats


@torch.no_grad()
def evaluate(
    model: Detector,
    loader: DataLoader,
    device: torch.device,
    score_threshold: float = 0.3,
    criterion: Optional[SetCriterion] = None,
    progress: bool = True,
    class_metrics: bool = False,
) -> Dict[str, float]:
    """mAP@0.5, COCO mAP, F1 / precision / recall (see :mod:`.metrics`) and, with a criterion, the loss.

    Boxes are compared in the frame of the evaluated (resized) images; the metrics do not depend on the scale.
    """
    model.eval()
    post = PostProcess(num_select=100)
    evaluator = DetectionEvaluator(score_threshold=score_threshold, class_metrics=class_metrics)
    loss_sum, n_batches = 0.0, 0
    for images, mask, targets in tqdm(loader, desc="eval", disable=not progress, leave=False, dynamic_ncols=True):
        images, mask = images.to(device), mask.to(device)
        outputs = model(images, mask)
        if criterion is not None:
            loss_sum += float(criterion.total(criterion(outputs, targets_to_normalized(_to(targets, device)))))
            n_batches += 1
        sizes = torch.stack([t["size"] for t in targets]).to(device)
        evaluator.update(post(outputs, sizes), targets)
    stats = evaluator.compute()
    if n_batches:
        stats["loss"] = loss_sum / n_batches
    return stats


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _meta(cfg: DetectConfig, classes: Sequence[str], extra: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    return {
        "task": TASK,
        "model": f"{cfg.model.backbone}+{cfg.model.head}",
        "config": cfg.to_dict(),
        "classes": list(classes),
        **(extra or {}),
    }


def fit(
    cfg: Optional[DetectConfig], output_dir: os.PathLike, resume: bool = False, progress: bool = True
) -> Dict[str, Any]:
    """Train and evaluate a detector in ``output_dir``; returns the summary (also written to ``summary.json``).

    Args:
        cfg: The experiment (ignored when resuming: the run's stored config is used).
        output_dir: Run folder (must be new or empty unless ``resume``).
        resume: Continue from ``output_dir/last.safetensors`` (its stored config is used).
        progress: Show progress bars.
    """
    out = prepare_output_dir(output_dir, resume)
    start_epoch, best, ckpt = 0, -1.0, None
    if resume:
        ckpt = load_checkpoint(out)
        if ckpt.meta.get("task") != TASK:
            raise ValueError(f"{ckpt.path} is a {ckpt.meta.get('task')!r} checkpoint, not a detection one")
        cfg = config_from_dict(ckpt.meta["config"])
        start_epoch = ckpt.epoch
        best = float((ckpt.training_state or {}).get("extra", {}).get("best_map_50", -1.0))
    tc = cfg.train
    if tc.threads:
        torch.set_num_threads(tc.threads)
    _seed_all(tc.seed + start_epoch)
    device = torch.device(tc.device)
    train_ds, classes = build_dataset(cfg.data, "train", train=True)
    val_ds, _ = build_dataset(cfg.data, "val", train=False)
    # a resumed run loads its weights from the checkpoint: never fetch pretrained weights again
    model = build_detector(cfg.model, len(classes), cfg.data.img_size, pretrained=None if ckpt is None else False)
    model = model.to(device)
    criterion = build_criterion(cfg.loss, len(classes))
    d = model.size_divisibility
    train_loader = build_loader(train_ds, tc.batch_size, True, d, cfg.data.num_workers, tc.seed + start_epoch)
    val_loader = build_loader(val_ds, tc.batch_size, False, d, cfg.data.num_workers)
    optimizer = torch.optim.AdamW(param_groups(model, tc.lr, tc.backbone_lr, tc.weight_decay), lr=tc.lr)
    steps = len(train_loader)
    sched = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine(tc.epochs * steps, int(tc.warmup_epochs * steps), tc.min_lr)
    )
    if ckpt is not None:
        model.load_state_dict(ckpt.model_state)
        if ckpt.training_state:
            optimizer.load_state_dict(ckpt.training_state["optimizer"])
            sched.load_state_dict(ckpt.training_state["scheduler"])
    write_json(out / "config.json", cfg.to_dict())
    n_params = sum(p.numel() for p in model.parameters())
    logger.info(
        "detector %s+%s: %.2f M params, %d classes, %d train / %d val images",
        cfg.model.backbone,
        cfg.model.head,
        n_params / 1e6,
        len(classes),
        len(train_ds),
        len(val_ds),
    )
    metrics = MetricsLogger(out)
    if resume:
        metrics.truncate(start_epoch + 1)
    last_eval: Dict[str, float] = {}
    prev = (ckpt.training_state or {}).get("extra", {}) if ckpt else {}
    train_seconds = float(prev.get("train_seconds", 0.0))
    train_cpu_seconds = float(prev.get("train_cpu_seconds", 0.0))
    epoch = start_epoch
    try:
        for epoch in range(start_epoch + 1, tc.epochs + 1):
            t0 = time.perf_counter()
            stats = train_one_epoch(
                model, criterion, train_loader, optimizer, sched, device, tc.clip_grad, epoch, progress
            )
            train_seconds += time.perf_counter() - t0
            train_cpu_seconds += stats["train_cpu_seconds"]
            record: Dict[str, Any] = {"epoch": epoch, **stats, "train_seconds": train_seconds}
            out_of_time = tc.max_minutes > 0 and train_seconds >= 60 * tc.max_minutes
            if epoch % tc.eval_every == 0 or epoch == tc.epochs or out_of_time:
                last_eval = evaluate(model, val_loader, device, tc.score_threshold, criterion, progress)
                record.update({f"val_{k}": v for k, v in last_eval.items()})
                logger.info(
                    "epoch %d: loss %.3f, val mAP@0.5 %.4f, mAP %.4f, F1 %.4f (%.0f s training)",
                    epoch,
                    stats["train_loss"],
                    last_eval["map_50"],
                    last_eval["map"],
                    last_eval["f1"],
                    train_seconds,
                )
            else:
                logger.info("epoch %d: loss %.3f (%.0f s training)", epoch, stats["train_loss"], train_seconds)
            metrics.log(record)
            is_best = bool(last_eval) and last_eval["map_50"] > best and "val_map_50" in record
            if is_best:
                best = last_eval["map_50"]
            extra = {
                "best_map_50": best,
                "train_seconds": train_seconds,
                "train_cpu_seconds": train_cpu_seconds,
                "val": last_eval,
            }
            meta = _meta(cfg, classes, {"val": last_eval})
            save_checkpoint(out, model=model, meta=meta, epoch=epoch, optimizer=optimizer, scheduler=sched, extra=extra)
            if is_best:
                save_checkpoint(out, model=model, meta=meta, epoch=epoch, name="best")
            if out_of_time:
                logger.info("stopping after epoch %d: max_minutes=%.1f reached", epoch, tc.max_minutes)
                break
    finally:
        metrics.close()
    try:
        plot_curves(out / "metrics.jsonl", out / "curves.png")
    except ValueError as err:
        logger.warning("no curves plotted: %s", err)
    summary = {
        "task": TASK,
        "backbone": cfg.model.backbone,
        "head": cfg.model.head,
        "epochs": epoch,
        "params": n_params,
        "train_seconds": train_seconds,
        "train_cpu_seconds": train_cpu_seconds,
        "threads": torch.get_num_threads(),
        "best_map_50": best,
        "final": last_eval,
        "output_dir": str(out),
    }
    write_json(out / "summary.json", summary)
    return summary


def load_detector(path: os.PathLike, device: str = "cpu") -> Tuple[Detector, DetectConfig, List[str]]:
    """Rebuild a detector from a checkpoint alone (a ``.safetensors`` file or a run folder)."""
    ckpt = load_checkpoint(path)
    if ckpt.meta.get("task") != TASK:
        raise ValueError(f"{ckpt.path} is a {ckpt.meta.get('task')!r} checkpoint; expected a detection checkpoint")
    cfg = config_from_dict(ckpt.meta["config"])
    classes = list(ckpt.meta["classes"])
    model = build_detector(cfg.model, len(classes), img_size=cfg.data.img_size, pretrained=False)
    model.load_state_dict(ckpt.model_state)
    return model.to(device).eval(), cfg, classes


def evaluate_checkpoint(
    path: os.PathLike,
    data: Optional[DataConfig] = None,
    batch_size: int = 16,
    device: str = "cpu",
    score_threshold: Optional[float] = None,
    progress: bool = True,
) -> Dict[str, float]:
    """Metrics of a checkpoint on the validation split of ``data`` (default: the data it was trained with)."""
    model, cfg, classes = load_detector(path, device)
    data = data or cfg.data
    ds, names = build_dataset(data, "val", train=False)
    if list(names) != classes:
        raise ValueError(f"the data set's classes {names} differ from the checkpoint's {classes}")
    loader = build_loader(ds, batch_size, False, model.size_divisibility, data.num_workers)
    thr = cfg.train.score_threshold if score_threshold is None else score_threshold
    return evaluate(model, loader, torch.device(device), thr, progress=progress, class_metrics=True)


@torch.no_grad()
def predict_images(
    path: os.PathLike,
    images: Sequence[os.PathLike],
    output_dir: os.PathLike,
    score_threshold: Optional[float] = None,
    device: str = "cpu",
) -> List[Dict[str, Any]]:
    """Detect objects in image files and draw them (boxes, class names, scores) into PNGs in ``output_dir``.

    Returns, per image, the input, the PNG written and the kept detections (boxes xyxy in the file's pixels).
    """
    from PIL import Image

    from .draw import draw_detections

    model, cfg, classes = load_detector(path, device)
    thr = cfg.train.score_threshold if score_threshold is None else score_threshold
    transform = build_transforms(False, cfg.data.img_size, "none")
    post = PostProcess(num_select=100)
    out_dir = Path(output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results = []
    for img_path in images:
        img_path = Path(img_path)
        if not img_path.is_file():
            raise FileNotFoundError(f"image {img_path} does not exist")
        pil = Image.open(img_path).convert("RGB")
        W, H = pil.size
        empty = {
            "boxes": torch.zeros(0, 4),
            "labels": torch.zeros(0, dtype=torch.int64),
            "iscrowd": torch.zeros(0, dtype=torch.int64),
        }
        x, _ = transform(pil, empty)
        batch, mask, _ = collate([(x, {})], model.size_divisibility)
        outputs = model(batch.to(device), mask.to(device))
        det = post(outputs, torch.tensor([[H, W]], device=device))[0]  # boxes in the file's pixels
        keep = det["scores"] >= thr
        det = {k: v[keep].cpu() for k, v in det.items()}
        png = out_dir / f"{img_path.stem}_det.png"
        draw_detections(pil, det, classes).save(png)
        results.append(
            {
                "image": str(img_path),
                "output": str(png),
                "detections": [
                    {"label": classes[int(lab)], "score": float(s), "box": [round(float(v), 1) for v in b]}
                    for b, s, lab in zip(det["boxes"], det["scores"], det["labels"])
                ],
            }
        )
    return results
