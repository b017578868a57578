"""Engine and command line: one training step, a run folder with resume, eval from the checkpoint, predict PNGs,
two DDP processes (torchrun, gloo) against one."""

import dataclasses
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from lifevit.cli import main
from lifevit.engine.checkpoint import load_checkpoint
from lifevit.tasks.segmentation import ModelConfig, SegmentationCriterion, build_segmenter, config_from_dict
from lifevit.tasks.segmentation.config import DataConfig, TrainConfig
from lifevit.tasks.segmentation.engine import (
    build_datasets,
    build_optimizer,
    build_scheduler,
    evaluate,
    fit,
    load_segmenter,
    train_one_epoch,
)

TINY = dict(embed_dim=32, depth=2, num_heads=2, patch_size=8)


def _config(root, epochs=1):
    return {
        "model": {
            "backbone": "deit_tiny_patch16_224_life",
            "decoder": "linear",
            "num_classes": 3,
            "img_size": 32,
            "drop_path_rate": 0.0,
            "backbone_kwargs": TINY,
        },
        "data": {
            "root": str(root),
            "label_table": str(root / "classes.json"),
            "base_size": 32,
            "scale_range": [0.75, 1.25],
            "crop_size": 32,
            "num_workers": 0,
            "mean": [0.5] * 3,
            "std": [0.5] * 3,
        },
        "train": {
            "epochs": epochs,
            "batch_size": 4,
            "optimizer": "adamw",
            "lr": 0.003,
            "weight_decay": 0.0,
            "scheduler": "cosine",
            "eval_every": 1,
            "device": "cpu",
            "log_every": 0,
        },
        "inference": {"mode": "slide", "window": 24, "stride": 16, "batch_size": 2},
    }


def test_one_training_step_changes_weights_and_lowers_loss(canvas_like_root):
    cfg = config_from_dict(_config(canvas_like_root))
    train_set = build_datasets(cfg.data, ("train",))["train"]
    model = build_segmenter(cfg.model)
    criterion = SegmentationCriterion(3)
    images, targets = next(iter(torch.utils.data.DataLoader(train_set, batch_size=8)))
    assert images.shape == (8, 3, 32, 32) and targets.shape == (8, 32, 32)
    optimizer = build_optimizer(model, cfg.train)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    model.train()
    loss0 = criterion(model(images), targets)["loss"]
    optimizer.zero_grad()
    loss0.backward()
    optimizer.step()
    changed = [n for n, p in model.named_parameters() if not torch.equal(p, before[n])]
    assert len(changed) == len(before)  # AdamW moves every parameter that got a gradient
    with torch.no_grad():
        loss1 = criterion(model(images), targets)["loss"]
    assert loss1.item() < loss0.item()


def test_train_one_epoch_stats_and_schedule(canvas_like_root):
    cfg = config_from_dict(_config(canvas_like_root))
    train_set = build_datasets(cfg.data, ("train",))["train"]
    model = build_segmenter(cfg.model)
    loader = torch.utils.data.DataLoader(train_set, batch_size=4)
    optimizer = build_optimizer(model, cfg.train)
    scheduler = build_scheduler(optimizer, cfg.train, total_iters=len(loader))
    stats = train_one_epoch(model, SegmentationCriterion(3), loader, optimizer, scheduler, torch.device("cpu"), 0)
    assert stats["iters"] == 2 and np.isfinite(stats["loss"])
    assert stats["lr"] == pytest.approx(cfg.train.min_lr)  # cosine reached its floor at the end
    with pytest.raises(ValueError, match="train.optimizer must be"):
        TrainConfig(optimizer="lamb")


def test_fit_resume_eval_predict(canvas_like_root, tmp_path, capsys):
    run = tmp_path / "run"
    cfg = config_from_dict(_config(canvas_like_root, epochs=1))
    summary = fit(cfg, run)
    assert 0.0 <= summary["mIoU"] <= 1.0 and set(summary["per_class_iou"]) == {"background", "red", "green"}
    for name in (
        "config.json",
        "metrics.jsonl",
        "curves.png",
        "summary.json",
        "checkpoints/last.safetensors",
        "checkpoints/best.safetensors",
    ):
        assert (run / name).is_file(), name
    with pytest.raises(ValueError, match="not empty"):
        fit(cfg, run)

    # resume to 2 epochs: continues from epoch 1, one more record
    cfg2 = config_from_dict(_config(canvas_like_root, epochs=2))
    fit(cfg2, run, resume=True)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    assert load_checkpoint(run).epoch == 2

    # the checkpoint alone rebuilds the model; evaluate equals the CLI's numbers
    model, loaded_cfg, ckpt = load_segmenter(run / "checkpoints" / "last.safetensors")
    assert ckpt.meta["class_names"] == ["background", "red", "green"] and loaded_cfg.model.num_classes == 3
    val = build_datasets(loaded_cfg.data, ("val",))["val"]
    stats = evaluate(model, val, torch.device("cpu"), loaded_cfg.inference)
    out_json = tmp_path / "eval.json"
    assert main(["segment", "eval", "--checkpoint", str(run), "--output", str(out_json)]) == 0
    cli_stats = json.loads(out_json.read_text())
    assert cli_stats["mIoU"] == pytest.approx(stats["mIoU"]) and cli_stats["epoch"] == 2
    # --flip: the same numbers as evaluate() with flip inference
    flipped = evaluate(model, val, torch.device("cpu"), dataclasses.replace(loaded_cfg.inference, flip=True))
    assert main(["segment", "eval", "--checkpoint", str(run), "--flip", "--output", str(out_json)]) == 0
    assert json.loads(out_json.read_text())["per_class_iou"] == pytest.approx(flipped["per_class_iou"], nan_ok=True)
    # --scales: the same numbers as evaluate() with multi-scale inference
    ms_cfg = dataclasses.replace(loaded_cfg.inference, scales=(0.5, 1.0, 1.5))
    multi = evaluate(model, val, torch.device("cpu"), ms_cfg)
    assert (
        main(["segment", "eval", "--checkpoint", str(run), "--scales", "0.5", "1", "1.5", "--output", str(out_json)])
        == 0
    )
    assert json.loads(out_json.read_text())["per_class_iou"] == pytest.approx(multi["per_class_iou"], nan_ok=True)

    # predict writes a colourised mask, an overlay and the raw ids, all at the image size
    image = next((canvas_like_root / "leftImg8bit" / "val").rglob("*.png"))
    out = tmp_path / "pred"
    assert main(["segment", "predict", "--checkpoint", str(run), "--input", str(image), "--output", str(out)]) == 0
    stem = image.stem
    mask = np.array(Image.open(out / f"{stem}_mask.png"))
    ids = np.array(Image.open(out / f"{stem}_trainIds.png"))
    over = np.array(Image.open(out / f"{stem}_overlay.png"))
    rgb = np.array(Image.open(image).convert("RGB"))
    assert mask.shape == over.shape == rgb.shape == (32, 32, 3) and ids.shape == (32, 32)
    colors = np.array(ckpt.meta["colors"], np.uint8)
    assert np.array_equal(mask, colors[ids])  # each pixel has the colour of its predicted class
    expected = ((rgb.astype(np.float32) + mask.astype(np.float32)) / 2).round().astype(np.uint8)
    assert np.abs(over.astype(int) - expected.astype(int)).max() <= 1
    # the ids are the model's arg-max
    x = (torch.from_numpy(rgb).permute(2, 0, 1).float() / 255 - 0.5) / 0.5
    with torch.no_grad():
        from lifevit.tasks.segmentation import infer_logits

        logits = infer_logits(model, x[None], "slide", (24, 24), (16, 16))
    assert np.array_equal(ids, logits[0].argmax(0).numpy())


def test_cli_train_and_errors(canvas_like_root, tmp_path, capsys):

    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(_config(canvas_like_root)))
    run = tmp_path / "cli_run"
    assert main(["segment", "train", "--config", str(config), "--output", str(run), "--set", "train.epochs=1"]) == 0
    assert "mIoU" in capsys.readouterr().out and (run / "summary.json").is_file()
    # --resume without --config continues with the run's own config.json plus the overrides
    assert main(["segment", "train", "--output", str(run), "--resume", "--set", "train.epochs=2"]) == 0
    assert json.loads((run / "config.json").read_text())["train"]["epochs"] == 2
    assert json.loads((run / "summary.json").read_text())["epochs"] == 2
    capsys.readouterr()
    assert (
        main(["segment", "train", "--config", str(config), "--output", str(tmp_path / "x"), "--set", "train.nope=1"])
        == 2
    )
    assert "unknown config key(s) 'train.nope'; valid keys of train:" in capsys.readouterr().err
    assert main(["segment", "train", "--config", str(tmp_path / "missing.yaml"), "--output", str(tmp_path / "y")]) == 2
    assert "not found" in capsys.readouterr().err
    assert (
        main(
            [
                "segment",
                "predict",
                "--checkpoint",
                str(run),
                "--input",
                str(tmp_path / "none.png"),
                "--output",
                str(tmp_path / "p"),
            ]
        )
        == 2
    )
    assert "neither an image file nor a folder" in capsys.readouterr().err


def test_num_classes_must_match_label_table(canvas_like_root, tmp_path):
    values = _config(canvas_like_root)
    values["model"]["num_classes"] = 19
    with pytest.raises(ValueError, match="model.num_classes is 19 but the label table"):
        fit(config_from_dict(values), tmp_path / "r")


def test_data_config_validation():
    with pytest.raises(ValueError, match="scale_range"):
        DataConfig(scale_range=(2.0, 1.0))
    with pytest.raises(ValueError, match=r"unknown config key\(s\) 'optim'; valid keys: model, data, train, inference"):
        config_from_dict({"optim": {}})
    with pytest.raises(ValueError, match=r"config key 'train.epochs' expects a number, got 'ten'"):
        config_from_dict({"train": {"epochs": "ten"}})
    cfg = config_from_dict({"train": {"lr": "2e-3"}, "inference": {"window": [64, 96]}})  # YAML / JSON forms
    assert cfg.train.lr == 2e-3 and cfg.inference.window == (64, 96)
    assert config_from_dict({"inference": {"scales": [0.75, 1, 1.25]}}).inference.scales == (0.75, 1.0, 1.25)
    for bad in ([], [0], [1, -2], ["big"]):
        with pytest.raises(ValueError, match="inference.scales must be a list of numbers > 0"):
            config_from_dict({"inference": {"scales": bad}})
    assert ModelConfig(img_size=96).img_size == (96, 96)
    with pytest.raises(ValueError, match="train.dice_weight must be >= 0"):
        config_from_dict({"train": {"dice_weight": -0.5}})
    with pytest.raises(ValueError, match="train.class_weights must be >= 0"):
        config_from_dict({"train": {"class_weights": [1, -1]}})
    with pytest.raises(
        ValueError, match=r"train.class_weights has 2 entries, expected one per class \(model.num_classes = 19\)"
    ):
        config_from_dict({"train": {"class_weights": [0.5, 1]}})
    two = config_from_dict({"model": {"num_classes": 2}, "train": {"class_weights": [0.5, 1]}})
    assert two.train.class_weights == (0.5, 1.0)


def test_loss_options_reach_the_criterion(canvas_like_root, tmp_path):
    values = _config(canvas_like_root)
    values["train"]["class_weights"] = [1.0, 2.0]  # the fixture has 3 classes
    with pytest.raises(ValueError, match="class_weights has 2 entries, expected one per class"):
        fit(config_from_dict(values), tmp_path / "bad")
    assert not (tmp_path / "bad").exists()  # refused by the config, before any run folder is made
    values["train"].update(class_weights=[0.5, 1.0, 1.0], dice_weight=0.5)
    summary = fit(config_from_dict(values), tmp_path / "ok")
    assert math.isfinite(summary["mIoU"]) and json.loads((tmp_path / "ok" / "config.json").read_text())["train"][
        "class_weights"
    ] == [0.5, 1.0, 1.0]


def test_two_gloo_processes_match_one_process(canvas_like_root, tmp_path):
    def config(batch_size):
        values = _config(canvas_like_root, epochs=2)
        # no per-process randomness left: full-size crops, no flip; SGD (see tests/engine/test_ddp.py)
        values["data"].update(scale_range=[1.0, 1.0], hflip=0.0)
        values["train"].update(batch_size=batch_size, optimizer="sgd", lr=0.05)
        values["inference"] = {"mode": "whole", "batch_size": 1, "flip": True}
        return values

    one = fit(config_from_dict(config(4)), tmp_path / "one")
    cfg_file = tmp_path / "ddp.yaml"
    cfg_file.write_text(yaml.safe_dump(config(2)))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1", "--nproc_per_node", "2"]
    cmd += ["-m", "lifevit", "segment", "train", "--config", str(cfg_file), "--output", str(tmp_path / "two")]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("run folder:") == 1  # only rank 0 reports

    a, b = load_checkpoint(tmp_path / "one" / "checkpoints"), load_checkpoint(tmp_path / "two" / "checkpoints")
    assert a.epoch == b.epoch == 2
    for k, v in a.model_state.items():
        torch.testing.assert_close(b.model_state[k], v, rtol=1e-4, atol=1e-5, msg=k)
    assert b.training_state["extra"]["rng_per_rank"].keys() == {"0", "1"}
    two = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert two["world_size"] == 2 and one["world_size"] == 1
    # sharded evaluation: the confusion matrices of both shards are summed, so the numbers are the whole set's
    assert two["mIoU"] == pytest.approx(one["mIoU"], abs=1e-4)
    assert two["per_class_iou"] == pytest.approx(one["per_class_iou"], abs=1e-4)
    records = [json.loads(line) for line in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    ref = [json.loads(line) for line in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    assert [r["train_loss"] for r in records] == pytest.approx([r["train_loss"] for r in ref], rel=1e-4)
    assert [r["val_loss"] for r in records] == pytest.approx([r["val_loss"] for r in ref], rel=1e-4)
