"""End-to-end training on a tiny Fashion-MNIST fixture (real IDX format) with a one-block ViT."""

import json

import pytest
import torch

from lifevit.engine import NonFiniteLossError, fit, load_checkpoint, load_training_state
from lifevit.engine.rundir import read_jsonl
from lifevit.tasks.classification import ClassificationTask, evaluate_checkpoint


def train(cfg, output_dir=None, **kwargs):
    return fit(ClassificationTask(cfg), output_dir, **kwargs)


def test_run_folder_contents_and_learning(tiny_cfg, tmp_path):
    run = tmp_path / "run"
    summary = train(tiny_cfg("train.epochs=3"), run)
    for name in (
        "config.yaml",
        "metrics.jsonl",
        "summary.json",
        "curves.png",
        "confusion.png",
        "checkpoints/last.safetensors",
        "checkpoints/last.state.json",
        "checkpoints/last.state.safetensors",
        "checkpoints/best.safetensors",
    ):
        assert (run / name).is_file(), name
    assert not list(run.glob("checkpoints/*.pt")) and not (run / "config.json").exists()  # no pickles, YAML config
    saved = json.loads((run / "summary.json").read_text())
    for key in (
        "task",
        "model",
        "dataset",
        "params",
        "gmacs",
        "top1",
        "top5",
        "ema_top1",
        "score_key",
        "best_score",
        "best_epoch",
        "epochs",
        "train_seconds",
    ):
        assert key in saved, key
    assert saved["model"] == "vit_lite_patch4_28" and saved["dataset"] == "fashion_mnist"
    assert saved["task"] == "classification" and saved["score_key"] == "top1"
    assert saved["train_samples"] == 200 and saved["num_samples"] == 100 and saved["epochs"] == 3
    records = read_jsonl(run / "metrics.jsonl")
    assert [r["epoch"] for r in records] == [1, 2, 3]
    assert records[-1]["train_loss"] < records[0]["train_loss"]
    assert summary["top1"] > 30  # 10 classes: chance is 10 %
    assert summary["top1"] == records[-1]["eval_top1"]
    assert not any(k.startswith("val_") for r in records for k in r)  # the old val_* keys are gone
    assert saved["best_score"] == max(r["eval_top1"] for r in records)
    assert records[saved["best_epoch"] - 1]["eval_top1"] == saved["best_score"]
    with pytest.raises(ValueError, match="already exists and is not empty"):
        train(tiny_cfg(), run)
    # metrics.jsonl logs the EMA's evaluation as ema_<metric> (the run-folder layout of lifevit.engine.trainer)
    assert summary["ema_top1"] == records[-1].get("ema_top1"), sorted(records[-1])


def test_class_balanced_subset_and_eval_checkpoint_matches(tiny_cfg, tmp_path):
    summary = train(tiny_cfg("data.train_samples=50", "train.epochs=1"), tmp_path / "r")
    assert summary["train_samples"] == 50
    result = evaluate_checkpoint(tmp_path / "r", output_dir=tmp_path / "ev")
    assert result["model"] == "vit_lite_patch4_28"
    assert result["top1"] == pytest.approx(summary["top1"])
    assert len(result["per_class_acc"]) == 10 and result["num_samples"] == 100
    assert sum(map(sum, result["confusion"])) == 100
    assert (tmp_path / "ev" / "confusion.png").is_file() and (tmp_path / "ev" / "eval.json").is_file()


def test_fixed_seed_is_deterministic_and_seed_matters(tiny_cfg):
    a = train(tiny_cfg("train.epochs=1"))
    b = train(tiny_cfg("train.epochs=1"))
    c = train(tiny_cfg("train.epochs=1", "train.seed=1"))
    assert a["train_loss"] == b["train_loss"] and a["top1"] == b["top1"] and a["ema_top1"] == b["ema_top1"]
    assert a["train_loss"] != c["train_loss"]


class _Stop(Exception):
    pass


def test_interrupted_and_resumed_equals_uninterrupted(tiny_cfg, tmp_path):
    cfg = tiny_cfg("train.epochs=3", "aug.reprob=0.5", "model.drop_path=0.2")  # exercises every RNG stream
    full = train(cfg, tmp_path / "full")

    def stop_after_two(epoch, record):
        if epoch == 2:
            raise _Stop

    with pytest.raises(_Stop):
        train(cfg, tmp_path / "cut", on_epoch_end=stop_after_two)
    assert load_checkpoint(tmp_path / "cut" / "checkpoints").epoch == 2
    resumed = train(cfg, tmp_path / "cut", resume=True)
    assert resumed["top1"] == full["top1"] and resumed["ema_top1"] == full["ema_top1"]
    a, b = load_checkpoint(tmp_path / "full" / "checkpoints"), load_checkpoint(tmp_path / "cut" / "checkpoints")
    for k, v in a.model_state.items():
        assert torch.equal(v, b.model_state[k]), k
    ma, mb = read_jsonl(tmp_path / "full" / "metrics.jsonl"), read_jsonl(tmp_path / "cut" / "metrics.jsonl")
    assert [r["train_loss"] for r in ma] == [r["train_loss"] for r in mb]


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tiny_cfg, tmp_path, monkeypatch):
    from lifevit.tasks.classification import criterion as losses

    calls = {"n": 0}
    original = losses.ClassificationCriterion.forward

    def nan_in_epoch_two(self, inputs, outputs, targets):
        calls["n"] += 1
        loss = original(self, inputs, outputs, targets)
        return loss * float("nan") if calls["n"] > 12 else loss  # 10 steps per epoch

    monkeypatch.setattr(losses.ClassificationCriterion, "forward", nan_in_epoch_two)
    # the 13th step is the 3rd of the 2nd epoch (epochs and steps count from 1)
    with pytest.raises(NonFiniteLossError, match="loss is nan at epoch 2, step 3.*last good checkpoint"):
        train(tiny_cfg("train.epochs=3"), tmp_path / "run")
    ckpt = load_checkpoint(tmp_path / "run" / "checkpoints")
    assert ckpt.epoch == 1 and load_training_state(ckpt)["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in ckpt.model_state.values())


def test_distillation_from_a_checkpoint_teacher(tiny_cfg, tmp_path):
    train(tiny_cfg("train.epochs=1"), tmp_path / "teacher")
    student = [
        "model.name=deit_tiny_distilled_patch16_224_life",
        "model.img_size=28",
        "model.in_chans=1",
        "model.kwargs={patch_size: 4, embed_dim: 24, depth: 1, num_heads: 2}",
        "train.epochs=1",
    ]
    for kind in ("hard", "soft"):
        s = train(tiny_cfg(*student, "distill.type=" + kind, f"distill.teacher={tmp_path / 'teacher'}"))
        assert s["model"] == "deit_tiny_distilled_patch16_224_life" and 0 <= s["top1"] <= 100
    with pytest.raises(ValueError, match="distillation token"):
        train(tiny_cfg("distill.type=hard", f"distill.teacher={tmp_path / 'teacher'}"))


def test_paper_recipe_path_timm_transforms_mixup_cutmix(tiny_cfg):
    """The DeiT recipe: PIL transforms with RandAugment and random erasing in a DataLoader, Mixup/CutMix."""
    cfg = tiny_cfg(
        "data.loader=timm",
        "aug.randaugment=rand-m9-mstd0.5-inc1-mmax9",
        "aug.mixup=0.8",
        "aug.cutmix=1.0",
        "aug.reprob=0.25",
        "aug.scale=[0.35, 1.0]",
        "train.epochs=1",
    )
    s1, s2 = train(cfg), train(cfg)
    assert s1["train_samples"] == 200 and s1["num_samples"] == 100
    assert s1["train_loss"] == s2["train_loss"]  # deterministic with the PIL pipeline too
