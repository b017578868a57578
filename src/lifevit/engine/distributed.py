"""Multi-process glue for ``torchrun`` (DDP: gloo on CPU, NCCL on GPU)."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["DistInfo", "init_distributed", "is_main", "barrier", "all_reduce_sum", "cleanup_distributed"]

_logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: ``rank`` of ``world_size`` processes, ``local_rank`` on its node."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device: torch.device) -> DistInfo:
    """Join the process group that ``torchrun`` describes in ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK``.

    A single process (no ``WORLD_SIZE`` or ``WORLD_SIZE=1``) gets ``DistInfo()`` and no process group.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistInfo()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
        _logger.info("process %d/%d joined the %s process group", rank, world_size, backend)
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank)


def is_main() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum of ``t`` over processes (``t`` itself when not distributed)."""
    if dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def cleanup_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
