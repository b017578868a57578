"""Classification data: the data set of a config, its class-balanced subset, loaders and batch augmentation.

The in-memory data sets (Fashion-MNIST, CIFAR, SVHN) use :class:`~lifevit.data.loader.TensorLoader` (batches built
with tensor ops) unless ``data.loader='timm'`` or a PIL-only augmentation (RandAugment, colour jitter) is asked
for; the others use timm's ``create_transform`` through :class:`~lifevit.engine.data.EpochLoader`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, List, Optional, Sequence, Tuple

import torch
from torch.utils.data import DataLoader

from ...data.classification import ArrayDataset, DatasetInfo, build_dataset, class_balanced_indices, dataset_info
from ...data.loader import TensorLoader
from ...engine.data import EpochLoader, eval_shard
from ...engine.distributed import DistInfo
from .config import ClassificationConfig

__all__ = ["BatchTransform", "DataBundle", "build_data", "eval_transform", "eval_loader"]


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
    mean: Tuple[float, ...]
    std: Tuple[float, ...]
    train_size: int
    eval_size: int
    batch_transform: Optional[Callable] = None  # Mixup/CutMix and random erasing on whole batches


class BatchTransform:
    """Random erasing (timm, on normalised batches) then Mixup/CutMix (timm), applied in the training step."""

    def __init__(self, erasing: Optional[Callable], mixup: Optional[Callable]) -> None:
        self.erasing, self.mixup = erasing, mixup

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        if self.erasing is not None:
            x = self.erasing(x)
        if self.mixup is not None:
            x, y = self.mixup(x, y)
        return x, y


def eval_transform(in_chans: int, img_size: int, mean: Sequence[float], std: Sequence[float]):
    """timm's evaluation transform for an image file: resize (+ centre crop above 64 px), tensor, normalise."""
    from timm.data import create_transform

    return create_transform(
        (in_chans, img_size, img_size),
        is_training=False,
        interpolation="bicubic",
        mean=tuple(mean),
        std=tuple(std),
        crop_pct=1.0 if img_size <= 64 else 0.875,
    )


def eval_loader(eval_set, batch_size: int, img_size: int, in_chans: int, mean, std, dist: DistInfo = DistInfo()):
    """The evaluation loader of a data set (this process's shard under DDP)."""
    if isinstance(eval_set, ArrayDataset):
        resize = img_size if img_size != eval_set.images.shape[1] else None
        return TensorLoader(
            eval_set.images,
            eval_set.targets,
            batch_size,
            mean,
            std,
            rank=dist.rank,
            world_size=dist.world_size,
            img_size=resize,
        )
    eval_set.transform = eval_transform(in_chans, img_size, mean, std)
    return DataLoader(eval_shard(eval_set, dist), batch_size=batch_size, shuffle=False)


def build_data(cfg: ClassificationConfig, dist: DistInfo = DistInfo()) -> DataBundle:
    """Data sets, class-balanced subset, loaders and batch-level augmentation for ``cfg``."""
    from timm.data import Mixup, create_transform
    from timm.data.distributed_sampler import RepeatAugSampler
    from timm.data.random_erasing import RandomErasing

    d, a, t = cfg.data, cfg.aug, cfg.train
    info = dataset_info(d.dataset)
    train_set = build_dataset(info.name, "train", d.root)
    eval_set = build_dataset(info.name, info.eval_split, d.root)
    if d.train_samples is not None:
        train_set = train_set.subset(class_balanced_indices(train_set.targets.numpy(), d.train_samples, d.subset_seed))
    classes = list(train_set.classes)
    num_classes = cfg.model.num_classes or info.num_classes or len(classes)
    in_chans = cfg.model.in_chans or info.in_chans
    img_size = cfg.model.img_size or info.img_size
    mean, std = tuple(info.mean), tuple(info.std)
    if in_chans != info.in_chans:
        raise ValueError(f"{info.name} images have {info.in_chans} channel(s) but model.in_chans={in_chans}")
    use_tensor = d.loader == "tensor" or (
        d.loader == "auto" and isinstance(train_set, ArrayDataset) and not a.randaugment and not a.color_jitter
    )
    if use_tensor and not isinstance(train_set, ArrayDataset):
        raise ValueError(f"data.loader='tensor' needs an in-memory data set; {info.name} is read from files")
    if use_tensor:
        resize = img_size if img_size != train_set.images.shape[1] else None
        train_loader = TensorLoader(
            train_set.images,
            train_set.targets,
            t.batch_size,
            mean,
            std,
            train=True,
            crop_padding=a.crop_padding,
            hflip=a.hflip,
            seed=t.seed,
            rank=dist.rank,
            world_size=dist.world_size,
            img_size=resize,
        )
        erasing = RandomErasing(a.reprob, mode=a.remode, device="cpu") if a.reprob > 0 else None
    else:
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
        sampler = None
        if a.repeated_aug and dist.enabled:
            sampler = RepeatAugSampler(train_set, num_replicas=dist.world_size, rank=dist.rank, shuffle=True)
        train_loader = EpochLoader(train_set, t.batch_size, dist, t.seed, d.workers, sampler=sampler)
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
    return DataBundle(
        train_loader=train_loader,
        eval_loader=eval_loader(eval_set, d.eval_batch_size, img_size, in_chans, mean, std, dist),
        info=info,
        classes=classes,
        num_classes=num_classes,
        in_chans=in_chans,
        img_size=img_size,
        mean=mean,
        std=std,
        train_size=len(train_set),
        eval_size=len(eval_set),
        batch_transform=BatchTransform(erasing, mixup) if (erasing or mixup) else None,
    )
