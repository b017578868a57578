"""Two CPU processes (torchrun, gloo) with batch B each == one process with batch 2B."""

import pytest
import torch
import yaml

from lifevit.config import config_to_dict
from lifevit.engine import fit, load_checkpoint, load_training_state
from lifevit.engine.rundir import read_jsonl
from lifevit.tasks.classification import ClassificationTask


def test_two_gloo_processes_match_one_process(tiny_cfg, torchrun_train, tmp_path):
    # no per-process randomness (drop-path off); SGD, because Adam turns float noise in the exactly-zero gradient
    # of the key bias into full-size steps, which would hide what this test checks: sharding + gradient averaging
    common = (
        "train.epochs=2",
        "model.drop_path=0.0",
        "aug.crop_padding=2",
        "aug.hflip=0.5",
        "train.opt=sgd",
        "train.lr=0.05",
    )
    single = tiny_cfg(*common, "train.batch_size=20")
    fit(ClassificationTask(single), tmp_path / "one")
    two = tiny_cfg(*common, "train.batch_size=10")
    cfg_file = tmp_path / "ddp.yaml"
    cfg_file.write_text(yaml.safe_dump(config_to_dict(two)))
    torchrun_train((), cfg_file, tmp_path / "two")
    a = load_checkpoint(tmp_path / "one" / "checkpoints")
    b = load_checkpoint(tmp_path / "two" / "checkpoints")
    assert a.epoch == b.epoch == 2
    for k, v in a.model_state.items():
        torch.testing.assert_close(b.model_state[k], v, rtol=1e-4, atol=1e-5, msg=k)
    for k, v in a.ema_state.items():
        torch.testing.assert_close(b.ema_state[k], v, rtol=1e-4, atol=1e-5, msg=k)
    ma, mb = read_jsonl(tmp_path / "one" / "metrics.jsonl"), read_jsonl(tmp_path / "two" / "metrics.jsonl")
    assert [r["train_loss"] for r in mb] == pytest.approx([r["train_loss"] for r in ma], rel=1e-4)
    assert [r["eval_top1"] for r in mb] == pytest.approx([r["eval_top1"] for r in ma], abs=1.01)  # <= 1 image of 100
    assert load_training_state(b)["rng"].keys() == {"0", "1"}  # every process's RNG state is kept
