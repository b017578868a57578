"""Fashion-MNIST from its original IDX files (gzipped or not), the embedded default data set.

Where the files are looked for:

* a ``root`` given by the user is the only place looked in (the folder itself, torchvision's download layout
  ``<root>/FashionMNIST/raw`` and ``<root>/fashion-mnist``): a root that does not exist, or does not hold the
  four files, is refused with ``FileNotFoundError`` rather than silently replaced by another copy;
* with no ``root``: ``$LIFEVIT_FASHION_MNIST`` when it is set (then only there, by the same rule), else Debian's
  package ``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``).

``download=True`` uses torchvision's downloader (into ``root``, default ``./data``) when no copy is found.
A truncated or corrupt file raises ``ValueError`` naming it.
"""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path
from typing import Callable, List, Optional, Tuple

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

__all__ = [
    "CLASSES",
    "DEBIAN_ROOT",
    "FASHION_MNIST_MEAN",
    "FASHION_MNIST_STD",
    "FashionMNIST",
    "find_fashion_mnist",
    "load_fashion_mnist",
    "read_idx",
    "write_fashion_mnist",
    "write_idx",
]

CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
DEBIAN_ROOT = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_MEAN, FASHION_MNIST_STD = (0.2860,), (0.3530,)  # of the training images, pixels in [0, 1]
_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4")}


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (the MNIST format), gzipped or not."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (EOFError, zlib.error, gzip.BadGzipFile) as err:
        raise ValueError(
            f"{path} is truncated or not a valid gzip file ({err}); expected a gzipped IDX file, download it again"
        ) from err
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise ValueError(f"{path} is not an IDX file (expected a 0x0000 magic number and a known type code)")
    dtype, ndim = np.dtype(_IDX_DTYPES[data[2]]), data[3]
    if len(data) < 4 + 4 * ndim:
        raise ValueError(f"{path} is truncated: its IDX header needs {4 + 4 * ndim} bytes, the file has {len(data)}")
    dims = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    offset = 4 + 4 * ndim
    expected = int(np.prod(dims)) * dtype.itemsize
    if len(data) - offset != expected:
        raise ValueError(f"{path}: header says shape {dims} ({expected} bytes) but the file has {len(data) - offset}")
    return np.frombuffer(data, dtype=dtype, offset=offset).reshape(dims).astype(dtype.newbyteorder("="))


def write_idx(path: Path, array: np.ndarray) -> Path:
    """Write ``array`` (uint8, int8, >i2, >i4 or >f4 values) as an IDX file, gzipped when ``path`` ends in ``.gz``."""
    path = Path(path)
    codes = {
        np.dtype(v).newbyteorder(">").str if np.dtype(v).itemsize > 1 else np.dtype(v).str: k
        for k, v in _IDX_DTYPES.items()
    }
    big = array.astype(array.dtype.newbyteorder(">")) if array.dtype.itemsize > 1 else array
    if big.dtype.str not in codes:
        raise ValueError(f"IDX cannot store dtype {array.dtype}; expected one of uint8, int8, int16, int32, float32")
    header = bytes([0, 0, codes[big.dtype.str], array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    data = header + np.ascontiguousarray(big).tobytes()
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wb") as f:
        f.write(data)
    return path


def write_fashion_mnist(
    folder: os.PathLike, train: Tuple[np.ndarray, np.ndarray], test: Tuple[np.ndarray, np.ndarray]
) -> Path:
    """Write (images uint8 (N, 28, 28), labels) pairs as the four gzipped IDX files of Fashion-MNIST (fixtures)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for split, (images, labels) in (("train", train), ("test", test)):
        write_idx(folder / (_FILES[split][0] + ".gz"), np.asarray(images, dtype=np.uint8))
        write_idx(folder / (_FILES[split][1] + ".gz"), np.asarray(labels, dtype=np.uint8))
    return folder


def _find_file(folder: Path, stem: str) -> Optional[Path]:
    for name in (stem + ".gz", stem, stem.replace("-idx", ".idx")):
        if (folder / name).is_file():
            return folder / name
    return None


def _candidates(root: Optional[os.PathLike]) -> Tuple[List[Path], Optional[Path]]:
    """Folders to look in, and the explicit root they come from (``None`` when the system copy is looked for)."""
    if root is None and os.environ.get("LIFEVIT_FASHION_MNIST"):
        root = os.environ["LIFEVIT_FASHION_MNIST"]
    if root is None:
        return [DEBIAN_ROOT], None
    root = Path(root)
    return [root, root / "FashionMNIST" / "raw", root / "fashion-mnist"], root


def find_fashion_mnist(root: Optional[os.PathLike] = None, download: bool = False) -> Path:
    """The folder holding the four Fashion-MNIST IDX files (see the module docs for where it looks).

    Raises:
        FileNotFoundError: The root does not exist or no folder looked in holds the four files; the message says
            where it looked and how to get the data.
    """
    looked, explicit = _candidates(root)
    for folder in looked:
        if all(_find_file(folder, s) for pair in _FILES.values() for s in pair):
            return folder
    if download:
        from torchvision.datasets import FashionMNIST as TVFashionMNIST

        target = Path(root or "data")
        TVFashionMNIST(str(target), train=True, download=True)
        TVFashionMNIST(str(target), train=False, download=True)
        return target / "FashionMNIST" / "raw"
    how = (
        f"Get it with `sudo apt-get install dataset-fashion-mnist` (Debian/Ubuntu, installs to {DEBIAN_ROOT}), "
        "or download the four *-ubyte.gz files from https://github.com/zalandoresearch/fashion-mnist into the root"
    )
    if explicit is not None and not explicit.exists():
        raise FileNotFoundError(
            f"Fashion-MNIST root {explicit} does not exist; expected a folder with {_names()}. {how}"
        )
    places = ", ".join(str(p) for p in looked)
    raise FileNotFoundError(f"Fashion-MNIST not found: none of {places} holds {_names()}. {how}")


def _names() -> str:
    return ", ".join(f"{s}[.gz]" for pair in _FILES.values() for s in pair)


def load_fashion_mnist(split: str = "train", root: Optional[os.PathLike] = None) -> Tuple[np.ndarray, np.ndarray]:
    """Images (N, 28, 28) uint8 and labels (N,) int64 of the ``train`` or ``test`` split."""
    if split not in _FILES:
        raise ValueError(f"split must be one of {sorted(_FILES)}, got {split!r}")
    folder = find_fashion_mnist(root)
    images = read_idx(_find_file(folder, _FILES[split][0]))
    labels = read_idx(_find_file(folder, _FILES[split][1])).astype(np.int64)
    if images.ndim != 3 or labels.shape != (images.shape[0],):
        raise ValueError(f"{folder}: expected images (N, 28, 28) and labels (N,), got {images.shape}, {labels.shape}")
    return images, labels


class FashionMNIST(Dataset):
    """Fashion-MNIST as PIL images (mode ``L``) and integer targets, like torchvision's datasets.

    Args:
        root: Folder with the IDX files (see module docs for the search order).
        split: ``train`` or ``test``.
        transform: Applied to the PIL image.
        download: Download with torchvision if no local copy is found.
    """

    classes = CLASSES

    def __init__(
        self,
        root: Optional[os.PathLike] = None,
        split: str = "train",
        transform: Optional[Callable] = None,
        download: bool = False,
    ) -> None:
        if download:
            root = find_fashion_mnist(root, download=True)
        self.images, labels = load_fashion_mnist(split, root)
        self.targets = torch.from_numpy(labels)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        img = Image.fromarray(self.images[index])  # 2-D uint8 -> mode "L"
        if self.transform is not None:
            img = self.transform(img)
        return img, int(self.targets[index])
