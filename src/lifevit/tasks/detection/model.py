"""The detector: a backbone adapter followed by an encoder-decoder head, and builders from the configs."""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, Optional, Set

import torch
import torch.nn.functional as F
from torch import nn

from ..backbone import DenseBackbone, create_backbone
from .config import LossConfig, ModelConfig
from .criterion import SetCriterion
from .head import EncDecHead, build_head
from .matcher import HungarianMatcher

__all__ = ["Detector", "build_detector", "build_criterion"]


class Detector(nn.Module):
    """Backbone + head.

    Args:
        backbone: Feature-map adapter.
        head: Encoder-decoder head.
    """

    def __init__(self, backbone: DenseBackbone, head: EncDecHead) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def no_weight_decay(self) -> Set[str]:
        """No weight decay on the backbone's embeddings and the head's position embeddings (timm's optimizer
        factory reads this; biases and norms are excluded by it anyway)."""
        names = {f"backbone.{n}" for n in self.backbone.no_weight_decay()}
        return names | {n for n, _ in self.head.named_parameters(prefix="head") if n.endswith("pos_embed")}

    @property
    def size_divisibility(self) -> int:
        """Input sides must be multiples of this (the backbone stride)."""
        return self.backbone.stride

    def forward(self, images: torch.Tensor, mask: Optional[torch.Tensor] = None) -> Dict[str, Any]:
        """images (B, 3, H, W); mask (B, H, W) True on real pixels (None: no padding). See ``head`` for outputs."""
        feats = self.backbone(images)[-1]  # (B, C, h, w): the last block / stage
        feat_mask = None
        if mask is not None and not bool(mask.all()):
            # a cell is valid when its top-left pixel is (padding is bottom/right)
            feat_mask = F.interpolate(mask[:, None].float(), size=feats.shape[-2:], mode="nearest")[:, 0].bool()
        return self.head(feats, feat_mask)


def build_detector(
    cfg: ModelConfig, num_classes: int, img_size: Optional[int] = None, pretrained: Optional[bool] = None
) -> Detector:
    """A :class:`Detector` from a :class:`ModelConfig` (``pretrained`` overrides ``cfg.pretrained``)."""
    pretrained = cfg.pretrained if pretrained is None else pretrained
    backbone = create_backbone(
        cfg.backbone, img_size=img_size or 224, pretrained=pretrained, lifeify=cfg.lifeify,
        life_options=cfg.life_options, **cfg.backbone_kwargs,
    )  # fmt: skip
    head = build_head(
        cfg.head,
        backbone.num_channels,
        num_classes,
        hidden_dim=cfg.hidden_dim,
        num_heads=cfg.num_heads,
        enc_layers=cfg.enc_layers,
        dec_layers=cfg.dec_layers,
        num_queries=cfg.num_queries,
        mlp_ratio=cfg.mlp_ratio,
        dropout=cfg.dropout,
        anchor_size=cfg.anchor_size,
        life_kernel_sizes=cfg.life_kernel_sizes,
        life_options=cfg.life_options,
    )
    return Detector(backbone, head)


def build_criterion(cfg: LossConfig, num_classes: int) -> SetCriterion:
    """Matcher + :class:`SetCriterion` with the same weights for matching costs and losses."""
    kw = dataclasses.asdict(cfg)
    matcher = HungarianMatcher(
        kw["cls_weight"], kw["l1_weight"], kw["giou_weight"], kw["focal_alpha"], kw["focal_gamma"]
    )
    return SetCriterion(num_classes, matcher, **kw)
