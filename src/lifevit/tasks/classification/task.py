"""Classification plugged into the engine: :class:`ClassificationTask`, and a checkpoint's eval and predict.

The training step applies the batch augmentation (random erasing, Mixup/CutMix) and the criterion (label
smoothing, or DeiT distillation through the distillation token); everything else is the engine's.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from ...data.classification import build_dataset, dataset_info
from ...engine.checkpoint import Checkpoint, create_model_from_checkpoint, load_checkpoint
from ...engine.distributed import DistInfo
from ...engine.plots import plot_confusion_matrix
from ...engine.rundir import write_json
from ...engine.task import Task
from .config import ClassificationConfig
from .criterion import ClassificationCriterion, DistillationCriterion, base_criterion
from .data import build_data, eval_loader
from .metrics import evaluate
from .model import build_model, build_teacher

__all__ = ["ClassificationTask", "evaluate_checkpoint", "load_model", "predict_images"]

_logger = logging.getLogger(__name__)


class ClassificationTask(Task):
    """Image classification from scratch (DeiT recipe), with or without LIFE."""

    name = "classification"
    score_key = "top1"

    def __init__(self, cfg: ClassificationConfig) -> None:
        super().__init__(cfg)
        self.data = None
        self.model_kwargs: Dict[str, Any] = {}
        self.gmacs = 0.0

    def build(self, device: torch.device, dist: DistInfo):
        from ...profile import count_macs

        cfg = self.cfg
        self.data = data = build_data(cfg, dist)
        model, self.model_kwargs = build_model(cfg.model, data.num_classes, data.in_chans, data.img_size)
        self.gmacs = count_macs(model, (data.in_chans, data.img_size, data.img_size)) / 1e9
        teacher = None
        if cfg.distill.type != "none":
            if not hasattr(model, "set_distilled_training"):
                raise ValueError(
                    f"distillation needs a model with a distillation token (deit_*_distilled_*), got {cfg.model.name!r}"
                )
            model.set_distilled_training(True)
            teacher = build_teacher(cfg.distill.teacher, data.num_classes, device)
        mixup = data.batch_transform is not None and data.batch_transform.mixup is not None
        base = base_criterion(mixup, cfg.aug.label_smoothing)
        self.criterion = (
            DistillationCriterion(base, teacher, cfg.distill.type, cfg.distill.alpha, cfg.distill.tau)
            if teacher is not None
            else ClassificationCriterion(base)
        )
        return model, data.train_loader

    def train_step(self, model: nn.Module, batch, device: torch.device):
        x, y = batch
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        hard_y = y
        if self.data.batch_transform is not None:
            x, y = self.data.batch_transform(x, y)
        self.criterion.train()
        out = model(x)  # (B, K), or a (class, distillation) pair of them
        loss = self.criterion(x, out, y)
        logits = out[0] if isinstance(out, (tuple, list)) else out
        top1 = 100.0 * (logits.detach().argmax(-1) == hard_y).double().mean()
        return loss, {"top1": top1}, len(x)

    def evaluate(self, model: nn.Module, device: torch.device) -> Dict[str, Any]:
        stats = evaluate(model, self.data.eval_loader, self.data.num_classes, device=device, amp=self.cfg.train.amp)
        self.last_confusion = stats.pop("confusion")
        stats["per_class_acc"] = dict(zip(self.data.classes, stats["per_class_acc"]))
        return stats

    def meta(self) -> Dict[str, Any]:
        d = self.data
        return {
            "model": self.cfg.model.name,
            "model_kwargs": self.model_kwargs,
            "dataset": d.info.name,
            "classes": d.classes,
            "mean": list(d.mean),
            "std": list(d.std),
            "img_size": d.img_size,
            "in_chans": d.in_chans,
        }

    def summary(self) -> Dict[str, Any]:
        d = self.data
        return {"dataset": d.info.name, "gmacs": round(self.gmacs, 4), "train_samples": d.train_size}

    def describe(self):
        d = self.data
        yield (
            f"{self.cfg.model.name} on {d.info.name}: {d.train_size} train / {d.eval_size} eval images, "
            f"{d.num_classes} classes, {self.gmacs:.3f} GMACs"
        )

    def finish(self, model: nn.Module, out_dir: Optional[Path], last_eval: Dict[str, Any]) -> None:
        if out_dir is not None and getattr(self, "last_confusion", None) is not None:
            plot_confusion_matrix(
                self.last_confusion.numpy(),
                self.data.classes,
                out_dir / "confusion.png",
                title=f"{self.cfg.model.name}: top-1 {last_eval['top1']:.2f}%",
            )


def load_model(
    checkpoint: Union[str, os.PathLike], device: Union[str, torch.device] = "cpu", use_ema: bool = False
) -> Tuple[nn.Module, Checkpoint]:
    """Rebuild a classifier from its checkpoint alone (a weights file or a run folder), in eval mode."""
    ckpt = load_checkpoint(checkpoint)
    if ckpt.meta.get("task") != ClassificationTask.name:
        raise ValueError(f"{ckpt.path} is a {ckpt.meta.get('task')!r} checkpoint; expected a classification one")
    return create_model_from_checkpoint(ckpt, use_ema=use_ema).to(device).eval(), ckpt


def evaluate_checkpoint(
    checkpoint: Union[str, os.PathLike],
    dataset: Optional[str] = None,
    root: Optional[str] = None,
    split: str = "test",
    batch_size: int = 500,
    device: str = "auto",
    use_ema: bool = False,
    output_dir: Optional[Path] = None,
) -> Dict[str, Any]:
    """Evaluate a checkpoint on ``dataset`` (default: the one it was trained on, from the data root it was trained
    with unless ``root`` is given). With ``output_dir``, write ``eval.json`` and ``confusion.png`` there.

    Returns:
        ``top1``, ``top5``, ``loss``, ``num_samples``, ``per_class_acc`` ({class: %}), model, data set, epoch.
    """
    from ...engine.trainer import resolve_device

    dev = resolve_device(device)
    model, ckpt = load_model(checkpoint, dev, use_ema)
    meta = ckpt.meta
    info = dataset_info(dataset or meta["dataset"])
    num_classes = meta["model_kwargs"]["num_classes"]
    if root is None and info.name == meta.get("dataset"):
        root = meta.get("config", {}).get("data", {}).get("root")  # where it was trained from
    eval_set = build_dataset(info.name, split, root)
    classes = list(meta.get("classes") or eval_set.classes)
    if len(classes) != num_classes:
        raise ValueError(f"the checkpoint predicts {num_classes} classes but {info.name} has {len(classes)}")
    loader = eval_loader(eval_set, batch_size, int(meta["img_size"]), int(meta["in_chans"]), meta["mean"], meta["std"])
    stats = evaluate(model, loader, num_classes, device=dev)
    result = {
        "checkpoint": str(ckpt.path),
        "model": meta["model"],
        "dataset": info.name,
        "split": split,
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
                title=f"{meta['model']} on {info.name}: top-1 {stats['top1']:.2f}%",
            )
        )
    return result


def preprocess(meta: Dict[str, Any]):
    """The checkpoint's evaluation preprocessing of one image file: path -> ((C, H, W) tensor, (H, W[, 3]) uint8
    image the model sees, for display)."""
    import numpy as np

    from ...data.images import read_image

    img_size, in_chans = int(meta["img_size"]), int(meta["in_chans"])
    transform = _file_transform(img_size, in_chans, meta["mean"], meta["std"])

    def run(path):
        from PIL import Image

        img = read_image(path, "L" if in_chans == 1 else "RGB")
        shown = np.asarray(img.resize((img_size, img_size), Image.BICUBIC))
        return transform(img), shown

    return run


def _file_transform(img_size: int, in_chans: int, mean: Sequence[float], std: Sequence[float]):
    """Resize to the model's size (bicubic), then to a normalised tensor; the same as training's in-memory path."""
    import numpy as np
    from PIL import Image

    from ...data.images import normalize

    def run(img):
        img = img.resize((img_size, img_size), Image.BICUBIC)
        pixels = torch.from_numpy(np.array(img, dtype=np.uint8))
        pixels = pixels[None] if pixels.ndim == 2 else pixels.permute(2, 0, 1)  # (C, H, W)
        return normalize(pixels, mean, std)

    return run


@torch.no_grad()
def predict_images(
    checkpoint: Union[str, os.PathLike],
    images: Sequence[Union[str, os.PathLike]],
    top_k: int = 5,
    device: str = "auto",
    use_ema: bool = False,
) -> List[Dict[str, Any]]:
    """Top-k classes of each image file (read with the checkpoint's own preprocessing).

    Returns:
        One ``{"image", "top": [{"class", "probability"}, ...]}`` per image.
    """
    from ...engine.trainer import resolve_device
    from ..inputs import list_images

    dev = resolve_device(device)
    model, ckpt = load_model(checkpoint, dev, use_ema)
    prep = preprocess(ckpt.meta)
    classes = ckpt.meta["classes"]
    results = []
    for path in list_images(images):
        x, _ = prep(path)
        logits = model(x[None].to(dev))
        logits = (logits[0] + logits[1]) / 2 if isinstance(logits, (tuple, list)) else logits
        probs = logits.float().softmax(-1)[0]
        p, idx = probs.topk(min(top_k, len(classes)))
        results.append(
            {"image": str(path), "top": [{"class": classes[i], "probability": float(q)} for q, i in zip(p, idx)]}
        )
    return results
