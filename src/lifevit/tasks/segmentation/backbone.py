"""Backbone adapter: a timm ViT / DeiT or SwinV2 (with or without LIFE) as a source of dense feature maps.

ViT-style models (``blocks`` + ``num_prefix_tokens``) give one map per selected block: the patch tokens of that
block, final norm applied, prefix tokens (class / distillation / register) removed and reshaped to the patch grid
of the input (timm's ``forward_intermediates``; ``dynamic_img_size=True`` so any input size works, including
non-square ones, and :class:`~lifevit.layers.TokenGridMixin` gives the LIFE layers that grid). SwinV2 models give
one map per selected stage (strides 4, 8, 16, 32).
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import timm
import torch
from timm.layers import to_2tuple
from torch import nn

import lifevit.models  # noqa: F401  (registers the lifevit backbones in timm)

__all__ = ["SegmentationBackbone", "create_backbone"]


class SegmentationBackbone(nn.Module):
    """Feature maps (B, C_i, H / s_i, W / s_i) of selected blocks / stages of a timm model.

    Args:
        model: A timm ViT-style model (``blocks``, ``num_prefix_tokens``) or a hierarchical model with ``layers``
            (SwinV2), both with ``forward_intermediates``; its classifier is pruned.
        out_indices: Blocks (ViT) or stages (SwinV2) to return, negative indices from the end.

    Attributes:
        channels: Channels of each returned map.
        reductions: Stride of each returned map relative to the input.
        stride: The input must be a multiple of this (the largest reduction) in each dimension.
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
    **kwargs: Any,
) -> SegmentationBackbone:
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
    if pretrained_file is not None:
        create_kwargs["pretrained_cfg_overlay"] = dict(file=str(pretrained_file))
        pretrained = True
    model = timm.create_model(name, pretrained=pretrained, **create_kwargs)
    if lifeify:
        from lifevit.convert import lifeify as convert_to_life

        convert_to_life(model)
    return SegmentationBackbone(model, out_indices)
