"""A small detection / segmentation data set made from real Fashion-MNIST items: the "canvas" set.

Every canvas is a black ``canvas_size`` x ``canvas_size`` RGB image with 1 to ``max_items`` Fashion-MNIST
items pasted at random positions and scales (a side of ``scale_range`` times the canvas side). Train canvases
use items from the Fashion-MNIST ``train`` split, val canvases items from the ``test`` split, so no item is
shared between the two. A placement that overlaps an earlier item's box by more than ``max_overlap`` (IoU) is
re-drawn a few times, so items are mostly separate; a later item occludes an earlier one where they overlap.

Foreground: a pasted pixel belongs to its item when its (resized) value is >= ``FOREGROUND_THRESHOLD``. The box
of an item is the extent of its foreground pixels; the per-pixel labels are the foreground masks.

The set is written twice, in real on-disk layouts read by the real loaders:

* Pascal VOC (``DIR/VOCdevkit/VOC2007``): ``JPEGImages/<id>.jpg``, ``Annotations/<id>.xml`` (1-based,
  inclusive pixel boxes like the real VOC), ``ImageSets/Main/{train,val,trainval}.txt``. Class names are the
  Fashion-MNIST names slugified (:data:`CANVAS_CLASSES`, e.g. ``t-shirt_top``, ``ankle_boot``).
* Cityscapes (``DIR/cityscapes``): ``leftImg8bit/<split>/canvas/canvas_000000_<idx>_leftImg8bit.png`` and
  ``gtFine/<split>/canvas/canvas_000000_<idx>_gtFine_{labelIds,instanceIds}.png``. labelIds: 0 = background,
  1..10 = Fashion-MNIST class + 1. instanceIds (16-bit, the Cityscapes convention): ``label_id * 1000 + k`` for
  the k-th item of the image (k from 0), 0 on background. The label table is ``DIR/cityscapes/canvas_classes.json``
  (a list of ``{"id", "train_id", "name"}``, ``train_id == id``), which the segmentation loader uses instead
  of the official Cityscapes table.

The same canvas has the same index in both layouts: VOC id ``f"{i:06d}"`` and Cityscapes frame ``i``.

The set is written into a hidden temporary folder beside ``DIR`` and renamed to ``DIR`` when complete, so an
interrupted run leaves no half-written set. ``DIR`` must not exist or be empty: a non-empty folder is refused
(its files would otherwise mix with the new ones, and a loader would see both sets). ``overwrite=True`` replaces
a canvas set written there before, and only that: a folder holding any file a canvas set does not write is
refused, so no file of the user is ever deleted.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from .fashion_mnist import CLASSES, load_fashion_mnist

__all__ = ["CANVAS_CLASSES", "FOREGROUND_THRESHOLD", "make_canvas", "make_canvas_dataset", "slugify"]

logger = logging.getLogger(__name__)

FOREGROUND_THRESHOLD = 16  # uint8 value from which a pasted pixel counts as part of its item


def slugify(name: str) -> str:
    """VOC-style class name: lower case, runs of non-alphanumerics -> ``_`` (``"T-shirt/top"`` -> ``"t-shirt_top"``)."""
    return re.sub(r"[^a-z0-9-]+", "_", name.lower()).strip("_")


CANVAS_CLASSES: Tuple[str, ...] = tuple(slugify(c) for c in CLASSES)


def _iou(a: Sequence[int], b: Sequence[int]) -> float:
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def make_canvas(
    rng: np.random.Generator,
    images: np.ndarray,
    labels: np.ndarray,
    canvas_size: int = 96,
    max_items: int = 4,
    scale_range: Tuple[float, float] = (0.25, 0.5),
    max_overlap: float = 0.1,
) -> Tuple[np.ndarray, List[Tuple[int, int, int, int]], List[int], np.ndarray]:
    """One canvas.

    Args:
        rng: Random generator (the only source of randomness).
        images: Fashion-MNIST items, uint8 (N, 28, 28).
        labels: Their classes (N,).
        canvas_size: Side of the square canvas in pixels.
        max_items: At most this many items (at least one).
        scale_range: Item side as a fraction of the canvas side, sampled uniformly.
        max_overlap: Largest IoU allowed between item squares (re-drawn up to 20 times, then accepted).

    Returns:
        ``(image uint8 (S, S), boxes, classes, item_map int (S, S))``: boxes are 0-based inclusive pixel extents
        ``(x0, y0, x1, y1)`` of each item's foreground; ``item_map`` is the index of the item visible at each
        pixel, -1 on background. Items whose foreground is fully occluded are dropped.
    """
    S = canvas_size
    canvas = np.zeros((S, S), np.uint8)
    item_map = np.full((S, S), -1, np.int64)
    n_items = int(rng.integers(1, max_items + 1))
    squares: List[Tuple[int, int, int, int]] = []
    picked: List[int] = []
    for k in range(n_items):
        for _ in range(20):
            side = int(round(rng.uniform(*scale_range) * S))
            side = max(4, min(side, S))
            x, y = (int(v) for v in rng.integers(0, S - side + 1, size=2))
            sq = (x, y, x + side, y + side)
            if all(_iou(sq, other) <= max_overlap for other in squares):
                break
        idx = int(rng.integers(0, len(images)))
        item = np.asarray(Image.fromarray(images[idx]).resize((side, side), Image.BILINEAR))
        fg = item >= FOREGROUND_THRESHOLD
        if not fg.any():
            continue
        region = (slice(sq[1], sq[3]), slice(sq[0], sq[2]))
        canvas[region] = np.where(fg, item, canvas[region])
        item_map[region] = np.where(fg, k, item_map[region])
        squares.append(sq)
        picked.append(idx)
    boxes: List[Tuple[int, int, int, int]] = []
    classes: List[int] = []
    kept_map = np.full((S, S), -1, np.int64)
    for k, idx in enumerate(picked):
        ys, xs = np.nonzero(item_map == k)
        if len(xs) == 0:  # fully occluded by later items
            continue
        kept_map[item_map == k] = len(boxes)
        boxes.append((int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())))
        classes.append(int(labels[idx]))
    return canvas, boxes, classes, kept_map


def _voc_xml(image_id: str, size: int, boxes: Sequence[Tuple[int, int, int, int]], classes: Sequence[int]) -> bytes:
    root = ET.Element("annotation")
    ET.SubElement(root, "folder").text = "VOC2007"
    ET.SubElement(root, "filename").text = f"{image_id}.jpg"
    source = ET.SubElement(root, "source")
    ET.SubElement(source, "database").text = "lifevit Fashion-MNIST canvas"
    sz = ET.SubElement(root, "size")
    for tag, val in (("width", size), ("height", size), ("depth", 3)):
        ET.SubElement(sz, tag).text = str(val)
    ET.SubElement(root, "segmented").text = "0"
    for (x0, y0, x1, y1), c in zip(boxes, classes):
        obj = ET.SubElement(root, "object")
        ET.SubElement(obj, "name").text = CANVAS_CLASSES[c]
        ET.SubElement(obj, "pose").text = "Unspecified"
        ET.SubElement(obj, "truncated").text = "0"
        ET.SubElement(obj, "difficult").text = "0"
        bb = ET.SubElement(obj, "bndbox")
        # VOC boxes are 1-based and inclusive
        for tag, val in (("xmin", x0 + 1), ("ymin", y0 + 1), ("xmax", x1 + 1), ("ymax", y1 + 1)):
            ET.SubElement(bb, tag).text = str(val)
    ET.indent(root)
    return ET.tostring(root, encoding="utf-8")


def make_canvas_dataset(
    out_dir: os.PathLike,
    num_train: int = 2000,
    num_val: int = 500,
    canvas_size: int = 96,
    max_items: int = 4,
    seed: int = 0,
    scale_range: Tuple[float, float] = (0.25, 0.5),
    fashion_mnist_root: Optional[os.PathLike] = None,
    overwrite: bool = False,
) -> Dict[str, object]:
    """Write the canvas set in the VOC and the Cityscapes layouts under ``out_dir``.

    Args:
        out_dir: Output folder: new, or an empty folder (see the module docs).
        num_train: Training canvases (items from Fashion-MNIST ``train``).
        num_val: Validation canvases (items from Fashion-MNIST ``test``).
        canvas_size: Canvas side in pixels.
        max_items: 1 to ``max_items`` items per canvas.
        seed: Seed of the generator; the same arguments give the same files.
        scale_range: Item side as a fraction of the canvas side.
        fashion_mnist_root: Where Fashion-MNIST is (default: the usual search, see ``fashion_mnist``).
        overwrite: Replace a canvas set already in ``out_dir`` (refused if the folder holds anything else).

    Returns:
        A summary: ``voc_root``, ``cityscapes_root``, ``classes``, ``num_train``, ``num_val``, ``num_objects``
        (per split) and the generation arguments.

    Raises:
        ValueError: Bad arguments; ``out_dir`` is a file, or a non-empty folder (without ``overwrite``, or holding
            files that are not a canvas set's). Nothing is written then.
        FileNotFoundError: Fashion-MNIST was not found.
    """
    if num_train < 0 or num_val < 0 or num_train + num_val == 0:
        raise ValueError(f"need num_train >= 0, num_val >= 0 and at least one canvas, got {num_train}, {num_val}")
    if max_items < 1:
        raise ValueError(f"max_items must be >= 1, got {max_items}")
    lo, hi = scale_range
    if not 0 < lo <= hi <= 1:
        raise ValueError(f"scale_range must satisfy 0 < low <= high <= 1, got {scale_range}")
    if int(round(lo * canvas_size)) < 8:
        raise ValueError(
            f"canvas_size {canvas_size} with scale_range {scale_range} gives items under 8 px; use a larger canvas"
        )
    out = Path(out_dir)
    target = Path(os.path.realpath(out))  # a symlink to a folder: the folder it names
    _check_output(target, overwrite)
    splits = {"train": (0, num_train, "train"), "val": (num_train, num_val, "test")}
    items = {s: load_fashion_mnist(fm, fashion_mnist_root) if n else (None, None) for s, (_, n, fm) in splits.items()}

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.partial-{secrets.token_hex(4)}"
    tmp.mkdir()
    try:
        num_objects = _write_canvas_set(tmp, splits, items, canvas_size, max_items, seed, scale_range)
        summary = {
            "root": str(out),
            "voc_root": str(out / "VOCdevkit"),
            "cityscapes_root": str(out / "cityscapes"),
            "classes": list(CANVAS_CLASSES),
            "num_train": num_train,
            "num_val": num_val,
            "num_objects": num_objects,
            "canvas_size": canvas_size,
            "max_items": max_items,
            "scale_range": list(scale_range),
            "seed": seed,
        }
        (tmp / "canvas.json").write_text(json.dumps(summary, indent=2))
        _move_into_place(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # our own half-written folder, never the user's
        raise
    logger.info("canvas set: %d train / %d val images in %s", num_train, num_val, out)
    return summary


# every file a canvas set writes, relative to its root: what ``overwrite`` may replace
_CANVAS_FILES = re.compile(
    r"canvas\.json|VOCdevkit/VOC2007/(JPEGImages/\d{6}\.jpg|Annotations/\d{6}\.xml|"
    r"ImageSets/Main/(train|val|trainval)\.txt)|cityscapes/(canvas_classes\.json|"
    r"leftImg8bit/(train|val)/canvas/canvas_000000_\d{6}_leftImg8bit\.png|"
    r"gtFine/(train|val)/canvas/canvas_000000_\d{6}_gtFine_(labelIds|instanceIds)\.png)"
)


def _check_output(target: Path, overwrite: bool) -> None:
    """Refuse an output that is a file, or a non-empty folder unless it holds only a canvas set and ``overwrite``."""
    if target.exists() and not target.is_dir():
        raise ValueError(f"output {target} is an existing file; expected a folder (new or empty) for the canvas set")
    if not target.is_dir() or not any(target.iterdir()):
        return
    if not overwrite:
        raise ValueError(
            f"output folder {target} already exists and is not empty; expected a new or empty folder "
            "(or overwrite, --overwrite, to replace a canvas set written there before)"
        )
    if not (target / "canvas.json").is_file():
        raise ValueError(f"output folder {target} does not hold a canvas set (no canvas.json); refusing to replace it")
    for path in sorted(target.rglob("*")):
        rel = path.relative_to(target).as_posix()
        if path.is_dir() and not path.is_symlink():
            continue
        if not path.is_file() or path.is_symlink() or not _CANVAS_FILES.fullmatch(rel):
            raise ValueError(
                f"output folder {target} holds {rel}, which a canvas set does not write; refusing to replace it "
                "(choose a new folder)"
            )


def _move_into_place(tmp: Path, target: Path) -> None:
    """Rename the finished set ``tmp`` to ``target`` (an empty folder is removed first, an old set last)."""
    old = None
    if target.is_dir():
        if any(target.iterdir()):  # a previous canvas set, checked by _check_output
            old = target.parent / f".{target.name}.old-{secrets.token_hex(4)}"
            target.rename(old)
        else:
            target.rmdir()
    tmp.rename(target)
    if old is not None:
        shutil.rmtree(old)


def _write_canvas_set(
    out: Path,
    splits: Dict[str, Tuple[int, int, str]],
    items: Dict[str, Tuple[Optional[np.ndarray], Optional[np.ndarray]]],
    canvas_size: int,
    max_items: int,
    seed: int,
    scale_range: Tuple[float, float],
) -> Dict[str, int]:
    """Write both layouts under ``out``; returns the number of objects of each split."""
    voc = out / "VOCdevkit" / "VOC2007"
    cs = out / "cityscapes"
    for d in (voc / "Annotations", voc / "JPEGImages", voc / "ImageSets" / "Main"):
        d.mkdir(parents=True, exist_ok=True)

    rng = np.random.default_rng(seed)
    ids: Dict[str, List[str]] = {}
    num_objects: Dict[str, int] = {}
    for split, (start, count, _) in splits.items():
        images, labels = items[split]
        img_dir = cs / "leftImg8bit" / split / "canvas"
        gt_dir = cs / "gtFine" / split / "canvas"
        img_dir.mkdir(parents=True, exist_ok=True)
        gt_dir.mkdir(parents=True, exist_ok=True)
        ids[split], num_objects[split] = [], 0
        for i in range(start, start + count):
            canvas, boxes, classes, item_map = make_canvas(rng, images, labels, canvas_size, max_items, scale_range)
            rgb = Image.fromarray(np.repeat(canvas[..., None], 3, axis=2))
            image_id = f"{i:06d}"
            rgb.save(voc / "JPEGImages" / f"{image_id}.jpg", quality=95)
            (voc / "Annotations" / f"{image_id}.xml").write_bytes(_voc_xml(image_id, canvas_size, boxes, classes))

            label_ids = np.zeros(item_map.shape, np.uint8)
            instance_ids = np.zeros(item_map.shape, np.uint16)
            for k, c in enumerate(classes):
                on = item_map == k
                label_ids[on] = c + 1
                instance_ids[on] = (c + 1) * 1000 + k
            stem = f"canvas_000000_{i:06d}"
            rgb.save(img_dir / f"{stem}_leftImg8bit.png")
            Image.fromarray(label_ids).save(gt_dir / f"{stem}_gtFine_labelIds.png")
            Image.fromarray(instance_ids).save(gt_dir / f"{stem}_gtFine_instanceIds.png")
            ids[split].append(image_id)
            num_objects[split] += len(boxes)
    main = voc / "ImageSets" / "Main"
    for split in ("train", "val"):
        (main / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids[split]))
    (main / "trainval.txt").write_text("".join(f"{i}\n" for i in ids["train"] + ids["val"]))

    table = [{"id": 0, "train_id": 0, "name": "background"}]
    table += [{"id": c + 1, "train_id": c + 1, "name": name} for c, name in enumerate(CANVAS_CLASSES)]
    (cs / "canvas_classes.json").write_text(json.dumps(table, indent=2))
    return num_objects
