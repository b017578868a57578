"""Image files given to ``predict`` (and ``explain``): files and folders expanded, and an output name for each that
no other input shares."""

from __future__ import annotations

import os
from pathlib import Path
from typing import List, Sequence, Tuple, Union

__all__ = ["IMAGE_SUFFIXES", "list_images", "output_names"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def list_images(inputs: Sequence[Union[str, os.PathLike]]) -> List[Path]:
    """Image files given directly, or found (recursively, sorted) in given folders.

    Raises:
        FileNotFoundError: An input is neither a file nor a folder, or no image was found.
    """
    files: List[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            files += sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file())
        elif p.is_file():
            files.append(p)
        else:
            raise FileNotFoundError(f"input {p} is neither an image file nor a folder")
    if not files:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found in {[str(i) for i in inputs]}")
    return files


def output_names(inputs: Sequence[Union[str, os.PathLike]]) -> Tuple[List[Path], List[str]]:
    """The image files of ``inputs`` and a distinct output stem for each.

    A file's stem is its name without suffix; where two inputs share it (``a/img.png`` and ``b/img.png``), each
    gets the parts of its path that tell them apart (``a_img``, ``b_img``).
    """
    files = list_images(inputs)
    stems = [f.stem for f in files]
    for stem in {s for s in stems if stems.count(s) > 1}:
        clash = [i for i, s in enumerate(stems) if s == stem]
        parts = [files[i].resolve().with_suffix("").parts for i in clash]
        depth = 1
        while depth < max(len(p) for p in parts) and len({"_".join(p[-depth:]) for p in parts}) < len(parts):
            depth += 1
        for i, p in zip(clash, parts):
            stems[i] = "_".join(p[-depth:]).lstrip("/_") or stem
        if len({stems[i] for i in clash}) < len(clash):  # the same file given twice
            for n, i in enumerate(clash):
                stems[i] = f"{stems[i]}_{n}"
    return files, stems
