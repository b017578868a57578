"""COCO-format detection (a JSON annotation file and an image folder), read with torchvision / pycocotools.

Category ids are mapped to contiguous labels in increasing id order (``dataset.classes`` gives the names).
Boxes (COCO ``[x, y, w, h]`` in pixels) become xyxy, clipped to the image; boxes with no area are dropped.
``iscrowd`` regions are kept and flagged so the evaluation ignores them.

Bad input raises one error naming the file: a malformed JSON file, a category without ``id`` / ``name``, an
image entry without ``file_name``, a ``bbox`` that is not four finite numbers, an ``iscrowd`` other than 0 / 1,
an unknown ``category_id``, or an image whose real size disagrees with its ``width`` / ``height`` entry raise
``ValueError``; a listed image that is missing raises ``FileNotFoundError``. Images are read with
:func:`lifevit.data.images.read_image`.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
from pathlib import Path
from typing import Callable, Dict, List, Optional

import torch
from torch.utils.data import Dataset
from torchvision.datasets import CocoDetection

from .images import read_image

__all__ = ["CocoDetectionDataset"]

logger = logging.getLogger(__name__)


class CocoDetectionDataset(Dataset):
    """COCO-format detection: ``(image, target)`` pairs with the same target keys as the VOC dataset.

    Args:
        images: Image folder (``file_name`` entries are relative to it).
        ann_file: COCO annotation JSON.
        transforms: ``transforms(image, target) -> (image, target)``.
    """

    def __init__(self, images: os.PathLike, ann_file: os.PathLike, transforms: Optional[Callable] = None) -> None:
        ann_file, images = Path(ann_file), Path(images)
        if not ann_file.is_file():
            raise FileNotFoundError(f"COCO annotation file {ann_file} does not exist")
        if not images.is_dir():
            raise FileNotFoundError(f"COCO image folder {images} does not exist")
        try:
            data = json.loads(ann_file.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"malformed annotation file {ann_file}: {err}") from err
        if not isinstance(data, dict):
            raise ValueError(
                f"malformed annotation file {ann_file}: expected a JSON object with 'images', 'annotations' and "
                f"'categories', got a {type(data).__name__}"
            )
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
                self.coco_ds = CocoDetection(str(images), str(ann_file))
        except (KeyError, TypeError) as err:
            raise ValueError(f"malformed annotation file {ann_file}: missing COCO field {err}") from err
        self.ann_file, self.images = ann_file, images
        cats = self.coco_ds.coco.loadCats(self.coco_ds.coco.getCatIds())
        for c in cats:
            if not isinstance(c, dict) or not isinstance(c.get("id"), int) or "name" not in c:
                raise ValueError(
                    f"malformed annotation file {ann_file}: category {c} needs an integer 'id' and a 'name'"
                )
        cats = sorted(cats, key=lambda c: c["id"])
        self.cat_ids: List[int] = [c["id"] for c in cats]
        self.classes = tuple(c["name"] for c in cats)
        self.cat_to_label: Dict[int, int] = {cid: i for i, cid in enumerate(self.cat_ids)}
        self.transforms = transforms

    def __len__(self) -> int:
        return len(self.coco_ds)

    def _load(self, index: int):
        """The RGB image and the annotations of item ``index``, the image's size checked against its entry."""
        coco, image_id = self.coco_ds.coco, self.coco_ds.ids[index]
        info = coco.loadImgs(image_id)[0]
        if not isinstance(info.get("file_name"), str):
            raise ValueError(f"malformed annotation file {self.ann_file}: image {image_id} has no 'file_name'")
        path = self.images / info["file_name"]
        if not path.is_file():
            raise FileNotFoundError(f"image {path} listed in {self.ann_file} (image id {image_id}) does not exist")
        image = read_image(path, "RGB")
        W, H = image.size
        w, h = info.get("width"), info.get("height")
        if w is not None and h is not None and (w, h) != (W, H):
            raise ValueError(f"{self.ann_file}: image {image_id} is listed as {w}x{h} but {path} is {W}x{H}")
        return image, coco.loadAnns(coco.getAnnIds(image_id))

    def _box(self, a: dict):
        bbox = a.get("bbox")
        ok = isinstance(bbox, (list, tuple)) and len(bbox) == 4
        ok = ok and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in bbox)
        if not ok:
            raise ValueError(
                f"malformed annotation file {self.ann_file}: annotation {a.get('id')} has bbox {bbox}; "
                "expected [x, y, width, height], four finite numbers"
            )
        if a.get("iscrowd", 0) not in (0, 1):
            raise ValueError(
                f"malformed annotation file {self.ann_file}: annotation {a.get('id')} has iscrowd "
                f"{a.get('iscrowd')!r}; expected 0 or 1"
            )
        return [float(v) for v in bbox]

    def __getitem__(self, index: int):
        image, anns = self._load(index)
        W, H = image.size
        boxes, labels, crowd = [], [], []
        for a in anns:
            x, y, w, h = self._box(a)
            if a.get("category_id") not in self.cat_to_label:
                raise ValueError(
                    f"annotation file {self.ann_file}: annotation {a.get('id')} has unknown category_id "
                    f"{a.get('category_id')}; expected one of {self.cat_ids}"
                )
            x0, y0 = min(max(x, 0.0), W), min(max(y, 0.0), H)
            x1, y1 = min(max(x + w, 0.0), W), min(max(y + h, 0.0), H)
            if x1 <= x0 or y1 <= y0:
                logger.warning("%s: dropped annotation %s with no area in the image", self.ann_file, a.get("id"))
                continue
            boxes.append([x0, y0, x1, y1])
            labels.append(self.cat_to_label[a["category_id"]])
            crowd.append(int(a.get("iscrowd", 0)))
        target = {
            "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor(labels, dtype=torch.int64),
            "iscrowd": torch.tensor(crowd, dtype=torch.int64),
            "image_id": torch.tensor(self.coco_ds.ids[index]),
            "orig_size": torch.tensor([H, W]),
        }
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target
