"""The engine's guarantees, shown for each of the three tasks at tiny sizes.

Resume equality, 2 gloo processes == 1 process, the NaN stop, never overwriting, SIGINT / SIGTERM, restarting a run
killed before its first checkpoint, resuming a finished run, and checkpoints that cannot run code.
"""

from __future__ import annotations

import gzip
import json
import pickle
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from lifevit.config import build_config, config_to_dict
from lifevit.engine import NonFiniteLossError, fit, load_checkpoint
from lifevit.engine.rundir import read_jsonl

TASKS = ("classification", "detection", "segmentation")


# ------------------------------------------------------------------------------------------------ fixtures
def _write_fashion(folder: Path, n: int, seed: int) -> Path:
    """Gzipped IDX files (Fashion-MNIST's real format): class c is a bright square in cell c of a 4 x 4 grid."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for split in ("train", "t10k"):
        labels = (np.arange(n) % 10).astype(np.uint8)
        images = rng.integers(0, 60, size=(n, 28, 28), dtype=np.uint8)
        for i, c in enumerate(labels):
            r, q = divmod(int(c), 4)
            images[i, 7 * r : 7 * r + 7, 7 * q : 7 * q + 7] = 220
        with gzip.open(folder / f"{split}-images-idx3-ubyte.gz", "wb") as f:
            f.write(struct.pack(">HBB3I", 0, 0x08, 3, n, 28, 28) + images.tobytes())
        with gzip.open(folder / f"{split}-labels-idx1-ubyte.gz", "wb") as f:
            f.write(struct.pack(">HBBI", 0, 0x08, 1, n) + labels.tobytes())
    return folder


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    from lifevit.data.canvas import make_canvas_dataset

    fashion = _write_fashion(tmp_path_factory.mktemp("fashion"), 40, 0)
    canvas = tmp_path_factory.mktemp("canvas")
    make_canvas_dataset(
        canvas, num_train=16, num_val=4, canvas_size=48, max_items=2, seed=1, fashion_mnist_root=fashion
    )
    return {"fashion": fashion, "canvas": canvas}


TINY_VIT = {"embed_dim": 24, "depth": 1, "num_heads": 2, "mlp_ratio": 1.0}
COMMON = {"epochs": 2, "threads": 1, "progress": False, "tensorboard": False, "seed": 3}


def tiny_config(task: str, roots, **train):
    """A seconds-long run config of ``task`` (train keys overridable)."""
    train = {**COMMON, **train}
    if task == "classification":
        from lifevit.tasks.classification import ClassificationConfig

        data = {
            "model": {"name": "vit_lite_patch4_28_life", "kwargs": TINY_VIT, "drop_path": 0.0},
            "data": {"dataset": "fashion_mnist", "root": str(roots["fashion"]), "eval_batch_size": 20},
            "aug": {"hflip": 0.5, "crop_padding": 2},
            "train": {"batch_size": 8, "lr": 0.01, "warmup_epochs": 1, **train},
        }
        return build_config(ClassificationConfig, base=data)
    if task == "detection":
        from lifevit.tasks.detection.config import DetectConfig

        data = {
            "data": {"root": str(roots["canvas"]), "img_size": 48},
            "model": {
                "backbone": "vit_lite_patch4_28_life",
                "backbone_kwargs": {"patch_size": 8, "in_chans": 3, **TINY_VIT},
                "head": "encdec",
                "hidden_dim": 24,
                "num_heads": 2,
                "enc_layers": 1,
                "dec_layers": 1,
                "num_queries": 4,
            },
            "inference": {"batch_size": 4},
            "train": {"batch_size": 4, "ema": True, **train},
        }
        return build_config(DetectConfig, base=data)
    from lifevit.tasks.segmentation import SegmentationConfig

    cs = roots["canvas"] / "cityscapes"
    data = {
        "model": {
            "backbone": "vit_lite_patch4_28_life",
            "decoder": "linear",
            "num_classes": 11,
            "img_size": [48, 48],
            "drop_path_rate": 0.0,
            "backbone_kwargs": {"patch_size": 8, **TINY_VIT},
        },
        "data": {
            "root": str(cs),
            "label_table": str(cs / "canvas_classes.json"),
            "base_size": [48, 48],
            "scale_range": [1.0, 1.0],
            "crop_size": [32, 32],
            "workers": 0,
        },
        "inference": {"mode": "whole", "window": [48, 48], "batch_size": 4},
        "train": {"batch_size": 4, "opt": "adamw", "lr": 2e-3, **train},
    }
    return build_config(SegmentationConfig, base=data)


def make_task(task: str, cfg):
    if task == "classification":
        from lifevit.tasks.classification import ClassificationTask

        return ClassificationTask(cfg)
    if task == "detection":
        from lifevit.tasks.detection.task import DetectionTask

        return DetectionTask(cfg)
    from lifevit.tasks.segmentation.task import SegmentationTask

    return SegmentationTask(cfg)


def _numbers(records):
    """metrics.jsonl without the timing entries (which differ between any two runs)."""
    return [{k: v for k, v in r.items() if "seconds" not in k and "per_s" not in k} for r in records]


class _Kill(Exception):
    pass


# ------------------------------------------------------------------------------------------------ the guarantees
@pytest.mark.parametrize("task", TASKS)
def test_killed_and_resumed_equals_uninterrupted_and_finished_resume_changes_nothing(task, roots, tmp_path):
    cfg = tiny_config(task, roots)
    whole = fit(make_task(task, cfg), tmp_path / "whole")

    def kill(epoch, record):
        if epoch == 1:
            raise _Kill  # as if the process died right after the epoch-1 checkpoint

    with pytest.raises(_Kill):
        fit(make_task(task, cfg), tmp_path / "cut", on_epoch_end=kill)
    assert load_checkpoint(tmp_path / "cut").epoch == 1
    resumed = fit(make_task(task, cfg), tmp_path / "cut", resume=True)
    assert _numbers(read_jsonl(tmp_path / "cut" / "metrics.jsonl")) == _numbers(
        read_jsonl(tmp_path / "whole" / "metrics.jsonl")
    )
    a, b = load_checkpoint(tmp_path / "whole"), load_checkpoint(tmp_path / "cut")
    for k, v in a.model_state.items():
        assert torch.equal(v, b.model_state[k]), k
    assert resumed[cfg_score(task)] == whole[cfg_score(task)]

    before = (tmp_path / "whole" / "summary.json").read_bytes()
    again = fit(make_task(task, cfg), tmp_path / "whole", resume=True)
    assert (tmp_path / "whole" / "summary.json").read_bytes() == before
    assert again == json.loads(before)


def cfg_score(task: str) -> str:
    return {"classification": "top1", "detection": "map_50", "segmentation": "mIoU"}[task]


@pytest.mark.parametrize("task", TASKS)
def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(task, roots, tmp_path, monkeypatch):
    cfg = tiny_config(task, roots, epochs=3)
    t = make_task(task, cfg)
    step = t.train_step
    calls = {"n": 0}

    def poisoned(model, batch, device):
        loss, logs, n = step(model, batch, device)
        calls["n"] += 1
        return (loss * float("nan") if calls["n"] > steps_per_epoch else loss), logs, n

    steps_per_epoch = {"classification": 5, "detection": 4, "segmentation": 4}[task]
    monkeypatch.setattr(t, "train_step", poisoned)
    with pytest.raises(NonFiniteLossError, match="epoch 2, step 1"):
        fit(t, tmp_path / "run")
    ckpt = load_checkpoint(tmp_path / "run")
    assert ckpt.epoch == 1 and all(torch.isfinite(v).all() for v in ckpt.model_state.values() if v.is_floating_point())


@pytest.mark.parametrize("task", TASKS)
def test_existing_output_is_never_overwritten_and_an_unstarted_run_restarts(task, roots, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="already exists and is not empty"):
        fit(make_task(task, tiny_config(task, roots, epochs=1)), out)
    assert (out / "notes.txt").read_text() == "mine" and sorted(p.name for p in out.iterdir()) == ["notes.txt"]

    # killed before its first checkpoint: the engine's own files only, no weights -> the same command starts again
    died = tmp_path / "died"
    died.mkdir()
    (died / "config.yaml").write_text("{}\n")
    (died / "metrics.jsonl").write_text("")
    (died / "checkpoints").mkdir()
    summary = fit(make_task(task, tiny_config(task, roots, epochs=1)), died)
    assert summary["epochs"] == 1 and load_checkpoint(died).epoch == 1


def _cli(task: str):
    return {"classification": ["classify"], "detection": ["detect"], "segmentation": ["segment"]}[task]


def _config_file(task, roots, path: Path, **train) -> Path:
    path.write_text(yaml.safe_dump(config_to_dict(tiny_config(task, roots, **train))))
    return path


@pytest.mark.parametrize(
    "task,sig", [("classification", signal.SIGINT), ("detection", signal.SIGTERM), ("segmentation", signal.SIGTERM)]
)
def test_a_signal_stops_with_one_line_and_keeps_the_last_checkpoint(task, sig, roots, tmp_path):
    cfg_file = _config_file(task, roots, tmp_path / "cfg.yaml", epochs=200)
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "lifevit", *_cli(task), "train", "--config", str(cfg_file), "--output", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while not (out / "checkpoints" / "last.state.json").is_file() and time.time() < deadline:
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    time.sleep(0.5)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    lines = [ln for ln in err.splitlines() if "interrupted" in ln]
    assert proc.returncode == 130, err[-2000:]
    assert len(lines) == 1 and f"lifevit {_cli(task)[0]} train --resume {out}" in lines[0], err[-2000:]
    assert "Traceback" not in err
    ckpt = load_checkpoint(out)
    assert 1 <= ckpt.epoch < 200


@pytest.mark.parametrize("task", TASKS)
def test_two_gloo_processes_equal_one_process(task, roots, torchrun_train, tmp_path):
    # no per-process randomness: no augmentation (the streams differ per process), drop-path off; SGD, because
    # Adam turns float noise in an exactly-zero gradient into full-size steps
    common = {"opt": "sgd", "lr": 0.05, "ema": False}
    overrides = {
        "classification": ["aug.hflip=0.0", "aug.crop_padding=0"],
        "detection": ["data.augment=none"],
        "segmentation": ["data.hflip=0.0", "data.crop_size=[48, 48]"],
    }[task]
    one_cfg = tiny_config(task, roots, batch_size=4, **common)
    one_cfg = build_config(type(one_cfg), base=config_to_dict(one_cfg), overrides=overrides)
    fit(make_task(task, one_cfg), tmp_path / "one")
    two = build_config(type(one_cfg), base=config_to_dict(one_cfg), overrides=["train.batch_size=2"])
    cfg_file = tmp_path / "two.yaml"
    cfg_file.write_text(yaml.safe_dump(config_to_dict(two)))
    proc = torchrun_train(_cli(task), cfg_file, tmp_path / "two")
    assert "grad strides do not match" not in proc.stderr
    a, b = load_checkpoint(tmp_path / "one"), load_checkpoint(tmp_path / "two")
    assert a.epoch == b.epoch == 2
    for k, v in a.model_state.items():
        torch.testing.assert_close(b.model_state[k], v, rtol=1e-4, atol=1e-5, msg=k)
    ma, mb = read_jsonl(tmp_path / "one" / "metrics.jsonl"), read_jsonl(tmp_path / "two" / "metrics.jsonl")
    assert [r["train_loss"] for r in mb] == pytest.approx([r["train_loss"] for r in ma], rel=1e-4)


# --------------------------------------------------------------------------------- checkpoints cannot run code
class _Payload:
    """Unpickling this creates the marker file: what a planted pickle could do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "pwned"))


def test_a_planted_pickle_is_never_executed(roots, tmp_path):
    from lifevit.explain.loading import load_explainable
    from lifevit.tasks.classification import load_model

    cfg = tiny_config("classification", roots, epochs=1)
    run = tmp_path / "run"
    fit(make_task("classification", cfg), run)
    marker = tmp_path / "marker"
    ckpts = run / "checkpoints"
    for name in ("last.train.pt", "best.train.pt"):  # the legacy file name the old reader opened
        (ckpts / name).write_bytes(pickle.dumps(_Payload(marker)))
    load_model(run)  # eval / predict
    load_explainable(run)  # explain
    assert not marker.exists()
    # resume: the JSON + safetensors state replaced by the pickle alone -> refused with a message, nothing run
    (ckpts / "last.state.json").unlink()
    (ckpts / "last.state.safetensors").unlink()
    with pytest.raises(ValueError, match="never opened"):
        fit(
            make_task(
                "classification", build_config(type(cfg), base=config_to_dict(cfg), overrides=["train.epochs=2"])
            ),
            run,
            resume=True,
        )
    # a pickle planted under the safetensors names is refused as unreadable
    (ckpts / "last.state.json").write_text(json.dumps({"id": load_checkpoint(run).id}))
    (ckpts / "last.state.safetensors").write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(ValueError, match="not readable"):
        fit(
            make_task(
                "classification", build_config(type(cfg), base=config_to_dict(cfg), overrides=["train.epochs=2"])
            ),
            run,
            resume=True,
        )
    (ckpts / "best.safetensors").write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(ValueError, match="not a readable lifevit checkpoint"):
        load_model(ckpts / "best.safetensors")
    assert not marker.exists()


def test_truncated_or_empty_weights_name_the_file_and_point_to_best(roots, tmp_path):
    from lifevit.tasks.classification import load_model

    run = tmp_path / "run"
    fit(make_task("classification", tiny_config("classification", roots, epochs=1)), run)
    last = run / "checkpoints" / "last.safetensors"
    data = last.read_bytes()
    for broken in (data[: len(data) // 2], b"", b"garbage" * 10):
        last.write_bytes(broken)
        with pytest.raises(ValueError) as err:
            load_model(run)
        assert str(last) in str(err.value) and "best.safetensors" in str(err.value)


def test_segment_predict_refuses_a_huge_image_at_once_instead_of_running_for_minutes(roots, tmp_path, capsys):
    from PIL import Image

    from lifevit.cli import main

    run = tmp_path / "run"
    fit(make_task("segmentation", tiny_config("segmentation", roots, epochs=1)), run)
    big = tmp_path / "big.png"
    Image.new("RGB", (4000, 3000), (90, 120, 30)).save(big)
    start = time.perf_counter()
    code = main(["segment", "predict", "--checkpoint", str(run), "--images", str(big), "--output", str(tmp_path / "p")])
    assert code == 2 and time.perf_counter() - start < 60
    err = capsys.readouterr().err.strip()
    assert str(big) in err and "4000 x 3000" in err and "--mode slide" in err and "\n" not in err
