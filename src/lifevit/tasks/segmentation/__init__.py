"""Semantic segmentation with ViT / DeiT / SwinV2 backbones, with and without LIFE (Segmenter-style decoders).

Pieces, each usable alone: :class:`DenseBackbone` (tokens -> feature maps), decode heads
(:class:`LinearDecoder`, :class:`MaskTransformerDecoder`), :class:`Segmenter` (the model),
:class:`SegmentationCriterion` (cross-entropy with an ignore index), :class:`SegmentationPostProcess` and
sliding-window inference, :class:`SegmentationMetrics` (mIoU), and the engine (:func:`fit`, :func:`evaluate`,
:func:`predict_files`).
"""

from ..backbone import DenseBackbone, create_backbone
from .config import DataConfig, InferenceConfig, LossConfig, ModelConfig, SegmentationConfig, config_from_dict
from .criterion import SegmentationCriterion
from .heads import FeatureFusion, LinearDecoder, MaskTransformerDecoder
from .metrics import SegmentationMetrics, iou_from_confusion
from .model import Segmenter, build_segmenter
from .postprocess import SegmentationPostProcess, infer_logits, sliding_window_logits

__all__ = [
    "DataConfig",
    "FeatureFusion",
    "InferenceConfig",
    "LinearDecoder",
    "MaskTransformerDecoder",
    "ModelConfig",
    "DenseBackbone",
    "SegmentationConfig",
    "SegmentationCriterion",
    "SegmentationMetrics",
    "SegmentationPostProcess",
    "Segmenter",
    "LossConfig",
    "build_segmenter",
    "config_from_dict",
    "create_backbone",
    "infer_logits",
    "iou_from_confusion",
    "sliding_window_logits",
]
