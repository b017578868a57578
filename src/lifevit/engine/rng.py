"""Random state of a training process: seeding, and every process's state for a checkpoint (exact resumes)."""

from __future__ import annotations

import random
from typing import Any, Dict, List, Tuple

import numpy as np
import torch

from .checkpoint import rng_state_parts, set_rng_state_parts
from .distributed import DistInfo

__all__ = ["gather_rng_states", "restore_rng_state", "seed_everything"]


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def gather_rng_states(dist_info: DistInfo) -> Dict[str, Tuple[Dict[str, torch.Tensor], Dict[str, Any]]]:
    """Every process's RNG state, keyed by rank, for :func:`~lifevit.engine.checkpoint.save_checkpoint`.

    A collective under DDP: every rank must call it (only rank 0 needs the result).
    """
    state = rng_state_parts("")
    if not dist_info.enabled:
        return {"0": state}
    gathered: List[Any] = [None] * dist_info.world_size
    torch.distributed.all_gather_object(gathered, state)
    return {str(r): s for r, s in enumerate(gathered)}


def restore_rng_state(rng: Dict[str, Tuple[Dict[str, torch.Tensor], Dict[str, Any]]], rank: int) -> bool:
    """Restore this rank's state from a training state's ``rng``; ``False`` when it holds none for this rank."""
    if str(rank) not in rng:
        return False
    tensors, js = rng[str(rank)]
    set_rng_state_parts(tensors, js, "")
    return True
