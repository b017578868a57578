"""Read checkpoints of the reference release (NeurAI-Lab/LIFE) into lifevit models.

The release trains DeiT models with a multi-scale qkv (its ``deit_*_ms`` models, ``MultiscaleQKV`` in
``life/models/deit/ms_qkv.py``) and SwinV2 models (``swinv2_*_ms``). Their parameters map one to one onto a
lifevit LIFE model built with the release's choices (:data:`lifevit.layers.RELEASE_OPTIONS`: bias-free pointwise
projections, one q/k/v norm); only the names and the pointwise layout differ:

=========================================  ==========================================  ==========================
release                                    lifevit                                     change
=========================================  ==========================================  ==========================
``...attn.qkv.scale1.{weight,bias}``       ``...attn.qkv.linear.{weight,bias}``        name
``...attn.qkv.scale{s}.depthwise.weight``  ``...attn.qkv.depthwise.{s-2}.weight``      name
``...attn.qkv.scale{s}.pointwise.weight``  ``...attn.qkv.pointwise.{s-2}.weight``      name, (o, i, 1, 1) -> (o, i)
``...attn.qkv.norm.{weight,bias}``         ``...attn.qkv.qkv_norm.{weight,bias}``      name
SwinV2 ``...attn.{q_bias,v_bias}``         (dropped)                                   unused by the release's
                                                                                       LIFE forward
SwinV2 ``layers.{i}.downsample``, ``head``  ``layers.{i+1}.downsample``, ``head.fc``   timm's SwinV2 remap
=========================================  ==========================================  ==========================

Every other name (patch embedding, class token, position embedding, norms, MLPs, heads) is the same in both.

The release gives the class token keys ``[k_1 k_1 k_1]`` (its scale-1 key copied into the scale-2/3 slots),
where lifevit's LIFE gives it ``[k_1 k_2 k_3]``. ``release_class_token_keys=True`` (the default here) switches
the model's LIFE layers to the release's behaviour (``LIFE(prefix_keys_from_scale1=True)``), so a model trained
with the release gives the same outputs in lifevit; ``False`` keeps lifevit's definition (e.g. to fine-tune).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Union

import torch
from torch import nn

from .layers import LIFE, RELEASE_OPTIONS, life_layers

__all__ = ["RELEASE_MODELS", "release_to_lifevit", "load_release_checkpoint", "use_release_options"]

# release model name -> lifevit model name (same architecture, same image size and patch / window)
RELEASE_MODELS: Dict[str, str] = {
    "deit_tiny_patch4_32_ms": "deit_tiny_patch4_32_life",
    "deit_tiny_patch4_64_ms": "deit_tiny_patch4_64_life",
    "deit_tiny_patch16_224_ms": "deit_tiny_patch16_224_life",
    "deit_small_patch4_32_ms": "deit_small_patch4_32_life",
    "deit_small_patch4_64_ms": "deit_small_patch4_64_life",
    "deit_small_patch16_224_ms": "deit_small_patch16_224_life",
    "deit_base_patch16_224_ms": "deit_base_patch16_224_life",
    "swinv2_tiny_window8_32_patch1_ms": "swinv2_tiny_patch1_window8_32_life",
    "swinv2_tiny_window8_64_patch1_ms": "swinv2_tiny_patch1_window8_64_life",
    "swinv2_tiny_window8_256_ms": "swinv2_tiny_window8_256_life",
}

_QKV = re.compile(r"^(?P<pre>.*\.attn\.qkv)\.(?P<rest>scale(?P<s>\d+)\.(?P<part>depthwise|pointwise)|scale1|norm)\.")


def _unwrap(checkpoint: Mapping[str, Any]) -> Mapping[str, torch.Tensor]:
    for key in ("model", "state_dict", "model_ema"):
        if key in checkpoint and isinstance(checkpoint[key], Mapping):
            return checkpoint[key]
    return checkpoint


def _timm_swin_name(key: str) -> str:
    """timm >= 0.9 merges patches at the start of the next stage and calls the classifier ``head.fc``."""
    m = re.match(r"^layers\.(\d+)\.downsample\.(.*)$", key)
    if m:
        return f"layers.{int(m[1]) + 1}.downsample.{m[2]}"
    return "head.fc." + key[len("head.") :] if key.startswith("head.") else key


def release_to_lifevit(state_dict: Mapping[str, Any]) -> Dict[str, torch.Tensor]:
    """Rename and reshape a release state dict (DeiT ``*_ms`` or SwinV2 ``*_ms``) into lifevit's names.

    Args:
        state_dict: The release's ``model.state_dict()``, or a checkpoint holding it under ``"model"``.

    Returns:
        A state dict for the matching lifevit LIFE model built with the release's options (see
        :func:`use_release_options`).

    Raises:
        ValueError: The state dict has no multi-scale qkv (``attn.qkv.scale1.weight``) keys.
    """
    state_dict = _unwrap(state_dict)
    if not any(k.endswith("attn.qkv.scale1.weight") for k in state_dict):
        sample = ", ".join(list(state_dict)[:4])
        raise ValueError(f"expected a NeurAI-Lab/LIFE state dict with '*.attn.qkv.scale1.weight' keys, got {sample}")
    swin = any(k.startswith("layers.") for k in state_dict)
    ms_attn = {m["pre"][: -len(".qkv")] for m in map(_QKV.match, state_dict) if m}  # "...attn" with a LIFE
    out: Dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        m = _QKV.match(key)
        if m:
            leaf = key[m.end() :]
            if m["rest"] == "scale1":
                key = f"{m['pre']}.linear.{leaf}"
            elif m["rest"] == "norm":
                key = f"{m['pre']}.qkv_norm.{leaf}"
            else:
                key = f"{m['pre']}.{m['part']}.{int(m['s']) - 2}.{leaf}"
                if m["part"] == "pointwise":
                    value = value.reshape(value.shape[0], value.shape[1])  # 1x1 conv (o, i, 1, 1) -> (o, i)
        elif any(b in key for b in ("relative_position_index", "relative_coords_table", "attn_mask")):
            continue  # buffers the model computes itself
        elif swin and key.rsplit(".", 1)[0] in ms_attn and key.rsplit(".", 1)[1] in ("q_bias", "v_bias"):
            continue  # created but never used by the release's multi-scale window attention
        out[key] = value
    if swin and "layers.0.downsample.reduction.weight" in out:  # the release downsamples at the end of a stage
        out = {_timm_swin_name(k): v for k, v in out.items()}
    return out


@torch.no_grad()
def use_release_options(model: nn.Module, release_class_token_keys: bool = True) -> nn.Module:
    """Rebuild every LIFE layer of ``model`` with the release's options (in place; weights are re-initialised).

    Args:
        model: A lifevit model with LIFE layers.
        release_class_token_keys: Give prefix tokens the release's keys ``[k_1 k_1 k_1]``.

    Raises:
        ValueError: ``model`` has no LIFE layer.
    """
    parents = [(parent, name) for parent in model.modules() for name, child in parent.named_children()]
    targets = [(p, n) for p, n in parents if isinstance(getattr(p, n), LIFE)]
    if not targets:
        raise ValueError(f"{type(model).__name__} has no LIFE layers to give the release's options")
    for parent, name in targets:
        old: LIFE = getattr(parent, name)
        norm = old.qkv_norm if old.qkv_norm is not None else old.q_norm
        new = LIFE(
            old.dim,
            num_prefix_tokens=old.num_prefix_tokens,
            kernel_sizes=old.kernel_sizes,
            qkv_bias=old.linear.bias is not None,
            out_dim=old.out_dim,
            norm_layer=None if norm is None else type(norm),
            grid_size=old.grid_size,
            prefix_keys_from_scale1=release_class_token_keys,
            device=old.linear.weight.device,
            dtype=old.linear.weight.dtype,
            **RELEASE_OPTIONS,
        )
        setattr(parent, name, new)
    return model


def load_release_checkpoint(
    checkpoint: Union[str, Path, Mapping[str, Any]],
    model_name: Optional[str] = None,
    release_class_token_keys: bool = True,
    **model_kwargs: Any,
) -> nn.Module:
    """Build the lifevit model matching a release checkpoint and load its weights (every key, strictly).

    Args:
        checkpoint: A file written by the release (``torch.save``; its ``"model"`` entry is used when present) or a
            state dict.
        model_name: The lifevit model (a key of :data:`RELEASE_MODELS` is translated). Default: inferred from the
            checkpoint's ``"args"`` entry (the release saves its ``args.model``) when present.
        release_class_token_keys: Reproduce the release's class-token keys (see the module docstring).
        **model_kwargs: Passed to ``timm.create_model`` (e.g. ``num_classes``; default: the checkpoint's head size).

    Returns:
        The model, in eval mode.

    Raises:
        FileNotFoundError: ``checkpoint`` is a path that does not exist.
        ValueError: No model name could be found, or the weights do not fit the model.
    """
    import timm

    from . import models  # noqa: F401  (registers lifevit's models)

    if isinstance(checkpoint, (str, Path)):
        if not Path(checkpoint).is_file():
            raise FileNotFoundError(f"no release checkpoint at {checkpoint}")
        checkpoint = torch.load(checkpoint, map_location="cpu", weights_only=False)
    if model_name is None:
        args = checkpoint.get("args") if isinstance(checkpoint, Mapping) else None
        model_name = getattr(args, "model", None) or (args.get("model") if isinstance(args, Mapping) else None)
        if model_name is None:
            raise ValueError(f"the checkpoint names no model; pass model_name (one of {', '.join(RELEASE_MODELS)})")
    model_name = RELEASE_MODELS.get(model_name, model_name)
    state = release_to_lifevit(checkpoint)
    head = state.get("head.weight", state.get("head.fc.weight"))
    if head is not None:
        model_kwargs.setdefault("num_classes", head.shape[0])
    model = timm.create_model(model_name, **model_kwargs)
    use_release_options(model, release_class_token_keys)
    if any(k.endswith("qkv_norm.weight") for k in state):  # the release built with --qkv-norm
        for layer in life_layers(model):
            layer.qkv_norm = nn.LayerNorm(layer.out_dim)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith(("relative_position_index", "relative_coords_table"))]
    if missing or unexpected:
        raise ValueError(
            f"the release weights do not fit {model_name}: missing {missing[:6]}{'...' if len(missing) > 6 else ''}, "
            f"unexpected {unexpected[:6]}{'...' if len(unexpected) > 6 else ''}"
        )
    return model.eval()
