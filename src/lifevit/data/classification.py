"""Classification data sets in their real on-disk formats.

=================  ===========================================================  =========  =====  =======
name               on-disk layout under the data root                          classes    chans  img size
=================  ===========================================================  =========  =====  =======
fashion_mnist      IDX files (see :mod:`lifevit.data.fashion_mnist`)            10         1      28
cifar10            ``cifar-10-batches-py/`` (torchvision's python pickles)      10         3      32
cifar100           ``cifar-100-python/`` (python pickles, fine labels)          100        3      32
svhn               ``train_32x32.mat``, ``test_32x32.mat`` (format 2)           10         3      32
flowers102         ``flowers-102/{jpg/,imagelabels.mat,setid.mat}``             102        3      224
tiny_imagenet      ``tiny-imagenet-200/`` as unzipped from the official zip     200        3      64
imagenet100        ``imagenet100/{train,val}/<wnid>/*.JPEG`` (ImageFolder)      100        3      224
imagefolder        ``{train,val or test}/<class>/<image>`` (any root)           found      3      224
=================  ===========================================================  =========  =====  =======

Tiny-ImageNet's validation images sit in one folder with their labels in ``val/val_annotations.txt``; they are
read from that file, so no re-foldering is needed. Its test split has no labels, so ``val`` is the test split.

The small sets (Fashion-MNIST, CIFAR, SVHN) are :class:`ArrayDataset`s held in memory as uint8 arrays, which
the fast tensor loader (:mod:`lifevit.data.loader`) batches without Python-level per-image work. The others
are :class:`FileListDataset`s of (path, label) read with PIL.

A ``root`` given by the user is the only data root looked in: a root that does not exist, or does not hold the
data set, is refused with ``FileNotFoundError`` (no silent fall-back to another copy). With no root, the data
roots are searched in order: ``$LIFEVIT_DATA``, ``./data``, ``~/data``.

Bad files raise ``ValueError`` naming the file and what was expected: a truncated or corrupt CIFAR pickle or
``.mat`` file, a pickle without the CIFAR keys, an image that is empty, not an image, or truncated (images are
read with :func:`lifevit.data.images.read_image`, which also scales 16-bit images and composites transparency).
"""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch.utils.data import Dataset

from . import fashion_mnist as fmnist
from .images import read_image

__all__ = [
    "ArrayDataset",
    "DatasetInfo",
    "FileListDataset",
    "DATASETS",
    "build_dataset",
    "class_balanced_indices",
    "dataset_info",
]

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")


@dataclass(frozen=True)
class DatasetInfo:
    """What a data set implies for the model and the transforms."""

    name: str
    num_classes: int
    in_chans: int
    img_size: int
    mean: Tuple[float, ...]
    std: Tuple[float, ...]
    in_memory: bool
    how_to_get: str = ""
    eval_split: str = "test"
    splits: Tuple[str, ...] = field(default=("train", "test"))


DATASETS: Dict[str, DatasetInfo] = {
    "fashion_mnist": DatasetInfo(
        "fashion_mnist",
        10,
        1,
        28,
        fmnist.FASHION_MNIST_MEAN,
        fmnist.FASHION_MNIST_STD,
        True,
        "sudo apt-get install dataset-fashion-mnist, or the *-ubyte.gz files from "
        "https://github.com/zalandoresearch/fashion-mnist in --data-root",
    ),
    "cifar10": DatasetInfo(
        "cifar10",
        10,
        3,
        32,
        (0.4914, 0.4822, 0.4465),
        (0.2470, 0.2435, 0.2616),
        True,
        "download and untar https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz into --data-root "
        "(or torchvision.datasets.CIFAR10(root, download=True))",
    ),
    "cifar100": DatasetInfo(
        "cifar100",
        100,
        3,
        32,
        (0.5071, 0.4865, 0.4409),
        (0.2673, 0.2564, 0.2762),
        True,
        "download and untar https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz into --data-root "
        "(or torchvision.datasets.CIFAR100(root, download=True))",
    ),
    "svhn": DatasetInfo(
        "svhn",
        10,
        3,
        32,
        (0.4377, 0.4438, 0.4728),
        (0.1980, 0.2010, 0.1970),
        True,
        "download train_32x32.mat and test_32x32.mat from http://ufldl.stanford.edu/housenumbers/ into --data-root",
    ),
    "flowers102": DatasetInfo(
        "flowers102",
        102,
        3,
        224,
        IMAGENET_DEFAULT_MEAN,
        IMAGENET_DEFAULT_STD,
        False,
        "torchvision.datasets.Flowers102(root, download=True), or 102flowers.tgz, imagelabels.mat and setid.mat "
        "from https://www.robots.ox.ac.uk/~vgg/data/flowers/102/ into --data-root/flowers-102",
        splits=("train", "val", "test"),
    ),
    "tiny_imagenet": DatasetInfo(
        "tiny_imagenet",
        200,
        3,
        64,
        IMAGENET_DEFAULT_MEAN,
        IMAGENET_DEFAULT_STD,
        False,
        "download http://cs231n.stanford.edu/tiny-imagenet-200.zip and unzip it into --data-root",
        eval_split="val",
        splits=("train", "val"),
    ),
    "imagenet100": DatasetInfo(
        "imagenet100",
        100,
        3,
        224,
        IMAGENET_DEFAULT_MEAN,
        IMAGENET_DEFAULT_STD,
        False,
        "build it from ImageNet-1k (the 100 classes of the CMC paper) as --data-root/imagenet100/{train,val}/<wnid>",
        eval_split="val",
        splits=("train", "val"),
    ),
    "imagefolder": DatasetInfo(
        "imagefolder",
        0,
        3,
        224,
        IMAGENET_DEFAULT_MEAN,
        IMAGENET_DEFAULT_STD,
        False,
        "point --data-root at a folder with train/<class>/* and val/<class>/* (or test/<class>/*) images",
        eval_split="val",
        splits=("train", "val", "test"),
    ),
}


def dataset_info(name: str) -> DatasetInfo:
    """Static facts of a data set name (``ValueError`` naming the known ones otherwise)."""
    squash = lambda s: s.lower().replace("-", "").replace("_", "")  # noqa: E731  (cifar-10 == cifar10)
    for key, info in DATASETS.items():
        if squash(key) == squash(name):
            return info
    raise ValueError(f"unknown dataset {name!r}; expected one of {', '.join(DATASETS)}")


class ArrayDataset(Dataset):
    """Images held in memory as uint8 (N, H, W, C) with int64 targets.

    ``__getitem__`` gives a PIL image (for timm / torchvision transforms) and an int; the fast loader reads
    :attr:`images` and :attr:`targets` directly.

    Args:
        images: (N, H, W, C) or (N, H, W) uint8.
        targets: (N,) integer labels.
        classes: Class names.
        transform: Applied to the PIL image.
    """

    def __init__(
        self, images: np.ndarray, targets: np.ndarray, classes: Sequence[str], transform: Optional[Callable] = None
    ) -> None:
        if images.ndim == 3:
            images = images[..., None]  # (N, H, W) -> (N, H, W, 1)
        if images.dtype != np.uint8 or images.ndim != 4:
            raise ValueError(f"expected uint8 images (N, H, W, C), got {images.dtype} {images.shape}")
        if len(images) != len(targets):
            raise ValueError(f"{len(images)} images but {len(targets)} targets")
        self.images = np.ascontiguousarray(images)
        self.targets = torch.as_tensor(np.asarray(targets), dtype=torch.int64)
        self.classes = list(classes)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        img = self.images[index]
        img = Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img)
        if self.transform is not None:
            img = self.transform(img)
        return img, int(self.targets[index])

    def subset(self, indices: Sequence[int]) -> ArrayDataset:
        idx = np.asarray(indices, dtype=np.int64)
        return ArrayDataset(self.images[idx], self.targets.numpy()[idx], self.classes, self.transform)


class FileListDataset(Dataset):
    """Images read from disk with :func:`~lifevit.data.images.read_image` (as RGB) from a list of (path, label).

    Args:
        samples: (path, class index) pairs.
        classes: Class names.
        transform: Applied to the PIL image.
    """

    def __init__(self, samples: List[Tuple[Path, int]], classes: Sequence[str], transform: Optional[Callable] = None):
        self.samples = list(samples)
        self.targets = torch.as_tensor([t for _, t in self.samples], dtype=torch.int64)
        self.classes = list(classes)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        path, target = self.samples[index]
        img = read_image(path, "RGB")
        if self.transform is not None:
            img = self.transform(img)
        return img, target

    def subset(self, indices: Sequence[int]) -> FileListDataset:
        return FileListDataset([self.samples[i] for i in indices], self.classes, self.transform)


def class_balanced_indices(targets: Sequence[int], num_samples: int, seed: int = 0) -> np.ndarray:
    """Indices of a class-balanced random subset: ``num_samples // K`` per class, the remainder spread over the
    first classes (in a seeded random order), returned sorted.

    Raises:
        ValueError: ``num_samples`` is not positive, exceeds the data set, or a class has too few images.
    """
    targets = np.asarray(targets)
    classes = np.unique(targets)
    if num_samples <= 0 or num_samples > len(targets):
        raise ValueError(f"train samples must be in 1..{len(targets)} (the split's size), got {num_samples}")
    rng = np.random.default_rng(seed)
    per_class = np.full(len(classes), num_samples // len(classes))
    per_class[rng.permutation(len(classes))[: num_samples % len(classes)]] += 1
    chosen = []
    for c, n in zip(classes, per_class):
        pool = np.flatnonzero(targets == c)
        if n > len(pool):
            raise ValueError(f"class {c} has {len(pool)} images but a balanced subset of {num_samples} needs {n}")
        chosen.append(rng.choice(pool, size=n, replace=False))
    return np.sort(np.concatenate(chosen))


# --------------------------------------------------------------------------------------------- root search
def _roots(root: Optional[os.PathLike]) -> List[Path]:
    if root is not None:
        return [Path(root)]
    out = []
    if os.environ.get("LIFEVIT_DATA"):
        out.append(Path(os.environ["LIFEVIT_DATA"]))
    return out + [Path("data"), Path.home() / "data"]


def _find(root: Optional[os.PathLike], info: DatasetInfo, relatives: Sequence[str], marker: str) -> Path:
    """First ``base/rel`` (over data roots and relative sub-folders) that contains ``marker``."""
    if root is not None and not Path(root).is_dir():
        raise FileNotFoundError(
            f"{info.name} not found: the data root {root} does not exist (expected a folder). "
            f"To get it: {info.how_to_get}"
        )
    looked = []
    for base in _roots(root):
        for rel in relatives:
            folder = base / rel if rel else base
            looked.append(folder)
            if (folder / marker).exists():
                return folder
    places = ", ".join(str(p / marker) for p in looked)
    raise FileNotFoundError(f"{info.name} not found: looked for {places}. To get it: {info.how_to_get}")


# what unpickling a truncated or foreign file raises
_PICKLE_ERRORS = (
    pickle.UnpicklingError,
    EOFError,
    ValueError,
    TypeError,
    AttributeError,
    ImportError,
    IndexError,
    KeyError,
)


def _unpickle(path: Path, keys: Sequence[bytes]) -> dict:
    """A CIFAR python pickle (a dict with ``keys``), or ``ValueError`` / ``FileNotFoundError`` naming the file."""
    if not path.is_file():
        raise FileNotFoundError(f"CIFAR file {path} is missing; re-extract the data set's tar.gz")
    try:
        with open(path, "rb") as f:
            obj = pickle.load(f, encoding="bytes")
    except _PICKLE_ERRORS as err:
        raise ValueError(
            f"{path} is truncated or not a CIFAR python pickle ({type(err).__name__}: {err}); re-extract the tar.gz"
        ) from err
    missing = [k.decode() for k in keys if not isinstance(obj, dict) or k not in obj]
    if missing:
        raise ValueError(
            f"{path}: expected a CIFAR pickle (a dict with keys {[k.decode() for k in keys]}), missing {missing}"
        )
    return obj


def _cifar_rows_to_hwc(data: np.ndarray) -> np.ndarray:
    return np.asarray(data, dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)  # (N, 32, 32, 3)


def _cifar_batch(path: Path, label_key: bytes) -> Tuple[np.ndarray, np.ndarray]:
    """Images (N, 32, 32, 3) and labels (N,) of one CIFAR batch file, checked against each other."""
    batch = _unpickle(path, (b"data", label_key))
    data, labels = np.asarray(batch[b"data"]), np.asarray(batch[label_key])
    if data.ndim != 2 or data.shape[1] != 3072 or labels.shape != (len(data),):
        raise ValueError(
            f"{path}: expected data (N, 3072) and {label_key.decode()} (N,), got {data.shape} and {labels.shape}"
        )
    return _cifar_rows_to_hwc(data), labels.astype(np.int64)


def _load_cifar(info: DatasetInfo, split: str, root: Optional[os.PathLike]) -> ArrayDataset:
    if info.name == "cifar10":
        folder = _find(root, info, ["cifar-10-batches-py", "cifar10/cifar-10-batches-py", ""], "batches.meta")
        files = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
        label_key, names = b"labels", _unpickle(folder / "batches.meta", [b"label_names"])[b"label_names"]
    else:
        folder = _find(root, info, ["cifar-100-python", "cifar100/cifar-100-python", ""], "meta")
        files = ["train" if split == "train" else "test"]
        label_key, names = b"fine_labels", _unpickle(folder / "meta", [b"fine_label_names"])[b"fine_label_names"]
    parts = [_cifar_batch(folder / f, label_key) for f in files]
    images = np.concatenate([p[0] for p in parts])
    targets = np.concatenate([p[1] for p in parts])
    if targets.min() < 0 or targets.max() >= info.num_classes:
        raise ValueError(f"{folder}: labels must be in 0..{info.num_classes - 1}, got {targets.min()}..{targets.max()}")
    return ArrayDataset(images, targets, [n.decode() if isinstance(n, bytes) else str(n) for n in names])


def _loadmat(path: Path) -> dict:
    """A MATLAB file read with scipy, or ``ValueError`` naming the file when it is truncated or corrupt."""
    from scipy.io import loadmat

    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing")
    try:
        return loadmat(path)
    except (ValueError, TypeError, OSError, EOFError, IndexError, KeyError) as err:
        raise ValueError(f"{path} is truncated or not a MATLAB .mat file ({err}); download it again") from err


def _mat_field(mat: dict, key: str, path: Path) -> np.ndarray:
    if key not in mat:
        raise ValueError(
            f"{path}: expected a variable {key!r}, found {sorted(k for k in mat if not k.startswith('__'))}"
        )
    return mat[key]


def _load_svhn(info: DatasetInfo, split: str, root: Optional[os.PathLike]) -> ArrayDataset:
    fname = f"{'train' if split == 'train' else 'test'}_32x32.mat"
    folder = _find(root, info, ["", "svhn", "SVHN"], fname)
    path = folder / fname
    mat = _loadmat(path)
    X, y = _mat_field(mat, "X", path), _mat_field(mat, "y", path)
    if X.ndim != 4 or X.shape[:3] != (32, 32, 3) or y.size != X.shape[3]:
        raise ValueError(f"{path}: expected X (32, 32, 3, N) and y (N, 1), got {X.shape} and {y.shape}")
    images = np.ascontiguousarray(X.transpose(3, 0, 1, 2)).astype(np.uint8)  # (32, 32, 3, N) -> (N, 32, 32, 3)
    targets = y.reshape(-1).astype(np.int64) % 10  # the digit 0 is stored as label 10
    return ArrayDataset(images, targets, [str(d) for d in range(10)])


def _load_flowers(info: DatasetInfo, split: str, root: Optional[os.PathLike]) -> FileListDataset:
    folder = _find(root, info, ["flowers-102", "flowers102", ""], "setid.mat")
    path = folder / "imagelabels.mat"
    labels = _mat_field(_loadmat(path), "labels", path).reshape(-1).astype(np.int64) - 1  # 1..102 -> 0..101
    key = {"train": "trnid", "val": "valid", "test": "tstid"}[split]
    ids = _mat_field(_loadmat(folder / "setid.mat"), key, folder / "setid.mat").reshape(-1)
    if len(ids) and (ids.min() < 1 or ids.max() > len(labels)):
        raise ValueError(f"{folder / 'setid.mat'}: image ids must be in 1..{len(labels)}, got {ids.min()}..{ids.max()}")
    samples = [(folder / "jpg" / f"image_{i:05d}.jpg", int(labels[i - 1])) for i in ids]
    return FileListDataset(samples, [f"flower_{i:03d}" for i in range(1, 103)])


def _load_tiny_imagenet(info: DatasetInfo, split: str, root: Optional[os.PathLike]) -> FileListDataset:
    folder = _find(root, info, ["tiny-imagenet-200", "tiny_imagenet/tiny-imagenet-200", ""], "wnids.txt")
    wnids = [w.strip() for w in (folder / "wnids.txt").read_text().split() if w.strip()]
    index = {w: i for i, w in enumerate(wnids)}
    names = dict(wnids=wnids)
    words = folder / "words.txt"
    if words.is_file():
        table = dict(line.split("\t", 1) for line in words.read_text().splitlines() if "\t" in line)
        names["classes"] = [table.get(w, w).split(",")[0].strip() for w in wnids]
    samples: List[Tuple[Path, int]] = []
    if split == "train":
        for w in wnids:
            samples += [(p, index[w]) for p in sorted((folder / "train" / w / "images").glob("*.JPEG"))]
    else:  # official layout: val/images/*.JPEG listed with their wnid in val/val_annotations.txt
        ann = folder / "val" / "val_annotations.txt"
        if not ann.is_file():
            raise FileNotFoundError(f"Tiny-ImageNet validation labels {ann} are missing; re-extract the zip")
        for line in ann.read_text().splitlines():
            parts = line.split("\t")
            if len(parts) >= 2:
                if parts[1] not in index:
                    raise ValueError(f"{ann}: class {parts[1]!r} of {parts[0]} is not in wnids.txt")
                samples.append((folder / "val" / "images" / parts[0], index[parts[1]]))
    if not samples:
        raise FileNotFoundError(f"no Tiny-ImageNet {split} images found under {folder}")
    return FileListDataset(samples, names.get("classes", wnids))


def _image_folder(folder: Path, classes: Optional[List[str]] = None) -> FileListDataset:
    classes = classes or sorted(d.name for d in folder.iterdir() if d.is_dir())
    index = {c: i for i, c in enumerate(classes)}
    samples = []
    for c in classes:
        if (folder / c).is_dir():
            files = sorted(p for p in (folder / c).rglob("*") if p.suffix.lower() in IMG_EXTENSIONS)
            samples += [(p, index[c]) for p in files]
    if not samples:
        raise FileNotFoundError(f"no images (*{', *'.join(IMG_EXTENSIONS)}) in class folders under {folder}")
    return FileListDataset(samples, classes)


def _load_folder(info: DatasetInfo, split: str, root: Optional[os.PathLike]) -> FileListDataset:
    rels = ["imagenet100", "imagenet-100", ""] if info.name == "imagenet100" else [""]
    base = _find(root, info, rels, "train")
    split_dir = base / split
    if split != "train" and not split_dir.is_dir():
        alt = base / ("test" if split == "val" else "val")
        split_dir = alt if alt.is_dir() else split_dir
    if not split_dir.is_dir():
        raise FileNotFoundError(f"{info.name}: split folder {split_dir} not found. To get it: {info.how_to_get}")
    train_classes = sorted(d.name for d in (base / "train").iterdir() if d.is_dir())
    return _image_folder(split_dir, train_classes)


def build_dataset(
    name: str, split: str = "train", root: Optional[os.PathLike] = None, transform: Optional[Callable] = None
) -> Dataset:
    """The ``split`` of data set ``name`` (see the module table); ``test``/``val`` map to the labelled eval split.

    Args:
        name: Data set name (``fashion_mnist``, ``cifar10``, ...).
        split: ``train``, ``val`` or ``test``.
        root: Data root (searched first; see the module docs).
        transform: Applied to each PIL image.

    Raises:
        ValueError: Unknown name or split.
        FileNotFoundError: The files are missing; the message says where they were looked for and how to get them.
    """
    info = dataset_info(name)
    if split not in ("train", "val", "test"):
        raise ValueError(f"split must be 'train', 'val' or 'test', got {split!r}")
    if split != "train" and split not in info.splits:
        split = info.eval_split
    if info.name == "fashion_mnist":
        images, targets = fmnist.load_fashion_mnist("train" if split == "train" else "test", root)
        ds: Dataset = ArrayDataset(images, targets, fmnist.CLASSES)
    elif info.name in ("cifar10", "cifar100"):
        ds = _load_cifar(info, split, root)
    elif info.name == "svhn":
        ds = _load_svhn(info, split, root)
    elif info.name == "flowers102":
        ds = _load_flowers(info, split, root)
    elif info.name == "tiny_imagenet":
        ds = _load_tiny_imagenet(info, split, root)
    else:
        ds = _load_folder(info, split, root)
    ds.transform = transform
    return ds
