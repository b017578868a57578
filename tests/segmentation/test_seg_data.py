"""Cityscapes loader: official labelId -> trainId table, custom tables, fixture round trip, transforms."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from lifevit.data.cityscapes import (
    IGNORE_INDEX,
    CityscapesSegmentation,
    cityscapes_label_table,
    load_label_table,
)
from lifevit.tasks.segmentation.transforms import SegmentationTransform

# (label id, train id) pairs of the official Cityscapes table
OFFICIAL = dict(zip([7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33], range(19)))


def test_official_label_mapping():
    table = cityscapes_label_table()
    assert table.num_classes == 19
    assert table.class_names[0] == "road" and table.class_names[13] == "car" and table.class_names[18] == "bicycle"
    lut = table.lut()
    for label_id in range(256):
        assert lut[label_id] == OFFICIAL.get(label_id, IGNORE_INDEX), label_id
    assert table.colors[0] == (128, 64, 128)  # road


def test_encode_maps_every_pixel_and_ignores_unknown_ids():
    table = cityscapes_label_table()
    ids = np.array([[0, 7, 26], [33, 34, 255]], np.uint8)
    assert table.encode(ids).tolist() == [[255, 0, 13], [18, 255, 255]]
    assert table.encode(ids).dtype == torch.int64
    wide = np.array([[7, 1000]], np.int32)  # a 32-bit image: ids >= 256 are ignored
    assert table.encode(wide).tolist() == [[0, 255]]


def test_custom_table(tmp_path):
    path = tmp_path / "t.json"
    path.write_text(
        json.dumps(
            [
                {"id": 0, "train_id": 255, "name": "void"},
                {"id": 5, "train_id": 1, "name": "b", "color": [1, 2, 3]},
                {"id": 9, "train_id": 0, "name": "a"},
                {"id": 10, "train_id": 0, "name": "a2"},
            ]
        )
    )
    table = load_label_table(path)
    assert table.num_classes == 2 and table.class_names == ("a", "b")
    assert table.colors[1] == (1, 2, 3)
    assert table.encode(np.array([[0, 5, 9, 10, 3]], np.uint8)).tolist() == [[255, 1, 0, 0, 255]]


@pytest.mark.parametrize(
    "entries, message",
    [
        ([{"id": 0, "name": "x"}], "lacks \\['train_id'\\]"),
        ([{"id": 0, "train_id": 1, "name": "x"}], "train ids must be 0..K-1"),
        ({"id": 0}, "expected a JSON list"),
    ],
)
def test_bad_custom_table(tmp_path, entries, message):
    path = tmp_path / "t.json"
    path.write_text(json.dumps(entries))
    with pytest.raises(ValueError, match=message):
        load_label_table(path)


def test_missing_table_and_root(tmp_path, cityscapes_root):
    with pytest.raises(FileNotFoundError, match="label table"):
        load_label_table(tmp_path / "nope.json")
    with pytest.raises(FileNotFoundError, match="leftImg8bit/test"):
        CityscapesSegmentation(cityscapes_root, "test")
    with pytest.raises(ValueError, match="split must be one of"):
        CityscapesSegmentation(cityscapes_root, "training")


def test_fixture_round_trip(cityscapes_root):
    """Files written in the real layout come back pixel for pixel, labels mapped to train ids, sorted by name."""
    ds = CityscapesSegmentation(cityscapes_root, "train")
    assert len(ds) == 3 and ds.num_classes == 19
    names = [p.split("/")[-1] for p in ds.images]
    assert names == sorted(names) and names[0].startswith("aachen_000000")
    lut = cityscapes_label_table().lut()
    for i in range(len(ds)):
        image, target = ds[i]
        stem = ds.images[i].replace("leftImg8bit/", "gtFine/", 1).replace("_leftImg8bit.png", "")
        raw_ids = np.array(Image.open(stem + "_gtFine_labelIds.png"))
        assert image.dtype == torch.uint8 and image.shape == (3, 32, 48)
        assert torch.equal(image, torch.from_numpy(np.array(Image.open(ds.images[i]))).permute(2, 0, 1))
        assert target.dtype == torch.int64 and target.shape == (32, 48)
        assert np.array_equal(target.numpy(), lut[raw_ids])
        assert (target == IGNORE_INDEX).any() and (target < 19).any()


def test_missing_label_file(cityscapes_root):
    victim = next((cityscapes_root / "gtFine" / "val").rglob("*_labelIds.png"))
    victim.unlink()
    with pytest.raises(FileNotFoundError, match="no gtFine_labelIds.png"):
        CityscapesSegmentation(cityscapes_root, "val")


def test_train_transform_crops_pads_with_ignore_and_keeps_pairs():
    torch.manual_seed(0)
    image = torch.arange(3 * 20 * 30, dtype=torch.int64).remainder(256).to(torch.uint8).view(3, 20, 30)
    target = torch.arange(20 * 30).remainder(19).view(20, 30)
    t = SegmentationTransform(
        True, base_size=(20, 30), scale_range=(1.0, 1.0), crop_size=(24, 24), hflip=0.0, mean=(0, 0, 0), std=(1, 1, 1)
    )
    img, tgt = t(image, target)
    assert img.shape == (3, 24, 24) and tgt.shape == (24, 24) and img.dtype == torch.float32
    assert tgt.dtype == torch.int64
    pad = tgt == IGNORE_INDEX  # 4 rows padded (20 -> 24): labels 255 there, image 0
    assert int(pad.sum()) == 4 * 24 and float(img[:, pad].abs().sum()) == 0.0
    # the crop is a window of the original: image and labels stay aligned
    ys, xs = torch.nonzero(~pad, as_tuple=True)
    y0 = int(ys.min())
    row = tgt[y0]
    x_start = int(torch.nonzero((target[0] == row[0]) & (target[0].roll(-1) == row[1]))[0])
    assert torch.equal(tgt[y0 : y0 + 20], target[:, x_start : x_start + 24])
    assert torch.allclose(img[:, y0 : y0 + 20], image[:, :, x_start : x_start + 24].float() / 255)


def test_eval_transform_only_normalises():
    image = torch.full((3, 8, 8), 255, dtype=torch.uint8)
    target = torch.zeros(8, 8, dtype=torch.int64)
    img, tgt = SegmentationTransform(False, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))(image, target)
    assert torch.allclose(img, torch.ones(3, 8, 8)) and torch.equal(tgt, target)


def _label_path(image_path):
    return str(image_path).replace("leftImg8bit/", "gtFine/", 1).replace("_leftImg8bit.png", "_gtFine_labelIds.png")


def test_bad_files_name_the_file(cityscapes_root):
    ds = CityscapesSegmentation(cityscapes_root, "train")
    small = _label_path(ds.images[0])
    Image.fromarray(np.zeros((16, 48), np.uint8)).save(small)
    with pytest.raises(ValueError) as err:
        ds[0]
    assert str(err.value) == f"label image {small} is 48x16 but its image {ds.images[0]} is 48x32"
    colour = _label_path(ds.images[1])
    Image.fromarray(np.zeros((32, 48, 3), np.uint8)).save(colour)
    with pytest.raises(ValueError, match=r"labelIds\.png has shape \(32, 48, 3\); expected a single-channel"):
        ds[1]
    cut = _label_path(ds.images[2])
    with open(cut, "r+b") as f:
        f.truncate(120)
    with pytest.raises(ValueError, match=r"image .*_gtFine_labelIds\.png is truncated or corrupt"):
        ds[2]
    val = CityscapesSegmentation(cityscapes_root, "val")
    with open(val.images[0], "wb"):
        pass  # an empty image file
    with pytest.raises(ValueError, match=r"image .*_leftImg8bit\.png is empty"):
        val[0]
    assert val[1][0].shape == (3, 32, 48)  # the other files still load


def test_16_bit_label_ids_are_not_rescaled(cityscapes_root):
    ds = CityscapesSegmentation(cityscapes_root, "val")
    path = _label_path(ds.images[0])
    ids = np.array(Image.open(path)).astype(np.uint16)
    Image.fromarray(ids).save(path)  # the same ids stored as a 16-bit PNG
    assert Image.open(path).mode.startswith("I")
    _, target = ds[0]
    assert np.array_equal(target.numpy(), cityscapes_label_table().lut()[ids])
