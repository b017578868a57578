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
    """The image files of ``inputs`` and a distinct output name for each: the file stem, or where stems collide
    (``a/img.png``, ``b/img.png``), the path from the colliding files' common folder with ``/`` written ``__``
    (``a__img``, ``b__img``), plus the suffix when only that differs (``img_png``, ``img_jpg``).

    Raises:
        ValueError: The same file is given twice.
    """
    files = list_images(inputs)
    resolved = [f.resolve() for f in files]
    names = [p.stem for p in resolved]
    for stem in {n for n in names if names.count(n) > 1}:
        idx = [i for i, n in enumerate(names) if n == stem]
        common = Path(os.path.commonpath([str(resolved[i].parent) for i in idx]))
        for i in idx:
            names[i] = "__".join(resolved[i].relative_to(common).with_suffix("").parts)
    for name in {n for n in names if names.count(n) > 1}:  # the same path but for the suffix
        for i in [i for i, n in enumerate(names) if n == name]:
            names[i] = f"{name}_{resolved[i].suffix.lstrip('.').lower()}"
    if len(set(names)) != len(names):
        raise ValueError(f"the inputs name the same file more than once: {[str(f) for f in files]}")
    return files, names
