"""The canvas data set: layouts on disk, boxes vs per-pixel labels, determinism, the CLI, bad arguments."""

import importlib.util
import json
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lifevit.data.canvas import CANVAS_CLASSES, make_canvas, make_canvas_dataset, slugify

_spec = importlib.util.spec_from_file_location("det_conftest", Path(__file__).parents[1] / "detection" / "conftest.py")
_det = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_det)


@pytest.fixture(scope="module")
def fmnist(tmp_path_factory):
    return _det.write_fake_fashion_mnist(tmp_path_factory.mktemp("fm"))


@pytest.fixture(scope="module")
def canvas(tmp_path_factory, fmnist):
    out = tmp_path_factory.mktemp("canvas")
    summary = make_canvas_dataset(
        out, num_train=6, num_val=3, canvas_size=64, max_items=4, seed=3, fashion_mnist_root=fmnist
    )
    return out, summary


def test_slug_names():
    assert slugify("T-shirt/top") == "t-shirt_top"
    assert slugify("Ankle boot") == "ankle_boot"
    assert len(CANVAS_CLASSES) == 10 and CANVAS_CLASSES[0] == "t-shirt_top" and CANVAS_CLASSES[9] == "ankle_boot"


def test_voc_layout(canvas):
    out, summary = canvas
    voc = out / "VOCdevkit" / "VOC2007"
    train = (voc / "ImageSets" / "Main" / "train.txt").read_text().split()
    val = (voc / "ImageSets" / "Main" / "val.txt").read_text().split()
    assert train == [f"{i:06d}" for i in range(6)] and val == [f"{i:06d}" for i in range(6, 9)]
    assert (voc / "ImageSets" / "Main" / "trainval.txt").read_text().split() == train + val
    for i in train + val:
        img = Image.open(voc / "JPEGImages" / f"{i}.jpg")
        assert img.format == "JPEG" and img.size == (64, 64) and img.mode == "RGB"
        root = ET.parse(voc / "Annotations" / f"{i}.xml").getroot()
        assert root.find("size/width").text == "64"
        objs = root.findall("object")
        assert 1 <= len(objs) <= 4
        for o in objs:
            assert o.find("name").text in CANVAS_CLASSES
            xmin, ymin, xmax, ymax = (int(o.find(f"bndbox/{k}").text) for k in ("xmin", "ymin", "xmax", "ymax"))
            assert 1 <= xmin <= xmax <= 64 and 1 <= ymin <= ymax <= 64  # 1-based inclusive
    assert summary["num_objects"]["train"] == sum(
        len(ET.parse(voc / "Annotations" / f"{i}.xml").getroot().findall("object")) for i in train
    )


def test_cityscapes_layout_matches_boxes(canvas):
    out, _ = canvas
    cs = out / "cityscapes"
    table = json.loads((cs / "canvas_classes.json").read_text())
    assert table[0] == {"id": 0, "train_id": 0, "name": "background"}
    assert [t["name"] for t in table[1:]] == list(CANVAS_CLASSES)
    assert all(t["id"] == t["train_id"] for t in table)
    voc = out / "VOCdevkit" / "VOC2007"
    for split, ids in (("train", range(6)), ("val", range(6, 9))):
        for i in ids:
            stem = f"canvas_000000_{i:06d}"
            rgb = np.asarray(Image.open(cs / "leftImg8bit" / split / "canvas" / f"{stem}_leftImg8bit.png"))
            lab = np.asarray(Image.open(cs / "gtFine" / split / "canvas" / f"{stem}_gtFine_labelIds.png"))
            inst = np.asarray(Image.open(cs / "gtFine" / split / "canvas" / f"{stem}_gtFine_instanceIds.png"))
            assert rgb.shape == (64, 64, 3) and lab.shape == (64, 64) and lab.dtype == np.uint8
            assert lab.max() <= 10
            assert np.array_equal(inst // 1000, lab)  # instance id = label id * 1000 + k
            assert (rgb[..., 0][lab > 0] >= 16).all()  # labelled pixels are foreground
            root = ET.parse(voc / "Annotations" / f"{i:06d}.xml").getroot()
            for k, o in enumerate(root.findall("object")):
                b = [int(o.find(f"bndbox/{t}").text) - 1 for t in ("xmin", "ymin", "xmax", "ymax")]
                ys, xs = np.nonzero(inst == (CANVAS_CLASSES.index(o.find("name").text) + 1) * 1000 + k)
                # the box is exactly the extent of the item's visible pixels
                assert (xs.min(), ys.min(), xs.max(), ys.max()) == tuple(b)


def test_deterministic(tmp_path, fmnist, canvas):
    out, _ = canvas
    make_canvas_dataset(
        tmp_path, num_train=6, num_val=3, canvas_size=64, max_items=4, seed=3, fashion_mnist_root=fmnist
    )
    for rel in (
        "VOCdevkit/VOC2007/Annotations/000004.xml",
        "cityscapes/gtFine/val/canvas/canvas_000000_000007_gtFine_labelIds.png",
    ):
        assert (tmp_path / rel).read_bytes() == (out / rel).read_bytes()


def test_make_canvas_counts_and_occlusion():
    rng = np.random.default_rng(0)
    items = np.zeros((5, 28, 28), np.uint8)
    items[:, 4:24, 4:24] = 200
    for _ in range(20):
        img, boxes, classes, item_map = make_canvas(rng, items, np.arange(5), canvas_size=80, max_items=4)
        assert 1 <= len(boxes) <= 4 and len(classes) == len(boxes)
        assert set(np.unique(item_map)) <= set(range(-1, len(boxes)))
        assert ((img > 0) == (item_map >= 0)).all()


def test_bad_arguments(tmp_path, fmnist):
    with pytest.raises(ValueError, match="max_items must be >= 1, got 0"):
        make_canvas_dataset(tmp_path, max_items=0, fashion_mnist_root=fmnist)
    with pytest.raises(ValueError, match="num_train"):
        make_canvas_dataset(tmp_path, num_train=0, num_val=0, fashion_mnist_root=fmnist)
    with pytest.raises(ValueError, match="scale_range"):
        make_canvas_dataset(tmp_path, scale_range=(0.6, 0.3), fashion_mnist_root=fmnist)
    assert not any(tmp_path.iterdir())  # nothing written for bad arguments


def test_cli(tmp_path, fmnist, capsys):
    from lifevit.cli import main

    rc = main(
        [
            "data",
            "canvas",
            "--output",
            str(tmp_path / "c"),
            "--num-train",
            "3",
            "--num-val",
            "2",
            "--canvas-size",
            "48",
            "--seed",
            "1",
            "--fashion-mnist-root",
            str(fmnist),
        ]
    )
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["num_train"] == 3 and summary["num_val"] == 2
    assert len(list((tmp_path / "c" / "VOCdevkit" / "VOC2007" / "JPEGImages").glob("*.jpg"))) == 5
    assert (
        main(
            ["data", "canvas", "--output", str(tmp_path / "d"), "--max-items", "0", "--fashion-mnist-root", str(fmnist)]
        )
        == 2
    )


# ---------------------------------------------------------------------------- existing outputs are kept safe
def _counts(root):
    """What the real loaders see: (VOC train, VOC val, Cityscapes train, Cityscapes val) image counts."""
    from lifevit.data.cityscapes import CityscapesSegmentation
    from lifevit.data.voc import VOCDetectionDataset

    table = root / "cityscapes" / "canvas_classes.json"
    return tuple(len(VOCDetectionDataset(root, "2007", s, CANVAS_CLASSES)) for s in ("train", "val")) + tuple(
        len(CityscapesSegmentation(root / "cityscapes", s, label_table=table)) for s in ("train", "val")
    )


def _snapshot(root):
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_existing_set_is_refused_or_replaced_whole(tmp_path, fmnist):
    out = tmp_path / "set"
    args = dict(canvas_size=48, seed=1, fashion_mnist_root=fmnist)
    make_canvas_dataset(out, num_train=7, num_val=4, **args)
    before = _snapshot(out)
    with pytest.raises(ValueError, match=r"output folder .*set already exists and is not empty"):
        make_canvas_dataset(out, num_train=5, num_val=3, **args)
    assert _snapshot(out) == before  # nothing touched
    summary = make_canvas_dataset(out, num_train=5, num_val=3, overwrite=True, **args)
    assert _counts(out) == (5, 3, 5, 3)  # no stale files of the first set (the loaders saw 7 / 4 before)
    assert summary["num_train"] == 5 and json.loads((out / "canvas.json").read_text())["num_val"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["set"]  # no temporary folders left behind


def test_overwrite_never_deletes_other_files(tmp_path, fmnist):
    out = tmp_path / "set"
    args = dict(num_train=3, num_val=2, canvas_size=48, seed=1, fashion_mnist_root=fmnist)
    make_canvas_dataset(out, **args)
    mine = out / "VOCdevkit" / "VOC2012" / "notes.txt"
    mine.parent.mkdir()
    mine.write_text("my own file")
    before = _snapshot(out)
    with pytest.raises(ValueError, match=r"holds VOCdevkit/VOC2012/notes\.txt, which a canvas set does not write"):
        make_canvas_dataset(out, overwrite=True, **args)
    assert _snapshot(out) == before
    other = tmp_path / "photos"
    other.mkdir()
    (other / "cat.jpg").write_bytes(b"x")
    with pytest.raises(ValueError, match="does not hold a canvas set"):
        make_canvas_dataset(other, overwrite=True, **args)
    assert (other / "cat.jpg").read_bytes() == b"x"


def test_output_that_is_a_file(tmp_path, fmnist, capsys):
    from lifevit.cli import main

    target = tmp_path / "taken"
    target.write_text("keep me")
    with pytest.raises(ValueError, match=r"output .*taken is an existing file; expected a folder"):
        make_canvas_dataset(target, num_train=2, num_val=1, canvas_size=48, fashion_mnist_root=fmnist)
    rc = main(["data", "canvas", "--output", str(target), "--fashion-mnist-root", str(fmnist)])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("lifevit data: error: output") and err.count("\n") == 1
    assert target.read_text() == "keep me"


def test_cli_refuses_non_empty_output_then_overwrites(tmp_path, fmnist, capsys):
    from lifevit.cli import main

    out = tmp_path / "c"
    base = ["data", "canvas", "--output", str(out), "--canvas-size", "48", "--fashion-mnist-root", str(fmnist)]
    assert main(base + ["--num-train", "4", "--num-val", "2"]) == 0
    capsys.readouterr()
    assert main(base + ["--num-train", "2", "--num-val", "1"]) == 2
    assert "already exists and is not empty" in capsys.readouterr().err
    assert len(list((out / "VOCdevkit" / "VOC2007" / "JPEGImages").glob("*.jpg"))) == 6
    assert main(base + ["--num-train", "2", "--num-val", "1", "--overwrite"]) == 0
    assert len(list((out / "VOCdevkit" / "VOC2007" / "JPEGImages").glob("*.jpg"))) == 3


def test_interrupted_write_leaves_nothing(tmp_path, fmnist, monkeypatch):
    from lifevit.data import canvas as canvas_module

    def crash(out, *args):
        (out / "VOCdevkit").mkdir()
        raise KeyboardInterrupt

    monkeypatch.setattr(canvas_module, "_write_canvas_set", crash)
    with pytest.raises(KeyboardInterrupt):
        make_canvas_dataset(tmp_path / "set", num_train=2, num_val=1, canvas_size=48, fashion_mnist_root=fmnist)
    assert list(tmp_path.iterdir()) == []  # neither a half-written set nor a temporary folder


def test_missing_fashion_mnist_root_writes_nothing(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"Fashion-MNIST root .*nowhere does not exist"):
        make_canvas_dataset(tmp_path / "set", num_train=2, num_val=1, fashion_mnist_root=tmp_path / "nowhere")
    assert list(tmp_path.iterdir()) == []
