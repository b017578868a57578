"""Cityscapes semantic segmentation in its real on-disk layout, read with torchvision's ``Cityscapes``.

Layout (``root`` is the folder holding ``leftImg8bit`` and ``gtFine``)::

    root/leftImg8bit/<split>/<city>/<city>_<seq>_<frame>_leftImg8bit.png
    root/gtFine/<split>/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png

The ``labelIds`` images hold the official label ids (0..33, -1 for license plate). Training uses the 19
evaluated classes: each label id is mapped to its ``train_id`` through a look-up table, and every id whose
train id is 255 (or -1) becomes :data:`IGNORE_INDEX`. The official table is torchvision's
``Cityscapes.classes``; a custom table (a JSON list of ``{"id", "train_id", "name"}``, optionally ``"color"``)
replaces it for other data in the same layout, such as the Fashion-MNIST canvas set
(``cityscapes/canvas_classes.json``, see :mod:`lifevit.data.canvas`).

Files are read with :func:`lifevit.data.images.read_image` (labels as stored, never scaled). An image or label
file that is empty, truncated or not an image, a label image that is not single-channel, and a label image
whose size differs from its image raise ``ValueError`` naming the file, what was expected and what was found.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.datasets import Cityscapes as TVCityscapes

from .images import read_image

__all__ = ["IGNORE_INDEX", "LabelTable", "CityscapesSegmentation", "cityscapes_label_table", "load_label_table"]

IGNORE_INDEX = 255
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class LabelTable:
    """Maps the label ids stored on disk to contiguous train ids.

    Attributes:
        ids: Label id of each entry.
        train_ids: Train id of each entry (``IGNORE_INDEX`` for ignored labels).
        names: Name of each entry.
        class_names: Name of each train id ``0 .. num_classes - 1`` (the first entry with that train id).
        colors: RGB colour of each train id, used to colourise predictions.
    """

    ids: Tuple[int, ...]
    train_ids: Tuple[int, ...]
    names: Tuple[str, ...]
    class_names: Tuple[str, ...]
    colors: Tuple[Tuple[int, int, int], ...]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def lut(self) -> np.ndarray:
        """A 256-entry uint8 look-up table: ``lut[label_id] = train_id``; unknown ids map to ``IGNORE_INDEX``."""
        table = np.full(256, IGNORE_INDEX, np.uint8)
        for label_id, train_id in zip(self.ids, self.train_ids):
            if 0 <= label_id < 256:
                table[label_id] = train_id
        return table

    def encode(self, label_ids: Union[np.ndarray, Image.Image]) -> torch.Tensor:
        """Label-id image (H, W) -> train ids, int64 (H, W), ignored pixels = ``IGNORE_INDEX``."""
        arr = np.asarray(label_ids)
        if arr.ndim != 2:
            raise ValueError(f"a labelIds image must be single-channel (H, W), got shape {arr.shape}")
        if arr.dtype != np.uint8:  # 16/32-bit PNGs: ids >= 256 are not labels, ignore them
            arr = np.where((arr >= 0) & (arr < 256), arr, IGNORE_INDEX).astype(np.uint8)
        return torch.from_numpy(self.lut()[arr].astype(np.int64))


def _palette(n: int) -> List[Tuple[int, int, int]]:
    """``n`` distinct colours from matplotlib's tab20 colour map (repeating after 20)."""
    import matplotlib

    cmap = matplotlib.colormaps["tab20"]
    return [tuple(int(255 * c) for c in cmap(i % 20)[:3]) for i in range(n)]


def _make_table(entries: Sequence[dict], source: str) -> LabelTable:
    ids, train_ids, names = [], [], []
    colors_by_train_id = {}
    for i, e in enumerate(entries):
        missing = [k for k in ("id", "train_id", "name") if k not in e]
        if missing:
            raise ValueError(f"{source}: entry {i} lacks {missing}; expected keys 'id', 'train_id', 'name', got {e}")
        train_id = int(e["train_id"])
        train_id = IGNORE_INDEX if train_id < 0 or train_id >= IGNORE_INDEX else train_id
        ids.append(int(e["id"]))
        train_ids.append(train_id)
        names.append(str(e["name"]))
        if train_id != IGNORE_INDEX and "color" in e and train_id not in colors_by_train_id:
            colors_by_train_id[train_id] = tuple(int(c) for c in e["color"])
    used = sorted({t for t in train_ids if t != IGNORE_INDEX})
    if used != list(range(len(used))) or not used:
        raise ValueError(f"{source}: train ids must be 0..K-1 (255 = ignore) with K >= 1, got {used}")
    class_names = tuple(names[train_ids.index(t)] for t in used)
    palette = _palette(len(used))
    for t, name in enumerate(class_names):  # a background class without a colour is drawn black
        if name.lower() in ("background", "unlabeled", "void"):
            colors_by_train_id.setdefault(t, (0, 0, 0))
    colors = tuple(colors_by_train_id.get(t, palette[t]) for t in used)
    return LabelTable(tuple(ids), tuple(train_ids), tuple(names), class_names, colors)


def cityscapes_label_table() -> LabelTable:
    """The official Cityscapes table (torchvision's ``Cityscapes.classes``): 34 label ids -> 19 train ids."""
    entries = [dict(id=c.id, train_id=c.train_id, name=c.name, color=c.color) for c in TVCityscapes.classes]
    return _make_table(entries, "torchvision Cityscapes.classes")


def load_label_table(path: Optional[Union[str, os.PathLike]] = None) -> LabelTable:
    """The official table for ``path=None``, else the JSON list of ``{"id", "train_id", "name"}`` at ``path``."""
    if path is None:
        return cityscapes_label_table()
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"label table {path} not found; expected a JSON list of {{'id', 'train_id', 'name'}}")
    entries = json.loads(path.read_text())
    if not isinstance(entries, list):
        raise ValueError(f"{path}: expected a JSON list of {{'id', 'train_id', 'name'}}, got {type(entries).__name__}")
    return _make_table(entries, str(path))


class CityscapesSegmentation(Dataset):
    """Cityscapes ``gtFine`` semantic segmentation: ``(image, target)`` pairs with targets in train ids.

    Images and label files are listed by torchvision's ``Cityscapes`` (``target_type="semantic"``), sorted by
    file name so the order does not depend on the file system.

    Args:
        root: Folder holding ``leftImg8bit/`` and ``gtFine/``.
        split: ``train``, ``val`` or ``test``.
        label_table: A :class:`LabelTable` or the path of a JSON table; ``None`` = the official 19 classes.
        transforms: Called as ``transforms(image, target)`` with a uint8 image tensor (3, H, W) and an int64
            target (H, W); returns the pair to yield. ``None`` yields them unchanged.
    """

    def __init__(
        self,
        root: Union[str, os.PathLike],
        split: str = "train",
        label_table: Union[LabelTable, str, os.PathLike, None] = None,
        transforms: Optional[Callable] = None,
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        root = Path(root)
        for sub in ("leftImg8bit", "gtFine"):
            if not (root / sub / split).is_dir():
                raise FileNotFoundError(
                    f"Cityscapes {split} split not found: expected {root / sub / split} "
                    f"(root must hold leftImg8bit/{split}/<city>/ and gtFine/{split}/<city>/)"
                )
        self.root = root
        self.split = split
        self.table = label_table if isinstance(label_table, LabelTable) else load_label_table(label_table)
        self.transforms = transforms
        # torchvision lists the files (os.listdir order); sort them so the order does not depend on the file system
        self._tv = TVCityscapes(str(root), split=split, mode="fine", target_type="semantic")
        pairs = sorted(zip(self._tv.images, self._tv.targets))
        if not pairs:
            raise FileNotFoundError(f"no *_leftImg8bit.png images under {root / 'leftImg8bit' / split}")
        missing = [t[0] for _, t in pairs if not os.path.isfile(t[0])]
        if missing:
            raise FileNotFoundError(
                f"{len(missing)} image(s) have no gtFine_labelIds.png, e.g. {missing[0]} (each image needs one)"
            )
        self._tv.images = [p for p, _ in pairs]
        self._tv.targets = [t for _, t in pairs]

    @property
    def images(self) -> List[str]:
        return self._tv.images

    @property
    def num_classes(self) -> int:
        return self.table.num_classes

    @property
    def class_names(self) -> Tuple[str, ...]:
        return self.table.class_names

    def __len__(self) -> int:
        return len(self.images)

    def load(self, index: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """Image uint8 (3, H, W) and train-id target int64 (H, W), before transforms."""
        image_path, label_path = self.images[index], self._tv.targets[index][0]
        rgb = np.array(read_image(image_path, "RGB"))  # (H, W, 3)
        label_ids = np.array(read_image(label_path, None))  # (H, W) label ids as stored
        if label_ids.ndim != 2:
            raise ValueError(
                f"label image {label_path} has shape {label_ids.shape}; expected a single-channel (H, W) labelIds PNG"
            )
        if label_ids.shape != rgb.shape[:2]:
            (h, w), (H, W) = label_ids.shape, rgb.shape[:2]
            raise ValueError(f"label image {label_path} is {w}x{h} but its image {image_path} is {W}x{H}")
        image = torch.from_numpy(rgb).permute(2, 0, 1).contiguous()  # (3, H, W)
        return image, self.table.encode(label_ids)  # (H, W)

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, torch.Tensor]:
        image, target = self.load(index)
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target
