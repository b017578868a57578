import os

import pytest
import timm
import torch
from safetensors.torch import load_file
from timm.utils import ModelEmaV3

import lifevit  # noqa: F401
from lifevit.engine import create_model_from_checkpoint, load_checkpoint, save_checkpoint

META = {"task": "classification", "model": "vit_lite_patch4_28_life", "model_kwargs": {"num_classes": 7}}


def _trained_pair():
    model = timm.create_model("vit_lite_patch4_28_life", num_classes=7)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(2, 1, 28, 28)).sum().backward()
    opt.step()
    ema = ModelEmaV3(model, decay=0.5)
    with torch.no_grad():
        model.head.weight.add_(1.0)  # model and EMA now differ
    return model, opt, ema


def test_roundtrip_rebuilds_model_from_file_alone(tmp_path):
    model, opt, ema = _trained_pair()
    path = save_checkpoint(tmp_path, model=model, meta=META, epoch=4, optimizer=opt, ema=ema, extra={"k": 3})
    assert path == tmp_path / "last.safetensors"
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]
    ckpt = load_checkpoint(tmp_path)  # a folder resolves to last.safetensors
    assert ckpt.epoch == 4 and ckpt.meta == META
    assert ckpt.training_state["extra"] == {"k": 3}
    assert set(ckpt.training_state["optimizer"]) == {"state", "param_groups"}
    for k, v in model.state_dict().items():
        assert torch.equal(ckpt.model_state[k], v)
    rebuilt = create_model_from_checkpoint(path).eval()
    rebuilt_ema = create_model_from_checkpoint(path, use_ema=True).eval()
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(rebuilt(x), model.eval()(x), atol=1e-6)
        assert torch.allclose(rebuilt_ema(x), ema.module.eval()(x), atol=1e-6)
        assert not torch.allclose(rebuilt(x), rebuilt_ema(x))
    # the weights file is plain safetensors: model keys unprefixed, EMA under "ema::"
    raw = load_file(str(path))
    assert "head.weight" in raw and "ema::head.weight" in raw


def test_mismatched_training_state_is_ignored(tmp_path, caplog):
    model, opt, _ = _trained_pair()
    save_checkpoint(tmp_path, model=model, meta=META, epoch=1, optimizer=opt)
    stale = (tmp_path / "last.train.pt").read_bytes()
    save_checkpoint(tmp_path, model=model, meta=META, epoch=2, optimizer=opt)
    (tmp_path / "last.train.pt").write_bytes(stale)  # as if the run died between the two moves
    ckpt = load_checkpoint(tmp_path / "last.safetensors")
    assert ckpt.epoch == 2 and ckpt.training_state is None
    assert "does not belong" in caplog.text


def test_errors_name_what_was_expected(tmp_path):
    model, _, _ = _trained_pair()
    with pytest.raises(ValueError, match="must contain 'task'"):
        save_checkpoint(tmp_path, model=model, meta={"model": "x"}, epoch=0)
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        load_checkpoint(tmp_path / "missing")
    path = save_checkpoint(tmp_path, model=model, meta=META, epoch=0, name="best")
    assert not (tmp_path / "best.train.pt").exists()
    with pytest.raises(ValueError, match="no EMA weights"):
        create_model_from_checkpoint(path, use_ema=True)
