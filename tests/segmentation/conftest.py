"""Fixtures: tiny data sets written in the exact Cityscapes on-disk layout."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest
from PIL import Image


def write_cityscapes(
    root: Path, layout: Dict[str, Dict[str, int]], size=(32, 48), seed: int = 0, num_ids: int = 34
) -> Dict[str, List[Path]]:
    """Write ``leftImg8bit/<split>/<city>/*_leftImg8bit.png`` and ``gtFine/<split>/<city>/*_gtFine_labelIds.png``
    (+ ``_instanceIds.png`` and ``_color.png``, as in the real release) for ``layout = {split: {city: n}}``.

    Label ids are random in ``0 .. num_ids - 1`` in blocks of 8 x 8 pixels. Returns the written image paths.
    """
    rng = np.random.default_rng(seed)
    H, W = size
    written: Dict[str, List[Path]] = {}
    for split, cities in layout.items():
        written[split] = []
        for city, n in cities.items():
            img_dir = root / "leftImg8bit" / split / city
            gt_dir = root / "gtFine" / split / city
            img_dir.mkdir(parents=True, exist_ok=True)
            gt_dir.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                stem = f"{city}_{i:06d}_{19 + i:06d}"
                image = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
                blocks = rng.integers(0, num_ids, (H // 8 + 1, W // 8 + 1)).astype(np.uint8)
                label_ids = np.kron(blocks, np.ones((8, 8), np.uint8))[:H, :W]
                Image.fromarray(image).save(img_dir / f"{stem}_leftImg8bit.png")
                Image.fromarray(label_ids).save(gt_dir / f"{stem}_gtFine_labelIds.png")
                Image.fromarray(label_ids.astype(np.uint16) * 1000).save(gt_dir / f"{stem}_gtFine_instanceIds.png")
                Image.fromarray(np.repeat(label_ids[..., None], 3, 2)).save(gt_dir / f"{stem}_gtFine_color.png")
                written[split].append(img_dir / f"{stem}_leftImg8bit.png")
    return written


@pytest.fixture
def cityscapes_root(tmp_path: Path) -> Path:
    """Official-label Cityscapes fixture: train (2 cities, 3 images), val (1 city, 2 images), 32 x 48 pixels."""
    root = tmp_path / "cityscapes"
    write_cityscapes(root, {"train": {"aachen": 2, "bochum": 1}, "val": {"frankfurt": 2}})
    return root


@pytest.fixture
def canvas_like_root(tmp_path: Path) -> Path:
    """A 3-class custom-table data set (the canvas convention: 0 = background, ids = train ids) with an easy
    colour-coded task: class k pixels are bright in channel k - 1, background is black."""
    root = tmp_path / "toy"
    rng = np.random.default_rng(1)
    for split, n in (("train", 8), ("val", 4)):
        img_dir = root / "leftImg8bit" / split / "toy"
        gt_dir = root / "gtFine" / split / "toy"
        img_dir.mkdir(parents=True)
        gt_dir.mkdir(parents=True)
        for i in range(n):
            labels = np.zeros((32, 32), np.uint8)
            for c in (1, 2):
                y, x = rng.integers(0, 20, 2)
                labels[y : y + 12, x : x + 12] = c
            image = np.zeros((32, 32, 3), np.uint8)
            image[labels == 1, 0] = 255
            image[labels == 2, 1] = 255
            stem = f"toy_000000_{i:06d}"
            Image.fromarray(image).save(img_dir / f"{stem}_leftImg8bit.png")
            Image.fromarray(labels).save(gt_dir / f"{stem}_gtFine_labelIds.png")
    table = [
        {"id": 0, "train_id": 0, "name": "background"},
        {"id": 1, "train_id": 1, "name": "red"},
        {"id": 2, "train_id": 2, "name": "green"},
    ]
    (root / "classes.json").write_text(json.dumps(table))
    return root
