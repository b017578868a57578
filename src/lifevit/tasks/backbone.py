"""The one dense-backbone adapter of detection and segmentation: a timm ViT / DeiT or SwinV2 (with or without LIFE)
as a source of feature maps.

ViT-style models (``blocks`` + ``num_prefix_tokens``) give one map per selected block: the patch tokens of that
block, final norm applied, prefix tokens (class / distillation / register) removed and reshaped to the patch grid
of the input (timm's ``forward_intermediates``; ``dynamic_img_size=True`` so any input size works, including
non-square ones, and :class:`~lifevit.layers.TokenGridMixin` gives the LIFE layers that grid). SwinV2 models give
one map per selected stage (strides 4, 8, 16, 32).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Set, Tuple, Union

import timm
import torch
from timm.layers import to_2tuple
from torch import nn

import lifevit.models  # noqa: F401  (registers the lifevit backbones in timm)

logger = logging.getLogger(__name__)

__all__ = ["DenseBackbone", "create_backbone", "load_classifier_weights"]


class DenseBackbone(nn.Module):
    """Feature maps (B, C_i, H / s_i, W / s_i) of selected blocks / stages of a timm model.

    Args:
        model: A timm ViT-style model (``blocks``, ``num_prefix_tokens``) or a hierarchical model with ``layers``
            (SwinV2), both with ``forward_intermediates``; its classifier is pruned.
        out_indices: Blocks (ViT) or stages (SwinV2) to return, negative indices from the end.

    Attributes:
        channels: Channels of each returned map.
        reductions: Stride of each returned map relative to the input.
        stride: The input must be a multiple of this (the largest reduction) in each dimension.
        num_channels: Channels of the last returned map (what a single-map head such as detection's reads).
    """

    def __init__(self, model: nn.Module, out_indices: Sequence[int] = (-1,)) -> None:
        super().__init__()
        if not hasattr(model, "forward_intermediates"):
            raise ValueError(f"{type(model).__name__} has no forward_intermediates; use a timm ViT/DeiT or SwinV2")
        self.is_vit = hasattr(model, "blocks") and hasattr(model, "num_prefix_tokens")
        units = model.blocks if self.is_vit else model.layers
        n = len(units)
        indices = []
        for i in out_indices:
            if not -n <= i < n:
                raise ValueError(f"out_indices {tuple(out_indices)} out of range for a backbone with {n} blocks/stages")
            indices.append(i % n)
        self.indices: List[int] = sorted(set(indices))
        info = model.feature_info if isinstance(model.feature_info, list) else model.feature_info.get_dicts()
        self.channels: Tuple[int, ...] = tuple(int(info[i]["num_chs"]) for i in self.indices)
        self.reductions: Tuple[int, ...] = tuple(int(info[i]["reduction"]) for i in self.indices)
        # the last stage of a hierarchical model fixes the padding multiple even if it is not returned
        self.stride = int(self.reductions[-1] if self.is_vit else info[-1]["reduction"])
        # keep the final norm only when the last block / stage is used (its width is the last stage's)
        model.prune_intermediate_layers(self.indices, prune_norm=self.indices[-1] != n - 1, prune_head=True)
        self.model = model
        self.num_channels = self.channels[-1]

    def no_weight_decay(self) -> Set[str]:
        """The inner model's parameters that take no weight decay (position embeddings, class token, ...)."""
        inner = self.model.no_weight_decay() if hasattr(self.model, "no_weight_decay") else ()
        return {f"model.{n}" for n in inner}

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        """Images (B, C, H, W), H and W multiples of :attr:`stride` -> list of maps (B, C_i, H / s_i, W / s_i)."""
        _, _, H, W = x.shape
        if H % self.stride or W % self.stride:
            raise ValueError(f"input {H}x{W} is not a multiple of the backbone stride {self.stride}; pad it first")
        return self.model.forward_intermediates(
            x, indices=self.indices, norm=True, output_fmt="NCHW", intermediates_only=True
        )


def create_backbone(
    name: str,
    img_size: Union[int, Tuple[int, int]],
    in_chans: int = 3,
    out_indices: Sequence[int] = (-1,),
    pretrained: bool = False,
    pretrained_file: Optional[str] = None,
    drop_path_rate: float = 0.0,
    lifeify: bool = False,
    init_checkpoint: Optional[str] = None,
    life_options: Optional[Dict[str, Any]] = None,
    **kwargs: Any,
) -> DenseBackbone:
    """Build ``name`` with ``timm.create_model`` (no classifier, any input size) and wrap it.

    Args:
        name: A registered model (timm's or lifevit's), e.g. ``deit_tiny_patch16_224_life``.
        img_size: (H, W) the model is built for (position embedding, SwinV2 windows).
        in_chans: Image channels.
        out_indices: Blocks / stages to return.
        pretrained: Load pretrained weights through timm.
        pretrained_file: A local weights file for timm (``pretrained_cfg_overlay=dict(file=...)``); implies
            ``pretrained``.
        drop_path_rate: Stochastic depth.
        lifeify: Convert the (plain, typically ImageNet-pretrained) model to LIFE with :func:`lifevit.lifeify`
            after loading its weights: the paper's "ImageNet-1k initialisation" of the LIFE rows.
        init_checkpoint: A ``lifevit train`` classification checkpoint (file or run folder) of the same
            architecture to start from (:func:`load_classifier_weights`), e.g. one pre-trained on the user's
            own classification data.
        life_options: LIFE options for a ``*_life`` backbone's LIFE layers; not used by a backbone without LIFE, so
            a config can switch the backbone and keep its options.
        **kwargs: Further ``timm.create_model`` arguments (``patch_size``, ``embed_dim``, ...).
    """
    if name not in timm.list_models():
        raise ValueError(
            f"unknown backbone {name!r}; expected a timm / lifevit model name such as "
            f"'deit_tiny_patch16_224_life' or 'swinv2_tiny_window8_256'"
        )
    create_kwargs: Dict[str, Any] = dict(
        img_size=to_2tuple(img_size),
        in_chans=in_chans,
        num_classes=0,
        drop_path_rate=drop_path_rate,
        dynamic_img_size=True,
    )
    create_kwargs.update(kwargs)
    if life_options and name.endswith("_life"):
        create_kwargs["life_options"] = dict(life_options)
    if pretrained_file is not None:
        create_kwargs["pretrained_cfg_overlay"] = dict(file=str(pretrained_file))
        pretrained = True
    model = timm.create_model(name, pretrained=pretrained, **create_kwargs)
    if lifeify:
        from lifevit.convert import lifeify as convert_to_life

        convert_to_life(model)
    if init_checkpoint is not None:
        info = load_classifier_weights(model, init_checkpoint)
        logger.info("backbone initialised from %s (%s, epoch %d)", info["checkpoint"], info["model"], info["epoch"])
    return DenseBackbone(model, out_indices)


def load_classifier_weights(model: nn.Module, path: Union[str, Path], use_ema: bool = True) -> Dict[str, Any]:
    """Initialise ``model`` (a classifier-less timm ViT / SwinV2) from a ``lifevit train`` checkpoint.

    The weights (the EMA weights when the checkpoint has them and ``use_ema``) go through the timm checkpoint
    filter of the model's architecture, which resamples the patch embedding to another patch size (FlexiViT's
    pseudo-inverse resize) and the position embedding to another grid; another number of input channels gets the
    classifier's channels repeated and rescaled (a grey-scale classifier for RGB images). The classifier is dropped.

    Returns:
        ``{"checkpoint", "epoch", "model", "skipped"}``: what was read, and the classifier keys left out.

    Raises:
        ValueError: Not a classification checkpoint, or a tensor of the backbone is missing or has another
            shape (another architecture).
    """
    from lifevit.engine.checkpoint import load_checkpoint

    ckpt = load_checkpoint(path)
    if ckpt.meta.get("task") != "classification":
        raise ValueError(f"{ckpt.path} is a {ckpt.meta.get('task')!r} checkpoint; expected a classification one")
    state = dict(ckpt.ema_state if use_ema and ckpt.ema_state else ckpt.model_state)
    filter_fn = _timm_checkpoint_filter(model)
    if filter_fn is not None:
        state = filter_fn(state, model)
    own = model.state_dict()
    conv = "patch_embed.proj.weight"
    if conv in state and conv in own and state[conv].shape[1] != own[conv].shape[1]:
        state[conv] = _adapt_input_channels(state[conv], own[conv].shape[1])
    skipped = sorted(k for k in state if k not in own)  # the classifier (and nothing else, checked below)
    wrong = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in own.items()
        if k in state and state[k].shape != v.shape
    ]
    missing = [k for k in own if k not in state]
    if wrong or missing or any(not k.startswith(("head.", "fc_norm.", "head_dist.")) for k in skipped):
        raise ValueError(
            f"{ckpt.path} ({ckpt.meta.get('model')}) does not fit the {type(model).__name__} backbone: "
            f"missing {missing[:5]}, other shapes {wrong[:5]}, unexpected {skipped[:5]}; expected a checkpoint of "
            "the same architecture"
        )
    model.load_state_dict({k: v for k, v in state.items() if k in own})
    return {"checkpoint": str(ckpt.path), "epoch": ckpt.epoch, "model": ckpt.meta.get("model"), "skipped": skipped}


def _adapt_input_channels(weight: torch.Tensor, channels: int) -> torch.Tensor:
    """(O, I, k, k) -> (O, channels, k, k): the input channels repeated and scaled by in_chans / channels, so an image
    whose channels all equal a grey image gives the grey image's response (timm's ``adapt_input_conv`` assumes RGB
    weights, so it does not cover a grey-scale classifier)."""
    in_chans = weight.shape[1]
    if channels == 1:
        return weight.sum(dim=1, keepdim=True)
    repeat = -(-channels // in_chans)  # ceil
    return weight.repeat(1, repeat, 1, 1)[:, :channels] * (in_chans / channels)


def _timm_checkpoint_filter(model: nn.Module):
    """The ``checkpoint_filter_fn`` of the timm module that defines ``model``'s architecture (or ``None``)."""
    import importlib

    for cls in type(model).__mro__:
        if cls.__module__.startswith("timm.models."):
            return getattr(importlib.import_module(cls.__module__), "checkpoint_filter_fn", None)
    return None
