"""Loaders the engine can drive: every process gets its shard of the same global batches, epoch by epoch."""

from __future__ import annotations

from typing import Any, Callable, Iterator, Optional

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler, Subset

from .distributed import DistInfo

__all__ = ["EpochLoader", "eval_shard"]


class EpochLoader:
    """A training ``DataLoader`` re-made every epoch from a ``DistributedSampler`` and a generator seeded by
    ``(seed, epoch)``.

    The order is one permutation per epoch, drawn from the seed and the epoch alone; process ``r`` of ``W`` takes
    every W-th index of it. So a resumed run sees exactly the batches an uninterrupted one sees, and W processes
    with ``batch_size`` each see the same global batches as one process with ``W * batch_size`` (the last
    incomplete batch is dropped in both). Worker seeds come from the same generator.

    Args:
        dataset: A map-style data set.
        batch_size: Images per batch and process.
        dist: This process's place among the processes.
        seed: Base seed of the order.
        workers: ``DataLoader`` worker processes.
        collate_fn: Batch collation (default: PyTorch's).
        sampler: Another sampler with ``set_epoch`` (e.g. timm's ``RepeatAugSampler``) instead of the default
            ``DistributedSampler(shuffle=True, drop_last=True)``.
    """

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int,
        dist: DistInfo = DistInfo(),
        seed: int = 0,
        workers: int = 0,
        collate_fn: Optional[Callable] = None,
        sampler: Optional[Sampler] = None,
    ) -> None:
        self.dataset, self.batch_size, self.workers, self.collate_fn, self.seed = (
            dataset,
            batch_size,
            workers,
            collate_fn,
            seed,
        )
        self.sampler = sampler or DistributedSampler(
            dataset, num_replicas=dist.world_size, rank=dist.rank, shuffle=True, seed=seed, drop_last=True
        )
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.sampler) // self.batch_size

    def __iter__(self) -> Iterator[Any]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(
            DataLoader(
                self.dataset,
                batch_size=self.batch_size,
                sampler=self.sampler,
                num_workers=self.workers,
                drop_last=True,
                collate_fn=self.collate_fn,
                generator=generator,
                pin_memory=torch.cuda.is_available(),
            )
        )


def eval_shard(dataset: Dataset, dist: DistInfo = DistInfo()) -> Dataset:
    """Every ``world_size``-th item starting at ``rank``: this process's part of an evaluation set."""
    if not dist.enabled:
        return dataset
    return Subset(dataset, range(dist.rank, len(dataset), dist.world_size))
