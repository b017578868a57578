"""Training engine: checkpoints, run folders and plots (shared by all tasks), and the classification loop."""

from .checkpoint import Checkpoint, create_model_from_checkpoint, load_checkpoint, save_checkpoint
from .plots import plot_confusion_matrix, plot_curves
from .rundir import MetricsLogger, prepare_output_dir, write_json

__all__ = [
    "Checkpoint",
    "MetricsLogger",
    "create_model_from_checkpoint",
    "load_checkpoint",
    "plot_confusion_matrix",
    "plot_curves",
    "prepare_output_dir",
    "save_checkpoint",
    "write_json",
]
