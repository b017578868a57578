"""VOC (real layout, torchvision parsing) and COCO-JSON loaders, transforms and batching; bad input."""

import json
import logging

import pytest
import torch
from PIL import Image

from lifevit.data.coco import CocoDetectionDataset
from lifevit.data.voc import VOC_CLASSES, VOCDetectionDataset
from lifevit.tasks.detection.transforms import build_transforms, collate, targets_to_normalized


def _obj(name, box, difficult=0):
    x0, y0, x1, y1 = box
    return (
        f"<object><name>{name}</name><difficult>{difficult}</difficult><bndbox><xmin>{x0}</xmin>"
        f"<ymin>{y0}</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>"
    )


def write_voc(root, anns, sizes, split="train", year="2007"):
    """A VOC fixture in the real layout: JPEGImages/*.jpg, Annotations/*.xml, ImageSets/Main/<split>.txt."""
    voc = root / "VOCdevkit" / f"VOC{year}"
    for d in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (voc / d).mkdir(parents=True, exist_ok=True)
    for image_id, objs in anns.items():
        w, h = sizes[image_id]
        Image.new("RGB", (w, h), (90, 120, 30)).save(voc / "JPEGImages" / f"{image_id}.jpg")
        body = "".join(objs) if isinstance(objs, list) else objs
        xml = (
            f"<annotation><folder>VOC{year}</folder><filename>{image_id}.jpg</filename><size><width>{w}</width>"
            f"<height>{h}</height><depth>3</depth></size>{body}</annotation>"
        )
        (voc / "Annotations" / f"{image_id}.xml").write_text(xml)
    (voc / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(f"{i}\n" for i in anns))
    return root


def test_voc_round_trip(tmp_path, caplog):
    anns = {
        "000001": [_obj("dog", (1, 1, 10, 20)), _obj("person", (5, 6, 30, 40), difficult=1)],
        "000002": [],  # an image with no objects
        "000003": [_obj("car", (40, 5, 80, 25)), _obj("cat", (60, 60, 70, 70))],  # 2nd box outside the image
    }
    sizes = {"000001": (64, 48), "000002": (33, 17), "000003": (50, 30)}  # odd sizes on purpose
    write_voc(tmp_path, anns, sizes)
    ds = VOCDetectionDataset(tmp_path, "2007", "train")
    assert len(ds) == 3
    img, t = ds[0]
    assert img.size == (64, 48)
    assert t["boxes"].tolist() == [[0.0, 0.0, 10.0, 20.0], [4.0, 5.0, 30.0, 40.0]]  # 1-based inclusive -> 0-based
    assert t["labels"].tolist() == [VOC_CLASSES.index("dog"), VOC_CLASSES.index("person")]
    assert t["iscrowd"].tolist() == [0, 1] and t["orig_size"].tolist() == [48, 64]
    _, t = ds[1]
    assert t["boxes"].shape == (0, 4) and t["labels"].shape == (0,)
    with caplog.at_level(logging.WARNING):
        _, t = ds[2]
    assert t["boxes"].tolist() == [[39.0, 4.0, 50.0, 25.0]]  # clipped to the 50 px wide image
    assert "000003.xml: dropped 1 box" in caplog.text  # the box fully outside is dropped, by name
    # also given the VOCdevkit folder itself
    assert len(VOCDetectionDataset(tmp_path / "VOCdevkit", "2007", "train")) == 3


def test_voc_bad_input(tmp_path):
    write_voc(
        tmp_path,
        {
            "000001": "<object><name>dog</name>",
            "000002": [_obj("unicorn", (1, 1, 5, 5))],
            "000003": "<object><name>dog</name></object>",
        },
        {k: (20, 20) for k in ("000001", "000002", "000003")},
    )
    ds = VOCDetectionDataset(tmp_path, "2007", "train")
    with pytest.raises(ValueError, match=r"malformed annotation .*000001\.xml"):
        ds[0]
    with pytest.raises(ValueError, match=r"000002\.xml: unknown class 'unicorn'"):
        ds[1]
    with pytest.raises(ValueError, match=r"malformed annotation .*000003\.xml: an <object> lacks"):
        ds[2]
    with pytest.raises(FileNotFoundError, match="no Pascal VOC 2012"):
        VOCDetectionDataset(tmp_path, "2012", "train")
    with pytest.raises(FileNotFoundError, match="no image set 'val'"):
        VOCDetectionDataset(tmp_path, "2007", "val")


def test_transforms_and_collate_odd_sizes(tmp_path):
    write_voc(
        tmp_path,
        {"000001": [_obj("dog", (1, 1, 10, 20))], "000002": [_obj("cat", (3, 3, 33, 17))]},
        {"000001": (64, 48), "000002": (33, 17)},
    )
    ds = VOCDetectionDataset(tmp_path, "2007", "train", transforms=build_transforms(False, 32, "none"))
    (img0, t0), (img1, t1) = ds[0], ds[1]
    assert tuple(img0.shape) == (3, 24, 32) and t0["size"].tolist() == [24, 32]
    assert t0["boxes"][0].tolist() == pytest.approx([0.0, 0.0, 5.0, 10.0])  # scaled by 0.5
    assert tuple(img1.shape[-2:]) == tuple(t1["size"].tolist()) and max(img1.shape[-2:]) == 32
    images, mask, targets = collate([(img0, t0), (img1, t1)], size_divisibility=8)
    assert tuple(images.shape) == (2, 3, 24, 32) and mask[0].all()
    h1, w1 = t1["size"].tolist()
    assert mask[1, :h1, :w1].all() and mask[1].sum() == h1 * w1
    norm = targets_to_normalized(targets)
    assert norm[0]["boxes"][0].tolist() == pytest.approx([2.5 / 32, 5 / 24, 5 / 32, 10 / 24])
    # training augmentation keeps boxes inside the image and labels aligned
    aug = VOCDetectionDataset(tmp_path, "2007", "train", transforms=build_transforms(True, 32, "voc"))
    for _ in range(5):
        img, t = aug[0]
        H, W = img.shape[-2:]
        assert len(t["boxes"]) == len(t["labels"]) == len(t["iscrowd"])
        if len(t["boxes"]):
            assert (t["boxes"][:, 2] <= W + 1e-4).all() and (t["boxes"][:, 3] <= H + 1e-4).all()
    with pytest.raises(ValueError, match="augment must be one of"):
        build_transforms(True, 32, "mosaic")


def test_coco_json(tmp_path):
    (tmp_path / "img").mkdir()
    Image.new("RGB", (40, 30)).save(tmp_path / "img" / "a.png")
    coco = {
        "images": [{"id": 7, "file_name": "a.png", "width": 40, "height": 30}],
        "annotations": [
            {"id": 1, "image_id": 7, "category_id": 5, "bbox": [2, 3, 10, 5], "area": 50, "iscrowd": 0},
            {"id": 2, "image_id": 7, "category_id": 9, "bbox": [35, 25, 20, 20], "area": 400, "iscrowd": 1},
        ],
        "categories": [{"id": 9, "name": "b"}, {"id": 5, "name": "a"}],
    }
    (tmp_path / "ann.json").write_text(json.dumps(coco))
    ds = CocoDetectionDataset(tmp_path / "img", tmp_path / "ann.json")
    assert ds.classes == ("a", "b")
    _, t = ds[0]
    assert t["boxes"].tolist() == [[2.0, 3.0, 12.0, 8.0], [35.0, 25.0, 40.0, 30.0]]  # xywh -> xyxy, clipped
    assert t["labels"].tolist() == [0, 1] and t["iscrowd"].tolist() == [0, 1] and int(t["image_id"]) == 7
    (tmp_path / "bad.json").write_text('{"images": [')
    with pytest.raises(ValueError, match=r"malformed annotation file .*bad\.json"):
        CocoDetectionDataset(tmp_path / "img", tmp_path / "bad.json")


def test_canvas_through_voc_loader(canvas_root):
    from lifevit.data.canvas import CANVAS_CLASSES

    ds = VOCDetectionDataset(canvas_root, "2007", "val", CANVAS_CLASSES)
    assert len(ds) == 6
    for i in range(len(ds)):
        img, t = ds[i]
        assert img.size == (64, 64) and 1 <= len(t["boxes"]) <= 3
        assert (t["boxes"][:, 2:] > t["boxes"][:, :2]).all() and t["boxes"].max() <= 64
        assert torch.all((t["labels"] >= 0) & (t["labels"] < 10))


@pytest.mark.parametrize(
    "objects, message",
    [
        ([_obj("dog", ("nan", 1, 5, 5))], r"<xmin> is 'nan'; expected a finite pixel coordinate"),
        ([_obj("dog", (1, 1, "inf", 5))], r"<xmax> is 'inf'; expected a finite pixel coordinate"),
        ([_obj("dog", (1, 1, "five", 5))], r"<xmax> is 'five'; expected a finite pixel coordinate"),
        ([_obj("dog", (1, 1, 5, 5), difficult="0.5")], r"<difficult> is '0\.5'; expected 0 or 1"),
        ([_obj("dog", (1, 1, 5, 5), difficult="yes")], r"<difficult> is 'yes'; expected 0 or 1"),
        (
            "<object><name>dog</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>5</xmax></bndbox></object>",
            "<bndbox> has no <ymax>",
        ),
    ],
)
def test_voc_bad_values_name_the_file(tmp_path, objects, message):
    write_voc(tmp_path, {"000001": objects}, {"000001": (20, 20)})
    ds = VOCDetectionDataset(tmp_path, "2007", "train")
    with pytest.raises(ValueError, match=r"malformed annotation .*000001\.xml: " + message):
        ds[0]


def test_voc_size_and_image_files(tmp_path):
    anns = {"000001": [_obj("dog", (1, 1, 5, 5))], "000002": [], "000003": []}
    write_voc(tmp_path, anns, {k: (20, 10) for k in anns})
    voc = tmp_path / "VOCdevkit" / "VOC2007"
    Image.new("RGB", (10, 20)).save(voc / "JPEGImages" / "000001.jpg")  # the XML says 20 x 10
    (voc / "JPEGImages" / "000002.jpg").write_bytes(b"")
    (voc / "JPEGImages" / "000003.jpg").unlink()
    ds = VOCDetectionDataset(tmp_path, "2007", "train")
    with pytest.raises(ValueError, match=r"000001\.xml: <size> says 20x10 \(width x height\) but the image is 10x20"):
        ds[0]
    with pytest.raises(ValueError, match=r"image .*000002\.jpg is empty"):
        ds[1]
    with pytest.raises(FileNotFoundError, match=r"000003\.jpg listed in the image set does not exist"):
        ds[2]


def _coco(tmp_path, annotations, images=None, categories=None):
    (tmp_path / "img").mkdir(exist_ok=True)
    Image.new("RGB", (40, 30)).save(tmp_path / "img" / "a.png")
    coco = {
        "images": images or [{"id": 7, "file_name": "a.png", "width": 40, "height": 30}],
        "annotations": annotations,
        "categories": categories or [{"id": 5, "name": "a"}],
    }
    (tmp_path / "ann.json").write_text(json.dumps(coco))
    return CocoDetectionDataset(tmp_path / "img", tmp_path / "ann.json")


@pytest.mark.parametrize(
    "bbox, iscrowd, message",
    [
        ([2, float("nan"), 10, 5], 0, r"has bbox \[2, nan, 10, 5\]; expected \[x, y, width, height\]"),
        ([2, 3, "10", 5], 0, "has bbox"),
        ([2, 3, 10], 0, "has bbox"),
        ([2, 3, 10, 5], 0.5, "has iscrowd 0.5; expected 0 or 1"),
    ],
)
def test_coco_bad_values_name_the_file(tmp_path, bbox, iscrowd, message):
    ann = {"id": 1, "image_id": 7, "category_id": 5, "bbox": bbox, "area": 50, "iscrowd": iscrowd}
    ds = _coco(tmp_path, [ann])
    with pytest.raises(ValueError, match=r"malformed annotation file .*ann\.json: annotation 1 " + message):
        ds[0]


def test_coco_images_and_structure(tmp_path):
    ds = _coco(tmp_path, [], images=[{"id": 7, "file_name": "a.png", "width": 41, "height": 30}])
    with pytest.raises(ValueError, match=r"ann\.json: image 7 is listed as 41x30 but .*a\.png is 40x30"):
        ds[0]
    ds = _coco(tmp_path, [], images=[{"id": 8, "file_name": "gone.png", "width": 4, "height": 3}])
    with pytest.raises(FileNotFoundError, match=r"gone\.png listed in .*ann\.json \(image id 8\) does not exist"):
        ds[0]
    (tmp_path / "img" / "bad.png").write_text("not pixels")
    ds = _coco(tmp_path, [], images=[{"id": 9, "file_name": "bad.png", "width": 4, "height": 3}])
    with pytest.raises(ValueError, match=r"bad\.png is not an image file"):
        ds[0]
    with pytest.raises(ValueError, match=r"category .* needs an integer 'id' and a 'name'"):
        _coco(tmp_path, [], categories=[{"id": 5}])
    (tmp_path / "list.json").write_text("[]")
    with pytest.raises(ValueError, match=r"list\.json: expected a JSON object"):
        CocoDetectionDataset(tmp_path / "img", tmp_path / "list.json")
