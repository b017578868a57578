"""The one training engine: :func:`fit` runs any :class:`~lifevit.engine.task.Task` into a run folder.

It owns device selection, DDP under ``torchrun`` (gloo on CPU, NCCL on GPU), bf16 autocast on GPU, timm's optimizer
and scheduler factories, EMA, gradient clipping, checkpoints with every process's RNG state, resume, the NaN stop,
the time budget, SIGINT/SIGTERM, ``metrics.jsonl`` / TensorBoard / ``curves.png``, a progress bar with throughput
and ETA, and ``summary.json``. The layout of a run folder is the same for every task::

    config.yaml                 the resolved run config (what --resume continues with)
    metrics.jsonl               one record per epoch: epoch, train_loss, train_<term>, lr, train_img_per_s,
                                train_seconds, eval_<metric>, ema_<metric>, eval_seconds
    summary.json                task, model, the last evaluation's metrics, best_score / best_epoch, times, ...
    checkpoints/last.safetensors   weights (+ EMA) and meta; last.state.{json,safetensors}: the training state
    checkpoints/best.safetensors   weights of the best evaluation (score_key of the task)
    curves.png, tensorboard/    plots (and the task's own files, e.g. a confusion matrix)

Guarantees (tested for every task): an interrupted and resumed run equals an uninterrupted one (same metrics on
CPU); N processes equal one at the same global batch; a NaN loss stops the run and keeps the last good
checkpoint; an existing output folder is never overwritten; a signal stops at the next step and keeps the last
checkpoint; a run killed before its first checkpoint starts again in its folder; resuming a finished run changes
nothing.
"""

from __future__ import annotations

import logging
import math
import signal
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, Optional

import torch
import yaml
from torch import nn

from ..config import TrainConfig, config_to_dict
from .checkpoint import load_checkpoint, load_training_state, load_weights, save_checkpoint
from .distributed import DistInfo, all_reduce_sum, barrier, init_distributed
from .plots import plot_curves
from .rng import gather_rng_states, restore_rng_state, seed_everything
from .rundir import MetricsLogger, load_json, prepare_output_dir, write_json
from .task import Task

__all__ = ["NonFiniteLossError", "TrainingInterrupted", "fit", "resolve_device", "train_one_epoch"]

_logger = logging.getLogger(__name__)


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite; the run stopped and its last good checkpoint is kept."""


class TrainingInterrupted(KeyboardInterrupt):
    """SIGINT / SIGTERM stopped the run between two steps; the last checkpoint is kept.

    Attributes:
        epoch: The epoch that was running (1-based).
        output_dir: The run folder (``None`` when nothing is written).
        resumable: Whether a checkpoint exists to resume from.
    """

    def __init__(self, epoch: int, output_dir: Optional[Path], resumable: bool) -> None:
        super().__init__(f"interrupted at epoch {epoch}")
        self.epoch, self.output_dir, self.resumable = epoch, output_dir, resumable


def resolve_device(name: str) -> torch.device:
    """``auto`` is CUDA when available, else CPU; ``cuda`` without a GPU is a ``ValueError``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name != "cpu" and not (name == "cuda" or name.startswith("cuda:")):
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {name!r}")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but no CUDA GPU is available; use --device cpu")
    return device


def _autocast(device: torch.device, amp: bool):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp and device.type == "cuda")


class _StopFlag:
    """Set by SIGINT / SIGTERM (main thread only); the loop stops at the next step."""

    def __init__(self) -> None:
        self.signal: Optional[int] = None

    @contextmanager
    def installed(self) -> Iterator[_StopFlag]:
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

        def handler(signum, frame):  # noqa: ARG001
            if self.signal is not None:  # a second signal: stop now
                signal.signal(signum, previous[signum] if callable(previous[signum]) else signal.SIG_DFL)
                raise KeyboardInterrupt
            self.signal = signum

        for s in previous:
            signal.signal(s, handler)
        try:
            yield self
        finally:
            for s, h in previous.items():
                signal.signal(s, h)


def train_one_epoch(
    task: Task,
    model: nn.Module,
    loader: Any,
    optimizer: torch.optim.Optimizer,
    epoch: int,
    cfg: TrainConfig,
    device: torch.device,
    dist: DistInfo,
    scheduler: Any = None,
    ema: Any = None,
    stop: Optional[_StopFlag] = None,
    progress: bool = False,
) -> Dict[str, float]:
    """One pass over ``loader`` (``epoch`` is 0-based). Returns ``train_loss``, ``train_<term>`` (means over the
    images of every process), ``lr``, ``train_img_per_s``, ``train_seconds`` and ``train_cpu_seconds``.

    Raises:
        NonFiniteLossError: The loss of some process became NaN / inf (nothing was stepped with it).
        TrainingInterrupted: A signal arrived (checked before every step, on every process together).
    """
    from timm.utils import dispatch_clip_grad

    model.train()
    n_batches = len(loader)
    sums: Dict[str, torch.Tensor] = {}
    seen = 0
    start, cpu_start = time.perf_counter(), time.process_time()
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n_batches, desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="step", leave=False)
    try:
        for i, batch in enumerate(loader):
            with _autocast(device, cfg.amp):
                loss, logs, n = task.train_step(model, batch, device)
            flags = torch.tensor([0.0 if torch.isfinite(loss) else 1.0, 1.0 if stop and stop.signal else 0.0])
            if dist.enabled:  # the same decision on every process, or the others would wait forever
                flags = all_reduce_sum(flags.to(device)).cpu()
            if flags[0] > 0:
                raise NonFiniteLossError(
                    f"loss is {loss.item()} at epoch {epoch + 1}, step {i + 1}; the run stops here and keeps its last "
                    "good checkpoint. Lower train.lr, set train.clip_grad, or check the data."
                )
            if flags[1] > 0:
                raise TrainingInterrupted(epoch + 1, None, False)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.clip_grad:
                dispatch_clip_grad(model.parameters(), cfg.clip_grad, mode=cfg.clip_mode)
            optimizer.step()
            if scheduler is not None:
                scheduler.step_update(num_updates=epoch * n_batches + i + 1)
            if ema is not None:
                ema.update(getattr(model, "module", model), step=epoch * n_batches + i + 1)
            for key, value in {"loss": loss, **logs}.items():
                sums[key] = sums.get(key, torch.zeros((), dtype=torch.float64)) + value.detach().double().cpu() * n
            seen += n
            if bar is not None:
                bar.set_postfix(loss=f"{loss.item():.3f}", img_s=f"{seen / (time.perf_counter() - start):.0f}")
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    seconds = time.perf_counter() - start
    keys = sorted(sums)
    totals = torch.stack([sums[k] for k in keys] + [torch.tensor(float(seen), dtype=torch.float64)])
    if dist.enabled:
        totals = all_reduce_sum(totals.to(device)).cpu()
    images = max(totals[-1].item(), 1.0)
    stats = {f"train_{k}": totals[j].item() / images for j, k in enumerate(keys)}
    stats.update(
        lr=optimizer.param_groups[0]["lr"],
        train_img_per_s=images / max(seconds, 1e-9),
        train_seconds=seconds,
        train_cpu_seconds=time.process_time() - cpu_start,
    )
    return stats


def _scalars(stats: Dict[str, Any]) -> Dict[str, float]:
    return {
        k: float(v)
        for k, v in stats.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and not k.endswith("_seconds")
    }


def fit(
    task: Task,
    output_dir: Optional[Path] = None,
    resume: bool = False,
    init_checkpoint: Optional[Path] = None,
    on_epoch_end: Optional[Callable[[int, Dict[str, Any]], None]] = None,
) -> Dict[str, Any]:
    """Train ``task`` as ``task.cfg.train`` says; with ``output_dir``, into a run folder (module docs).

    Args:
        task: The task plug-in over its run config.
        output_dir: Run folder: new or empty, or (with ``resume``) a run to continue; ``None`` writes nothing.
        resume: Continue from ``output_dir/checkpoints/last``. A finished run is left as it is (its summary is
            returned); a run that stopped before its first checkpoint starts again.
        init_checkpoint: Start from the weights of this checkpoint (same task and model).
        on_epoch_end: Called with ``(epoch, record)`` after each epoch's checkpoint (tests use it).

    Returns:
        The summary (also ``summary.json``).

    Raises:
        NonFiniteLossError: The loss became NaN / inf; the last good checkpoint is kept.
        TrainingInterrupted: SIGINT / SIGTERM; the last checkpoint is kept.
        ValueError, FileNotFoundError: Bad configuration, data or folders (before anything is overwritten).
    """
    from timm.optim import create_optimizer_v2, list_optimizers
    from timm.scheduler import create_scheduler_v2
    from timm.utils import ModelEmaV3

    cfg: TrainConfig = task.cfg.train
    if cfg.opt.lower() not in list_optimizers():
        raise ValueError(f"train.opt {cfg.opt!r} is not an optimizer timm knows; e.g. adamw, sgd, lamb, lion")
    device = resolve_device(cfg.device)
    dist = init_distributed(device)
    if device.type == "cuda" and dist.enabled:
        device = torch.device("cuda", dist.local_rank)
        torch.cuda.set_device(device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    main = dist.is_main
    out = Path(output_dir) if output_dir is not None else None
    ckpt_dir = out / "checkpoints" if out is not None else None
    state = "new"
    if out is not None:  # every process checks (and fails the same way); the main one makes the folder
        state = prepare_output_dir(out, resume=resume, create=main)
    barrier()

    last_ckpt = training = None
    if state == "resume":
        last_ckpt = load_checkpoint(ckpt_dir / "last.safetensors")
        if last_ckpt.meta.get("task") != task.name:
            raise ValueError(f"{last_ckpt.path} is a {last_ckpt.meta.get('task')!r} run, not a {task.name!r} one")
        training = load_training_state(last_ckpt)
        extra = training["extra"]
        stopped_by_budget = extra.get("finished") and (extra.get("epochs_planned"), extra.get("max_minutes")) == (
            cfg.epochs,
            cfg.max_minutes,
        )
        if (training["epoch"] >= cfg.epochs or stopped_by_budget) and (out / "summary.json").is_file():
            _logger.info("%s already finished %d of %d epochs; nothing to do", out, training["epoch"], cfg.epochs)
            return load_json(out / "summary.json")

    seed_everything(cfg.seed)  # the same initial weights in every process
    model, train_loader = task.build(device, dist)
    if init_checkpoint is not None and last_ckpt is None:
        init = load_checkpoint(init_checkpoint)
        if init.meta.get("task") != task.name:
            raise ValueError(f"--checkpoint {init.path} is a {init.meta.get('task')!r} checkpoint, not {task.name!r}")
        load_weights(model, init.model_state, init.path)
    params = sum(p.numel() for p in model.parameters())
    model.to(device)
    if dist.enabled:
        seed_everything(cfg.seed + 1000 * dist.rank)  # a different augmentation stream per process
    updates_per_epoch = len(train_loader)
    if updates_per_epoch == 0:
        raise ValueError(
            f"batch size {cfg.batch_size} x {dist.world_size} process(es) is larger than the training set; "
            "lower --batch-size"
        )
    optimizer = create_optimizer_v2(
        task.param_groups(model) or model,
        opt=cfg.opt,
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        momentum=cfg.momentum,
    )
    scheduler, _ = create_scheduler_v2(
        optimizer,
        sched=cfg.sched,
        num_epochs=cfg.epochs,
        decay_epochs=cfg.decay_epochs,
        decay_rate=cfg.decay_rate,
        warmup_epochs=cfg.warmup_epochs,
        warmup_lr=cfg.warmup_lr,
        warmup_prefix=cfg.warmup_prefix,
        min_lr=cfg.min_lr,
        step_on_epochs=False,
        updates_per_epoch=updates_per_epoch,
    )
    ema = ModelEmaV3(model, decay=cfg.ema_decay, use_warmup=True) if cfg.ema else None

    start_epoch, best_score, best_epoch = 0, -math.inf, 0
    train_seconds = train_cpu_seconds = 0.0
    if training is not None:
        load_weights(model, last_ckpt.model_state, last_ckpt.path)
        if training["optimizer"] is not None:
            optimizer.load_state_dict(training["optimizer"])
        if ema is not None and last_ckpt.ema_state is not None:
            ema.module.load_state_dict(last_ckpt.ema_state)
        if training["scheduler"] is not None:
            scheduler.load_state_dict(training["scheduler"])
        extra = training["extra"]
        start_epoch = training["epoch"]
        best_score, best_epoch = extra.get("best_score", -math.inf), extra.get("best_epoch", 0)
        train_seconds, train_cpu_seconds = extra.get("train_seconds", 0.0), extra.get("train_cpu_seconds", 0.0)
        if not restore_rng_state(training["rng"], dist.rank):
            raise ValueError(f"{last_ckpt.path}'s training state has no RNG state for process {dist.rank}")
        scheduler.step(start_epoch)
        scheduler.step_update(start_epoch * updates_per_epoch)
        _logger.info("resuming %s from epoch %d", out, start_epoch)

    train_model = model
    if dist.enabled:
        ddp_ids = [device.index] if device.type == "cuda" else None
        train_model = nn.parallel.DistributedDataParallel(model, device_ids=ddp_ids)

    meta = {"task": task.name, **task.meta(), "config": config_to_dict(task.cfg)}
    logger = None
    if out is not None and main:
        (out / "config.yaml").write_text(yaml.safe_dump(config_to_dict(task.cfg), sort_keys=False))
        logger = MetricsLogger(out, tensorboard=cfg.tensorboard)
        logger.truncate(start_epoch + 1)  # records are numbered 1..E; keep those the checkpoint has seen
        for line in task.describe():
            _logger.info("%s", line)
        _logger.info(
            "%s: %.2f M params, %d step(s) per epoch x %d process(es), device %s",
            task.name,
            params / 1e6,
            updates_per_epoch,
            dist.world_size,
            device,
        )

    def evaluate_all() -> Dict[str, Any]:
        t0 = time.perf_counter()
        stats = task.evaluate(model, device)
        if ema is not None:
            stats.update({f"ema_{k}": v for k, v in task.evaluate(ema.module, device).items()})
        stats["eval_seconds"] = time.perf_counter() - t0
        return stats

    last_eval: Dict[str, Any] = {}
    stats: Dict[str, Any] = {}
    stopped = ""
    epoch = start_epoch
    stop = _StopFlag()
    show_progress = cfg.progress and main and sys.stderr.isatty()
    try:
        with stop.installed():
            for epoch in range(start_epoch, cfg.epochs):
                train_loader.set_epoch(epoch)
                try:
                    stats = train_one_epoch(
                        task,
                        train_model,
                        train_loader,
                        optimizer,
                        epoch,
                        cfg,
                        device,
                        dist,
                        scheduler,
                        ema,
                        stop,
                        show_progress,
                    )
                except TrainingInterrupted:
                    resumable = ckpt_dir is not None and (ckpt_dir / "last.safetensors").is_file()
                    raise TrainingInterrupted(epoch + 1, out, resumable) from None
                train_seconds += stats["train_seconds"]
                train_cpu_seconds += stats["train_cpu_seconds"]
                record: Dict[str, Any] = {"epoch": epoch + 1, **stats}
                out_of_time = cfg.max_minutes > 0 and train_seconds >= 60 * cfg.max_minutes
                last_epoch = epoch + 1 == cfg.epochs or out_of_time
                if (epoch + 1) % cfg.eval_interval == 0 or last_epoch:
                    last_eval = evaluate_all()
                    record.update(  # the model's metrics as eval_<metric>, the EMA's as ema_<metric>
                        {(k if k.startswith("ema_") else f"eval_{k}"): v for k, v in _scalars(last_eval).items()}
                    )
                    record["eval_seconds"] = last_eval["eval_seconds"]
                    score = float(last_eval[task.score_key])
                    if score > best_score:
                        best_score, best_epoch = score, epoch + 1
                        if ckpt_dir is not None and main:
                            save_checkpoint(ckpt_dir, model=model, meta=meta, epoch=epoch + 1, ema=ema, name="best")
                scheduler.step(epoch + 1, last_eval.get(task.score_key) if cfg.sched == "plateau" else None)
                if main:
                    ev = f"  {task.score_key} {last_eval[task.score_key]:.4f}" if "eval_seconds" in record else ""
                    _logger.info(
                        "epoch %d/%d  loss %.4f%s  (%.0f img/s, %.0f s)",
                        epoch + 1,
                        cfg.epochs,
                        stats["train_loss"],
                        ev,
                        stats["train_img_per_s"],
                        stats["train_seconds"],
                    )
                if ckpt_dir is not None and ((epoch + 1) % cfg.checkpoint_interval == 0 or last_epoch):
                    rng = gather_rng_states(dist)  # a collective
                    if main:
                        extra = {
                            "best_score": best_score,
                            "best_epoch": best_epoch,
                            "train_seconds": train_seconds,
                            "train_cpu_seconds": train_cpu_seconds,
                            "finished": last_epoch,
                            "epochs_planned": cfg.epochs,
                            "max_minutes": cfg.max_minutes,
                        }
                        save_checkpoint(
                            ckpt_dir,
                            model=model,
                            meta=meta,
                            epoch=epoch + 1,
                            optimizer=optimizer,
                            scheduler=scheduler,
                            ema=ema,
                            extra=extra,
                            rng=rng,
                        )
                    barrier()
                if logger is not None:
                    logger.log(record)
                if on_epoch_end is not None:
                    on_epoch_end(epoch + 1, record)
                if out_of_time and epoch + 1 < cfg.epochs:
                    stopped = f"time budget of {cfg.max_minutes:g} min reached after epoch {epoch + 1}"
                    _logger.info("stopping: %s", stopped)
                    break
            else:
                epoch = cfg.epochs - 1
    finally:
        if logger is not None:
            logger.close()

    if not last_eval:  # resumed a run whose last epoch was already trained
        last_eval = evaluate_all()
    epochs_done = epoch + 1 if cfg.epochs > start_epoch else start_epoch
    summary = {
        "task": task.name,
        "model": meta.get("model"),
        **task.summary(),
        "params": params,
        "params_m": round(params / 1e6, 4),
        **{k: v for k, v in last_eval.items() if k != "eval_seconds"},
        "score_key": task.score_key,
        "best_score": best_score if best_epoch else last_eval.get(task.score_key),
        "best_epoch": best_epoch,
        "train_loss": stats.get("train_loss"),
        "epochs": epochs_done,
        "epochs_planned": cfg.epochs,
        "stopped_early": stopped or None,
        "train_seconds": round(train_seconds, 2),
        "train_cpu_seconds": round(train_cpu_seconds, 2),
        "seed": cfg.seed,
        "world_size": dist.world_size,
        "device": str(device),
        "threads": torch.get_num_threads(),
    }
    if out is not None and main:
        write_json(out / "summary.json", summary)
        try:
            plot_curves(out / "metrics.jsonl", out / "curves.png", title=f"{meta.get('model')} ({task.name})")
        except ValueError as err:
            _logger.warning("no curves plotted: %s", err)
        task.finish(model, out, last_eval)
    barrier()
    return summary
