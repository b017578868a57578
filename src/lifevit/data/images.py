"""The one reader of user image files: every data set and every predict / explain input opens images here.

:func:`read_image` returns a fully decoded PIL image (the file is closed) in a known mode, or raises one clear
error that names the file:

* a missing path or a folder: ``FileNotFoundError``;
* an empty file, a file that is not an image, a truncated or corrupt image: ``ValueError``.

Conversions to 8-bit ``RGB`` / ``L`` (``mode=None`` keeps the stored pixels, for label maps):

* 16-bit images (PIL modes ``I;16``, ``I;16B``, ``I;16L``, and ``I``, which holds 16-bit PNGs in older Pillow)
  are scaled to 8 bit by ``round(v / 257)`` (65535 -> 255), not clipped: clipping saturates nearly every pixel.
  ``I`` values outside 0..65535 are clipped to that range first.
* Float images (mode ``F``) are taken as [0, 1] when their maximum is <= 1, else as [0, 255]; then clipped.
* Transparency (``RGBA``, ``LA``, ``PA``, and ``P`` / ``L`` / ``RGB`` images with a ``transparency`` entry) is
  composited over a solid background, by default **black** (:data:`DEFAULT_BACKGROUND`): the background of
  Fashion-MNIST and of the canvas sets, so a cut-out item looks like the training data. Pass ``background``
  for another colour (e.g. ``(255, 255, 255)`` for white).

Decoding refuses truncated files instead of padding them with grey (PIL's ``LOAD_TRUNCATED_IMAGES`` is left off).
"""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Optional, Tuple, Union

import numpy as np
from PIL import Image

__all__ = ["DEFAULT_BACKGROUND", "IMAGE_MODES", "read_image"]

DEFAULT_BACKGROUND: Tuple[int, int, int] = (0, 0, 0)  # black, see the module docs
IMAGE_MODES = ("RGB", "L", None)
_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N", "I")
_ALPHA = ("RGBA", "LA", "PA", "RGBa", "La")
# what PIL raises on bad data: UnidentifiedImageError and "image file is truncated" are OSErrors; broken PNG chunks
# raise SyntaxError; short headers struct.error / EOFError; some plug-ins ValueError or IndexError
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error)


def _to_8bit(im: Image.Image) -> Image.Image:
    """A 16-bit or float single-channel image as 8-bit ``L`` (scaled, see the module docs)."""
    arr = np.asarray(im)
    if im.mode == "F":
        arr = arr.astype(np.float64)
        arr = np.nan_to_num(arr, nan=0.0, posinf=255.0, neginf=0.0)
        scale = 255.0 if arr.size and arr.max() <= 1.0 else 1.0
        return Image.fromarray(np.clip(np.round(arr * scale), 0, 255).astype(np.uint8))
    arr = np.clip(arr.astype(np.int64), 0, 65535)
    return Image.fromarray(((arr * 2 + 257) // 514).astype(np.uint8))  # round(v / 257): 65535 -> 255


def _composite(im: Image.Image, background: Tuple[int, int, int]) -> Image.Image:
    """``im`` with its transparency composited over ``background``, as ``RGB``."""
    rgba = im.convert("RGBA")
    base = Image.new("RGBA", rgba.size, tuple(background) + (255,))
    return Image.alpha_composite(base, rgba).convert("RGB")


def read_image(
    path: Union[str, os.PathLike],
    mode: Optional[str] = "RGB",
    background: Tuple[int, int, int] = DEFAULT_BACKGROUND,
) -> Image.Image:
    """Decode the image file ``path`` completely and return it in ``mode``.

    Args:
        path: Image file (any format PIL reads: PNG, JPEG, BMP, TIFF, WebP, ...).
        mode: ``"RGB"`` (8-bit colour), ``"L"`` (8-bit grey), or ``None``: the pixels as stored (label maps:
            no scaling, no compositing, palette indices kept).
        background: RGB colour that transparent pixels are composited over (``"RGB"`` / ``"L"`` only).

    Returns:
        A loaded PIL image whose file is closed.

    Raises:
        FileNotFoundError: ``path`` does not exist or is not a file.
        ValueError: ``mode`` is not one of :data:`IMAGE_MODES`; the file is empty, not an image, truncated or
            corrupt. The message names the file.
    """
    if mode not in IMAGE_MODES:
        raise ValueError(f"image mode must be one of {IMAGE_MODES}, got {mode!r}")
    path = Path(path)
    if not path.is_file():
        what = "is a folder, not a file" if path.is_dir() else "does not exist"
        raise FileNotFoundError(f"image {path} {what}")
    if path.stat().st_size == 0:
        raise ValueError(f"image {path} is empty (0 bytes); expected an image file (PNG, JPEG, ...)")
    try:
        with Image.open(path) as im:
            im.load()
            if mode is None:
                return im.copy()
            if im.mode in _SIXTEEN_BIT or im.mode == "F":
                im = _to_8bit(im)
            elif im.mode in _ALPHA or "transparency" in im.info:
                im = _composite(im, background)
            return im.convert(mode) if im.mode != mode else im.copy()
    except Image.DecompressionBombError as err:
        raise ValueError(f"image {path} is too large to decode safely ({err})") from err
    except PermissionError as err:
        raise ValueError(f"image {path} cannot be opened: permission denied") from err
    except Image.UnidentifiedImageError as err:
        raise ValueError(f"{path} is not an image file PIL can read (PNG, JPEG, BMP, TIFF, WebP, ...)") from err
    except _DECODE_ERRORS as err:
        raise ValueError(f"image {path} is truncated or corrupt and cannot be decoded ({err})") from err


def normalize(image, mean, std):
    """uint8 pixels (..., C, H, W) tensor -> float32 ``(x / 255 - mean) / std``: the one normalisation of
    lifevit's own image pipelines (classification files, segmentation)."""
    import torch

    m = torch.as_tensor(mean, dtype=torch.float32).view(-1, 1, 1)
    s = torch.as_tensor(std, dtype=torch.float32).view(-1, 1, 1)
    return (image.float() / 255.0 - m) / s
