"""Random state of a training process: seeding, saving and restoring it (per rank under DDP) for exact resumes."""

from __future__ import annotations

import random
from typing import Any, Dict, List

import numpy as np
import torch

from .distributed import DistInfo

__all__ = [
    "gather_rng_states",
    "restore_rng_from_checkpoint",
    "rng_checkpoint_entries",
    "rng_state",
    "seed_everything",
    "set_rng_state",
]


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> Dict[str, Any]:
    """This process's Python, NumPy, torch (and CUDA) generator states."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def gather_rng_states(dist_info: DistInfo) -> Dict[str, Any]:
    """Every process's RNG state, keyed by rank (so each resumes its own augmentation / drop-path stream).

    A collective under DDP: every rank must call it.
    """
    state = rng_state()
    if not dist_info.enabled:
        return {"0": state}
    gathered: List[Any] = [None] * dist_info.world_size
    torch.distributed.all_gather_object(gathered, state)
    return {str(r): s for r, s in enumerate(gathered)}


def rng_checkpoint_entries(dist_info: DistInfo) -> Dict[str, Any]:
    """``{"rng": rank 0's state, "rng_per_rank": {rank: state}}`` for a checkpoint's ``extra``.

    A collective under DDP: every rank must call it (only rank 0 needs to write the result).
    """
    states = gather_rng_states(dist_info)
    return {"rng": states["0"], "rng_per_rank": states}


def restore_rng_from_checkpoint(extra: Dict[str, Any], rank: int = 0) -> bool:
    """Restore this rank's RNG state from what :func:`rng_checkpoint_entries` wrote (or an older checkpoint's single
    ``rng``); ``False`` when the checkpoint has none."""
    state = extra.get("rng_per_rank", {}).get(str(rank)) or extra.get("rng")
    if state is None:
        return False
    set_rng_state(state)
    return True
