import json
from pathlib import Path

import numpy as np
import pytest
import torch

from lifevit.engine import MetricsLogger, plot_confusion_matrix, plot_curves, prepare_output_dir, write_json
from lifevit.engine.plots import curve_groups

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_prepare_output_dir_never_overwrites(tmp_path):
    run = tmp_path / "a" / "run"
    assert prepare_output_dir(run) == "new"
    assert run.is_dir()
    assert prepare_output_dir(run) == "new"  # still empty: fine
    (run / "summary.json").write_text("{}")
    with pytest.raises(ValueError, match="already exists and is not empty.*--resume"):
        prepare_output_dir(run)
    with pytest.raises(ValueError, match="cannot resume.*no checkpoints/last.safetensors"):
        prepare_output_dir(run, resume=True)
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "last.safetensors").write_bytes(b"")
    assert prepare_output_dir(run, resume=True) == "resume"
    assert (run / "summary.json").is_file()  # nothing removed
    with pytest.raises(FileNotFoundError, match="does not exist"):
        prepare_output_dir(tmp_path / "nope", resume=True)


def test_a_run_stopped_before_its_first_checkpoint_starts_again(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text("train: {}\n")
    (run / "metrics.jsonl").write_text("")
    assert prepare_output_dir(run) == "restart"
    assert not any(run.iterdir())  # only the engine's own files were there, and they are gone
    (run / "config.yaml").write_text("train: {}\n")
    (run / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="already exists and is not empty"):
        prepare_output_dir(run)  # someone else's file: never touched
    assert (run / "notes.txt").read_text() == "mine"


def test_metrics_logger_appends_and_truncates(tmp_path):
    with MetricsLogger(tmp_path, tensorboard=True) as log:
        for e in range(1, 5):
            log.log({"epoch": e, "train_loss": 1.0 / e, "eval_top1": 10.0 * e})
        assert [r["epoch"] for r in log.records()] == [1, 2, 3, 4]
        log.truncate(3)
        log.log({"epoch": 3, "train_loss": 0.0})
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3]
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))


def test_write_json_converts_values(tmp_path):
    path = write_json(tmp_path / "x" / "s.json", {"p": Path("a/b"), "t": torch.tensor(2.5), "a": np.arange(3)})
    assert json.loads(path.read_text()) == {"p": "a/b", "t": 2.5, "a": [0, 1, 2]}


def test_plot_curves_groups_and_writes_png(tmp_path):
    records = [
        {"epoch": e, "train_loss": 2.0 / e, "eval_top1": 50.0 + e, "lr": 1e-3, "train_seconds": 3.0}
        for e in range(1, 4)
    ]
    assert curve_groups(records) == {
        "loss": ["train_loss"],
        "accuracy / metric": ["eval_top1"],
        "learning rate": ["lr"],
    }
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    out = plot_curves(tmp_path / "metrics.jsonl", tmp_path / "curves.png")
    assert out.read_bytes()[:8] == PNG_MAGIC
    (tmp_path / "empty.jsonl").write_text(json.dumps({"epoch": 1}) + "\n")
    with pytest.raises(ValueError, match="no numeric metrics"):
        plot_curves(tmp_path / "empty.jsonl", tmp_path / "e.png")


def test_confusion_matrix_png_and_shape_check(tmp_path):
    out = plot_confusion_matrix(np.eye(3) * 4 + 1, ["a", "b", "c"], tmp_path / "cm.png")
    assert out.read_bytes()[:8] == PNG_MAGIC
    with pytest.raises(ValueError, match=r"shape \(3, 3\) does not match 2 class names"):
        plot_confusion_matrix(np.eye(3), ["a", "b"], tmp_path / "bad.png")
