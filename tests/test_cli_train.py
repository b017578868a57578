"""``lifevit classify train`` / ``eval`` / ``predict`` (and the ``lifevit train`` / ``eval`` aliases) and ``compare``
end to end on a tiny Fashion-MNIST fixture (real IDX files)."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from lifevit.cli import main
from lifevit.data.fashion_mnist import write_fashion_mnist

TINY = [
    "--set",
    "model.kwargs={embed_dim: 24, depth: 1, num_heads: 2, mlp_ratio: 1.0}",
    "--set",
    "train.tensorboard=false",
    "--set",
    "aug.hflip=0",
    "--batch-size",
    "20",
    "--threads",
    "1",
    "--no-progress",
]


def _images(n_per_class, seed):
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(10), n_per_class)
    images = rng.integers(0, 60, (len(labels), 28, 28), dtype=np.uint8)
    for i, c in enumerate(labels):
        r, q = divmod(int(c), 4)
        images[i, 7 * r : 7 * r + 7, 7 * q : 7 * q + 7] = 220
    return images, labels


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return write_fashion_mnist(tmp_path_factory.mktemp("fm"), _images(20, 0), _images(10, 1))


def _train(root, out, *extra):
    return main(
        [
            "classify",
            "train",
            "--model",
            "vit_lite_patch4_28",
            "--dataset",
            "fashion_mnist",
            "--data-root",
            str(root),
            "--epochs",
            "1",
            "--output",
            str(out),
            *TINY,
            *extra,
        ]
    )


def test_train_eval_and_refusal_to_overwrite(root, tmp_path, capsys):
    assert _train(root, tmp_path / "run", "--train-samples", "100") == 0
    out = capsys.readouterr().out
    assert "vit_lite_patch4_28 on fashion_mnist (100 train images, 1 epochs" in out and "top-1" in out
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["train_samples"] == 100 and summary["epochs"] == 1
    assert _train(root, tmp_path / "run") == 2
    assert "already exists and is not empty" in capsys.readouterr().err

    assert main(["eval", "--checkpoint", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert f"top-1 {summary['top1']:.2f}%" in out and "Ankle boot" in out
    # the same through the task's grammar, with a weights file
    weights = tmp_path / "run" / "checkpoints" / "last.safetensors"
    assert main(["classify", "eval", "--checkpoint", str(weights), "--output", str(tmp_path / "ev"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["top1"] == pytest.approx(summary["top1"])
    with pytest.raises(SystemExit):
        main(["classify", "eval", str(weights)])  # the checkpoint is never positional

    from PIL import Image

    images, labels = _images(1, 3)
    for i in range(2):
        Image.fromarray(images[i]).save(tmp_path / f"img{i}.png")
    preds = tmp_path / "preds.json"
    args = ["classify", "predict", "--checkpoint", str(tmp_path / "run"), "--images", str(tmp_path / "img0.png")]
    assert main([*args, str(tmp_path / "img1.png"), "--output", str(preds), "--top-k", "3"]) == 0
    got = json.loads(preds.read_text())
    assert [r["image"] for r in got] == [str(tmp_path / "img0.png"), str(tmp_path / "img1.png")]
    assert [len(r["top"]) for r in got] == [3, 3] and all(isinstance(t["class"], str) for r in got for t in r["top"])
    assert all(0.0 <= t["probability"] <= 1.0 for r in got for t in r["top"])

    # eval's default folder: <run>/eval-<the checkpoint's data set>-<split>
    assert (tmp_path / "run" / "eval-fashion_mnist-test" / "confusion.png").is_file(), sorted(
        p.name for p in (tmp_path / "run").iterdir()
    )
    ev = json.loads((tmp_path / "run" / "eval-fashion_mnist-test" / "eval.json").read_text())
    assert ev["top1"] == pytest.approx(summary["top1"]) and len(ev["per_class_acc"]) == 10


def test_config_errors_are_clean(root, tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  lrr: 0.1\n")
    assert _train(root, tmp_path / "r", "--config", str(bad)) == 2
    err = capsys.readouterr().err
    assert "unknown config key(s) 'train.lrr'" in err and "valid keys of train: epochs, batch_size" in err
    assert _train(root, tmp_path / "r1", "--set", "train.epochs=2.5") == 2
    assert "config key 'train.epochs' expects an integer" in capsys.readouterr().err
    assert _train(root, tmp_path / "r2", "--config", str(tmp_path / "missing.yaml")) == 2
    assert "missing.yaml not found" in capsys.readouterr().err
    assert (
        main(["train", "--dataset", "cifar10", "--data-root", str(tmp_path / "none"), "--output", str(tmp_path / "r3")])
        == 2
    )
    assert "cifar10 not found" in capsys.readouterr().err


def test_resume_extends_a_finished_run(root, tmp_path):
    assert _train(root, tmp_path / "run") == 0
    assert main(["train", "--resume", str(tmp_path / "run"), "--epochs", "2", "--no-progress"]) == 0
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["epochs"] == 2
    # the resumed run's config.yaml is the base; the flag changed it and the new value was written back
    import yaml

    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["train"]["epochs"] == 2 and saved["train"]["batch_size"] == 20
    assert not (tmp_path / "run" / "config.json").exists()


def test_checkpoint_initialises_a_new_run(root, tmp_path):
    assert _train(root, tmp_path / "a", "--train-samples", "50") == 0
    assert _train(root, tmp_path / "b", "--train-samples", "50", "--checkpoint", str(tmp_path / "a")) == 0
    summary = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert summary["epochs"] == 1
    assert main(["classify", "train", "--resume", str(tmp_path / "b"), "--output", str(tmp_path / "c")]) == 2


def test_compare_trains_then_reads_runs(root, tmp_path, capsys):
    args = [
        "compare",
        "--models",
        "vit_lite_patch4_28",
        "vit_lite_patch4_28_life",
        "--dataset",
        "fashion_mnist",
        "--data-root",
        str(root),
        "--epochs",
        "1",
        "--runs-dir",
        str(tmp_path / "runs"),
        *TINY,
    ]
    assert main(args) == 0
    first = capsys.readouterr().out
    assert "| model | #params (M) | GMACs | top-1 fashion_mnist (%) |" in first
    assert "| vit_lite_patch4_28 |" in first and "| vit_lite_patch4_28_life |" in first
    mtime = (tmp_path / "runs" / "fashion_mnist" / "vit_lite_patch4_28-s0" / "summary.json").stat().st_mtime
    assert main(args) == 0  # finished runs are read, not retrained
    assert capsys.readouterr().out.splitlines()[:4] == first.splitlines()[:4]
    assert (tmp_path / "runs" / "fashion_mnist" / "vit_lite_patch4_28-s0" / "summary.json").stat().st_mtime == mtime
    assert (tmp_path / "runs" / "comparison.md").read_text().startswith("| model |")


@pytest.mark.slow
def test_killed_and_resumed_run_equals_uninterrupted(root, tmp_path):
    """SIGKILL a real training process after its first checkpoint, resume it, compare with an uninterrupted run."""
    common = [
        "--model",
        "vit_lite_patch4_28",
        "--dataset",
        "fashion_mnist",
        "--data-root",
        str(root),
        "--epochs",
        "4",
        *TINY,
        "--set",
        "model.drop_path=0.2",
        "--set",
        "aug.reprob=0.3",
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    base = [sys.executable, "-m", "lifevit", "train", *common]
    subprocess.run([*base, "--output", str(tmp_path / "full")], check=True, env=env, capture_output=True)
    proc = subprocess.Popen(
        [*base, "--output", str(tmp_path / "killed"), "--set", "train.checkpoint_interval=1"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    ckpt = tmp_path / "killed" / "checkpoints" / "last.safetensors"
    deadline = time.time() + 300
    while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "killed" / "summary.json").exists(), "the run finished before it could be killed"
    subprocess.run(
        [*base[:4], "--resume", str(tmp_path / "killed"), "--no-progress"], check=True, env=env, capture_output=True
    )
    full = json.loads((tmp_path / "full" / "summary.json").read_text())
    resumed = json.loads((tmp_path / "killed" / "summary.json").read_text())
    for key in ("top1", "top5", "ema_top1", "train_loss"):
        assert resumed[key] == full[key], key
    lines = lambda p: [json.loads(x)["train_loss"] for x in (p / "metrics.jsonl").read_text().splitlines()]  # noqa: E731
    assert lines(tmp_path / "killed") == lines(tmp_path / "full")
