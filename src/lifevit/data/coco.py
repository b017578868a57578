"""COCO-format detection (a JSON annotation file and an image folder), read with torchvision / pycocotools.

Category ids are mapped to contiguous labels in increasing id order (``dataset.classes`` gives the names).
Boxes (COCO ``[x, y, w, h]`` in pixels) become xyxy, clipped to the image; boxes with no area are dropped.
``iscrowd`` regions are kept and flagged so the evaluation ignores them. A malformed JSON file raises
``ValueError`` naming it.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
from pathlib import Path
from typing import Callable, Dict, List, Optional

import torch
from torch.utils.data import Dataset
from torchvision.datasets import CocoDetection

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
            json.loads(ann_file.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"malformed annotation file {ann_file}: {err}") from err
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
                self.coco_ds = CocoDetection(str(images), str(ann_file))
        except (KeyError, TypeError) as err:
            raise ValueError(f"malformed annotation file {ann_file}: missing COCO field {err}") from err
        self.ann_file = ann_file
        cats = sorted(self.coco_ds.coco.loadCats(self.coco_ds.coco.getCatIds()), key=lambda c: c["id"])
        self.cat_ids: List[int] = [c["id"] for c in cats]
        self.classes = tuple(c["name"] for c in cats)
        self.cat_to_label: Dict[int, int] = {cid: i for i, cid in enumerate(self.cat_ids)}
        self.transforms = transforms

    def __len__(self) -> int:
        return len(self.coco_ds)

    def __getitem__(self, index: int):
        image, anns = self.coco_ds[index]
        image = image.convert("RGB")
        W, H = image.size
        boxes, labels, crowd = [], [], []
        for a in anns:
            bbox = a.get("bbox")
            if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
                raise ValueError(f"malformed annotation file {self.ann_file}: annotation {a.get('id')} has bbox {bbox}")
            if a.get("category_id") not in self.cat_to_label:
                raise ValueError(
                    f"annotation file {self.ann_file}: annotation {a.get('id')} has unknown category_id "
                    f"{a.get('category_id')}; expected one of {self.cat_ids}"
                )
            x, y, w, h = (float(v) for v in bbox)
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
