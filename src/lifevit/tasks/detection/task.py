"""Detection plugged into the engine: :class:`DetectionTask`, and a checkpoint's eval and predict.

The training step is DETR's: the detector's outputs, the Hungarian-matched set criterion (with auxiliary decoder
and encoder-proposal losses) and its weighted total; evaluation post-processes the boxes and computes VOC
mAP@0.5, COCO mAP and F1. Checkpoints carry the whole :class:`DetectConfig` and the class names, so ``eval`` /
``predict`` rebuild the detector from the weights file alone.
"""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from ...data.images import read_image
from ...engine.checkpoint import load_checkpoint, load_weights
from ...engine.data import EpochLoader
from ...engine.distributed import DistInfo
from ...engine.task import Task
from ...layers import life_options_of_state_dict
from ..inputs import output_names
from .config import DataConfig, DetectConfig, class_names, config_from_dict
from .criterion import SetCriterion
from .metrics import DetectionEvaluator
from .model import Detector, build_criterion, build_detector
from .postprocess import PostProcess
from .transforms import IMAGENET_MEAN, IMAGENET_STD, build_transforms, collate, targets_to_normalized

__all__ = ["DetectionTask", "build_dataset", "evaluate", "evaluate_checkpoint", "load_model", "predict_images"]

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


def eval_loader(dataset: Dataset, batch_size: int, size_divisibility: int, workers: int = 0) -> DataLoader:
    """The evaluation loader: images in order, padded per batch (see :func:`~.transforms.collate`)."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        collate_fn=functools.partial(collate, size_divisibility=size_divisibility),
    )


def _to(targets: Sequence[Dict[str, torch.Tensor]], device: torch.device) -> List[Dict[str, torch.Tensor]]:
    return [{k: v.to(device) for k, v in t.items()} for t in targets]


class DetectionTask(Task):
    """Set-prediction detection (EncDec heads over ViT / DeiT / SwinV2 backbones, with or without LIFE).

    Under DDP every process evaluates the whole validation set (the metrics need all predictions together).
    """

    name = TASK
    score_key = "map_50"

    def build(self, device: torch.device, dist: DistInfo):
        cfg = self.cfg
        train_ds, self.classes = build_dataset(cfg.data, "train", train=True)
        self.val_ds, _ = build_dataset(cfg.data, "val", train=False)
        model = build_detector(cfg.model, len(self.classes), cfg.data.img_size)
        self.criterion = build_criterion(cfg.loss, len(self.classes))
        d = model.size_divisibility
        collate_fn = functools.partial(collate, size_divisibility=d)
        self.train_size, self.val_size = len(train_ds), len(self.val_ds)
        self.val_loader = eval_loader(self.val_ds, cfg.inference.batch_size, d, cfg.data.workers)
        loader = EpochLoader(train_ds, cfg.train.batch_size, dist, cfg.train.seed, cfg.data.workers, collate_fn)
        return model, loader

    def train_step(self, model: nn.Module, batch, device: torch.device):
        images, mask, targets = batch
        images, mask = images.to(device), mask.to(device)  # (B, 3, H, W), (B, H, W)
        outputs = model(images, mask)
        losses = self.criterion(outputs, targets_to_normalized(_to(targets, device)))
        return self.criterion.total(losses), losses, len(images)

    def evaluate(self, model: nn.Module, device: torch.device) -> Dict[str, Any]:
        return evaluate(
            model, self.val_loader, device, self.cfg.inference.score_threshold, self.criterion, progress=False
        )

    def meta(self) -> Dict[str, Any]:
        return {"model": f"{self.cfg.model.backbone}+{self.cfg.model.head}", "classes": list(self.classes)}

    def summary(self) -> Dict[str, Any]:
        return {"backbone": self.cfg.model.backbone, "head": self.cfg.model.head, "train_images": self.train_size}

    def describe(self):
        m = self.cfg.model
        yield (
            f"detector {m.backbone}+{m.head}: {len(self.classes)} classes, {self.train_size} train / "
            f"{self.val_size} val images"
        )


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


def load_model(path: os.PathLike, device: Union[str, torch.device] = "cpu") -> Tuple[Detector, DetectConfig, List[str]]:
    """Rebuild a detector from a checkpoint alone (a ``.safetensors`` file or a run folder)."""
    ckpt = load_checkpoint(path)
    if ckpt.meta.get("task") != TASK:
        raise ValueError(f"{ckpt.path} is a {ckpt.meta.get('task')!r} checkpoint; expected a detection checkpoint")
    cfg = config_from_dict(ckpt.meta["config"])
    classes = list(ckpt.meta["classes"])
    cfg.model.life_options = {**life_options_of_state_dict(ckpt.model_state), **cfg.model.life_options}  # 0.1 layouts
    model = build_detector(cfg.model, len(classes), img_size=cfg.data.img_size, pretrained=False)
    load_weights(model, ckpt.model_state, ckpt.path)
    return model.to(device).eval(), cfg, classes


def evaluate_checkpoint(
    path: os.PathLike,
    data: Optional[DataConfig] = None,
    batch_size: int = 16,
    device: Union[str, torch.device] = "cpu",
    score_threshold: Optional[float] = None,
    progress: bool = True,
) -> Dict[str, float]:
    """Metrics of a checkpoint on the validation split of ``data`` (default: the data it was trained with)."""
    model, cfg, classes = load_model(path, device)
    data = data or cfg.data
    ds, names = build_dataset(data, "val", train=False)
    if list(names) != classes:
        raise ValueError(f"the data set's classes {names} differ from the checkpoint's {classes}")
    loader = eval_loader(ds, batch_size, model.size_divisibility, data.workers)
    thr = cfg.inference.score_threshold if score_threshold is None else score_threshold
    return evaluate(model, loader, torch.device(device), thr, progress=progress, class_metrics=True)


def _empty_target() -> Dict[str, torch.Tensor]:
    return {
        "boxes": torch.zeros(0, 4),
        "labels": torch.zeros(0, dtype=torch.int64),
        "iscrowd": torch.zeros(0, dtype=torch.int64),
    }


def preprocess(cfg: DetectConfig, size_divisibility: int = 1):
    """The evaluation preprocessing of one image file: path -> (normalised (3, H', W') tensor, padded bottom/right to
    a multiple of ``size_divisibility``; (h, w, 3) uint8 image the model sees, before padding, for display)."""
    transform = build_transforms(False, cfg.data.img_size, "none")
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    d = size_divisibility

    def run(path):
        x, _ = transform(read_image(path, "RGB"), _empty_target())  # (3, h, w)
        pixels = ((x * std + mean) * 255).round().clamp(0, 255).byte().permute(1, 2, 0).numpy()  # (h, w, 3)
        h, w = x.shape[-2:]
        x = torch.nn.functional.pad(x, (0, -w % d, 0, -h % d))
        return x, pixels

    return run


@torch.no_grad()
def predict_images(
    path: os.PathLike,
    images: Sequence[os.PathLike],
    output_dir: os.PathLike,
    score_threshold: Optional[float] = None,
    device: Union[str, torch.device] = "cpu",
) -> List[Dict[str, Any]]:
    """Detect objects in image files and draw them (boxes, class names, scores) into PNGs in ``output_dir``.

    Returns, per image, the input, the PNG written and the kept detections (boxes xyxy in the file's pixels).
    """
    from ...data.images import read_image
    from .draw import draw_detections

    model, cfg, classes = load_model(path, device)
    thr = cfg.inference.score_threshold if score_threshold is None else score_threshold
    transform = build_transforms(False, cfg.data.img_size, "none")
    post = PostProcess(num_select=100)
    out_dir = Path(output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results = []
    for img_path, stem in zip(*output_names(images)):
        pil = read_image(img_path, "RGB")
        W, H = pil.size
        x, _ = transform(pil, _empty_target())
        batch, mask, _ = collate([(x, {})], model.size_divisibility)
        outputs = model(batch.to(device), mask.to(device))
        det = post(outputs, torch.tensor([[H, W]], device=device))[0]  # boxes in the file's pixels
        keep = det["scores"] >= thr
        det = {k: v[keep].cpu() for k, v in det.items()}
        png = out_dir / f"{stem}_det.png"
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
