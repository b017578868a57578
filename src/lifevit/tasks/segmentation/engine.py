"""Training, evaluation and prediction loops for semantic segmentation.

``train_one_epoch`` and ``evaluate`` return dicts of statistics; :func:`fit` runs a whole experiment in a run
folder (``config.json``, ``metrics.jsonl``, ``checkpoints/{last,best}.safetensors``, ``curves.png``,
``summary.json``) and resumes it; :func:`predict_files` writes colourised masks and overlays. Nothing here
prints or exits: errors are raised and the command line reports them.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset

from lifevit.data.cityscapes import IGNORE_INDEX, CityscapesSegmentation, LabelTable, load_label_table
from lifevit.engine.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from lifevit.engine.distributed import all_reduce_sum, barrier, init_distributed
from lifevit.engine.plots import plot_curves
from lifevit.engine.rng import restore_rng_from_checkpoint, rng_checkpoint_entries, seed_everything
from lifevit.engine.rundir import MetricsLogger, prepare_output_dir, write_json

from .config import DataConfig, InferenceConfig, SegmentationConfig, TrainConfig, config_from_dict
from .criterion import SegmentationCriterion
from .metrics import SegmentationMetrics
from .model import Segmenter, build_segmenter
from .postprocess import infer_logits
from .transforms import SegmentationTransform, normalize_image
from .visualize import colorize, overlay

__all__ = [
    "build_datasets",
    "build_optimizer",
    "build_scheduler",
    "evaluate",
    "fit",
    "load_segmenter",
    "predict_files",
    "train_one_epoch",
]

logger = logging.getLogger(__name__)
TASK = "segmentation"


def resolve_device(device: Optional[str]) -> torch.device:
    """``cuda`` when available and not specified, else the given device."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available; use --device cpu")
    return torch.device(device)


def build_datasets(cfg: DataConfig, splits: Sequence[str] = ("train", "val")) -> Dict[str, CityscapesSegmentation]:
    """Datasets of the requested roles (``train``: augmented ``cfg.train_split``; ``val``: ``cfg.val_split``)."""
    table = load_label_table(cfg.label_table)
    out = {}
    for role in splits:
        train = role == "train"
        transform = SegmentationTransform(
            train, cfg.base_size, cfg.scale_range, cfg.crop_size, cfg.hflip, cfg.mean, cfg.std
        )
        split = cfg.train_split if train else cfg.val_split
        out[role] = CityscapesSegmentation(cfg.root, split, label_table=table, transforms=transform)
    return out


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW or SGD (momentum 0.9); biases, norms, position / class embeddings get no weight decay."""
    from timm.optim import param_groups_weight_decay

    skip = set()
    inner = getattr(getattr(model, "backbone", None), "model", None)
    if inner is not None and hasattr(inner, "no_weight_decay"):
        skip = {f"backbone.model.{n}" for n in inner.no_weight_decay()}
    skip.add("decoder.cls_emb")
    groups = param_groups_weight_decay(model, cfg.weight_decay, no_weight_decay_list=skip)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=0.9)
    raise ValueError(f"unknown optimizer {cfg.optimizer!r}; expected 'adamw' or 'sgd'")


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, total_iters: int):
    """Per-iteration schedule: linear warm-up, then ``poly`` (power 0.9) or ``cosine`` decay to ``min_lr``."""
    if cfg.scheduler not in ("poly", "cosine"):
        raise ValueError(f"unknown scheduler {cfg.scheduler!r}; expected 'poly' or 'cosine'")
    floor = cfg.min_lr / cfg.lr if cfg.lr > 0 else 0.0
    warmup = max(cfg.warmup_iters, 0)

    def factor(it: int) -> float:
        if it < warmup:
            return (it + 1) / warmup
        t = min((it - warmup) / max(total_iters - warmup, 1), 1.0)
        decay = (1 - t) ** 0.9 if cfg.scheduler == "poly" else 0.5 * (1 + math.cos(math.pi * t))
        return floor + (1 - floor) * decay

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def train_one_epoch(
    model: nn.Module,
    criterion: nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    device: torch.device,
    epoch: int,
    clip_grad: Optional[float] = None,
    amp: bool = False,
    log_every: int = 50,
) -> Dict[str, float]:
    """One pass over ``loader``; the scheduler steps every iteration.

    Returns:
        ``loss`` (mean over iterations), ``lr`` (at the end), ``iters``, ``train_seconds``, ``img_per_s``.

    Raises:
        FloatingPointError: The loss became NaN or infinite.
    """
    model.train()
    total, seen, start = 0.0, 0, time.perf_counter()
    n = len(loader)
    for it, (images, targets) in enumerate(loader):
        images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp and device.type == "cuda"):
            outputs = model(images)
        losses = criterion(outputs, targets)
        loss = losses["loss"]
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss is {loss.item()} at epoch {epoch}, iteration {it}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if clip_grad:
            nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
        optimizer.step()
        scheduler.step()
        total += loss.item()
        seen += images.shape[0]
        if log_every and ((it + 1) % log_every == 0 or it + 1 == n):
            elapsed = time.perf_counter() - start
            logger.info(
                "epoch %d [%d/%d] loss %.4f lr %.2e %.1f img/s, eta %.0f s",
                epoch,
                it + 1,
                n,
                total / (it + 1),
                optimizer.param_groups[0]["lr"],
                seen / elapsed,
                elapsed / (it + 1) * (n - it - 1),
            )
    elapsed = time.perf_counter() - start
    return {
        "loss": total / max(n, 1),
        "lr": optimizer.param_groups[0]["lr"],
        "iters": n,
        "train_seconds": elapsed,
        "img_per_s": seen / max(elapsed, 1e-9),
    }


@torch.no_grad()
def evaluate(
    model: nn.Module,
    dataset: CityscapesSegmentation,
    device: torch.device,
    inference: Optional[InferenceConfig] = None,
    criterion: Optional[nn.Module] = None,
) -> Dict[str, Any]:
    """mIoU, per-class IoU, pixel accuracy (and the loss, with a criterion) of ``model`` on ``dataset``.

    Images are predicted at full size, ``whole`` or by sliding windows (``inference``, default whole), with the
    horizontally flipped image averaged in when ``inference.flip`` and those of the image resized by each of
    ``inference.scales`` (multi-scale testing) when there are several; they are batched ``inference.batch_size`` at a
    time, so a batch must hold images of one size. Under DDP (a process group exists) every process predicts its
    shard and the confusion matrices and losses are summed, so every process returns the whole set's numbers.

    Returns:
        ``mIoU``, ``mAcc``, ``pixel_acc``, ``per_class_iou`` ({class: IoU}), ``num_images``, ``eval_seconds``,
        and ``loss`` when a criterion is given.
    """
    inference = inference or InferenceConfig(mode="whole")
    model.eval()
    metrics = SegmentationMetrics(dataset.num_classes, IGNORE_INDEX, dataset.class_names, device)
    shard: Dataset = dataset
    if torch.distributed.is_initialized():
        rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
        shard = Subset(dataset, range(rank, len(dataset), world))
    loader = DataLoader(shard, batch_size=max(inference.batch_size, 1), shuffle=False, num_workers=0)
    start, loss_sum, batches = time.perf_counter(), 0.0, 0
    for images, targets in loader:
        images, targets = images.to(device), targets.to(device)
        logits = infer_logits(
            model,
            images,
            inference.mode,
            inference.window,
            inference.stride,
            batch_size=max(inference.batch_size, 1),
            flip=inference.flip,
            scales=inference.scales,
        )  # (B, K, H, W)
        if criterion is not None:
            loss_sum += float(criterion({"logits": logits}, targets)["loss"])
            batches += 1
        metrics.update(logits.argmax(1), targets)
    stats: Dict[str, Any] = metrics.compute()  # torchmetrics sums the confusion matrices over processes
    stats.update(num_images=len(dataset), eval_seconds=time.perf_counter() - start)
    if criterion is not None:
        sums = all_reduce_sum(torch.tensor([loss_sum, batches], dtype=torch.float64, device=device))
        stats["loss"] = float(sums[0] / sums[1].clamp(min=1))
    return stats


def _meta(cfg: SegmentationConfig, table: LabelTable) -> Dict[str, Any]:
    return {
        "task": TASK,
        "model": cfg.model.backbone,
        "config": cfg.to_dict(),
        "class_names": list(table.class_names),
        "colors": [list(c) for c in table.colors],
    }


def fit(cfg: SegmentationConfig, output_dir: Union[str, Path], resume: bool = False) -> Dict[str, Any]:
    """Train ``cfg`` in the run folder ``output_dir``, evaluating every ``cfg.train.eval_every`` epochs.

    Under ``torchrun`` (``WORLD_SIZE`` > 1) every process trains on its shard of each epoch with
    ``cfg.train.batch_size`` images per step (DDP averages the gradients: a global batch of
    ``batch_size * world_size``), evaluation is sharded and the confusion matrices are summed, and only rank 0
    writes the run folder.

    Args:
        cfg: The experiment.
        output_dir: Run folder; must be new or empty unless ``resume``.
        resume: Continue from ``output_dir/checkpoints/last.safetensors`` (model, optimizer, schedule, RNG).

    Returns:
        The summary written to ``summary.json``: final and best ``mIoU``, per-class IoU of the last evaluation,
        parameter count, epochs, processes, wall time and the paths of the checkpoints and plots.
    """
    tc = cfg.train
    device = resolve_device(tc.device)
    dist_info = init_distributed(device)
    if device.type == "cuda" and dist_info.enabled:
        device = torch.device("cuda", dist_info.local_rank)
        torch.cuda.set_device(device)
    main = dist_info.is_main
    # every process checks the folder (and fails the same way), so none is left waiting for the others
    out = prepare_output_dir(output_dir, resume=resume)
    barrier()
    if tc.threads:
        torch.set_num_threads(tc.threads)
    seed_everything(tc.seed)  # the same initial weights in every process

    datasets = build_datasets(cfg.data)
    train_set, val_set = datasets["train"], datasets["val"]
    if cfg.model.num_classes != train_set.num_classes:
        raise ValueError(
            f"model.num_classes is {cfg.model.num_classes} but the label table of {cfg.data.root} has "
            f"{train_set.num_classes} classes {train_set.class_names}"
        )
    # when resuming, the weights come from the checkpoint: do not fetch pretrained ones again
    model_cfg = (
        dataclasses.replace(cfg.model, pretrained=False, pretrained_file=None, init_checkpoint=None)
        if resume
        else cfg.model
    )
    model = build_segmenter(model_cfg).to(device)
    if dist_info.enabled:
        seed_everything(tc.seed + dist_info.rank)  # a different augmentation stream per process
    criterion = SegmentationCriterion(
        cfg.model.num_classes, class_weights=tc.class_weights, dice_weight=tc.dice_weight
    ).to(device)
    # the same shuffle for 1 or N processes (each takes every N-th image of it), re-drawn from the seed and the
    # epoch, so a resumed run sees the same order
    sampler = DistributedSampler(train_set, dist_info.world_size, dist_info.rank, shuffle=True, seed=tc.seed)
    loader = DataLoader(
        train_set,
        batch_size=tc.batch_size,
        sampler=sampler,
        drop_last=len(sampler) >= tc.batch_size,
        num_workers=cfg.data.num_workers,
        persistent_workers=cfg.data.num_workers > 0,
    )
    if len(loader) == 0:
        raise ValueError(
            f"{len(train_set)} training images cannot feed {dist_info.world_size} process(es); need at least one "
            "image per process"
        )
    optimizer = build_optimizer(model, tc)
    scheduler = build_scheduler(optimizer, tc, tc.epochs * len(loader))
    ckpt_dir = out / "checkpoints"
    meta = _meta(cfg, train_set.table)

    start_epoch, best, best_epoch = 0, -math.inf, -1
    if resume:
        ckpt = load_checkpoint(ckpt_dir / "last.safetensors")
        if ckpt.meta.get("task") != TASK:
            raise ValueError(f"{ckpt.path} is a {ckpt.meta.get('task')!r} checkpoint, expected {TASK!r}")
        model.load_state_dict(ckpt.model_state)
        if ckpt.training_state is None:
            raise ValueError(f"{ckpt.path} has no training state to resume from")
        optimizer.load_state_dict(ckpt.training_state["optimizer"])
        scheduler.load_state_dict(ckpt.training_state["scheduler"])
        extra = ckpt.training_state.get("extra", {})
        best, best_epoch = extra.get("best_miou", best), extra.get("best_epoch", best_epoch)
        restore_rng_from_checkpoint(extra, dist_info.rank)
        start_epoch = ckpt.epoch
        logger.info("resuming %s from epoch %d", out, start_epoch)
    if main:
        write_json(out / "config.json", cfg.to_dict())  # on resume: the config it continues with

    train_model: nn.Module = model
    if dist_info.enabled:
        ddp_ids = [device.index] if device.type == "cuda" else None
        train_model = nn.parallel.DistributedDataParallel(model, device_ids=ddp_ids)
    n_params = sum(p.numel() for p in model.parameters())
    if main:
        logger.info(
            "training %s + %s decoder (%.2f M params) on %d images (%d val), %d epochs of %d iterations x %d "
            "process(es), device %s",
            cfg.model.backbone,
            cfg.model.decoder,
            n_params / 1e6,
            len(train_set),
            len(val_set),
            tc.epochs,
            len(loader),
            dist_info.world_size,
            device,
        )
    run_start = time.perf_counter()
    last_eval: Dict[str, Any] = {}
    mlog = MetricsLogger(out) if main else None
    try:
        if mlog is not None and resume:
            mlog.truncate(start_epoch + 1)
        for epoch in range(start_epoch, tc.epochs):
            sampler.set_epoch(epoch)
            stats = train_one_epoch(
                train_model,
                criterion,
                loader,
                optimizer,
                scheduler,
                device,
                epoch,
                tc.clip_grad,
                tc.amp,
                tc.log_every if main else 0,
            )
            if dist_info.enabled:  # the mean loss over all processes
                loss = all_reduce_sum(torch.tensor([stats["loss"]], dtype=torch.float64, device=device))
                stats["loss"] = float(loss) / dist_info.world_size
                stats["img_per_s"] *= dist_info.world_size
            record: Dict[str, Any] = {"epoch": epoch + 1, **{f"train_{k}": v for k, v in stats.items()}}
            record["lr"] = record.pop("train_lr")
            if (epoch + 1) % tc.eval_every == 0 or epoch + 1 == tc.epochs:
                last_eval = evaluate(model, val_set, device, cfg.inference, criterion)
                record.update(
                    val_loss=last_eval["loss"],
                    val_mIoU=last_eval["mIoU"],
                    val_pixel_acc=last_eval["pixel_acc"],
                    val_seconds=last_eval["eval_seconds"],
                )
                if main:
                    logger.info(
                        "epoch %d: val mIoU %.4f pixel acc %.4f", epoch + 1, last_eval["mIoU"], last_eval["pixel_acc"]
                    )
                if last_eval["mIoU"] > best:
                    best, best_epoch = last_eval["mIoU"], epoch + 1
                    if main:
                        save_checkpoint(ckpt_dir, model=model, meta=meta, epoch=epoch + 1, name="best")
            rng_entries = rng_checkpoint_entries(dist_info)
            if main:
                mlog.log(record)
                extra = {
                    "best_miou": best,
                    "best_epoch": best_epoch,
                    **rng_entries,
                }
                save_checkpoint(
                    ckpt_dir,
                    model=model,
                    meta=meta,
                    epoch=epoch + 1,
                    optimizer=optimizer,
                    scheduler=scheduler,
                    extra=extra,
                )
            barrier()
    finally:
        if mlog is not None:
            mlog.close()
    if not last_eval:  # resumed a finished run: evaluate the final weights once
        last_eval = evaluate(model, val_set, device, cfg.inference, criterion)
    summary = {
        "task": TASK,
        "backbone": cfg.model.backbone,
        "decoder": cfg.model.decoder,
        "params": n_params,
        "epochs": tc.epochs,
        "world_size": dist_info.world_size,
        "mIoU": last_eval["mIoU"],
        "pixel_acc": last_eval["pixel_acc"],
        "mAcc": last_eval["mAcc"],
        "per_class_iou": last_eval["per_class_iou"],
        "best_mIoU": best,
        "best_epoch": best_epoch,
        "train_wall_seconds": time.perf_counter() - run_start,
        "checkpoint": str(ckpt_dir / "last.safetensors"),
        "best_checkpoint": str(ckpt_dir / "best.safetensors"),
        "curves": str(out / "curves.png"),
    }
    if main:
        plot_curves(out / "metrics.jsonl", out / "curves.png")
        write_json(out / "summary.json", summary)
    barrier()
    return summary


def load_segmenter(
    path: Union[str, Path], device: Union[str, torch.device] = "cpu"
) -> Tuple[Segmenter, SegmentationConfig, Checkpoint]:
    """Rebuild a segmentation model from a checkpoint alone (a weights file or a run folder).

    Raises:
        ValueError: The checkpoint belongs to another task.
    """
    ckpt = load_checkpoint(path)
    if ckpt.meta.get("task") != TASK:
        raise ValueError(f"{ckpt.path} is a {ckpt.meta.get('task')!r} checkpoint; expected a {TASK!r} one")
    cfg = config_from_dict(ckpt.meta["config"])
    # the weights come from the checkpoint
    cfg.model.pretrained, cfg.model.pretrained_file, cfg.model.init_checkpoint = False, None, None
    model = build_segmenter(cfg.model)
    model.load_state_dict(ckpt.model_state)
    return model.to(device).eval(), cfg, ckpt


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def list_images(inputs: Sequence[Union[str, Path]]) -> List[Path]:
    """Image files given directly or found (recursively, sorted) in given folders."""
    files: List[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            files += sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES)
        elif p.is_file():
            files.append(p)
        else:
            raise FileNotFoundError(f"input {p} is neither an image file nor a folder")
    if not files:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found in {[str(i) for i in inputs]}")
    return files


@torch.no_grad()
def predict_files(
    model: nn.Module,
    files: Sequence[Union[str, Path]],
    out_dir: Union[str, Path],
    colors: Sequence[Sequence[int]],
    data: DataConfig,
    inference: InferenceConfig,
    device: Union[str, torch.device] = "cpu",
    alpha: float = 0.5,
) -> List[Dict[str, str]]:
    """Predict each image and write ``<stem>_mask.png`` (colourised), ``<stem>_overlay.png`` (mask blended over
    the image) and ``<stem>_trainIds.png`` (raw class indices) into ``out_dir``.

    Returns:
        One ``{"image", "mask", "overlay", "train_ids"}`` dict of paths per input.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.eval()
    written = []
    for f in files:
        f = Path(f)
        with Image.open(f) as im:
            rgb = np.array(im.convert("RGB"))  # (H, W, 3)
        image = normalize_image(torch.from_numpy(rgb).permute(2, 0, 1), data.mean, data.std)  # (3, H, W)
        logits = infer_logits(
            model,
            image[None].to(device),
            inference.mode,
            inference.window,
            inference.stride,
            batch_size=max(inference.batch_size, 1),
            flip=inference.flip,
            scales=inference.scales,
        )
        pred = logits[0].argmax(0).cpu().numpy().astype(np.uint8)  # (H, W)
        mask = colorize(pred, colors)
        paths = {
            "image": str(f),
            "mask": str(out / f"{f.stem}_mask.png"),
            "overlay": str(out / f"{f.stem}_overlay.png"),
            "train_ids": str(out / f"{f.stem}_trainIds.png"),
        }
        Image.fromarray(mask).save(paths["mask"])
        Image.fromarray(overlay(rgb, mask, alpha)).save(paths["overlay"])
        Image.fromarray(pred).save(paths["train_ids"])
        written.append(paths)
    return written
