"""Share a trained run the way timm users do: a Hugging Face Hub-ready folder in timm's own format.

:func:`export_run` turns a classification run folder (or checkpoint) into

* ``config.json``: timm's config (``architecture``, ``num_classes``, ``label_names``, ``model_args`` to rebuild the
  architecture, ``pretrained_cfg`` with the run's input size and normalisation), written by timm's own
  ``save_for_hf`` so that timm reads it back;
* ``model.safetensors``: the weights (the EMA weights with ``use_ema=True``);
* ``README.md``: a model card with the data set, the recipe, the metrics and how to load it;
* ``model.onnx`` (``onnx=True``): the model with a dynamic batch axis, checked against onnxruntime when installed.

Loading needs lifevit's models registered, then timm's own loaders::

    import lifevit, timm
    model = timm.create_model("local-dir:FOLDER", pretrained=True)     # the folder
    model = timm.create_model("hf-hub:USER/REPO", pretrained=True)     # after push_to_hub(FOLDER, "USER/REPO")

:func:`push_to_hub` uploads the folder with ``huggingface_hub`` (needs a token: ``huggingface-cli login`` or
``HF_TOKEN``).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

import torch
from torch import nn

__all__ = ["export_run", "push_to_hub", "model_card"]

_logger = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]


def _read_json(path: Path) -> Dict[str, Any]:
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        _logger.warning("could not read %s; the model card will lack its values", path)
        return {}


def _run_folder(weights: Path) -> Path:
    return weights.parent.parent if weights.parent.name == "checkpoints" else weights.parent


def _fmt_metric(value: Any) -> str:
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def model_card(
    meta: Dict[str, Any],
    summary: Dict[str, Any],
    config_text: str,
    repo_id: Optional[str],
    num_params: int,
    input_size: Tuple[int, int, int],
) -> str:
    """The ``README.md`` of an exported run: what it is, what it was trained on and how, its metrics, how to load it."""
    name = meta["model"]
    dataset = meta.get("dataset") or summary.get("dataset") or "unknown"
    classes = meta.get("classes") or []
    c, h, w = input_size
    source = f"hf-hub:{repo_id}" if repo_id else "local-dir:PATH/TO/THIS/FOLDER"
    front = ["---", "tags:", "- image-classification", "- timm", "- lifevit", "library_name: timm", "license: mit"]
    if dataset != "unknown":
        front += ["datasets:", f"- {dataset}"]
    front.append("---")
    metric_keys = [k for k in ("top1", "top5", "best_top1", "loss", "epochs", "best_epoch") if k in summary]
    lines = [
        *front,
        f"# {name}" + (f" trained on {dataset}" if dataset != "unknown" else ""),
        "",
        f"An image classifier trained with [lifevit](https://github.com/) (LIFE, the Local InFormation Enhancer, "
        f"Akkaya et al., Pattern Recognition 2024) on top of timm. Architecture `{name}`, "
        f"{num_params / 1e6:.2f} M parameters, {len(classes) or meta.get('num_classes', '?')} classes, input "
        f"{c}x{h}x{w}.",
        "",
        "## Data set",
        "",
        f"`{dataset}`"
        + (f", classes: {', '.join(map(str, classes[:20]))}{' ...' if len(classes) > 20 else ''}." if classes else "."),
        f"Normalisation: mean {tuple(meta.get('mean') or ())}, std {tuple(meta.get('std') or ())}.",
        "",
        "## Metrics",
        "",
    ]
    if metric_keys:
        lines += ["| metric | value |", "|---|---|"] + [f"| {k} | {_fmt_metric(summary[k])} |" for k in metric_keys]
    else:
        lines.append("No metrics were recorded with this run.")
    lines += ["", "## Recipe", ""]
    if config_text.strip():
        lines += ["The run's configuration (`config.yaml`):", "", "```yaml", config_text.rstrip(), "```"]
    else:
        lines.append("The run folder held no config.yaml.")
    lines += [
        "",
        "## How to use",
        "",
        "```python",
        "import lifevit  # registers the lifevit architectures in timm",
        "import timm",
        "import torch",
        "",
        f'model = timm.create_model("{source}", pretrained=True).eval()',
        "transform = timm.data.create_transform(**timm.data.resolve_data_config(model=model))",
        "# logits = model(transform(image).unsqueeze(0))",
        "```",
        "",
        "`pip install lifevit` provides the architecture; timm loads the weights and this folder's config.",
        "",
    ]
    return "\n".join(lines)


def _check_same_outputs(model: nn.Module, other: nn.Module, x: torch.Tensor, what: str) -> float:
    with torch.no_grad():
        a, b = model(x), other(x)
    diff = (a - b).abs().max().item()
    if not torch.allclose(a, b, rtol=1e-4, atol=1e-5):
        raise RuntimeError(f"{what} gives other outputs than the run's model (max abs difference {diff:.3g})")
    return diff


def _export_onnx(model: nn.Module, x: torch.Tensor, path: Path) -> Dict[str, Any]:
    """Write ``path`` with a dynamic batch axis; compare it with the model in onnxruntime when installed."""
    batch = torch.export.Dim("batch", min=1, max=1024)
    torch.onnx.export(
        model,
        (x,),
        str(path),
        input_names=["input"],
        output_names=["logits"],
        dynamic_shapes={"x": {0: batch}},
        dynamo=True,
        external_data=False,
    )
    result: Dict[str, Any] = {"onnx": str(path), "onnx_checked": False}
    try:
        import onnxruntime as ort
    except ImportError:
        _logger.info("onnxruntime is not installed: %s was not checked", path)
        return result
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x2 = torch.randn(3, *x.shape[1:])  # another batch size than the one exported
    (out,) = session.run(None, {"input": x2.numpy()})
    with torch.no_grad():
        ref = model(x2)
    diff = (torch.from_numpy(out) - ref).abs().max().item()
    if not torch.allclose(torch.from_numpy(out), ref, rtol=1e-3, atol=1e-4):
        raise RuntimeError(f"the ONNX model gives other outputs than PyTorch in onnxruntime (max abs diff {diff:.3g})")
    result.update(onnx_checked=True, onnx_max_abs_diff=diff)
    return result


def export_run(
    run: PathLike,
    output: PathLike,
    *,
    use_ema: bool = False,
    onnx: bool = False,
    repo_id: Optional[str] = None,
) -> Dict[str, Any]:
    """Write a Hub-ready timm folder for a trained classification run and check that timm loads it back.

    Args:
        run: A run folder, or a checkpoint written by lifevit (``.safetensors``).
        output: The folder to create; it must not exist or be empty.
        use_ema: Export the EMA weights instead of the model's.
        onnx: Also write ``model.onnx`` (checked against onnxruntime when it is installed).
        repo_id: Hub repository the folder is meant for (only used in the model card's loading example).

    Returns:
        Paths written and the checks made (``max_abs_diff`` of the reloaded model, ONNX results).
    """
    import timm
    from timm.models import save_for_hf

    from lifevit.engine.checkpoint import create_model_from_checkpoint, load_checkpoint

    output = Path(output)
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise ValueError(f"--output must be a new or empty folder; {output} already exists and is not empty")
    ckpt = load_checkpoint(run)
    meta = ckpt.meta
    if meta.get("task", "classification") != "classification":
        raise ValueError(
            f"lifevit export writes image classifiers; the checkpoint {ckpt.path} is a {meta['task']!r} run"
        )
    model = create_model_from_checkpoint(ckpt, use_ema=use_ema).eval()
    run_dir = _run_folder(Path(ckpt.path))
    summary = _read_json(run_dir / "summary.json")
    config_path = run_dir / "config.yaml"
    config_text = config_path.read_text() if config_path.is_file() else ""

    in_chans = int(meta.get("in_chans") or model.pretrained_cfg["input_size"][0])
    img_size = meta.get("img_size") or model.pretrained_cfg["input_size"][1:]
    img_size = (int(img_size), int(img_size)) if isinstance(img_size, (int, float)) else tuple(map(int, img_size))
    data_config: Dict[str, Any] = {"input_size": (in_chans, *img_size)}
    for key in ("mean", "std"):
        if meta.get(key) is not None:
            data_config[key] = tuple(float(v) for v in meta[key])
    model_config: Dict[str, Any] = {}
    classes = meta.get("classes")
    if classes and len(classes) == model.num_classes:
        model_config["label_names"] = [str(c) for c in classes]
    model_config["pretrained_cfg"] = {
        "description": f"{meta['model']} trained with lifevit on {meta.get('dataset') or summary.get('dataset') or '?'}"
    }

    output.mkdir(parents=True, exist_ok=True)
    save_for_hf(model, output, model_config=model_config, safe_serialization=True, data_config=data_config)
    num_params = sum(p.numel() for p in model.parameters())
    (output / "README.md").write_text(
        model_card(meta, summary, config_text, repo_id, num_params, (in_chans, *img_size)), encoding="utf-8"
    )

    # the folder must give back the run's model through timm's own loader
    x = torch.randn(2, in_chans, *img_size)
    reloaded = timm.create_model(f"local-dir:{output}", pretrained=True).eval()
    result: Dict[str, Any] = {
        "output": str(output),
        "files": sorted(p.name for p in output.iterdir()),
        "model": meta["model"],
        "weights": "ema" if use_ema else "model",
        "max_abs_diff": _check_same_outputs(model, reloaded, x, f"timm.create_model('local-dir:{output}')"),
    }
    if onnx:
        result.update(_export_onnx(model, x, output / "model.onnx"))
        result["files"] = sorted(p.name for p in output.iterdir())
    return result


def push_to_hub(
    folder: PathLike,
    repo_id: str,
    *,
    private: bool = False,
    commit_message: str = "Add model",
    token: Optional[str] = None,
) -> str:
    """Upload an exported folder to the Hugging Face Hub repository ``repo_id`` (created if missing).

    Returns:
        The URL of the commit.
    """
    folder = Path(folder)
    if not (folder / "config.json").is_file() or not (folder / "model.safetensors").is_file():
        raise FileNotFoundError(
            f"{folder} is not a folder written by lifevit export (no config.json / model.safetensors)"
        )
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise ValueError(f"repo_id must be 'USER/REPO' (or 'ORG/REPO'), got {repo_id!r}")
    try:
        from huggingface_hub import HfApi
    except ImportError as err:
        raise ValueError("--push-to-hub needs huggingface_hub: pip install huggingface_hub") from err
    api = HfApi(token=token, library_name="lifevit")
    repo = api.create_repo(repo_id, private=private, exist_ok=True)
    commit = api.upload_folder(
        repo_id=getattr(repo, "repo_id", repo_id), folder_path=str(folder), commit_message=commit_message
    )
    return str(getattr(commit, "commit_url", commit))
