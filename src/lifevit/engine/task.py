"""What a task plugs into the engine: :class:`Task`.

The engine (:func:`lifevit.engine.fit`) owns everything that is the same for every task: device, DDP, autocast,
the optimizer and schedule (timm's factories), EMA, clipping, checkpoints with RNG state, resume, the NaN stop,
the time budget, interruption, ``metrics.jsonl`` / TensorBoard / curves, the progress bar and ``summary.json``.
A task supplies only what differs: its model, its data, the loss of one batch, and its evaluation (DETR's one
``engine.py`` serving several tasks through their criteria and post-processors is the model for this split).

A task is a small class over its typed run config (which has a ``train`` section, a
:class:`lifevit.config.TrainConfig`)::

    class MyTask(Task):
        name, score_key = "classification", "top1"

        def build(self, device, dist):          # -> (model, train loader)
            ...
        def train_step(self, model, batch, device):  # -> (loss, {name: detached scalar}, batch size)
            ...
        def evaluate(self, model, device):      # -> {"top1": ..., ...} over the whole evaluation set
            ...
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar, Dict, Iterable, List, Optional, Tuple

import torch
from torch import nn

from .distributed import DistInfo

__all__ = ["Task"]


class Task(ABC):
    """A task's plug-in for the engine.

    Attributes:
        name: ``classification``, ``detection`` or ``segmentation``; stored in checkpoints as ``meta["task"]``.
        score_key: The evaluation metric (higher is better) that picks ``checkpoints/best``.
        cfg: The run's typed config; ``cfg.train`` is the engine's section.
    """

    name: ClassVar[str] = ""
    score_key: ClassVar[str] = ""

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg

    @abstractmethod
    def build(self, device: torch.device, dist: DistInfo) -> Tuple[nn.Module, Any]:
        """Build the model (on CPU; the engine moves it) and this process's training loader.

        The loader must have ``__len__`` (optimizer steps per epoch) and ``set_epoch(epoch)``, and give every
        process its shard of the same global batches (see :func:`lifevit.engine.data.epoch_loader`), so that
        N processes equal one process at the same global batch and a resumed run sees the batches an
        uninterrupted one sees.
        """

    @abstractmethod
    def train_step(self, model: nn.Module, batch: Any, device: torch.device) -> Tuple[torch.Tensor, Dict, int]:
        """Forward one batch and return ``(loss, logs, n)``: the loss to back-propagate, detached scalar tensors
        to average over the epoch (logged as ``train_<name>``), and the number of images in the batch."""

    @abstractmethod
    def evaluate(self, model: nn.Module, device: torch.device) -> Dict[str, Any]:
        """Metrics of ``model`` on the whole evaluation set (every process returns the same numbers under DDP).
        Scalars are logged as ``eval_<name>``; other values (per-class lists) go to the summary only."""

    def meta(self) -> Dict[str, Any]:
        """What a checkpoint stores besides ``task`` and ``config`` to rebuild the model alone (names, classes)."""
        return {}

    def param_groups(self, model: nn.Module) -> Optional[List[Dict[str, Any]]]:
        """Optimizer parameter groups, or ``None`` for timm's default. Either way there is no weight decay on
        biases, norms and what ``model.no_weight_decay()`` lists; with ``train.backbone_lr`` the parameters under
        ``backbone.`` get that learning rate."""
        backbone_lr = self.cfg.train.backbone_lr
        if backbone_lr is None:
            return None
        from timm.optim import param_groups_weight_decay

        skip = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
        groups = []
        for is_backbone in (True, False):
            names = {n for n, _ in model.named_parameters() if n.startswith("backbone.") == is_backbone}
            part = _Subset(model, names)
            for g in param_groups_weight_decay(part, self.cfg.train.weight_decay, no_weight_decay_list=skip):
                if g["params"]:
                    groups.append({**g, "lr": backbone_lr if is_backbone else self.cfg.train.lr})
        return groups

    def summary(self) -> Dict[str, Any]:
        """Facts for ``summary.json`` besides the engine's (data set, image counts, MACs, ...)."""
        return {}

    def finish(self, model: nn.Module, out_dir: Optional[Path], last_eval: Dict[str, Any]) -> None:
        """After the last epoch, on the main process: task-specific files (a confusion matrix, ...)."""
        return None

    def describe(self) -> Iterable[str]:
        """One-line facts logged when training starts."""
        return ()


class _Subset:
    """The named parameters of ``model`` whose names are in ``names`` (for timm's weight-decay grouping)."""

    def __init__(self, model: nn.Module, names: set) -> None:
        self.model, self.names = model, names

    def named_parameters(self):
        return ((n, p) for n, p in self.model.named_parameters() if n in self.names)
