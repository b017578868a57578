"""The one training engine (:func:`fit` over a :class:`Task`), checkpoints, run folders and plots."""

from .checkpoint import Checkpoint, create_model_from_checkpoint, load_checkpoint, load_training_state, save_checkpoint
from .plots import plot_confusion_matrix, plot_curves
from .rundir import MetricsLogger, prepare_output_dir, write_json
from .task import Task
from .trainer import NonFiniteLossError, TrainingInterrupted, fit, resolve_device

__all__ = [
    "Checkpoint",
    "MetricsLogger",
    "NonFiniteLossError",
    "Task",
    "TrainingInterrupted",
    "create_model_from_checkpoint",
    "fit",
    "load_checkpoint",
    "load_training_state",
    "plot_confusion_matrix",
    "plot_curves",
    "prepare_output_dir",
    "resolve_device",
    "save_checkpoint",
    "write_json",
]
