"""The `lifevit` command line edge."""

import shlex
import subprocess
import sys

import pytest

from lifevit.cli import build_parser, main


def test_every_subcommand_module_registers_a_parser():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert "profile" in sub.choices
    for name, p in sub.choices.items():
        assert p.get_default("func") is not None, f"`lifevit {name}` sets no func"


def test_no_command_prints_help_and_fails(capsys):
    assert main([]) == 2
    assert "usage: lifevit" in capsys.readouterr().out


def test_console_entry_point_runs():
    out = subprocess.run([sys.executable, "-m", "lifevit", "--help"], capture_output=True, text=True, check=True)
    assert "profile" in out.stdout


COMMON_TRAIN = (
    "--config c.yaml --set train.lr=1e-3 --set 'model.kwargs={depth: 2}' --output out --resume out --checkpoint w "
    "--data-root d --epochs 2 --batch-size 4 --lr 0.1 --seed 3 --device cpu --threads 1 --max-minutes 1.5 "
    "--no-progress --json"
)


@pytest.mark.parametrize("task", ["classify", "detect", "segment"])
def test_one_grammar_for_every_task(task):
    parser = build_parser()
    args = parser.parse_args([task, "train", *shlex.split(COMMON_TRAIN)])
    assert args.overrides == ["train.lr=1e-3", "model.kwargs={depth: 2}"]
    assert (str(args.config), str(args.output), str(args.resume), str(args.checkpoint)) == ("c.yaml", "out", "out", "w")
    assert (args.data_root, args.epochs, args.batch_size, args.lr, args.seed) == ("d", 2, 4, 0.1, 3)
    assert (args.device, args.threads, args.max_minutes, args.no_progress, args.json) == ("cpu", 1, 1.5, True, True)
    # every named flag names the same config key in every task
    assert {k: args._flag_keys[k] for k in ("epochs", "batch_size", "lr", "data_root")} == {
        "epochs": "train.epochs",
        "batch_size": "train.batch_size",
        "lr": "train.lr",
        "data_root": "data.root",
    }
    assert str(parser.parse_args([task, "eval", "--checkpoint", "run"]).checkpoint) == "run"
    args = parser.parse_args([task, "predict", "--checkpoint", "run", "--images", "a.png", "b", "--output", "o"])
    assert args.images == ["a.png", "b"] and str(args.output) == "o"
    for bad in ([task, "eval", "run"], [task, "predict", "run", "--images", "a.png", "--output", "o"]):
        with pytest.raises(SystemExit):  # the checkpoint is never positional
            parser.parse_args(bad)


def test_train_and_eval_are_aliases_of_classify():
    parser = build_parser()
    a = parser.parse_args(["train", "--epochs", "2"])
    b = parser.parse_args(["classify", "train", "--epochs", "2"])
    assert a.func is b.func and a._flag_keys == b._flag_keys
    assert (
        parser.parse_args(["eval", "--checkpoint", "r"]).func
        is parser.parse_args(["classify", "eval", "--checkpoint", "r"]).func
    )


def test_resume_and_a_different_output_are_refused(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_text("train: {epochs: 1}\n")
    assert main(["segment", "train", "--resume", str(tmp_path / "run"), "--output", str(tmp_path / "other")]) == 2
    assert "continues in place" in capsys.readouterr().err
