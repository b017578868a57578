"""Backbone adapters: a timm classification model -> one feature map (B, C, h, w) for the detection head.

* ViT / DeiT (timm ``VisionTransformer`` and the lifevit ``*_life`` subclasses): the tokens of the last block,
  normalised, prefix tokens dropped, reshaped to the patch grid (``forward_intermediates``). The model is built
  with ``dynamic_img_size=True`` so any input whose sides are multiples of the patch size works (the position
  embedding is interpolated, and ``TokenGridMixin`` tells LIFE the grid), including non-square ones.
* SwinV2 (timm ``SwinTransformerV2`` and lifevit subclasses): the last stage, normalised (stride 32), built
  with ``strict_img_size=False``.
"""

from __future__ import annotations

from typing import Any, Optional

import timm
import torch
from timm.models.swin_transformer_v2 import SwinTransformerV2
from timm.models.vision_transformer import VisionTransformer
from torch import nn

import lifevit.models  # noqa: F401  (registers the lifevit models)

__all__ = ["DetectionBackbone", "build_backbone"]


class DetectionBackbone(nn.Module):
    """One feature map from a timm ViT or SwinV2.

    Args:
        model: The timm model (classifier removed).

    Attributes:
        num_channels: Channels of the feature map.
        stride: Input pixels per feature-map cell; inputs must have sides divisible by it.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        if isinstance(model, VisionTransformer):
            self.stride = int(model.patch_embed.patch_size[0])
        elif isinstance(model, SwinTransformerV2):
            self.stride = int(model.feature_info[-1]["reduction"])
        else:
            raise ValueError(
                f"detection backbones must be timm VisionTransformer or SwinTransformerV2 models, got "
                f"{type(model).__name__}"
            )
        self.body = model
        self.num_channels = int(model.num_features)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, C, H / stride, W / stride)."""
        H, W = images.shape[-2:]
        if H % self.stride or W % self.stride:
            raise ValueError(f"input sides must be multiples of the backbone stride {self.stride}, got {H}x{W}")
        feats = self.body.forward_intermediates(images, indices=1, norm=True, intermediates_only=True)
        return feats[-1]  # (B, C, h, w)


def build_backbone(
    name: str, pretrained: bool = False, img_size: Optional[int] = None, lifeify: bool = False, **kwargs: Any
) -> DetectionBackbone:
    """Create a timm / lifevit model by name and wrap it as a detection backbone.

    Args:
        name: Registered model name (``deit_tiny_patch16_224``, ``vit_lite_patch4_28_life``,
            ``swinv2_tiny_window8_256``, ...).
        pretrained: Load timm's pretrained weights (only where timm has them).
        img_size: Nominal input side (sets the ViT position-embedding grid / SwinV2 window layout).
        lifeify: Convert the (plain timm, e.g. ImageNet-pretrained) model to LIFE with ``lifevit.lifeify``: the
            ImageNet-initialised LIFE backbones (timm has no weights for lifevit's ``*_life`` models).
        **kwargs: Passed to ``timm.create_model``.
    """
    if name not in timm.list_models():
        raise ValueError(f"unknown backbone {name!r}; expected a timm or lifevit model name (see timm.list_models())")
    cls_kwargs: dict = {"num_classes": 0, "pretrained": pretrained}
    if img_size is not None:
        cls_kwargs["img_size"] = img_size
    if name.startswith("swin"):
        cls_kwargs["strict_img_size"] = False
    else:
        cls_kwargs["dynamic_img_size"] = True
    model = timm.create_model(name, **{**cls_kwargs, **kwargs})
    if lifeify:
        from lifevit.convert import lifeify as to_life

        to_life(model)
    return DetectionBackbone(model)
