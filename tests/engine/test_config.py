from pathlib import Path

import pytest
import timm

import lifevit  # noqa: F401  (registers the models)
from lifevit.config import TrainConfig, apply_overrides, build_config, config_to_dict, dataclass_from_dict
from lifevit.tasks.classification import ClassificationConfig

PAPER = {"cifar10", "cifar100", "tiny_imagenet", "imagenet100"}
CONFIGS = sorted(
    p
    for p in (Path(__file__).resolve().parents[2] / "configs").glob("*/*.yaml")
    if p.parent.name in PAPER | {"fashion_mnist"}
)


def config_from_dict(data):
    return dataclass_from_dict(ClassificationConfig, data)


def load_config(path=None, overrides=()):
    return build_config(ClassificationConfig, path, overrides)


def test_defaults_and_roundtrip():
    cfg = load_config()
    assert isinstance(cfg, ClassificationConfig) and cfg.model.name == "vit_lite_patch4_28_life"
    assert isinstance(cfg.train, TrainConfig)
    assert config_from_dict(config_to_dict(cfg)) == cfg


def test_overrides_parse_yaml_values_and_merge_deeply():
    data = apply_overrides({"train": {"lr": 1.0, "opt": "sgd"}}, ["train.lr=2e-3", "model.kwargs={depth: 2}"])
    assert data["model"] == {"kwargs": {"depth": 2}} and data["train"]["opt"] == "sgd"  # merged, not replaced
    cfg = config_from_dict(data)
    assert cfg.train.lr == 2e-3 and isinstance(cfg.train.lr, float)
    assert cfg.train.opt == "sgd" and cfg.model.kwargs == {"depth": 2}
    # any depth
    assert apply_overrides({}, ["a.b.c.d=1"]) == {"a": {"b": {"c": {"d": 1}}}}
    # a partial train section keeps the task's train defaults (classification: EMA on, clipping at 1.0)
    assert cfg.train.ema is True and cfg.train.clip_grad == 1.0


def test_unknown_keys_and_bad_values_are_errors(tmp_path):
    with pytest.raises(ValueError, match=r"unknown config key\(s\) 'train.lrr'; valid keys of train: epochs, batch_"):
        config_from_dict({"train": {"lrr": 1}})
    with pytest.raises(ValueError, match="unknown config key\\(s\\) 'epoch'"):
        config_from_dict({"epoch": 3})
    with pytest.raises(ValueError, match="needs distill.teacher"):
        config_from_dict({"distill": {"type": "hard"}})
    with pytest.raises(ValueError, match="config key 'train.lr' expects a number, got 'fast'"):
        config_from_dict({"train": {"lr": "fast"}})
    with pytest.raises(ValueError, match="config key 'train.epochs' expects an integer, got 2.5"):
        config_from_dict({"train": {"epochs": 2.5}})
    with pytest.raises(ValueError, match="config key 'train.device' expects a string, got 0"):
        config_from_dict({"train": {"device": 0}})
    with pytest.raises(ValueError, match="--set expects KEY=VALUE"):
        load_config(overrides=["epochs"])
    f = tmp_path / "list.yaml"
    f.write_text("- 1\n- 2\n")
    with pytest.raises(ValueError, match="expected a mapping of sections"):
        load_config(f)
    with pytest.raises(FileNotFoundError, match="not found"):
        load_config(tmp_path / "missing.yaml")


def test_file_then_flags(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("name: a label\ntrain: {epochs: 7, lr: 0.1}\n")
    cfg = load_config(f, ["train.lr=0.5"])
    assert cfg.train.epochs == 7 and cfg.train.lr == 0.5 and cfg.train.opt == "adamw"
    # the one precedence: defaults < base (a resumed run's config) < file < flags < --set
    base = {"train": {"epochs": 3, "seed": 5, "lr": 0.2, "batch_size": 8, "opt": "sgd"}}
    cfg = build_config(ClassificationConfig, f, ["train.batch_size=32"], base=base, flags={"train.batch_size": 16})
    assert (cfg.train.seed, cfg.train.opt) == (5, "sgd")  # from base
    assert (cfg.train.epochs, cfg.train.lr) == (7, 0.1)  # the file beats base
    assert cfg.train.batch_size == 32  # --set beats flags
    cfg = build_config(ClassificationConfig, f, base=base, flags={"train.lr": 0.3, "train.batch_size": 16})
    assert (cfg.train.lr, cfg.train.batch_size) == (0.3, 16)  # flags beat the file and base


def test_paper_table_configs_cover_every_row():
    rows = {(p.parent.name, p.stem) for p in CONFIGS if p.parent.name in PAPER}
    for ds in PAPER:
        for m in ("deit_tiny", "deit_small", "t2t_vit_12", "swinv2_tiny"):
            assert (ds, m) in rows and (ds, m + "_life") in rows, (ds, m)
        assert (ds, "resnet18") in rows and (ds, "resnet50") in rows


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_every_classification_config_loads_and_names_a_registered_model(path):
    cfg = load_config(path)
    assert cfg.model.name in timm.list_models()
    assert cfg.data.dataset == path.parent.name
    if path.parent.name in PAPER:
        assert cfg.train.epochs == 300 and cfg.aug.mixup == 0.8 and cfg.aug.randaugment


@pytest.mark.parametrize("bad", ["model.kwargs={patch_size:6}", "model.kwargs={depth: null}"])
def test_model_kwargs_that_timm_would_drop_are_errors(bad):
    # "{patch_size:6}" is YAML for {"patch_size:6": None}; timm would silently build the default model
    with pytest.raises(ValueError, match="in YAML write"):
        config_from_dict(apply_overrides({}, [bad]))


def test_task_configs_check_backbone_kwargs():
    from lifevit.tasks.detection.config import ModelConfig as DetectionModel
    from lifevit.tasks.segmentation.config import ModelConfig as SegmentationModel

    for cls in (DetectionModel, SegmentationModel):
        assert cls(backbone_kwargs={"patch_size": 6}).backbone_kwargs == {"patch_size": 6}
        with pytest.raises(ValueError, match="model.backbone_kwargs"):
            cls(backbone_kwargs={"patch_size:6": None})
