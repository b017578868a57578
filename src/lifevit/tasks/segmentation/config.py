"""Typed configuration of a segmentation run: model, data, training and inference.

The command line merges a YAML file and flags into a :class:`SegmentationConfig` once (:func:`config_from_dict`);
library functions take these dataclasses (or their fields), never the argparse namespace.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple

from lifevit.config import TrainConfig, check_life_options, check_model_kwargs, dataclass_from_dict

__all__ = [
    "DECODERS",
    "DataConfig",
    "InferenceConfig",
    "ModelConfig",
    "SegmentationConfig",
    "LossConfig",
    "config_from_dict",
]

DECODERS = ("linear", "mask_transformer")


@dataclass
class ModelConfig:
    """Backbone (any timm / lifevit model name) and decode head.

    Attributes:
        backbone: Registered model name, e.g. ``deit_tiny_patch16_224_life`` or ``swinv2_tiny_window8_256``.
        decoder: ``linear`` (Segmenter's linear decoder) or ``mask_transformer`` (Segmenter's mask transformer).
        num_classes: Segmentation classes (train ids ``0 .. num_classes - 1``).
        img_size: Input size the backbone is built for (its position embedding / attention windows);
            other sizes are handled by ``dynamic_img_size``.
        in_chans: Image channels.
        out_indices: Backbone blocks (ViT) or stages (SwinV2) whose feature maps are decoded; several maps are
            fused (projected to the last map's width, up-sampled to the finest one and summed).
        pretrained: Load the backbone's pretrained weights through timm (needs them in the local cache or a file).
        pretrained_file: A local weights file for the backbone (timm ``pretrained_cfg_overlay=dict(file=...)``).
        lifeify: Convert the backbone to LIFE after loading it (:func:`lifevit.lifeify`): a plain backbone name
            with ``pretrained`` / ``pretrained_file`` plus ``lifeify`` is the paper's ImageNet-initialised LIFE row.
        init_checkpoint: Start the backbone from a ``lifevit train`` classification checkpoint of the same
            architecture (patch size, grid and input channels may differ; see
            :func:`~lifevit.tasks.backbone.load_classifier_weights`).
        drop_path_rate: Stochastic depth of the backbone.
        decoder_layers: Transformer blocks of the mask-transformer decoder.
        decoder_dim: Width of the mask-transformer decoder (default: the backbone width).
        decoder_heads: Heads of the mask-transformer decoder (default: width // 64, at least 1).
        decoder_drop_path: Stochastic depth of the decoder blocks.
        backbone_kwargs: Further keyword arguments for ``timm.create_model`` (e.g. ``patch_size``, ``depth``).
        life_options: LIFE options (``lifevit.layers.LIFE_OPTIONS``: ``pointwise_bias``, ``pointwise_init``,
            ``shared_norm``) for the backbone's LIFE layers (a ``*_life`` backbone; not used by a plain one, so a
            config can switch the backbone with ``--backbone``); empty: LIFE's defaults.
    """

    backbone: str = "deit_tiny_patch16_224_life"
    decoder: str = "mask_transformer"
    num_classes: int = 19
    img_size: Tuple[int, int] = (512, 512)
    in_chans: int = 3
    out_indices: Tuple[int, ...] = (-1,)
    pretrained: bool = False
    pretrained_file: Optional[str] = None
    lifeify: bool = False
    init_checkpoint: Optional[str] = None
    drop_path_rate: float = 0.1
    decoder_layers: int = 2
    decoder_dim: Optional[int] = None
    decoder_heads: Optional[int] = None
    decoder_drop_path: float = 0.0
    backbone_kwargs: Dict[str, Any] = field(default_factory=dict)
    life_options: Dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.img_size = _pair(self.img_size, "model.img_size")
        self.out_indices = tuple(int(i) for i in _as_tuple(self.out_indices))
        if self.decoder not in DECODERS:
            raise ValueError(f"model.decoder must be one of {DECODERS}, got {self.decoder!r}")
        if self.num_classes < 1:
            raise ValueError(f"model.num_classes must be >= 1, got {self.num_classes}")
        if not self.out_indices:
            raise ValueError("model.out_indices must name at least one block / stage")
        check_model_kwargs(self.backbone_kwargs, "model.backbone_kwargs")
        if "life_options" in self.backbone_kwargs:  # the same options, given as a timm.create_model argument
            self.life_options = {**self.backbone_kwargs.pop("life_options"), **self.life_options}
        check_life_options(self.life_options, "model.life_options")


@dataclass
class DataConfig:
    """Where the data is and how training crops are made.

    Attributes:
        root: Cityscapes root (holding ``leftImg8bit/`` and ``gtFine/``).
        label_table: JSON label table for non-Cityscapes data in the same layout (e.g. the canvas set's
            ``canvas_classes.json``); ``None`` = the official 19 Cityscapes classes.
        train_split: Split used for training.
        val_split: Split used for evaluation.
        base_size: (H, W) the random scale is relative to (mmseg's Cityscapes recipe: the full 1024 x 2048).
        scale_range: Random scale factors applied to ``base_size`` (the aspect ratio is kept).
        crop_size: (H, W) training crop, padded with ignore labels when the scaled image is smaller.
        hflip: Probability of a horizontal flip.
        mean: Normalisation mean (0..1 scale).
        std: Normalisation std (0..1 scale).
        workers: Data-loader workers.
    """

    root: str = "data/cityscapes"
    label_table: Optional[str] = None
    train_split: str = "train"
    val_split: str = "val"
    base_size: Tuple[int, int] = (1024, 2048)
    scale_range: Tuple[float, float] = (0.5, 2.0)
    crop_size: Tuple[int, int] = (512, 512)
    hflip: float = 0.5
    mean: Tuple[float, ...] = (0.485, 0.456, 0.406)
    std: Tuple[float, ...] = (0.229, 0.224, 0.225)
    workers: int = 2

    def __post_init__(self) -> None:
        self.base_size = _pair(self.base_size, "data.base_size")
        self.crop_size = _pair(self.crop_size, "data.crop_size")
        self.scale_range = tuple(float(s) for s in _as_tuple(self.scale_range))
        self.mean = tuple(float(m) for m in _as_tuple(self.mean))
        self.std = tuple(float(s) for s in _as_tuple(self.std))
        if len(self.scale_range) != 2 or not 0 < self.scale_range[0] <= self.scale_range[1]:
            raise ValueError(f"data.scale_range must be (low, high) with 0 < low <= high, got {self.scale_range}")
        if not 0.0 <= self.hflip <= 1.0:
            raise ValueError(f"data.hflip must be a probability in [0, 1], got {self.hflip}")


@dataclass
class LossConfig:
    """The criterion.

    Attributes:
        dice_weight: Weight of a soft Dice term added to the cross-entropy (0 = cross-entropy only).
        class_weights: Cross-entropy weight of each class, one per class (``None`` = all 1).
    """

    dice_weight: float = 0.0
    class_weights: Optional[Tuple[float, ...]] = None

    def __post_init__(self) -> None:
        if self.class_weights is not None:
            self.class_weights = tuple(float(w) for w in _as_tuple(self.class_weights))
            if any(w < 0 for w in self.class_weights):
                raise ValueError(f"loss.class_weights must be >= 0, got {self.class_weights}")
        if self.dice_weight < 0:
            raise ValueError(f"loss.dice_weight must be >= 0, got {self.dice_weight}")


def _train_defaults() -> TrainConfig:
    # Segmenter / mmseg: SGD, poly schedule (power 0.9), no weight decay
    return TrainConfig(
        epochs=100, batch_size=8, opt="sgd", lr=1e-3, weight_decay=0.0, sched="poly", decay_rate=0.9, min_lr=1e-5
    )


@dataclass
class InferenceConfig:
    """How full images are predicted.

    Attributes:
        mode: ``whole`` (the image in one pass) or ``slide`` (overlapping windows, logits averaged).
        window: (H, W) of a sliding window (clamped to the image where the image is smaller).
        stride: (H, W) step between windows.
        batch_size: Images per evaluation batch (``whole``) / windows per forward (``slide``).
        flip: Also predict the horizontally flipped image and average the logits (test-time augmentation, twice
            the inference compute).
        scales: Resize factors the image is predicted at (logits resized back and averaged; multi-scale testing,
            e.g. ``[0.75, 1.0, 1.25]``); ``[1.0]`` predicts at the given size only.
    """

    mode: str = "slide"
    window: Tuple[int, int] = (512, 512)
    stride: Tuple[int, int] = (341, 341)
    batch_size: int = 1
    flip: bool = False
    scales: Tuple[float, ...] = (1.0,)

    def __post_init__(self) -> None:
        if self.mode not in ("whole", "slide"):
            raise ValueError(f"inference.mode must be 'whole' or 'slide', got {self.mode!r}")
        try:
            self.scales = tuple(float(s) for s in _as_tuple(self.scales))
        except (TypeError, ValueError):
            raise ValueError(f"inference.scales must be a list of numbers > 0, got {self.scales!r}") from None
        if not self.scales or any(not s > 0 for s in self.scales):
            raise ValueError(f"inference.scales must be a list of numbers > 0, got {list(self.scales)}")
        self.window = _pair(self.window, "inference.window")
        self.stride = _pair(self.stride, "inference.stride")


@dataclass
class SegmentationConfig:
    """A whole segmentation experiment."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    train: TrainConfig = field(default_factory=_train_defaults)

    def __post_init__(self) -> None:
        # checked here, before any data is read or run folder made (the criterion checks it again for direct use)
        weights = self.loss.class_weights
        if weights is not None and len(weights) != self.model.num_classes:
            raise ValueError(
                f"loss.class_weights has {len(weights)} entries, expected one per class "
                f"(model.num_classes = {self.model.num_classes})"
            )

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


def _as_tuple(value: Any) -> Tuple:
    return tuple(value) if isinstance(value, (list, tuple)) else (value,)


def _pair(value: Any, name: str) -> Tuple[int, int]:
    v = _as_tuple(value)
    if len(v) == 1:
        v = (v[0], v[0])
    if len(v) != 2 or any(int(x) < 1 for x in v):
        raise ValueError(f"{name} must be a positive int or (H, W), got {value!r}")
    return int(v[0]), int(v[1])


def config_from_dict(values: Dict[str, Any]) -> SegmentationConfig:
    """A :class:`SegmentationConfig` from nested dicts (a parsed YAML file, a checkpoint's ``meta['config']``)."""
    return dataclass_from_dict(SegmentationConfig, values or {})
