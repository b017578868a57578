"""Segmentation on the one engine and the one command grammar: one training step, the engine's epoch loop, a run
folder with resume, eval from the checkpoint, predict PNGs, two DDP processes (torchrun, gloo) against one."""

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
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2

from lifevit.cli import main
from lifevit.engine import fit as engine_fit
from lifevit.engine.checkpoint import load_checkpoint, load_training_state
from lifevit.engine.distributed import DistInfo
from lifevit.engine.trainer import train_one_epoch
from lifevit.tasks.segmentation import ModelConfig, SegmentationCriterion, build_segmenter, config_from_dict
from lifevit.tasks.segmentation.config import DataConfig
from lifevit.tasks.segmentation.task import SegmentationTask, build_datasets, evaluate, load_model

TINY = dict(embed_dim=32, depth=2, num_heads=2, patch_size=8)


def fit(cfg, output_dir=None, **kwargs):
    return engine_fit(SegmentationTask(cfg), output_dir, **kwargs)


def _optimizer(model, train):
    """The optimizer the engine builds (timm's factory)."""
    return create_optimizer_v2(model, opt=train.opt, lr=train.lr, weight_decay=train.weight_decay)


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
            "workers": 0,
            "mean": [0.5] * 3,
            "std": [0.5] * 3,
        },
        "train": {
            "epochs": epochs,
            "batch_size": 4,
            "opt": "adamw",
            "lr": 0.003,
            "weight_decay": 0.0,
            "sched": "cosine",
            "eval_interval": 1,
            "device": "cpu",
            "progress": False,
            "tensorboard": False,
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
    optimizer = _optimizer(model, cfg.train)
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
    """The engine's one loop (lifevit.engine.trainer.train_one_epoch) over the segmentation task."""
    cfg = config_from_dict(_config(canvas_like_root))
    task, device, dist = SegmentationTask(cfg), torch.device("cpu"), DistInfo()
    model, loader = task.build(device, dist)
    assert len(loader) == 2  # 8 images, batch 4
    optimizer = _optimizer(task.param_groups(model) or model, cfg.train)
    scheduler, _ = create_scheduler_v2(
        optimizer,
        sched=cfg.train.sched,
        num_epochs=1,
        min_lr=cfg.train.min_lr,
        step_on_epochs=False,
        updates_per_epoch=len(loader),
    )
    loader.set_epoch(0)
    stats = train_one_epoch(task, model, loader, optimizer, 0, cfg.train, device, dist, scheduler)
    assert np.isfinite(stats["train_loss"]) and stats["train_img_per_s"] > 0
    assert stats["lr"] == pytest.approx(cfg.train.min_lr)  # cosine reached its floor at the end
    # an unknown optimizer name is refused with a message naming it (timm's factory), before anything is trained
    values = _config(canvas_like_root)
    values["train"]["opt"] = "nope"
    bad = config_from_dict(values)
    with pytest.raises(ValueError, match="nope"):
        fit(bad)


def test_fit_resume_eval_predict(canvas_like_root, tmp_path, capsys):
    run = tmp_path / "run"
    cfg = config_from_dict(_config(canvas_like_root, epochs=1))
    summary = fit(cfg, run)
    assert 0.0 <= summary["mIoU"] <= 1.0 and set(summary["per_class_iou"]) == {"background", "red", "green"}
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
        assert (run / name).is_file(), name
    saved = json.loads((run / "summary.json").read_text())
    assert saved["task"] == "segmentation" and saved["score_key"] == "mIoU" and saved["best_epoch"] == 1
    assert saved["best_score"] == pytest.approx(saved["mIoU"])
    record = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    assert record["eval_mIoU"] == pytest.approx(saved["mIoU"]) and "eval_loss" in record
    assert not any(k.startswith("val_") for k in record)
    with pytest.raises(ValueError, match="not empty"):
        fit(cfg, run)

    # resume to 2 epochs: continues from epoch 1, one more record
    cfg2 = config_from_dict(_config(canvas_like_root, epochs=2))
    fit(cfg2, run, resume=True)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    assert load_checkpoint(run).epoch == 2

    # the checkpoint alone rebuilds the model; evaluate equals the CLI's numbers
    model, loaded_cfg, ckpt = load_model(run / "checkpoints" / "last.safetensors")
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
    assert main(["segment", "predict", "--checkpoint", str(run), "--images", str(image), "--output", str(out)]) == 0
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
    # --resume DIR without --config continues with the run's own config.yaml plus the overrides
    assert main(["segment", "train", "--resume", str(run), "--set", "train.epochs=2"]) == 0
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["epochs"] == 2
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
                "--images",
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
    with pytest.raises(
        ValueError, match=r"unknown config key\(s\) 'optim'; valid keys: model, data, loss, inference, train"
    ):
        config_from_dict({"optim": {}})
    with pytest.raises(ValueError, match=r"config key 'train.epochs' expects an integer, got 'ten'"):
        config_from_dict({"train": {"epochs": "ten"}})
    # the old names are refused, not silently ignored (they moved: see the loss section and the engine's train)
    for section, key in (
        ("train", "optimizer"),
        ("train", "scheduler"),
        ("train", "eval_every"),
        ("train", "warmup_iters"),
        ("train", "log_every"),
        ("train", "dice_weight"),
        ("train", "class_weights"),
        ("data", "num_workers"),
    ):
        with pytest.raises(ValueError, match=rf"unknown config key\(s\) '{section}.{key}'"):
            config_from_dict({section: {key: 1}})
    assert config_from_dict({"train": {"warmup_epochs": 0.5}}).train.warmup_epochs == 0.5  # a fraction of an epoch
    cfg = config_from_dict({"train": {"lr": "2e-3"}, "inference": {"window": [64, 96]}})  # YAML / JSON forms
    assert cfg.train.lr == 2e-3 and cfg.inference.window == (64, 96)
    assert config_from_dict({"inference": {"scales": [0.75, 1, 1.25]}}).inference.scales == (0.75, 1.0, 1.25)
    for bad in ([], [0], [1, -2], ["big"]):
        with pytest.raises(ValueError, match="inference.scales must be a list of numbers > 0"):
            config_from_dict({"inference": {"scales": bad}})
    assert ModelConfig(img_size=96).img_size == (96, 96)
    with pytest.raises(ValueError, match="loss.dice_weight must be >= 0"):
        config_from_dict({"loss": {"dice_weight": -0.5}})
    with pytest.raises(ValueError, match="loss.class_weights must be >= 0"):
        config_from_dict({"loss": {"class_weights": [1, -1]}})
    with pytest.raises(
        ValueError, match=r"loss.class_weights has 2 entries, expected one per class \(model.num_classes = 19\)"
    ):
        config_from_dict({"loss": {"class_weights": [0.5, 1]}})
    two = config_from_dict({"model": {"num_classes": 2}, "loss": {"class_weights": [0.5, 1]}})
    assert two.loss.class_weights == (0.5, 1.0)


def test_loss_options_reach_the_criterion(canvas_like_root, tmp_path):
    values = _config(canvas_like_root)
    values["loss"] = {"class_weights": [1.0, 2.0]}  # the fixture has 3 classes
    with pytest.raises(ValueError, match="class_weights has 2 entries, expected one per class"):
        fit(config_from_dict(values), tmp_path / "bad")
    assert not (tmp_path / "bad").exists()  # refused by the config, before any run folder is made
    values["loss"].update(class_weights=[0.5, 1.0, 1.0], dice_weight=0.5)
    task = SegmentationTask(config_from_dict(values))
    summary = engine_fit(task, tmp_path / "ok")
    assert math.isfinite(summary["mIoU"]) and yaml.safe_load((tmp_path / "ok" / "config.yaml").read_text())["loss"][
        "class_weights"
    ] == [0.5, 1.0, 1.0]
    crit = task.criterion
    assert crit.dice_weight == 0.5 and crit.weight.tolist() == [0.5, 1.0, 1.0]
    record = json.loads((tmp_path / "ok" / "metrics.jsonl").read_text().splitlines()[0])
    assert {"train_loss", "train_loss_ce", "train_loss_dice"} <= set(record)  # every term is logged


def test_two_gloo_processes_match_one_process(canvas_like_root, tmp_path):
    def config(batch_size):
        values = _config(canvas_like_root, epochs=2)
        # no per-process randomness left: full-size crops, no flip; SGD (see tests/engine/test_ddp.py)
        values["data"].update(scale_range=[1.0, 1.0], hflip=0.0)
        values["train"].update(batch_size=batch_size, opt="sgd", lr=0.05)
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
    assert load_training_state(b)["rng"].keys() == {"0", "1"}
    two = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert two["world_size"] == 2 and one["world_size"] == 1
    # sharded evaluation: the confusion matrices of both shards are summed, so the numbers are the whole set's
    assert two["mIoU"] == pytest.approx(one["mIoU"], abs=1e-4)
    assert two["per_class_iou"] == pytest.approx(one["per_class_iou"], abs=1e-4)
    records = [json.loads(line) for line in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    ref = [json.loads(line) for line in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    assert [r["train_loss"] for r in records] == pytest.approx([r["train_loss"] for r in ref], rel=1e-4)
    assert [r["eval_loss"] for r in records] == pytest.approx([r["eval_loss"] for r in ref], rel=1e-4)
