import os

import pytest
import timm
import torch
from safetensors.torch import load_file
from timm.utils import ModelEmaV3

import lifevit  # noqa: F401
from lifevit.engine import create_model_from_checkpoint, load_checkpoint, load_training_state, save_checkpoint

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
    assert not hasattr(ckpt, "training_state")  # the weights file alone: no training state is read
    assert (tmp_path / "last.state.json").is_file() and (tmp_path / "last.state.safetensors").is_file()
    assert not list(tmp_path.glob("*.pt"))  # nothing pickled
    state = load_training_state(ckpt)
    assert state["epoch"] == 4 and state["extra"] == {"k": 3}
    assert set(state["optimizer"]) == {"state", "param_groups"}
    restored = torch.optim.AdamW(model.parameters(), lr=1e-3)
    restored.load_state_dict(state["optimizer"])
    for pid, entry in opt.state_dict()["state"].items():
        for key, value in entry.items():
            got = restored.state_dict()["state"][pid][key]
            assert torch.equal(torch.as_tensor(got), torch.as_tensor(value)), (pid, key)
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


def test_mismatched_training_state_is_refused(tmp_path):
    model, opt, _ = _trained_pair()
    save_checkpoint(tmp_path, model=model, meta=META, epoch=1, optimizer=opt)
    stale = {n: (tmp_path / n).read_bytes() for n in ("last.state.json", "last.state.safetensors")}
    save_checkpoint(tmp_path, model=model, meta=META, epoch=2, optimizer=opt)
    for n, data in stale.items():
        (tmp_path / n).write_bytes(data)  # as if the run died between the moves
    ckpt = load_checkpoint(tmp_path / "last.safetensors")
    assert ckpt.epoch == 2  # the weights still load
    with pytest.raises(ValueError, match="belongs to other weights"):
        load_training_state(ckpt)
    (tmp_path / "last.state.json").write_text("{not json")
    with pytest.raises(ValueError, match="not readable"):
        load_training_state(ckpt)


def test_legacy_pickle_is_never_opened(tmp_path):
    model, _, _ = _trained_pair()
    save_checkpoint(tmp_path, model=model, meta=META, epoch=1)
    (tmp_path / "last.train.pt").write_bytes(b"not opened")
    with pytest.raises(ValueError, match="pickled training state.*never opened"):
        load_training_state(load_checkpoint(tmp_path))


def test_errors_name_what_was_expected(tmp_path):
    model, _, _ = _trained_pair()
    with pytest.raises(ValueError, match="must contain 'task'"):
        save_checkpoint(tmp_path, model=model, meta={"model": "x"}, epoch=0)
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        load_checkpoint(tmp_path / "missing")
    path = save_checkpoint(tmp_path, model=model, meta=META, epoch=0, name="best")
    assert not (tmp_path / "best.state.json").exists() and not (tmp_path / "best.state.safetensors").exists()
    with pytest.raises(ValueError, match="no training state"):
        load_training_state(load_checkpoint(path))
    for content in (b"", b"garbage bytes"):
        bad = tmp_path / "bad" / "last.safetensors"
        bad.parent.mkdir(exist_ok=True)
        bad.write_bytes(content)
        with pytest.raises(ValueError, match="not a readable lifevit checkpoint"):
            load_checkpoint(bad)
    with pytest.raises(ValueError, match="no EMA weights"):
        create_model_from_checkpoint(path, use_ema=True)


def test_a_lifevit_0_1_checkpoint_rebuilds_with_its_layout(tmp_path):
    from lifevit.layers import LIFEVIT_0_1_OPTIONS, life_options_of_state_dict

    old = timm.create_model("vit_lite_patch4_28_life", num_classes=7, life_options=dict(LIFEVIT_0_1_OPTIONS)).eval()
    assert life_options_of_state_dict(old.state_dict()) == {"pointwise_bias": None}  # it has pointwise biases
    new = timm.create_model("vit_lite_patch4_28_life", num_classes=7)
    assert life_options_of_state_dict(new.state_dict()) == {}
    path = save_checkpoint(tmp_path, model=old, meta=META, epoch=1)
    rebuilt = create_model_from_checkpoint(path).eval()  # today's defaults have no pointwise bias: still loads
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), old(x))
