"""``lifevit export``: a run becomes a timm folder that timm's own loaders read back (locally and "from the Hub")."""

import json

import pytest
import timm
import torch

import lifevit  # noqa: F401
from lifevit.cli import main
from lifevit.engine.checkpoint import save_checkpoint
from lifevit.hub import export_run, push_to_hub

CLASSES = [f"class_{i}" for i in range(4)]


def _make_run(root, name="vit_lite_patch4_28_life", model_kwargs=None, ema=False):
    """A run folder as training leaves it: checkpoints/last.safetensors, summary.json, config.yaml."""
    base = {"num_classes": 4}
    if name.startswith("swinv2"):
        base["depths"] = (1, 1, 1, 1)
    elif not name.startswith("resnet"):
        base["depth"] = 2
    model_kwargs = dict(base, **(model_kwargs or {}))
    torch.manual_seed(1)
    model = timm.create_model(name, **model_kwargs)
    c, h, _ = model.pretrained_cfg["input_size"]
    meta = {
        "task": "classification",
        "model": name,
        "model_kwargs": model_kwargs,
        "dataset": "fashion_mnist",
        "classes": CLASSES,
        "mean": [0.286] * c,
        "std": [0.353] * c,
        "img_size": h,
        "in_chans": c,
    }
    ema_model = None
    if ema:
        ema_model = timm.create_model(name, **model_kwargs)
    save_checkpoint(root / "checkpoints", model=model, meta=meta, epoch=3, ema=ema_model)
    (root / "summary.json").write_text(json.dumps({"model": name, "dataset": "fashion_mnist", "top1": 81.25}))
    (root / "config.yaml").write_text("train:\n  epochs: 3\n  lr: 0.001\n")
    return model.eval(), ema_model


def test_export_folder_loads_with_timm_local_dir_and_gives_the_same_outputs(tmp_path):
    model, _ = _make_run(tmp_path / "run")
    out = tmp_path / "export"
    result = export_run(tmp_path / "run", out)
    assert {"config.json", "model.safetensors", "README.md"} <= set(result["files"])
    config = json.loads((out / "config.json").read_text())
    assert config["architecture"] == "vit_lite_patch4_28_life"
    assert config["num_classes"] == 4 and config["label_names"] == CLASSES
    assert config["model_args"]["depth"] == 2
    assert config["pretrained_cfg"]["input_size"] == [1, 28, 28]
    assert config["pretrained_cfg"]["mean"] == [0.286] and config["pretrained_cfg"]["fixed_input_size"] is True

    loaded = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))
    data_cfg = timm.data.resolve_data_config(model=loaded)
    assert tuple(data_cfg["input_size"]) == (1, 28, 28) and tuple(data_cfg["mean"]) == (0.286,)
    assert loaded.pretrained_cfg["label_names"] == CLASSES

    card = (out / "README.md").read_text()
    assert "library_name: timm" in card and "fashion_mnist" in card
    assert "| top1 | 81.25 |" in card and "epochs: 3" in card
    assert 'timm.create_model("local-dir:' in card


def test_hf_hub_name_loads_by_the_same_code_path(tmp_path, monkeypatch):
    model, _ = _make_run(tmp_path / "run")
    out = tmp_path / "export"
    export_run(tmp_path / "run", out, repo_id="someone/lite-life")
    assert 'timm.create_model("hf-hub:someone/lite-life", pretrained=True)' in (out / "README.md").read_text()

    # the Hub download is replaced by the exported folder: no server is contacted
    import huggingface_hub

    def fake_download(repo_id, filename, revision=None, cache_dir=None, **kwargs):
        assert repo_id == "someone/lite-life"
        return str(out / filename)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    monkeypatch.setattr(timm.models._hub, "hf_hub_download", fake_download)
    loaded = timm.create_model("hf-hub:someone/lite-life", pretrained=True).eval()
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))


def test_ema_weights_are_exported_on_request(tmp_path):
    _, ema = _make_run(tmp_path / "run", ema=True)
    export_run(tmp_path / "run", tmp_path / "export", use_ema=True)
    loaded = timm.create_model(f"local-dir:{tmp_path / 'export'}", pretrained=True).eval()
    x = torch.randn(1, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), ema.eval()(x))


def test_cli_refuses_a_non_empty_output_with_one_line(tmp_path, capsys):
    _make_run(tmp_path / "run")
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    assert main(["export", str(tmp_path / "run"), "--output", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not empty" in err[0] and str(out) in err[0]
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]


def test_cli_missing_run_names_what_was_expected(tmp_path, capsys):
    assert main(["export", str(tmp_path / "nothing"), "--output", str(tmp_path / "o")]) == 2
    assert "no checkpoint at" in capsys.readouterr().err


def test_cli_push_to_hub_uploads_the_folder(tmp_path, monkeypatch, capsys):
    _make_run(tmp_path / "run")
    calls = {}

    class FakeApi:
        def __init__(self, token=None, library_name=None, **kwargs):
            calls["library_name"] = library_name

        def create_repo(self, repo_id, private=False, exist_ok=False, **kwargs):
            calls["create_repo"] = (repo_id, private, exist_ok)
            return type("Repo", (), {"repo_id": repo_id})()

        def upload_folder(self, repo_id, folder_path, commit_message=None, **kwargs):
            calls["upload"] = (repo_id, sorted(p.name for p in __import__("pathlib").Path(folder_path).iterdir()))
            return type("Commit", (), {"commit_url": f"https://huggingface.co/{repo_id}/commit/abc"})()

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    out = tmp_path / "export"
    code = main(["export", str(tmp_path / "run"), "--output", str(out), "--push-to-hub", "me/lite", "--private"])
    assert code == 0
    assert calls["create_repo"] == ("me/lite", True, True)
    assert calls["upload"] == ("me/lite", ["README.md", "config.json", "model.safetensors"])
    assert "hf-hub:me/lite" in capsys.readouterr().out


def test_push_to_hub_rejects_bad_input(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a folder written by lifevit export"):
        push_to_hub(tmp_path, "me/x")
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_text("")
    with pytest.raises(ValueError, match="USER/REPO"):
        push_to_hub(tmp_path, "no-slash")


@pytest.mark.parametrize(
    "name",
    [
        "vit_lite_patch4_28_life",
        *(pytest.param(n, marks=pytest.mark.slow) for n in ("resnet18_lite_28", "t2t_vit_12_32_life")),
        pytest.param("swinv2_tiny_patch1_window8_32_life", marks=pytest.mark.slow),
    ],
)
def test_onnx_export_matches_pytorch_in_onnxruntime(tmp_path, name):
    pytest.importorskip("onnxscript")
    _make_run(tmp_path / "run", name=name)
    result = export_run(tmp_path / "run", tmp_path / "export", onnx=True)
    assert (tmp_path / "export" / "model.onnx").is_file()
    if pytest.importorskip("onnxruntime"):
        assert result["onnx_checked"] and result["onnx_max_abs_diff"] < 1e-3
