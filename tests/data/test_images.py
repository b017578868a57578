"""The shared image reader: bad files get one error naming them; 16-bit scaling; transparency compositing."""

import numpy as np
import pytest
from PIL import Image

from lifevit.data.images import read_image


def _png_bytes(tmp_path, size=(32, 24)):
    path = tmp_path / "full.png"
    pixels = np.random.default_rng(0).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path.read_bytes()


def test_bad_files_name_the_file(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "notes.jpg").write_text("these are not pixels")
    (tmp_path / "half.png").write_bytes(_png_bytes(tmp_path)[:300])
    jpeg = tmp_path / "full.jpg"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(jpeg)
    (tmp_path / "half.jpg").write_bytes(jpeg.read_bytes()[: jpeg.stat().st_size // 2])
    cases = {
        "empty.png": "is empty",
        "notes.jpg": "is not an image file",
        "half.png": "truncated or corrupt",
        "half.jpg": "truncated or corrupt",
    }
    for name, what in cases.items():
        with pytest.raises(ValueError) as err:
            read_image(tmp_path / name)
        assert str(tmp_path / name) in str(err.value) and what in str(err.value), str(err.value)
        assert "\n" not in str(err.value)
    with pytest.raises(FileNotFoundError, match=r"image .*missing\.png does not exist"):
        read_image(tmp_path / "missing.png")
    with pytest.raises(FileNotFoundError, match="is a folder"):
        read_image(tmp_path)
    with pytest.raises(ValueError, match="image mode must be one of"):
        read_image(jpeg, "RGBA")


def test_good_image_round_trip(tmp_path):
    pixels = np.random.default_rng(2).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    im = read_image(tmp_path / "a.png")
    assert im.mode == "RGB" and np.array_equal(np.asarray(im), pixels)
    assert read_image(tmp_path / "a.png", "L").mode == "L"


def test_16_bit_png_is_scaled_not_saturated(tmp_path):
    ramp = np.linspace(0, 65535, 64 * 64).round().astype(np.uint16).reshape(64, 64)
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")  # stored as 16 bit
    grey = np.asarray(read_image(tmp_path / "deep.png", "L"))
    assert grey.dtype == np.uint8
    assert np.abs(grey.astype(int) - ramp / 257.0).max() <= 0.5  # round(v / 257)
    assert grey.min() == 0 and grey.max() == 255 and (grey == 255).mean() < 0.01  # PIL's convert: 99 % at 255
    rgb = np.asarray(read_image(tmp_path / "deep.png"))
    assert rgb.shape == (64, 64, 3) and np.array_equal(rgb[..., 0], grey) and np.array_equal(rgb[..., 2], grey)
    # mode "I" (32-bit, how older Pillow opens 16-bit PNGs) is read as 16-bit data too
    Image.fromarray(ramp.astype(np.int32)).save(tmp_path / "deep.tif")
    assert Image.open(tmp_path / "deep.tif").mode == "I"
    assert np.array_equal(np.asarray(read_image(tmp_path / "deep.tif", "L")), grey)


def test_transparency_is_composited_on_black_by_default(tmp_path):
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[..., :3] = (200, 100, 50)
    rgba[0, 0, 3], rgba[0, 1, 3], rgba[1, :, 3] = 0, 128, 255  # transparent, half, opaque
    Image.fromarray(rgba, "RGBA").save(tmp_path / "cut.png")
    out = np.asarray(read_image(tmp_path / "cut.png")).astype(int)
    assert out[0, 0].tolist() == [0, 0, 0]  # the hidden colour is not shown
    assert np.abs(out[0, 1] - np.array([200, 100, 50]) * 128 / 255).max() <= 1
    assert out[1, 0].tolist() == [200, 100, 50]
    white = np.asarray(read_image(tmp_path / "cut.png", background=(255, 255, 255))).astype(int)
    assert white[0, 0].tolist() == [255, 255, 255] and white[1, 0].tolist() == [200, 100, 50]
    # grey + alpha, and a palette image with a transparent index
    Image.fromarray(np.dstack([np.full((2, 2), 180, np.uint8), np.array([[0, 255], [255, 0]], np.uint8)]), "LA").save(
        tmp_path / "la.png"
    )
    assert np.asarray(read_image(tmp_path / "la.png", "L")).tolist() == [[0, 180], [180, 0]]
    pal = Image.fromarray(np.array([[0, 1]], np.uint8), "P")
    pal.putpalette([250, 250, 250, 10, 200, 10])
    pal.save(tmp_path / "p.png", transparency=0)
    assert np.asarray(read_image(tmp_path / "p.png")).tolist() == [[[0, 0, 0], [10, 200, 10]]]


def test_mode_none_keeps_stored_values(tmp_path):
    labels = np.array([[0, 7, 33], [255, 1, 2]], np.uint8)
    Image.fromarray(labels).save(tmp_path / "ids.png")
    assert np.array_equal(np.asarray(read_image(tmp_path / "ids.png", None)), labels)
    pal = Image.fromarray(labels, "P")
    pal.putpalette([0, 0, 0] * 256)
    pal.save(tmp_path / "pal.png")
    assert np.array_equal(np.asarray(read_image(tmp_path / "pal.png", None)), labels)  # indices, not colours
    wide = np.array([[0, 1000, 65535]], np.uint16)
    Image.fromarray(wide).save(tmp_path / "wide.png")
    assert np.array_equal(np.asarray(read_image(tmp_path / "wide.png", None)), wide)
