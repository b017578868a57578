"""Typed configuration of a detection run. Files and flags are merged into these once, at the CLI edge."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from lifevit.config import TrainConfig, check_life_options, check_model_kwargs, dataclass_from_dict

__all__ = ["DataConfig", "DetectConfig", "InferenceConfig", "LossConfig", "ModelConfig", "config_from_dict"]


@dataclass
class DataConfig:
    """Where the images and boxes are and how they are prepared.

    Attributes:
        format: ``voc`` (Pascal VOC layout, read with torchvision) or ``coco`` (COCO JSON).
        root: VOC: the folder holding ``VOCdevkit`` (or ``VOCdevkit`` itself).
        year: VOC year(s) of the training split (``2007``, ``2012``); several as ``2007+2012``.
        val_year: VOC year(s) of the validation split (default: ``year``), e.g. ``2007`` for VOC2007 ``test``.
        train_split: VOC image set used for training (``train``, ``trainval``).
        val_split: VOC image set used for validation / evaluation.
        classes: ``voc`` (the 20 VOC classes), ``canvas`` (the Fashion-MNIST canvas classes) or a list of names.
        train_images / train_ann / val_images / val_ann: COCO image folders and annotation JSON files.
        img_size: Longest image side after resizing.
        augment: ``canvas`` (flip + scale/translate jitter), ``voc`` (photometric, zoom-out, IoU crop, flip,
            multi-scale) or ``none``.
        workers: Data-loader workers.
    """

    format: str = "voc"
    root: str = "data/canvas"
    year: str = "2007"
    val_year: Optional[str] = None
    train_split: str = "train"
    val_split: str = "val"
    classes: Any = "canvas"
    train_images: Optional[str] = None
    train_ann: Optional[str] = None
    val_images: Optional[str] = None
    val_ann: Optional[str] = None
    img_size: int = 96
    augment: str = "canvas"
    workers: int = 0


@dataclass
class ModelConfig:
    """Backbone, head and their sizes.

    Attributes:
        backbone: A timm / lifevit model name (ViT / DeiT or SwinV2, with or without ``_life``).
        backbone_kwargs: Passed to ``timm.create_model`` (e.g. ``patch_size``, ``depth``).
        pretrained: Load the backbone's ImageNet weights with timm (only where timm has them). Only used when
            training starts; a checkpoint rebuilds the architecture and loads its own weights.
        lifeify: Convert the backbone to LIFE after creating it (``lifevit.lifeify``, ``slice`` init): with
            ``pretrained`` and a plain timm name this gives an ImageNet-initialised LIFE backbone.
        head: ``encdec``, ``encdec_linear`` or ``encdec_life`` (see ``heads``).
        hidden_dim: Width of the head transformer for ``encdec_linear`` / ``encdec_life`` (``encdec`` runs at
            the backbone width).
        num_heads: Attention heads in the head transformer.
        enc_layers / dec_layers: Encoder / decoder layers of the head.
        num_queries: Object queries (top-scoring encoder proposals).
        mlp_ratio: Hidden width of the feed-forward layers relative to the model width.
        dropout: Dropout in the head.
        life_kernel_sizes: LIFE depthwise kernels of the ``encdec_life`` encoder.
        life_options: LIFE options (``lifevit.layers.LIFE_OPTIONS``: ``pointwise_bias``, ``pointwise_init``,
            ``shared_norm``) for every LIFE layer of the model, the backbone's (a ``*_life`` backbone) and the
            ``encdec_life`` encoder's; empty: LIFE's defaults.
        anchor_size: Initial side (fraction of the image) of the encoder proposals' anchors.
    """

    backbone: str = "vit_lite_patch4_28_life"
    backbone_kwargs: Dict[str, Any] = field(default_factory=lambda: {"patch_size": 8, "in_chans": 3})
    pretrained: bool = False
    lifeify: bool = False
    head: str = "encdec_life"
    hidden_dim: int = 96
    num_heads: int = 4
    enc_layers: int = 1
    dec_layers: int = 3
    num_queries: int = 16
    mlp_ratio: float = 2.0
    dropout: float = 0.0
    life_kernel_sizes: Tuple[int, ...] = (3, 5)
    anchor_size: float = 0.2
    life_options: Dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_model_kwargs(self.backbone_kwargs, "model.backbone_kwargs")
        if "life_options" in self.backbone_kwargs:  # the same options, given as a timm.create_model argument
            self.life_options = {**self.backbone_kwargs.pop("life_options"), **self.life_options}
        check_life_options(self.life_options, "model.life_options")


@dataclass
class LossConfig:
    """Loss and matching weights (the same for matching costs and losses, as in Deformable DETR / DINO)."""

    cls_weight: float = 2.0
    l1_weight: float = 5.0
    giou_weight: float = 2.0
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    aux_loss: bool = True
    enc_loss: bool = True


@dataclass
class InferenceConfig:
    """How a detector's output is read.

    Attributes:
        score_threshold: Score from which a detection counts for F1 and is drawn by ``predict`` (see ``metrics``).
        batch_size: Images per evaluation batch.
    """

    score_threshold: float = 0.3
    batch_size: int = 16


def _train_defaults() -> TrainConfig:
    # DETR-style: AdamW, linear warm-up then cosine decay to 5 % of the peak
    return TrainConfig(
        epochs=30,
        batch_size=16,
        lr=4e-4,
        weight_decay=1e-4,
        warmup_epochs=1.0,
        warmup_lr=4e-7,
        warmup_prefix=True,
        min_lr=2e-5,
        clip_grad=1.0,
    )


@dataclass
class DetectConfig:
    """A whole detection experiment."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    train: TrainConfig = field(default_factory=_train_defaults)

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


def config_from_dict(values: Dict[str, Any]) -> DetectConfig:
    """Build a :class:`DetectConfig` from nested dicts (``data``, ``model``, ``loss``, ``train``).

    Top-level ``name`` and ``description`` keys are labels for people and are not part of the config.
    """
    values = {k: v for k, v in (values or {}).items() if k not in ("name", "description")}
    return dataclass_from_dict(DetectConfig, values)


def class_names(classes: Any) -> List[str]:
    """The class names a :attr:`DataConfig.classes` value stands for."""
    from lifevit.data.voc import VOC_CLASSES

    if classes == "voc":
        return list(VOC_CLASSES)
    if classes == "canvas":
        from lifevit.data.canvas import CANVAS_CLASSES

        return list(CANVAS_CLASSES)
    if isinstance(classes, (list, tuple)) and classes and all(isinstance(c, str) for c in classes):
        return list(classes)
    raise ValueError(f"data.classes must be 'voc', 'canvas' or a list of class names, got {classes!r}")
