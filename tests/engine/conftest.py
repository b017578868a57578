"""Fixtures: a tiny, learnable Fashion-MNIST written in the real IDX format, and a tiny classification config."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from lifevit.config import build_config
from lifevit.data.fashion_mnist import write_fashion_mnist
from lifevit.tasks.classification import ClassificationConfig


def synthetic_fashion(n_per_class: int, seed: int):
    """28x28 uint8 images where class c is a bright 7x7 square in cell c of a 4x4 grid, plus noise."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(10), n_per_class)
    rng.shuffle(labels)
    images = rng.integers(0, 60, size=(len(labels), 28, 28), dtype=np.uint8)
    for i, c in enumerate(labels):
        r, q = divmod(int(c), 4)
        images[i, 7 * r : 7 * r + 7, 7 * q : 7 * q + 7] = 220
    return images, labels


@pytest.fixture(scope="session")
def fmnist_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("fmnist")
    return write_fashion_mnist(root, synthetic_fashion(20, 0), synthetic_fashion(10, 1))


TINY = [
    "model.name=vit_lite_patch4_28",
    "model.kwargs={embed_dim: 24, depth: 1, num_heads: 2, mlp_ratio: 1.0}",
    "data.eval_batch_size=50",
    "aug.hflip=0.0",
    "aug.crop_padding=0",
    "train.batch_size=20",
    "train.warmup_epochs=1",
    "train.lr=0.01",
    "train.epochs=2",
    "train.threads=1",
    "train.progress=false",
    "train.tensorboard=false",
]


@pytest.fixture
def tiny_cfg(fmnist_root):
    def make(*overrides: str):
        return build_config(ClassificationConfig, overrides=[*TINY, f"data.root={fmnist_root}", *overrides])

    return make


def _torchrun_train(cli, config_file, output, timeout: float = 600) -> subprocess.CompletedProcess:
    """``lifevit <cli> train --config FILE --output DIR --json`` in two CPU processes (torchrun, one thread each);
    asserts it succeeded and returns the finished process (its stderr holds DDP's warnings)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1", "--nproc_per_node", "2",
           "-m", "lifevit", *cli, "train", "--config", str(config_file), "--output", str(output), "--json"]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.fixture
def torchrun_train():
    """:func:`_torchrun_train`: the two-process training run the DDP tests compare with one process."""
    return _torchrun_train
