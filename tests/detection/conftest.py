"""Fixtures for detection tests: a tiny Fashion-MNIST in its real IDX format and a canvas set made from it."""

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest


def write_fake_fashion_mnist(folder: Path, n: int = 40, seed: int = 0) -> Path:
    """Gzipped IDX files (the real Fashion-MNIST format) holding filled rectangles of random extent."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for split in ("train", "t10k"):
        images = np.zeros((n, 28, 28), np.uint8)
        for i in range(n):
            y0, x0 = rng.integers(0, 8, size=2)
            y1, x1 = rng.integers(20, 28, size=2)
            images[i, y0:y1, x0:x1] = rng.integers(120, 255)
        labels = (np.arange(n) % 10).astype(np.uint8)
        with gzip.open(folder / f"{split}-images-idx3-ubyte.gz", "wb") as f:
            f.write(struct.pack(">HBB3I", 0, 0x08, 3, n, 28, 28) + images.tobytes())
        with gzip.open(folder / f"{split}-labels-idx1-ubyte.gz", "wb") as f:
            f.write(struct.pack(">HBBI", 0, 0x08, 1, n) + labels.tobytes())
    return folder


@pytest.fixture(scope="session")
def fake_fashion_mnist(tmp_path_factory) -> Path:
    return write_fake_fashion_mnist(tmp_path_factory.mktemp("fmnist"))


@pytest.fixture(scope="session")
def canvas_root(tmp_path_factory, fake_fashion_mnist) -> Path:
    from lifevit.data.canvas import make_canvas_dataset

    root = tmp_path_factory.mktemp("canvas")
    make_canvas_dataset(
        root, num_train=12, num_val=6, canvas_size=64, max_items=3, seed=1, fashion_mnist_root=fake_fashion_mnist
    )
    return root
