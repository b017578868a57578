"""One command grammar: the same flags for every task, and ``lifevit --help`` without torch."""

import subprocess
import sys

import pytest

from lifevit.cli import build_parser
from lifevit.cli._grammar import COMMON_TRAIN_FLAGS

TASK_COMMANDS = ("classify", "detect", "segment")


def _subparser(parser, *names):
    for name in names:
        action = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
        parser = action.choices[name]
    return parser


def _options(parser):
    return {s for a in parser._actions for s in a.option_strings}


def test_help_answers_without_importing_torch():
    code = (
        "import sys, lifevit_cli\n"
        "try:\n    lifevit_cli.main(['--help'])\nexcept SystemExit:\n    pass\n"
        "print('TORCH' if any(m == 'torch' or m.startswith('torch.') for m in sys.modules) else 'NO-TORCH')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "classify" in out.stdout and "detect" in out.stdout and "segment" in out.stdout
    assert out.stdout.strip().endswith("NO-TORCH")


@pytest.mark.parametrize("task", TASK_COMMANDS)
def test_every_task_has_train_eval_predict_with_the_same_flags(task):
    parser = build_parser()
    train = _options(_subparser(parser, task, "train"))
    common = {"--config", "--set", "--output", "--resume", "--checkpoint", "--no-progress", "--json"}
    common |= {"--" + d.replace("_", "-") for d in COMMON_TRAIN_FLAGS}
    assert common <= train
    for command in ("eval", "predict"):
        assert "--checkpoint" in _options(_subparser(parser, task, command))
    assert {"--images", "--output"} <= _options(_subparser(parser, task, "predict"))


@pytest.mark.parametrize("task", TASK_COMMANDS)
def test_one_precedence_defaults_config_flags_set(task, tmp_path):
    from lifevit.cli._grammar import config_from_args
    from lifevit.tasks.classification import ClassificationConfig
    from lifevit.tasks.detection.config import DetectConfig
    from lifevit.tasks.segmentation import SegmentationConfig

    cls = {"classify": ClassificationConfig, "detect": DetectConfig, "segment": SegmentationConfig}[task]
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("train: {epochs: 7, lr: 0.5, seed: 4}\n")
    args = build_parser().parse_args(
        [task, "train", "--config", str(cfg_file), "--epochs", "9", "--lr", "0.25", "--set", "train.lr=0.125"]
    )
    cfg = config_from_args(cls, args)
    assert (cfg.train.epochs, cfg.train.lr, cfg.train.seed) == (9, 0.125, 4)  # file < flags < --set


def test_set_reaches_any_depth_and_reads_yaml():
    from lifevit.config import build_config
    from lifevit.tasks.classification import ClassificationConfig

    cfg = build_config(ClassificationConfig, overrides=["model.kwargs.depth=3", "aug.scale=[0.5, 1.0]"])
    assert cfg.model.kwargs == {"depth": 3} and cfg.aug.scale == [0.5, 1.0]


@pytest.mark.parametrize(
    "argv,message",
    [
        (["train", "--set", "train.epochs=2.5"], "expects an integer, got 2.5"),
        (["train", "--device", "tpu"], "train.device must be auto, cpu, cuda or cuda:N, got 'tpu'"),
        (["train", "--threads", "0"], "train.threads must be >= 1"),
        (["detect", "train", "--epochs", "0"], "train.epochs must be >= 1, got 0"),
        (["segment", "train", "--set", "train.sched=linear"], "train.sched must be one of"),
        (["train", "--set", "train.opt=bogus"], "not an optimizer timm knows"),
        (["train", "--set", "nosuch.key=1"], "unknown config key(s) 'nosuch'"),
    ],
)
def test_bad_input_is_one_line_and_leaves_no_folder(argv, message, tmp_path, capsys):
    from lifevit.cli import main

    out = tmp_path / "run"
    assert main([*argv, "--output", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not out.exists()


def test_malformed_yaml_names_the_file_and_line(tmp_path, capsys):
    from lifevit.cli import main

    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  epochs: [1, 2\n")
    assert main(["segment", "train", "--config", str(bad), "--output", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert f"config file {bad} is not valid YAML" in err and "line" in err and "\n" not in err


def test_dense_tasks_take_life_options_and_refuse_unknown_ones():
    from lifevit.config import LIFE_OPTION_NAMES
    from lifevit.layers import LIFE_OPTIONS
    from lifevit.tasks.detection.config import ModelConfig as DetModel
    from lifevit.tasks.segmentation.config import ModelConfig as SegModel

    assert LIFE_OPTION_NAMES == LIFE_OPTIONS
    for cls in (DetModel, SegModel):
        assert cls(life_options={"pointwise_bias": True}).life_options == {"pointwise_bias": True}
        given_to_timm = cls(backbone_kwargs={"life_options": {"pointwise_bias": True}, "depth": 1})
        assert given_to_timm.life_options == {"pointwise_bias": True} and given_to_timm.backbone_kwargs == {"depth": 1}
        with pytest.raises(ValueError, match="unknown LIFE option.*'bias'.*valid: pointwise_bias"):
            cls(life_options={"bias": True})


def test_life_options_reach_the_dense_models_and_a_plain_backbone_ignores_them():
    from lifevit.layers.attention import life_layers
    from lifevit.tasks.detection.config import ModelConfig as DetModel
    from lifevit.tasks.detection.model import build_detector
    from lifevit.tasks.segmentation.config import ModelConfig as SegModel
    from lifevit.tasks.segmentation.model import build_segmenter

    opts = {"pointwise_init": "trunc_normal", "pointwise_bias": True}
    small = {"depth": 1, "patch_size": 7}
    for backbone in ("vit_lite_patch4_28", "vit_lite_patch4_28_life"):
        seg = build_segmenter(SegModel(backbone=backbone, decoder="linear", num_classes=2, img_size=(28, 28),
                                       in_chans=1, life_options=opts, backbone_kwargs=small))  # fmt: skip
        det = build_detector(DetModel(backbone=backbone, backbone_kwargs={**small, "in_chans": 1}, dec_layers=1,
                                      life_options=opts), num_classes=2, img_size=28)  # fmt: skip
        assert len(list(life_layers(seg))) == (1 if backbone.endswith("_life") else 0)
        assert len(list(life_layers(det))) == (2 if backbone.endswith("_life") else 1)  # + the encdec_life encoder
        for layer in (*life_layers(seg), *life_layers(det)):
            assert layer.pointwise_init == "trunc_normal" and all(pw.bias is not None for pw in layer.pointwise)
