"""Object detection: EncDec heads, matcher, criterion, post-processing, metrics, engine."""

from .config import DataConfig, DetectConfig, InferenceConfig, LossConfig, ModelConfig, config_from_dict
from .criterion import SetCriterion
from .head import HEADS, EncDecHead, build_head
from .matcher import HungarianMatcher
from .metrics import DetectionEvaluator
from .model import Detector, build_criterion, build_detector
from .postprocess import PostProcess

__all__ = [
    "HEADS",
    "DataConfig",
    "DetectConfig",
    "DetectionEvaluator",
    "Detector",
    "EncDecHead",
    "HungarianMatcher",
    "LossConfig",
    "ModelConfig",
    "PostProcess",
    "SetCriterion",
    "InferenceConfig",
    "build_criterion",
    "build_detector",
    "build_head",
    "config_from_dict",
]
