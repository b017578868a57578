"""``lifevit detect train | eval | predict`` end to end on a tiny canvas set (VOC layout, real loader)."""

import json

import numpy as np
import pytest
from PIL import Image

from lifevit.cli import main
from lifevit.engine import load_checkpoint, load_training_state

TINY = [
    "--set",
    "model.backbone_kwargs={patch_size: 8, in_chans: 3, depth: 1}",
    "--set",
    "model.hidden_dim=32",
    "--set",
    "model.num_heads=2",
    "--set",
    "model.dec_layers=1",
    "--set",
    "model.num_queries=4",
    "--set",
    "data.img_size=64",
    "--set",
    "train.batch_size=4",
    "--set",
    "inference.score_threshold=0.0",
]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, canvas_root):
    out = tmp_path_factory.mktemp("runs") / "det"
    # 2 epochs planned, but the time limit stops it after the first (resumed below)
    rc = main(
        [
            "detect",
            "train",
            "--data-root",
            str(canvas_root),
            "--output",
            str(out),
            "--epochs",
            "2",
            "--max-minutes",
            "1e-6",
            "--no-progress",
            *TINY,
        ]
    )
    assert rc == 0
    return out


def test_train_writes_run_folder(run_dir, capsys):
    for name in (
        "config.yaml",
        "metrics.jsonl",
        "curves.png",
        "summary.json",
        "checkpoints/last.safetensors",
        "checkpoints/last.state.json",
        "checkpoints/last.state.safetensors",
        "checkpoints/best.safetensors",
    ):
        assert (run_dir / name).is_file(), name
    rec = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rec] == [1]
    assert 0.0 <= rec[0]["eval_map_50"] <= 1.0 and rec[0]["train_loss"] > 0
    assert not any(k.startswith("val_") for k in rec[0])
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["task"] == "detection" and summary["score_key"] == "map_50"
    assert summary["map_50"] == pytest.approx(rec[0]["eval_map_50"]) and summary["best_epoch"] == 1
    assert summary["best_score"] == pytest.approx(summary["map_50"]) and summary["epochs"] == 1
    assert summary["stopped_early"]  # the time budget, not the epoch count, ended it
    assert "final" not in summary and "best_map_50" not in summary
    ckpt = load_checkpoint(run_dir)
    assert ckpt.meta["task"] == "detection" and ckpt.meta["classes"][0] == "t-shirt_top"
    assert ckpt.meta["config"]["model"]["head"] == "encdec_life"


def test_resume_continues(run_dir, tmp_path):
    import shutil

    copy = tmp_path / "resumed"
    shutil.copytree(run_dir, copy)
    assert load_checkpoint(copy).epoch == 1
    # with its stored config (2 epochs, the same time limit) the run is finished: its budget stopped it
    assert main(["detect", "train", "--resume", str(copy), "--no-progress"]) == 0
    assert load_checkpoint(copy).epoch == 1
    # without the time limit (a named flag over the stored config.yaml): one more epoch, optimizer state restored
    assert main(["detect", "train", "--resume", str(copy), "--max-minutes", "0", "--no-progress"]) == 0
    ckpt = load_checkpoint(copy)
    assert ckpt.epoch == 2 and load_training_state(ckpt)["optimizer"]["state"]
    rec = [json.loads(line) for line in (copy / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rec] == [1, 2]
    assert main(["detect", "train", "--output", str(run_dir), "--no-progress"]) == 2  # refuses to overwrite


def test_eval(run_dir, capsys):
    assert main(["detect", "eval", "--checkpoint", str(run_dir), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["num_images"] == 6
    assert {"map_50", "map", "f1", "precision", "recall"} <= set(stats)
    # the checkpoint's own evaluation is the training run's last one
    summary = json.loads((run_dir / "summary.json").read_text())
    assert stats["map_50"] == pytest.approx(summary["map_50"])


def test_predict_draws_png(run_dir, canvas_root, tmp_path, capsys):
    img = canvas_root / "VOCdevkit" / "VOC2007" / "JPEGImages" / "000012.jpg"
    weights = run_dir / "checkpoints" / "last.safetensors"
    args = ["detect", "predict", "--checkpoint", str(weights), "--images", str(img)]
    assert main([*args, "--output", str(tmp_path)]) == 0
    png = tmp_path / "000012_det.png"
    out = Image.open(png)
    assert out.format == "PNG" and out.size == (384, 384)  # 64 px canvas drawn 6x larger
    assert "000012_det.png" in capsys.readouterr().out
    # with score threshold 0 every one of the 4 queries' top detections is drawn: coloured pixels appear
    colours = lambda im: len(np.unique(np.asarray(im.convert("RGB")).reshape(-1, 3), axis=0))  # noqa: E731
    assert colours(out) > colours(Image.open(img))


def test_bad_input(tmp_path, canvas_root):
    assert (
        main(
            [
                "detect",
                "train",
                "--output",
                str(tmp_path / "x"),
                "--set",
                "model.head=detr",
                "--data-root",
                str(canvas_root),
            ]
        )
        == 2
    )
    assert main(["detect", "train", "--output", str(tmp_path / "y"), "--set", "train.epochz=3"]) == 2
    assert main(["detect", "train", "--config", str(tmp_path / "missing.yaml"), "--output", str(tmp_path / "z")]) == 2
    assert main(["detect", "eval", "--checkpoint", str(tmp_path / "nothing")]) == 2
    args = ["detect", "predict", "--checkpoint", str(tmp_path / "nothing"), "--images", "a.jpg"]
    assert main([*args, "--output", str(tmp_path)]) == 2
    with pytest.raises(SystemExit):  # the checkpoint is never positional
        main(["detect", "eval", str(tmp_path / "nothing")])
