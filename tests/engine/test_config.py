from pathlib import Path

import pytest
import timm

import lifevit  # noqa: F401  (registers the models)
from lifevit.config import TrainConfig, apply_overrides, config_from_dict, config_to_dict, load_config

PAPER = {"cifar10", "cifar100", "tiny_imagenet", "imagenet100"}
CONFIGS = sorted(
    p
    for p in (Path(__file__).resolve().parents[2] / "configs").glob("*/*.yaml")
    if p.parent.name in PAPER | {"fashion_mnist"}
)


def test_defaults_and_roundtrip():
    cfg = load_config()
    assert isinstance(cfg, TrainConfig) and cfg.model.name == "vit_lite_patch4_28_life"
    assert config_from_dict(config_to_dict(cfg)) == cfg


def test_overrides_parse_yaml_values_and_merge_deeply():
    data = apply_overrides({"optim": {"lr": 1.0, "opt": "sgd"}}, ["optim.lr=2e-3", "model.kwargs={depth: 2}"])
    assert data["model"] == {"kwargs": {"depth": 2}} and data["optim"]["opt"] == "sgd"  # merged, not replaced
    cfg = config_from_dict(data)
    assert cfg.optim.lr == 2e-3 and isinstance(cfg.optim.lr, float)
    assert cfg.optim.opt == "sgd" and cfg.model.kwargs == {"depth": 2}


def test_unknown_keys_and_bad_values_are_errors(tmp_path):
    with pytest.raises(ValueError, match=r"unknown config key\(s\) 'optim.lrr'; valid keys of optim: opt, lr"):
        config_from_dict({"optim": {"lrr": 1}})
    with pytest.raises(ValueError, match="unknown config key\\(s\\) 'epoch'"):
        config_from_dict({"epoch": 3})
    with pytest.raises(ValueError, match="needs distill.teacher"):
        config_from_dict({"distill": {"type": "hard"}})
    with pytest.raises(ValueError, match="config key 'optim.lr' expects a number, got 'fast'"):
        config_from_dict({"optim": {"lr": "fast"}})
    with pytest.raises(ValueError, match="override must look like key=value"):
        load_config(overrides=["epochs"])
    f = tmp_path / "list.yaml"
    f.write_text("- 1\n- 2\n")
    with pytest.raises(ValueError, match="expected a YAML mapping"):
        load_config(f)


def test_file_then_flags(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("epochs: 7\noptim: {lr: 0.1}\n")
    cfg = load_config(f, ["optim.lr=0.5"])
    assert cfg.epochs == 7 and cfg.optim.lr == 0.5 and cfg.optim.opt == "adamw"


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
        assert cfg.epochs == 300 and cfg.aug.mixup == 0.8 and cfg.aug.randaugment


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
