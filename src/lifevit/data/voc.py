"""Pascal VOC detection in its real on-disk layout, read with torchvision's ``VOCDetection``.

Layout: ``<root>/VOCdevkit/VOC<year>/{Annotations/<id>.xml, JPEGImages/<id>.jpg, ImageSets/Main/<split>.txt}``.
torchvision lists the images of a split and parses the XML; this module turns the parsed annotation into
tensors and checks it:

* Boxes: VOC pixel boxes are 1-based and inclusive; they become 0-based continuous ``(x0, y0, x1, y1)`` with
  ``x0 = xmin - 1, x1 = xmax`` (a one-pixel box is 1 wide). Boxes are clipped to the image (its real size, not
  the XML's); boxes left with no area are dropped with a warning naming the file.
* ``difficult`` objects are kept and flagged in ``target["iscrowd"]`` so the evaluation ignores them, like VOC.
* An image with no objects gives empty ``boxes`` (0, 4) and ``labels`` (0,).
* A malformed XML file, a missing ``bndbox``, a coordinate that is missing or not a finite number (``nan``,
  ``inf``), a ``<difficult>`` other than 0 or 1, an unknown class name, or a ``<size>`` that disagrees with the
  image file raises ``ValueError`` naming the annotation file; a listed image or annotation that is missing
  raises ``FileNotFoundError``. Images are read with :func:`lifevit.data.images.read_image` (an empty, truncated
  or non-image file raises ``ValueError`` naming it).
"""

from __future__ import annotations

import logging
import math
import os
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch.utils.data import Dataset
from torchvision.datasets import VOCDetection

from .images import read_image

__all__ = ["VOC_CLASSES", "VOCDetectionDataset", "find_voc_root", "parse_voc_objects"]

logger = logging.getLogger(__name__)

VOC_CLASSES: Tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip


def find_voc_root(root: os.PathLike, year: str) -> Path:
    """The folder holding ``VOCdevkit`` (torchvision's ``root``), given it, ``VOCdevkit`` or ``VOC<year>``."""
    root = Path(root)
    for cand in (root, root.parent, root.parent.parent):
        if (cand / "VOCdevkit" / f"VOC{year}").is_dir():
            return cand
    raise FileNotFoundError(
        f"no Pascal VOC {year} at {root}: expected {root}/VOCdevkit/VOC{year}/ with Annotations/, JPEGImages/ and "
        "ImageSets/Main/ (make a small one with `lifevit data canvas --output DIR`)"
    )


def _num(obj: Dict[str, Any], key: str, path: str) -> float:
    if key not in obj:
        raise ValueError(f"malformed annotation {path}: <bndbox> has no <{key}>; expected a pixel coordinate")
    try:
        value = float(obj[key])
    except (TypeError, ValueError):
        value = math.nan
    if not math.isfinite(value):
        raise ValueError(f"malformed annotation {path}: <{key}> is {obj[key]!r}; expected a finite pixel coordinate")
    return value


def _difficult(obj: Dict[str, Any], path: str) -> int:
    raw = obj.get("difficult", "0")
    text = str(raw).strip() if isinstance(raw, (str, int)) else None
    if text not in ("", "0", "1"):
        raise ValueError(f"malformed annotation {path}: <difficult> is {raw!r}; expected 0 or 1")
    return int(text or 0)


def _check_size(ann: Dict[str, Any], image_size: Tuple[int, int], path: str) -> None:
    """Refuse an XML ``<size>`` that disagrees with the image (the boxes would be in another frame)."""
    size = ann.get("size")
    if not isinstance(size, dict):
        return
    try:
        w, h = int(float(size.get("width", 0))), int(float(size.get("height", 0)))
    except (TypeError, ValueError) as err:
        raise ValueError(f"malformed annotation {path}: <size> is {size}; expected integer width and height") from err
    H, W = image_size
    if w > 0 and h > 0 and (w, h) != (W, H):  # 0 or missing: some annotation tools leave it out
        raise ValueError(f"annotation {path}: <size> says {w}x{h} (width x height) but the image is {W}x{H}")


def parse_voc_objects(
    ann: Dict[str, Any], class_to_idx: Dict[str, int], image_size: Tuple[int, int], path: str
) -> Dict[str, torch.Tensor]:
    """Tensors from a torchvision-parsed VOC annotation.

    Args:
        ann: ``VOCDetection.parse_voc_xml`` output (``{"annotation": {...}}``).
        class_to_idx: Class name -> label index.
        image_size: Real image (height, width) used for clipping.
        path: Annotation file, for error messages.

    Returns:
        ``boxes`` float (N, 4) xyxy in pixels, ``labels`` int64 (N,), ``iscrowd`` int64 (N,) (VOC difficult).
    """
    if "annotation" not in ann or not isinstance(ann["annotation"], dict):
        raise ValueError(f"malformed annotation {path}: expected an <annotation> root element")
    _check_size(ann["annotation"], image_size, path)
    objects = ann["annotation"].get("object", [])
    if isinstance(objects, dict):
        objects = [objects]
    H, W = image_size
    boxes: List[List[float]] = []
    labels: List[int] = []
    difficult: List[int] = []
    dropped = 0
    for obj in objects:
        if not isinstance(obj, dict) or "name" not in obj or not isinstance(obj.get("bndbox"), dict):
            raise ValueError(f"malformed annotation {path}: an <object> lacks <name> or <bndbox>")
        name = str(obj["name"]).strip()
        if name not in class_to_idx:
            raise ValueError(f"annotation {path}: unknown class {name!r}; expected one of {sorted(class_to_idx)}")
        bb = obj["bndbox"]
        x0, y0 = _num(bb, "xmin", path) - 1, _num(bb, "ymin", path) - 1
        x1, y1 = _num(bb, "xmax", path), _num(bb, "ymax", path)
        is_difficult = _difficult(obj, path)
        x0, x1 = min(max(x0, 0.0), W), min(max(x1, 0.0), W)
        y0, y1 = min(max(y0, 0.0), H), min(max(y1, 0.0), H)
        if x1 <= x0 or y1 <= y0:
            dropped += 1
            continue
        boxes.append([x0, y0, x1, y1])
        labels.append(class_to_idx[name])
        difficult.append(is_difficult)
    if dropped:
        logger.warning("%s: dropped %d box(es) with no area inside the %dx%d image", path, dropped, W, H)
    return {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "labels": torch.tensor(labels, dtype=torch.int64),
        "iscrowd": torch.tensor(difficult, dtype=torch.int64),
    }


class VOCDetectionDataset(Dataset):
    """Pascal VOC (2007, 2012 or both) for detection: ``(image, target)`` pairs.

    Args:
        root: Folder holding ``VOCdevkit`` (or ``VOCdevkit`` / ``VOC<year>`` itself).
        year: ``2007``, ``2012`` or several joined by ``+`` (``2007+2012``).
        image_set: ``train``, ``val``, ``trainval`` (or ``test`` for 2007).
        classes: Class names in label order (default the 20 VOC classes).
        transforms: ``transforms(image, target) -> (image, target)`` (see ``lifevit.tasks.detection.transforms``).

    The target holds ``boxes`` (N, 4) xyxy pixels, ``labels`` (N,), ``iscrowd`` (N,), ``image_id`` and
    ``orig_size`` (H, W) of the file.
    """

    def __init__(
        self,
        root: os.PathLike,
        year: str = "2007",
        image_set: str = "train",
        classes: Sequence[str] = VOC_CLASSES,
        transforms: Optional[Callable] = None,
    ) -> None:
        self.classes = tuple(classes)
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        self.transforms = transforms
        self.items: List[Tuple[str, str]] = []  # (image path, annotation path)
        for y in str(year).split("+"):
            tv_root = find_voc_root(root, y)
            split_file = tv_root / "VOCdevkit" / f"VOC{y}" / "ImageSets" / "Main" / f"{image_set}.txt"
            if not split_file.is_file():
                raise FileNotFoundError(f"VOC{y} has no image set {image_set!r}: {split_file} does not exist")
            voc = VOCDetection(str(tv_root), year=y, image_set=image_set)
            self.items += list(zip(voc.images, voc.annotations))

    def __len__(self) -> int:
        return len(self.items)

    def load_target(self, index: int, image_size: Tuple[int, int]) -> Dict[str, torch.Tensor]:
        """Parse the annotation of item ``index`` (with torchvision) for an image of size (H, W)."""
        path = self.items[index][1]
        if not os.path.isfile(path):
            raise FileNotFoundError(f"annotation file {path} listed in the image set does not exist")
        try:
            ann = VOCDetection.parse_voc_xml(ET.parse(path).getroot())
        except ET.ParseError as err:
            raise ValueError(f"malformed annotation {path}: {err}") from err
        return parse_voc_objects(ann, self.class_to_idx, image_size, path)

    def __getitem__(self, index: int):
        img_path = self.items[index][0]
        if not os.path.isfile(img_path):
            raise FileNotFoundError(f"image {img_path} listed in the image set does not exist")
        image = read_image(img_path, "RGB")
        W, H = image.size
        target = self.load_target(index, (H, W))
        target["image_id"] = torch.tensor(index)
        target["orig_size"] = torch.tensor([H, W])
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target
