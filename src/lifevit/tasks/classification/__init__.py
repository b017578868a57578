"""Image classification: config, data, model, criterion (label smoothing, Mixup/CutMix, distillation), metrics,
and the task plug-in for the engine with a checkpoint's eval and predict."""

from .config import AugConfig, ClassificationConfig, DataConfig, DistillConfig, ModelConfig
from .task import ClassificationTask, evaluate_checkpoint, load_model, predict_images

__all__ = [
    "AugConfig",
    "ClassificationConfig",
    "ClassificationTask",
    "DataConfig",
    "DistillConfig",
    "ModelConfig",
    "evaluate_checkpoint",
    "load_model",
    "predict_images",
]
