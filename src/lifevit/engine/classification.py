"""Classification: build data / model / recipe from a :class:`~lifevit.config.TrainConfig`, train, evaluate.

The pieces follow the torchvision references: :func:`train_one_epoch` and :func:`evaluate` return stats dicts,
:func:`train` runs a whole experiment into a run folder and returns its summary, and
:func:`evaluate_checkpoint` rebuilds a model from a checkpoint alone. The recipe is timm's: AdamW
(``create_optimizer_v2``), cosine schedule with warm-up (``create_scheduler_v2``), RandAugment / random erasing
(``create_transform``, ``RandomErasing``), Mixup/CutMix (``Mixup``), label smoothing (``timm.loss``),
drop-path, gradient clipping (``dispatch_clip_grad``), EMA of the weights (``ModelEmaV3``), bf16 autocast on GPU.

Run folder written by :func:`train` (rank 0 only)::

    config.yaml          the resolved config
    metrics.jsonl        one record per epoch (train loss/accuracy, lr, eval top-1/top-5, EMA top-1, times)
    summary.json         model, dataset, params, gmacs, top1, top5, ema_top1, best_top1, epochs, train_seconds...
    checkpoints/         last.safetensors (+ last.train.pt to resume), best.safetensors
    curves.png           loss / accuracy / learning-rate curves
    tensorboard/         when TensorBoard is installed
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

import torch
import yaml
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, Subset

from ..config import TrainConfig, config_to_dict
from ..data.classification import ArrayDataset, DatasetInfo, build_dataset, class_balanced_indices, dataset_info
from ..data.loader import TensorLoader
from .checkpoint import create_model_from_checkpoint, load_checkpoint, resolve_checkpoint, save_checkpoint
from .distributed import DistInfo, all_reduce_sum, barrier, init_distributed
from .losses import ClassificationCriterion, DistillationCriterion, base_criterion
from .plots import plot_confusion_matrix, plot_curves
from .rng import restore_rng_from_checkpoint, rng_checkpoint_entries, seed_everything
from .rundir import MetricsLogger, prepare_output_dir, write_json

__all__ = [
    "NonFiniteLossError",
    "DataBundle",
    "build_data",
    "build_model",
    "build_teacher",
    "evaluate",
    "evaluate_checkpoint",
    "resolve_device",
    "seed_everything",
    "train",
    "train_one_epoch",
]

_logger = logging.getLogger(__name__)
TASK = "classification"


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite; the run stops and its last good checkpoint is kept."""


# ----------------------------------------------------------------------------------------------- set-up
def resolve_device(name: str) -> torch.device:
    """``auto`` is CUDA when available, else CPU; ``cuda`` without a GPU is a ``ValueError``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but no CUDA GPU is available; use --device cpu")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be cpu, cuda or cuda:N, got {name!r}")
    return device


@dataclass
class DataBundle:
    """Loaders and facts of the data set for one process."""

    train_loader: Any
    eval_loader: Any
    info: DatasetInfo
    classes: List[str]
    num_classes: int
    in_chans: int
    img_size: int
    train_size: int
    eval_size: int
    batch_transform: Optional[Callable] = None  # Mixup/CutMix and random erasing on whole batches


class _BatchTransform:
    """Random erasing (timm, on normalised batches) then Mixup/CutMix (timm), applied in the training loop."""

    def __init__(self, erasing: Optional[Callable], mixup: Optional[Callable]) -> None:
        self.erasing, self.mixup = erasing, mixup

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        if self.erasing is not None:
            x = self.erasing(x)
        if self.mixup is not None:
            x, y = self.mixup(x, y)
        return x, y


def build_data(cfg: TrainConfig, dist_info: DistInfo = DistInfo()) -> DataBundle:
    """Data sets, class-balanced subset, loaders and batch-level augmentation for ``cfg``.

    The in-memory data sets use :class:`~lifevit.data.loader.TensorLoader` unless ``data.loader='timm'`` or a
    PIL-only augmentation (RandAugment, colour jitter) is asked for; the others use timm's ``create_transform``.
    """
    from timm.data import Mixup, create_transform
    from timm.data.distributed_sampler import RepeatAugSampler
    from timm.data.random_erasing import RandomErasing

    d, a = cfg.data, cfg.aug
    info = dataset_info(d.dataset)
    train_set = build_dataset(info.name, "train", d.root)
    eval_set = build_dataset(info.name, info.eval_split, d.root)
    if d.train_samples is not None:
        train_set = train_set.subset(class_balanced_indices(train_set.targets.numpy(), d.train_samples, d.subset_seed))
    classes = list(train_set.classes)
    num_classes = cfg.model.num_classes or info.num_classes or len(classes)
    in_chans = cfg.model.in_chans or info.in_chans
    img_size = cfg.model.img_size or info.img_size
    mean, std = info.mean, info.std
    if in_chans != info.in_chans:
        raise ValueError(f"{info.name} images have {info.in_chans} channel(s) but model.in_chans={in_chans}")
    use_tensor = d.loader == "tensor" or (
        d.loader == "auto" and isinstance(train_set, ArrayDataset) and not a.randaugment and not a.color_jitter
    )
    if use_tensor and not isinstance(train_set, ArrayDataset):
        raise ValueError(f"data.loader='tensor' needs an in-memory data set; {info.name} is read from files")
    rank, world = dist_info.rank, dist_info.world_size
    if use_tensor:
        resize = img_size if img_size != train_set.images.shape[1] else None
        train_loader = TensorLoader(
            train_set.images,
            train_set.targets,
            d.batch_size,
            mean,
            std,
            train=True,
            crop_padding=a.crop_padding,
            hflip=a.hflip,
            seed=cfg.seed,
            rank=rank,
            world_size=world,
            img_size=resize,
        )
        eval_loader = TensorLoader(
            eval_set.images,
            eval_set.targets,
            d.eval_batch_size,
            mean,
            std,
            rank=rank,
            world_size=world,
            img_size=resize,
        )
        erasing = RandomErasing(a.reprob, mode=a.remode, device="cpu") if a.reprob > 0 else None
    else:
        small = img_size <= 64
        train_set.transform = create_transform(
            (in_chans, img_size, img_size),
            is_training=True,
            scale=tuple(a.scale),
            hflip=a.hflip,
            color_jitter=a.color_jitter or 0.0,
            auto_augment=a.randaugment,
            interpolation="bicubic",
            re_prob=a.reprob,
            re_mode=a.remode,
            mean=mean,
            std=std,
        )
        eval_set.transform = create_transform(
            (in_chans, img_size, img_size),
            is_training=False,
            interpolation="bicubic",
            mean=mean,
            std=std,
            crop_pct=1.0 if small else 0.875,
        )
        if a.repeated_aug and world > 1:
            sampler = RepeatAugSampler(train_set, num_replicas=world, rank=rank, shuffle=True)
        else:
            sampler = DistributedSampler(
                train_set, num_replicas=world, rank=rank, shuffle=True, seed=cfg.seed, drop_last=True
            )
        train_loader = _EpochDataLoader(train_set, sampler, d.batch_size, d.workers, cfg.seed)
        shard = Subset(eval_set, list(range(rank, len(eval_set), world)))
        eval_loader = DataLoader(shard, batch_size=d.eval_batch_size, shuffle=False, num_workers=d.workers)
        erasing = None  # inside create_transform
    mixup = None
    if a.mixup > 0 or a.cutmix > 0:
        mixup = Mixup(
            mixup_alpha=a.mixup,
            cutmix_alpha=a.cutmix,
            prob=a.mixup_prob,
            switch_prob=a.mixup_switch_prob,
            label_smoothing=a.label_smoothing,
            num_classes=num_classes,
        )
    batch_transform = _BatchTransform(erasing, mixup) if (erasing or mixup) else None
    return DataBundle(
        train_loader,
        eval_loader,
        info,
        classes,
        num_classes,
        in_chans,
        img_size,
        len(train_set),
        len(eval_set),
        batch_transform,
    )


class _EpochDataLoader:
    """A ``DataLoader`` over a sampler with ``set_epoch``, rebuilt every epoch with a generator seeded by
    ``(seed, epoch)`` so that worker augmentation is reproducible after a resume."""

    def __init__(self, dataset, sampler, batch_size: int, workers: int, seed: int) -> None:
        self.dataset, self.sampler, self.batch_size, self.workers, self.seed = (
            dataset,
            sampler,
            batch_size,
            workers,
            seed,
        )
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.sampler) // self.batch_size

    def num_samples(self) -> int:
        return len(self) * self.batch_size

    def __iter__(self):
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        loader = DataLoader(
            self.dataset,
            batch_size=self.batch_size,
            sampler=self.sampler,
            num_workers=self.workers,
            drop_last=True,
            generator=gen,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=False,
        )
        return iter(loader)


def build_model(cfg: TrainConfig, num_classes: int, in_chans: int, img_size: int) -> Tuple[nn.Module, Dict[str, Any]]:
    """``timm.create_model`` for ``cfg.model`` and the kwargs that rebuild it (stored in checkpoints).

    ``img_size`` is passed only to models that take it (ViTs; not ResNets).
    """
    import timm

    import lifevit.models  # noqa: F401  (registers lifevit models)

    m = cfg.model
    if m.name not in timm.list_models():
        raise ValueError(
            f"unknown model {m.name!r}; lifevit models: {', '.join(lifevit.models.list_lifevit_models())} "
            "(or any timm model name)"
        )
    kwargs: Dict[str, Any] = dict(num_classes=num_classes, in_chans=in_chans, drop_path_rate=m.drop_path)
    if m.drop:
        kwargs["drop_rate"] = m.drop
    kwargs.update(m.kwargs)
    default_size = (
        timm.models.get_pretrained_cfg(m.name).input_size[-1] if timm.models.get_pretrained_cfg(m.name) else 0
    )
    if img_size != default_size:
        kwargs["img_size"] = img_size
    try:
        model = timm.create_model(m.name, **kwargs)
    except TypeError as err:
        if "img_size" not in str(err) or "img_size" not in kwargs:
            raise
        kwargs.pop("img_size")  # convolutional networks take any input size
        model = timm.create_model(m.name, **kwargs)
    return model, kwargs


def build_teacher(spec: str, num_classes: int, device: torch.device) -> nn.Module:
    """A frozen teacher: a lifevit checkpoint (file or run folder; its EMA weights when it has them) or a timm
    model name (created with ``pretrained=True``)."""
    import timm

    try:
        path = resolve_checkpoint(spec)
    except FileNotFoundError:
        path = None
    if path is not None:
        ckpt = load_checkpoint(path)
        teacher = create_model_from_checkpoint(ckpt, use_ema=ckpt.ema_state is not None)
    elif spec in timm.list_models():
        teacher = timm.create_model(spec, pretrained=True, num_classes=num_classes)
    else:
        raise FileNotFoundError(f"teacher {spec!r} is neither a lifevit checkpoint nor a timm model name")
    if getattr(teacher, "num_classes", num_classes) != num_classes:
        raise ValueError(f"teacher predicts {teacher.num_classes} classes but the student {num_classes}")
    return teacher.to(device).eval().requires_grad_(False)


def _autocast(device: torch.device, amp: bool):
    enabled = amp and device.type == "cuda"
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


# ------------------------------------------------------------------------------------------- the loops
def train_one_epoch(
    model: nn.Module,
    criterion: nn.Module,
    loader: Iterable,
    optimizer: torch.optim.Optimizer,
    epoch: int,
    *,
    device: torch.device,
    scheduler: Any = None,
    ema: Any = None,
    batch_transform: Optional[Callable] = None,
    clip_grad: Optional[float] = None,
    clip_mode: str = "norm",
    amp: bool = True,
    progress: Optional[Any] = None,
) -> Dict[str, float]:
    """One pass over ``loader``. Returns ``train_loss`` (mean), ``train_top1`` (on the un-mixed targets, class
    head), ``lr``, ``train_img_per_s`` and ``train_seconds``.

    Raises:
        NonFiniteLossError: The loss became NaN/inf (nothing is stepped with it).
    """
    from timm.utils import dispatch_clip_grad

    model.train()
    criterion.train()
    n_batches = len(loader)
    loss_sum = torch.zeros((), dtype=torch.float64)
    correct = torch.zeros((), dtype=torch.float64)
    seen = 0
    start = time.perf_counter()
    for i, (x, y) in enumerate(loader):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        hard_y = y
        if batch_transform is not None:
            x, y = batch_transform(x, y)
        with _autocast(device, amp):
            out = model(x)
            loss = criterion(x, out, y)
        if not torch.isfinite(loss):
            raise NonFiniteLossError(
                f"loss is {loss.item()} at epoch {epoch}, step {i}; the run stops here and keeps its last good "
                "checkpoint. Lower optim.lr, enable optim.clip_grad, or check the data."
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if clip_grad:
            dispatch_clip_grad(model.parameters(), clip_grad, mode=clip_mode)
        optimizer.step()
        if scheduler is not None:
            scheduler.step_update(num_updates=epoch * n_batches + i + 1)
        if ema is not None:
            ema.update(model, step=epoch * n_batches + i + 1)
        logits = out[0] if isinstance(out, (tuple, list)) else out
        loss_sum += loss.detach().double().cpu() * len(x)
        correct += (logits.detach().argmax(-1) == hard_y).sum().double().cpu()
        seen += len(x)
        if progress is not None:
            rate = seen / max(time.perf_counter() - start, 1e-9)
            progress.set_postfix(loss=f"{loss.item():.3f}", img_s=f"{rate:.0f}", refresh=False)
            progress.update(1)
    seconds = time.perf_counter() - start
    stats = torch.stack([loss_sum, correct, torch.tensor(seen, dtype=torch.float64)])
    stats = all_reduce_sum(stats.to(device)).cpu() if torch.distributed.is_initialized() else stats
    total = max(stats[2].item(), 1.0)
    return {
        "train_loss": stats[0].item() / total,
        "train_top1": 100.0 * stats[1].item() / total,
        "lr": optimizer.param_groups[0]["lr"],
        "train_img_per_s": total / max(seconds, 1e-9),
        "train_seconds": seconds,
    }


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
        with _autocast(device, amp):
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


# --------------------------------------------------------------------------------------------- a run
def _progress(total: int, desc: str, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="batch", leave=False, dynamic_ncols=True)


def train(
    cfg: TrainConfig,
    output_dir: Optional[Path] = None,
    resume: bool = False,
    on_epoch_end: Optional[Callable[[int, Dict[str, Any]], None]] = None,
) -> Dict[str, Any]:
    """Train and evaluate a classifier as ``cfg`` says; with ``output_dir``, write a run folder (module docs).

    Args:
        cfg: The resolved run configuration.
        output_dir: Run folder (must be new or empty unless ``resume``); ``None`` writes nothing.
        resume: Continue from ``output_dir/checkpoints/last.safetensors``.
        on_epoch_end: Called with ``(epoch, record)`` after each epoch's checkpoint (tests use it to interrupt).

    Returns:
        The summary (also written to ``summary.json``).

    Raises:
        NonFiniteLossError: The loss became NaN/inf; the last good checkpoint is kept.
    """
    from timm.optim import create_optimizer_v2
    from timm.scheduler import create_scheduler_v2
    from timm.utils import ModelEmaV3

    from ..profile import count_macs, count_params

    device = resolve_device(cfg.device)
    dist_info = init_distributed(device)
    if device.type == "cuda" and dist_info.enabled:
        device = torch.device("cuda", dist_info.local_rank)
        torch.cuda.set_device(device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    main = dist_info.is_main
    out = Path(output_dir) if output_dir is not None else None
    ckpt_dir = out / "checkpoints" if out is not None else None
    if out is not None and main:
        prepare_output_dir(out, resume=resume)
    barrier()

    seed_everything(cfg.seed)
    data = build_data(cfg, dist_info)
    model, model_kwargs = build_model(cfg, data.num_classes, data.in_chans, data.img_size)
    params = count_params(model)
    gmacs = count_macs(model, (data.in_chans, data.img_size, data.img_size)) / 1e9
    model.to(device)

    teacher = None
    if cfg.distill.type != "none":
        if not hasattr(model, "set_distilled_training"):
            raise ValueError(
                f"distillation needs a model with a distillation token (deit_*_distilled_*), got {cfg.model.name!r}"
            )
        model.set_distilled_training(True)
        teacher = build_teacher(cfg.distill.teacher, data.num_classes, device)
    base = base_criterion(
        data.batch_transform is not None and data.batch_transform.mixup is not None, cfg.aug.label_smoothing
    )
    criterion = (
        DistillationCriterion(base, teacher, cfg.distill.type, cfg.distill.alpha, cfg.distill.tau)
        if teacher is not None
        else ClassificationCriterion(base)
    )

    o = cfg.optim
    optimizer = create_optimizer_v2(model, opt=o.opt, lr=o.lr, weight_decay=o.weight_decay, momentum=o.momentum)
    updates_per_epoch = len(data.train_loader)
    if updates_per_epoch == 0:
        raise ValueError(
            f"batch size {cfg.data.batch_size} x {dist_info.world_size} process(es) is larger than the "
            f"{data.train_size} training images; lower --batch-size"
        )
    scheduler, _ = create_scheduler_v2(
        optimizer,
        sched=o.sched,
        num_epochs=cfg.epochs,
        warmup_epochs=o.warmup_epochs,
        warmup_lr=o.warmup_lr,
        min_lr=o.min_lr,
        step_on_epochs=False,
        updates_per_epoch=updates_per_epoch,
    )
    ema = ModelEmaV3(model, decay=cfg.ema_decay, use_warmup=True) if cfg.ema else None

    start_epoch, best_top1, train_seconds = 0, -1.0, 0.0
    if resume:
        if ckpt_dir is None:
            raise ValueError("resume needs the run folder (output_dir)")
        ckpt = load_checkpoint(ckpt_dir / "last.safetensors")
        if ckpt.training_state is None:
            raise ValueError(f"{ckpt.path} has no training state to resume from")
        model.load_state_dict(ckpt.model_state)
        optimizer.load_state_dict(ckpt.training_state["optimizer"])
        if ema is not None and ckpt.ema_state is not None:
            ema.module.load_state_dict(ckpt.ema_state)
        extra = ckpt.training_state.get("extra", {})
        start_epoch = ckpt.epoch
        best_top1 = extra.get("best_top1", -1.0)
        train_seconds = extra.get("train_seconds", 0.0)
        restore_rng_from_checkpoint(extra, dist_info.rank)
        if "scheduler" in ckpt.training_state:
            scheduler.load_state_dict(ckpt.training_state["scheduler"])
        scheduler.step(start_epoch)
        scheduler.step_update(start_epoch * updates_per_epoch)
        _logger.info("resuming %s from epoch %d", out, start_epoch)
        if start_epoch >= cfg.epochs:
            _logger.info("run already finished %d of %d epochs", start_epoch, cfg.epochs)

    train_model = model
    if dist_info.enabled:
        ddp_ids = [device.index] if device.type == "cuda" else None
        train_model = nn.parallel.DistributedDataParallel(model, device_ids=ddp_ids)

    meta = {
        "task": TASK,
        "model": cfg.model.name,
        "model_kwargs": model_kwargs,
        "dataset": data.info.name,
        "classes": data.classes,
        "mean": list(data.info.mean),
        "std": list(data.info.std),
        "img_size": data.img_size,
        "in_chans": data.in_chans,
        "config": config_to_dict(cfg),
    }
    logger = None
    if out is not None and main:
        (out / "config.yaml").write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
        logger = MetricsLogger(out, tensorboard=cfg.tensorboard)
        if resume:
            logger.truncate(start_epoch + 1)  # records are numbered 1..E; keep those <= the checkpoint's
    _logger.info(
        "%s on %s: %d train / %d eval images, %d classes, %.2f M params, %.3f GMACs, %d process(es), device %s",
        cfg.model.name,
        data.info.name,
        data.train_size,
        data.eval_size,
        data.num_classes,
        params / 1e6,
        gmacs,
        dist_info.world_size,
        device,
    )

    last_eval: Dict[str, Any] = {}
    stats: Dict[str, Any] = {}
    last_ema_eval: Dict[str, Any] = {}
    wall_start = time.perf_counter()
    try:
        for epoch in range(start_epoch, cfg.epochs):
            data.train_loader.set_epoch(epoch)
            bar = _progress(updates_per_epoch, f"epoch {epoch + 1}/{cfg.epochs}", cfg.progress and main)
            try:
                stats = train_one_epoch(
                    train_model,
                    criterion,
                    data.train_loader,
                    optimizer,
                    epoch,
                    device=device,
                    scheduler=scheduler,
                    ema=ema,
                    batch_transform=data.batch_transform,
                    clip_grad=o.clip_grad,
                    clip_mode=o.clip_mode,
                    amp=cfg.amp,
                    progress=bar,
                )
            finally:
                if bar is not None:
                    bar.close()
            scheduler.step(epoch + 1)
            train_seconds += stats["train_seconds"]
            record: Dict[str, Any] = {"epoch": epoch + 1, **stats}
            if (epoch + 1) % cfg.eval_interval == 0 or epoch + 1 == cfg.epochs:
                t0 = time.perf_counter()
                last_eval = evaluate(model, data.eval_loader, data.num_classes, device=device, amp=cfg.amp)
                record.update(eval_loss=last_eval["loss"], eval_top1=last_eval["top1"], eval_top5=last_eval["top5"])
                if ema is not None:
                    last_ema_eval = evaluate(ema.module, data.eval_loader, data.num_classes, device=device, amp=cfg.amp)
                    record.update(ema_top1=last_ema_eval["top1"], ema_top5=last_ema_eval["top5"])
                record["eval_seconds"] = time.perf_counter() - t0
                if last_eval["top1"] > best_top1:
                    best_top1 = last_eval["top1"]
                    if ckpt_dir is not None and main:
                        save_checkpoint(ckpt_dir, model=model, meta=meta, epoch=epoch + 1, ema=ema, name="best")
            if main:
                ev = f"  eval top-1 {record['eval_top1']:.2f}%" if "eval_top1" in record else ""
                ev += f"  EMA {record['ema_top1']:.2f}%" if "ema_top1" in record else ""
                _logger.info(
                    "epoch %d/%d  loss %.4f  train %.2f%%%s  (%.0f img/s, %.0f s)",
                    epoch + 1,
                    cfg.epochs,
                    stats["train_loss"],
                    stats["train_top1"],
                    ev,
                    stats["train_img_per_s"],
                    stats["train_seconds"],
                )
            if ckpt_dir is not None and ((epoch + 1) % cfg.checkpoint_interval == 0 or epoch + 1 == cfg.epochs):
                rng_entries = rng_checkpoint_entries(dist_info)
                if main:
                    save_checkpoint(
                        ckpt_dir,
                        model=model,
                        meta=meta,
                        epoch=epoch + 1,
                        optimizer=optimizer,
                        scheduler=scheduler,
                        ema=ema,
                        extra={
                            "best_top1": best_top1,
                            "train_seconds": train_seconds,
                            **rng_entries,
                        },
                    )
                barrier()
            if logger is not None:
                logger.log(record)
            if on_epoch_end is not None:
                on_epoch_end(epoch + 1, record)
    finally:
        if logger is not None:
            logger.close()

    if not last_eval:  # resumed a finished run: evaluate what is there
        last_eval = evaluate(model, data.eval_loader, data.num_classes, device=device, amp=cfg.amp)
        if ema is not None:
            last_ema_eval = evaluate(ema.module, data.eval_loader, data.num_classes, device=device, amp=cfg.amp)
    summary = {
        "model": cfg.model.name,
        "dataset": data.info.name,
        "params": params,
        "params_m": round(params / 1e6, 4),
        "gmacs": round(gmacs, 4),
        "top1": last_eval["top1"],
        "top5": last_eval["top5"],
        "ema_top1": last_ema_eval.get("top1"),
        "ema_top5": last_ema_eval.get("top5"),
        "best_top1": max(best_top1, last_eval["top1"]),
        "train_loss": stats.get("train_loss"),
        "epochs": cfg.epochs,
        "train_samples": data.train_size,
        "eval_samples": last_eval["num_samples"],
        "train_seconds": round(train_seconds, 2),
        "wall_seconds_this_process": round(time.perf_counter() - wall_start, 2),
        "seed": cfg.seed,
        "world_size": dist_info.world_size,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "per_class_acc": dict(zip(data.classes, last_eval["per_class_acc"])),
    }
    if out is not None and main:
        write_json(out / "summary.json", summary)
        try:
            plot_curves(out / "metrics.jsonl", out / "curves.png", title=f"{cfg.model.name} on {data.info.name}")
        except ValueError as err:
            _logger.warning("no curves plotted: %s", err)
        plot_confusion_matrix(
            last_eval["confusion"].numpy(),
            data.classes,
            out / "confusion.png",
            title=f"{cfg.model.name}: top-1 {last_eval['top1']:.2f}%",
        )
    barrier()
    return summary


def evaluate_checkpoint(
    checkpoint: Path,
    dataset: Optional[str] = None,
    root: Optional[str] = None,
    split: str = "test",
    batch_size: int = 500,
    device: str = "auto",
    use_ema: bool = False,
    output_dir: Optional[Path] = None,
) -> Dict[str, Any]:
    """Rebuild the model from ``checkpoint`` alone and evaluate it on ``dataset`` (default: the one it was trained
    on, read from the data root it was trained with unless ``root`` is given). With ``output_dir``, write
    ``eval.json`` and ``confusion.png`` there.

    Returns:
        ``top1``, ``top5``, ``loss``, ``num_samples``, ``per_class_acc`` ({class: %}), the model and data set names.
    """
    from timm.data import create_transform

    dev = resolve_device(device)
    ckpt = load_checkpoint(checkpoint)
    if ckpt.meta.get("task") != TASK:
        raise ValueError(f"{ckpt.path} is a {ckpt.meta.get('task')!r} checkpoint, expected {TASK!r}")
    model = create_model_from_checkpoint(ckpt, use_ema=use_ema).to(dev)
    info = dataset_info(dataset or ckpt.meta["dataset"])
    num_classes = ckpt.meta["model_kwargs"]["num_classes"]
    img_size, in_chans = int(ckpt.meta["img_size"]), int(ckpt.meta["in_chans"])
    mean, std = tuple(ckpt.meta.get("mean", info.mean)), tuple(ckpt.meta.get("std", info.std))
    if root is None and info.name == ckpt.meta.get("dataset"):
        root = ckpt.meta.get("config", {}).get("data", {}).get("root")  # where it was trained from
    eval_set = build_dataset(info.name, split, root)
    classes = list(ckpt.meta.get("classes") or eval_set.classes)
    if len(classes) != num_classes:
        raise ValueError(f"the checkpoint predicts {num_classes} classes but {info.name} has {len(classes)}")
    if isinstance(eval_set, ArrayDataset):
        resize = img_size if img_size != eval_set.images.shape[1] else None
        loader = TensorLoader(eval_set.images, eval_set.targets, batch_size, mean, std, img_size=resize)
    else:
        eval_set.transform = create_transform(
            (in_chans, img_size, img_size),
            is_training=False,
            interpolation="bicubic",
            mean=mean,
            std=std,
            crop_pct=1.0 if img_size <= 64 else 0.875,
        )
        loader = DataLoader(eval_set, batch_size=batch_size, shuffle=False)
    stats = evaluate(model, loader, num_classes, device=dev)
    result = {
        "checkpoint": str(ckpt.path),
        "model": ckpt.meta["model"],
        "dataset": info.name,
        "epoch": ckpt.epoch,
        "weights": "ema" if use_ema else "model",
        "top1": stats["top1"],
        "top5": stats["top5"],
        "loss": stats["loss"],
        "num_samples": stats["num_samples"],
        "per_class_acc": dict(zip(classes, stats["per_class_acc"])),
        "confusion": stats["confusion"].tolist(),
    }
    if output_dir is not None:
        output_dir = Path(output_dir)
        write_json(output_dir / "eval.json", result)
        result["confusion_png"] = str(
            plot_confusion_matrix(
                stats["confusion"].numpy(),
                classes,
                output_dir / "confusion.png",
                title=f"{ckpt.meta['model']} on {info.name}: top-1 {stats['top1']:.2f}%",
            )
        )
    return result
