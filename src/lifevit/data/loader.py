"""Batch loaders: a fast in-memory tensor loader for the small data sets and timm's transforms for the rest.

:class:`TensorLoader` keeps a whole :class:`~lifevit.data.classification.ArrayDataset` as one uint8 tensor and
builds each batch with tensor ops (gather, pad-and-crop, flip, normalise): no worker processes and no
per-image Python work, which matters on a 2-core machine. Its order and augmentation are drawn from a
generator seeded by ``(seed, epoch)`` over the *global* batch, and each process takes its slice of it, so

* a run resumed at epoch ``e`` sees exactly the batches an uninterrupted run sees, and
* ``W`` processes with batch ``B`` each see the same global batches as one process with batch ``W * B``.
"""

from __future__ import annotations

import math
from typing import Iterator, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

__all__ = ["TensorLoader"]


class TensorLoader:
    """Iterate (images, targets) batches of an in-memory uint8 data set.

    Args:
        images: (N, H, W, C) uint8 tensor (or numpy array).
        targets: (N,) int64.
        batch_size: Images per batch *per process*.
        mean: Per-channel mean of [0, 1] pixels, for normalisation.
        std: Per-channel std.
        train: Shuffle, drop the last incomplete global batch and augment.
        crop_padding: Training: pad by this many pixels (zeros) and crop back at a random offset (0 = off).
        hflip: Training: probability of a horizontal flip.
        seed: Base seed of the order and augmentation.
        rank: This process's index.
        world_size: Number of processes.
        img_size: Resize to this side (bilinear) if it differs from the stored images.
    """

    def __init__(
        self,
        images,
        targets,
        batch_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        train: bool = False,
        crop_padding: int = 0,
        hflip: float = 0.0,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        img_size: Optional[int] = None,
    ) -> None:
        images = torch.as_tensor(images)
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"expected uint8 images (N, H, W, C), got {images.dtype} {tuple(images.shape)}")
        if batch_size < 1:
            raise ValueError(f"batch size must be >= 1, got {batch_size}")
        self.images = images.permute(0, 3, 1, 2).contiguous()  # (N, C, H, W) uint8
        self.targets = torch.as_tensor(targets, dtype=torch.int64)
        C = self.images.shape[1]
        if len(mean) != C or len(std) != C:
            raise ValueError(f"mean/std have {len(mean)}/{len(std)} values but the images have {C} channels")
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, C, 1, 1) * 255
        self.std = torch.tensor(std, dtype=torch.float32).view(1, C, 1, 1) * 255
        self.batch_size, self.train = batch_size, train
        self.crop_padding, self.hflip = int(crop_padding), float(hflip)
        self.seed, self.rank, self.world_size = int(seed), int(rank), int(world_size)
        self.img_size = img_size
        self.epoch = 0
        self.dataset = self  # DataLoader-like attribute

    def set_epoch(self, epoch: int) -> None:
        """Select the order / augmentation of ``epoch`` (call before iterating, like ``DistributedSampler``)."""
        self.epoch = int(epoch)

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.world_size

    def __len__(self) -> int:
        n = len(self.targets)
        if self.train:
            return n // self.global_batch
        return math.ceil(math.ceil(n / self.world_size) / self.batch_size)

    def num_samples(self) -> int:
        """Images this process sees per epoch."""
        if self.train:
            return len(self) * self.batch_size
        return len(range(self.rank, len(self.targets), self.world_size))

    def _augment(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """Random crop (after zero padding) and flip of a global batch x (B, C, H, W) uint8."""
        B, C, H, W = x.shape
        p = self.crop_padding
        oy = torch.randint(0, 2 * p + 1, (B,), generator=gen)
        ox = torch.randint(0, 2 * p + 1, (B,), generator=gen)
        flip = torch.rand(B, generator=gen) < self.hflip
        if p > 0:
            xp = F.pad(x, (p, p, p, p))  # (B, C, H + 2p, W + 2p)
            rows = oy[:, None] + torch.arange(H)  # (B, H)
            cols = ox[:, None] + torch.arange(W)  # (B, W)
            cols = torch.where(flip[:, None], cols.flip(1), cols)
            bi = torch.arange(B)[:, None, None]
            x = xp[bi, :, rows[:, :, None], cols[:, None, :]]  # (B, H, W, C)
            x = x.permute(0, 3, 1, 2)  # (B, C, H, W)
        elif flip.any():
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        return x

    def _finish(self, x: torch.Tensor) -> torch.Tensor:
        x = (x.float() - self.mean) / self.std
        if self.img_size is not None and x.shape[-1] != self.img_size:
            x = F.interpolate(x, size=(self.img_size, self.img_size), mode="bilinear", align_corners=False)
        return x.contiguous()

    def __iter__(self) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.targets)
        if not self.train:
            mine = torch.arange(self.rank, n, self.world_size)
            for start in range(0, len(mine), self.batch_size):
                idx = mine[start : start + self.batch_size]
                yield self._finish(self.images[idx]), self.targets[idx]
            return
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(n, generator=gen)
        lo, hi = self.rank * self.batch_size, (self.rank + 1) * self.batch_size
        for b in range(len(self)):
            idx = order[b * self.global_batch : (b + 1) * self.global_batch]
            x = self._augment(self.images[idx], gen)[lo:hi]  # same draws on every process, then my slice
            yield self._finish(x), self.targets[idx[lo:hi]]
