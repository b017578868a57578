"""`lifevit explain` end to end on checkpoints of the three tasks, written in the real checkpoint format."""

import json

import numpy as np
import pytest
import timm
import torch
from PIL import Image

import lifevit  # noqa: F401
from lifevit.cli import main
from lifevit.data.canvas import CANVAS_CLASSES
from lifevit.data.fashion_mnist import CLASSES
from lifevit.engine.checkpoint import save_checkpoint
from lifevit.explain import explain
from lifevit.explain.loading import load_explainable


def _grey_png(path, size=28, seed=0):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8)).save(path)
    return path


def _rgb_png(path, hw=(96, 96), seed=0):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (*hw, 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def classifier_ckpt(tmp_path_factory):
    out = tmp_path_factory.mktemp("cls")
    torch.manual_seed(0)
    model = timm.create_model("vit_lite_patch4_28_life", num_classes=10)
    meta = {
        "task": "classification",
        "model": "vit_lite_patch4_28_life",
        "model_kwargs": {"num_classes": 10},
        "classes": list(CLASSES),
        "mean": [0.286],
        "std": [0.353],
        "img_size": 28,
        "in_chans": 1,
    }
    return save_checkpoint(out, model=model, meta=meta, epoch=1)


@pytest.fixture(scope="module")
def segmentation_ckpt(tmp_path_factory):
    from lifevit.tasks.segmentation import SegmentationConfig, build_segmenter

    out = tmp_path_factory.mktemp("seg")
    cfg = SegmentationConfig()
    cfg.model.backbone, cfg.model.decoder, cfg.model.num_classes = "vit_lite_patch4_28_life", "linear", 11
    cfg.model.img_size, cfg.model.backbone_kwargs = (96, 96), {"patch_size": 8, "depth": 2}
    torch.manual_seed(0)
    model = build_segmenter(cfg.model)
    names = ["background", *CANVAS_CLASSES]
    meta = {
        "task": "segmentation",
        "model": cfg.model.backbone,
        "config": cfg.to_dict(),
        "class_names": names,
        "colors": [[i, i, i] for i in range(11)],
    }
    return save_checkpoint(out, model=model, meta=meta, epoch=1)


@pytest.fixture(scope="module")
def detection_ckpt(tmp_path_factory):
    from lifevit.tasks.detection import DetectConfig, build_detector

    out = tmp_path_factory.mktemp("det")
    cfg = DetectConfig()
    cfg.model.backbone_kwargs = {"patch_size": 8, "in_chans": 3, "depth": 2}
    torch.manual_seed(0)
    model = build_detector(cfg.model, len(CANVAS_CLASSES), img_size=cfg.data.img_size)
    meta = {"task": "detection", "model": "x", "config": cfg.to_dict(), "classes": list(CANVAS_CLASSES)}
    return save_checkpoint(out, model=model, meta=meta, epoch=1)


def test_classifier_rollout_cli_writes_overlays_and_matches_the_api(classifier_ckpt, tmp_path):
    imgs = [_grey_png(tmp_path / f"img{i}.png", seed=i) for i in range(2)]
    out = tmp_path / "out"
    code = main(
        [
            "explain",
            "--checkpoint",
            str(classifier_ckpt),
            "--images",
            *map(str, imgs),
            "--output",
            str(out),
            "--save-arrays",
        ]
    )
    assert code == 0
    summary = json.loads((out / "explain.json").read_text())
    assert [e["output"] for e in summary["images"]] == [str(out / f"img{i}_rollout.png") for i in range(2)]
    assert all(e["prediction"] in CLASSES and 0 < e["score"] <= 1 for e in summary["images"])
    for i in range(2):
        png = np.asarray(Image.open(out / f"img{i}_rollout.png"))
        assert png.shape[1] > png.shape[0]  # two panels side by side
    arrays = np.load(out / "maps.npz")
    assert arrays["img0"].shape == (1, 28, 28)
    loaded = load_explainable(classifier_ckpt)
    x, _ = loaded.preprocess(imgs[0])
    result = explain(loaded.model, x[None])
    np.testing.assert_allclose(arrays["img0"], result.maps[0], rtol=1e-5, atol=1e-7)
    assert result.token_maps.shape == (1, 1, 7, 7) and (result.token_maps > 0).all()


def test_segmentation_dense_rollout_cli(segmentation_ckpt, tmp_path):
    img = _rgb_png(tmp_path / "canvas.png", hw=(90, 100))  # not a multiple of the patch: padded and cropped
    out = tmp_path / "out"
    code = main(
        [
            "explain",
            "--checkpoint",
            str(segmentation_ckpt),
            "--images",
            str(img),
            "--output",
            str(out),
            "--method",
            "dense-rollout",
            "--class",
            "ankle_boot",
            "--class",
            "bag",
            "--save-arrays",
        ]
    )
    assert code == 0
    summary = json.loads((out / "explain.json").read_text())
    assert summary["task"] == "segmentation" and summary["images"][0]["classes"] == ["ankle_boot", "bag"]
    maps = np.load(out / "maps.npz")["canvas"]
    assert maps.shape == (2, 90, 100) and np.isfinite(maps).all() and (maps >= 0).all()
    assert (out / "canvas_dense-rollout.png").is_file()


def test_detection_dense_rollout_cli(detection_ckpt, tmp_path):
    img = _rgb_png(tmp_path / "canvas.png")
    out = tmp_path / "out"
    code = main(
        [
            "explain",
            "--checkpoint",
            str(detection_ckpt),
            "--images",
            str(img),
            "--output",
            str(out),
            "--method",
            "dense-rollout",
            "--score-threshold",
            "0",
            "--save-arrays",
        ]
    )
    assert code == 0
    entry = json.loads((out / "explain.json").read_text())["images"][0]
    assert entry["detections"] and set(entry["classes"]) == {d["label"] for d in entry["detections"]}
    assert np.load(out / "maps.npz")["canvas"].shape == (len(entry["classes"]), 96, 96)


def test_cli_errors_are_clean(classifier_ckpt, segmentation_ckpt, tmp_path, capsys):
    img = _grey_png(tmp_path / "a.png")
    base = ["explain", "--images", str(img), "--output", str(tmp_path / "o")]
    assert main([*base, "--checkpoint", str(classifier_ckpt), "--method", "dense-rollout"]) == 2
    assert "dense-rollout needs per-token class predictions" in capsys.readouterr().err
    assert main([*base, "--checkpoint", str(classifier_ckpt), "--class", "bag"]) == 2
    assert "class-agnostic" in capsys.readouterr().err
    assert main([*base, "--checkpoint", str(segmentation_ckpt), "--method", "dense-rollout", "--class", "cat"]) == 2
    assert "--class ['cat'] not among the checkpoint's classes" in capsys.readouterr().err
    assert main(["explain", "--checkpoint", str(tmp_path / "missing"), "--images", str(img)]) == 2
    assert "no checkpoint at" in capsys.readouterr().err
    assert main(["explain", "--checkpoint", str(classifier_ckpt), "--images", str(tmp_path / "nope.png")]) == 2
    assert "neither an image file nor a folder" in capsys.readouterr().err


def test_output_names_keep_same_named_images_apart(tmp_path):
    from lifevit.tasks.inputs import output_names  # shared by explain and every task's predict

    a, b = tmp_path / "a" / "img.png", tmp_path / "b" / "sub" / "img.png"
    c, d = tmp_path / "a" / "img.jpg", tmp_path / "other.png"
    for f in (a, b, c, d):
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(b"")
    assert output_names([a, b, d])[1] == ["a__img", "b__sub__img", "other"]
    assert output_names([a, c])[1] == ["img_png", "img_jpg"]
    with pytest.raises(ValueError, match="same file more than once"):
        output_names([a, a])


def test_same_file_names_in_two_folders_get_two_outputs(classifier_ckpt, tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "y").mkdir()
    first, second = _grey_png(tmp_path / "x" / "img.png", seed=1), _grey_png(tmp_path / "y" / "img.png", seed=2)
    out = tmp_path / "out"
    args = ["explain", "--checkpoint", str(classifier_ckpt), "--images", str(first), str(second), "--output", str(out)]
    assert main([*args, "--save-arrays"]) == 0
    assert sorted(p.name for p in out.glob("*.png")) == ["x__img_rollout.png", "y__img_rollout.png"]
    arrays = np.load(out / "maps.npz")
    assert sorted(arrays.files) == ["x__img", "y__img"]
    assert not np.allclose(arrays["x__img"], arrays["y__img"])  # two different images, two different maps
    summary = json.loads((out / "explain.json").read_text())
    assert [e["name"] for e in summary["images"]] == ["x__img", "y__img"]


@pytest.mark.parametrize("method", ["chefer", "gradcam", "random"])
def test_baseline_methods_from_the_cli_match_the_api(method, classifier_ckpt, segmentation_ckpt, tmp_path):
    img = _grey_png(tmp_path / "a.png")
    out = tmp_path / method
    base = ["explain", "--checkpoint", str(classifier_ckpt), "--images", str(img), "--output", str(out)]
    assert main([*base, "--method", method, "--save-arrays"]) == 0
    loaded = load_explainable(classifier_ckpt)
    x, _ = loaded.preprocess(img)
    expected = explain(loaded.model, x[None], method).maps[0]
    np.testing.assert_allclose(np.load(out / "maps.npz")["a"], expected, rtol=1e-5, atol=1e-8)
    assert (out / f"a_{method}.png").is_file()
    # a segmentation checkpoint: one panel per class asked for
    rgb = _rgb_png(tmp_path / "c.png")
    seg_out = tmp_path / f"seg_{method}"
    seg = ["explain", "--checkpoint", str(segmentation_ckpt), "--images", str(rgb), "--output", str(seg_out)]
    assert main([*seg, "--method", method, "--class", "bag", "--class", "coat", "--save-arrays"]) == 0
    assert np.load(seg_out / "maps.npz")["c"].shape == (2, 96, 96)


def test_unknown_method_is_refused_with_the_choices(classifier_ckpt, tmp_path, capsys):
    img = _grey_png(tmp_path / "a.png")
    with pytest.raises(SystemExit) as err:
        main(["explain", "--checkpoint", str(classifier_ckpt), "--images", str(img), "--method", "lrp"])
    assert err.value.code == 2
    message = capsys.readouterr().err
    assert "invalid choice: 'lrp'" in message and "chefer" in message and "gradcam" in message
    from lifevit.explain.files import ExplainConfig, explain_files

    with pytest.raises(ValueError, match=r"--method must be one of rollout, dense-rollout, chefer.*got 'lrp'"):
        explain_files(ExplainConfig(checkpoint=str(classifier_ckpt), images=[str(img)], method="lrp"))
