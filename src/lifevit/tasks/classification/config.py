"""Typed configuration of a classification run: ``model``, ``data``, ``aug``, ``distill`` and the engine's ``train``.

Example ``configs/fashion_mnist/vit_lite_life.yaml``::

    model: {name: vit_lite_patch4_28_life}
    data: {dataset: fashion_mnist, train_samples: 5000}
    train: {epochs: 20, batch_size: 128, lr: 1.0e-3}
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from ...config import TrainConfig, check_model_kwargs

__all__ = ["AugConfig", "ClassificationConfig", "DataConfig", "DistillConfig", "ModelConfig"]


@dataclass
class ModelConfig:
    """The network (any timm / lifevit model name). ``num_classes`` / ``img_size`` / ``in_chans`` default to the
    data set's; ``kwargs`` go to ``timm.create_model``."""

    name: str = "vit_lite_patch4_28_life"
    num_classes: Optional[int] = None
    img_size: Optional[int] = None
    in_chans: Optional[int] = None
    drop_path: float = 0.1
    drop: float = 0.0
    kwargs: Dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_model_kwargs(self.kwargs, "model.kwargs")


@dataclass
class DataConfig:
    """The data set."""

    dataset: str = "fashion_mnist"
    root: Optional[str] = None
    train_samples: Optional[int] = None  # class-balanced subset of the training split
    subset_seed: int = 0
    eval_batch_size: int = 500
    workers: int = 0  # DataLoader workers for the on-disk data sets
    loader: str = "auto"  # auto | tensor (in-memory, batch augmentation) | timm (PIL transforms)

    def __post_init__(self) -> None:
        if self.loader not in ("auto", "tensor", "timm"):
            raise ValueError(f"data.loader must be auto, tensor or timm, got {self.loader!r}")
        if self.train_samples is not None and self.train_samples < 1:
            raise ValueError(f"data.train_samples must be >= 1, got {self.train_samples}")
        if self.eval_batch_size < 1 or self.workers < 0:
            raise ValueError("data.eval_batch_size must be >= 1 and data.workers >= 0")


@dataclass
class AugConfig:
    """Augmentation and regularisation (timm components). DeiT's recipe: see ``configs/``."""

    crop_padding: int = 2  # tensor loader: pad-and-random-crop
    scale: List[float] = field(default_factory=lambda: [0.08, 1.0])  # timm loader: RandomResizedCrop scale
    hflip: float = 0.5
    randaugment: Optional[str] = None  # timm auto_augment string, e.g. rand-m9-mstd0.5-inc1 (timm loader)
    color_jitter: Optional[float] = None
    mixup: float = 0.0
    cutmix: float = 0.0
    mixup_prob: float = 1.0
    mixup_switch_prob: float = 0.5
    label_smoothing: float = 0.1
    reprob: float = 0.0  # random erasing probability
    remode: str = "pixel"
    repeated_aug: bool = False  # only used with several processes


@dataclass
class DistillConfig:
    """Knowledge distillation through the distillation token (``deit_*_distilled_*`` models)."""

    teacher: Optional[str] = None  # a lifevit checkpoint (file or run folder) or a timm model name
    type: str = "none"  # none | soft | hard
    alpha: float = 0.5
    tau: float = 1.0

    def __post_init__(self) -> None:
        if self.type not in ("none", "soft", "hard"):
            raise ValueError(f"distill.type must be none, soft or hard, got {self.type!r}")
        if self.type != "none" and not self.teacher:
            raise ValueError(f"distill.type={self.type!r} needs distill.teacher (a checkpoint or timm model name)")


def _train_defaults() -> TrainConfig:
    return TrainConfig(
        epochs=20, batch_size=128, lr=1e-3, weight_decay=0.05, warmup_epochs=2, clip_grad=1.0, ema=True, ema_decay=0.999
    )


@dataclass
class ClassificationConfig:
    """A whole classification run."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    aug: AugConfig = field(default_factory=AugConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    train: TrainConfig = field(default_factory=_train_defaults)
