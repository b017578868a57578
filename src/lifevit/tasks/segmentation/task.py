"""Segmentation plugged into the engine: :class:`SegmentationTask`, and a checkpoint's eval and predict.

The training step is the per-pixel criterion on the model's logits; evaluation predicts full images (whole or
sliding-window, flip and multi-scale test) and computes mIoU with torchmetrics, sharded over the processes under
DDP. Checkpoints carry the whole :class:`SegmentationConfig` and the label table's names and colours.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset

from lifevit.data.cityscapes import IGNORE_INDEX, CityscapesSegmentation, load_label_table
from lifevit.data.images import normalize, read_image

from ...engine.checkpoint import Checkpoint, load_checkpoint, load_weights
from ...engine.data import EpochLoader, eval_shard
from ...engine.distributed import DistInfo, all_reduce_sum
from ...engine.task import Task
from ...layers import life_options_of_state_dict
from ..inputs import output_names
from .config import DataConfig, InferenceConfig, SegmentationConfig, config_from_dict
from .criterion import SegmentationCriterion
from .metrics import SegmentationMetrics
from .model import Segmenter, build_segmenter
from .postprocess import infer_logits
from .transforms import SegmentationTransform
from .visualize import colorize, overlay

__all__ = ["SegmentationTask", "build_datasets", "evaluate", "load_model", "predict_files"]

logger = logging.getLogger(__name__)
TASK = "segmentation"

MAX_PREDICT_PIXELS = 4096 * 4096
"""Largest image ``predict`` reads (whole-image inference beyond this would take minutes on a CPU)."""


class SegmentationTask(Task):
    """Semantic segmentation (Segmenter decoders over ViT / DeiT / SwinV2 backbones, with or without LIFE)."""

    name = TASK
    score_key = "mIoU"

    def build(self, device: torch.device, dist: DistInfo):
        cfg = self.cfg
        datasets = build_datasets(cfg.data)
        train_set, self.val_set = datasets["train"], datasets["val"]
        if cfg.model.num_classes != train_set.num_classes:
            raise ValueError(
                f"model.num_classes is {cfg.model.num_classes} but the label table of {cfg.data.root} has "
                f"{train_set.num_classes} classes {train_set.class_names}"
            )
        self.table = train_set.table
        self.train_size = len(train_set)
        model = build_segmenter(cfg.model)
        self.criterion = SegmentationCriterion(
            cfg.model.num_classes, class_weights=cfg.loss.class_weights, dice_weight=cfg.loss.dice_weight
        ).to(device)
        loader = EpochLoader(train_set, cfg.train.batch_size, dist, cfg.train.seed, cfg.data.workers)
        return model, loader

    def train_step(self, model: nn.Module, batch, device: torch.device):
        images, targets = batch
        images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        losses = self.criterion(model(images), targets)  # (B, K, H, W) logits vs (B, H, W) train ids
        return losses["loss"], {k: v for k, v in losses.items() if k != "loss"}, images.shape[0]

    def evaluate(self, model: nn.Module, device: torch.device) -> Dict[str, Any]:
        stats = evaluate(model, self.val_set, device, self.cfg.inference, self.criterion)
        stats.pop("eval_seconds", None)
        return stats

    def meta(self) -> Dict[str, Any]:
        return {
            "model": self.cfg.model.backbone,
            "class_names": list(self.table.class_names),
            "colors": [list(c) for c in self.table.colors],
        }

    def summary(self) -> Dict[str, Any]:
        m = self.cfg.model
        return {"backbone": m.backbone, "decoder": m.decoder, "train_images": self.train_size}

    def describe(self):
        m = self.cfg.model
        yield (
            f"{m.backbone} + {m.decoder} decoder: {self.cfg.model.num_classes} classes, {self.train_size} train / "
            f"{len(self.val_set)} val images"
        )


def _check_size(path: Path, hw: Tuple[int, int], inference: InferenceConfig) -> None:
    H, W = hw
    if H * W > MAX_PREDICT_PIXELS:
        raise ValueError(
            f"{path} is {W} x {H} pixels; predict reads images of at most {MAX_PREDICT_PIXELS // 10**6} M pixels "
            "(resize it first)"
        )
    if inference.mode == "whole":
        wh, ww = inference.window
        if H * W > 16 * wh * ww:
            raise ValueError(
                f"{path} is {W} x {H} pixels, over 16 times the training window {ww} x {wh}: whole-image inference "
                "would take minutes; use --mode slide (sliding windows), or resize the image"
            )


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
        shard = eval_shard(dataset, DistInfo(torch.distributed.get_rank(), torch.distributed.get_world_size()))
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


def load_model(
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
    cfg.model.life_options = {**life_options_of_state_dict(ckpt.model_state), **cfg.model.life_options}  # 0.1 layouts
    model = build_segmenter(cfg.model)
    load_weights(model, ckpt.model_state, ckpt.path)
    return model.to(device).eval(), cfg, ckpt


def preprocess(data: DataConfig):
    """The evaluation preprocessing of one image file: path -> (normalised (3, H, W) tensor, (H, W, 3) uint8 image)."""

    def run(path):
        rgb = np.array(read_image(path, "RGB"))  # (H, W, 3)
        return normalize(torch.from_numpy(rgb).permute(2, 0, 1), data.mean, data.std), rgb

    return run


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
    paths, stems = output_names(files)
    prep = preprocess(data)
    for f, stem in zip(paths, stems):
        image, rgb = prep(f)  # (3, H, W) normalised, (H, W, 3) uint8
        _check_size(f, rgb.shape[:2], inference)
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
            "mask": str(out / f"{stem}_mask.png"),
            "overlay": str(out / f"{stem}_overlay.png"),
            "train_ids": str(out / f"{stem}_trainIds.png"),
        }
        Image.fromarray(mask).save(paths["mask"])
        Image.fromarray(overlay(rgb, mask, alpha)).save(paths["overlay"])
        Image.fromarray(pred).save(paths["train_ids"])
        written.append(paths)
    return written
