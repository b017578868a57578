"""The segmentation model: backbone adapter -> (fusion of several maps) -> decode head -> logits at input size."""

from __future__ import annotations

from typing import Dict, Optional, Set

import torch
import torch.nn.functional as F
from torch import nn

from ..backbone import DenseBackbone, create_backbone
from .config import ModelConfig
from .heads import FeatureFusion, LinearDecoder, MaskTransformerDecoder

__all__ = ["Segmenter", "build_segmenter"]


class Segmenter(nn.Module):
    """Backbone + decode head.

    The input is zero-padded at the bottom / right to a multiple of the backbone stride, the head's logits are
    up-sampled (bilinear) to the padded size and cropped back, so any input size works.

    Args:
        backbone: Gives the feature maps.
        decoder: Maps one feature map (B, C, h, w) to class logits (B, K, h, w).
        fusion: Fuses several maps into one (``None`` when the backbone returns one map).
    """

    def __init__(self, backbone: DenseBackbone, decoder: nn.Module, fusion: Optional[nn.Module] = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.fusion = fusion
        self.decoder = decoder
        self.num_classes = decoder.num_classes

    def no_weight_decay(self) -> Set[str]:
        """No weight decay on the backbone's embeddings and the decoder's class embeddings (timm's optimizer
        factory reads this, as it does a timm model's)."""
        names = {f"backbone.{n}" for n in self.backbone.no_weight_decay()}
        return names | {n for n, _ in self.decoder.named_parameters(prefix="decoder") if n.endswith("cls_emb")}

    def forward(self, images: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Images (B, C, H, W) -> ``{"logits": (B, K, H, W)}`` (un-normalised class scores per pixel)."""
        _, _, H, W = images.shape
        s = self.backbone.stride
        pad_h, pad_w = (-H) % s, (-W) % s
        x = F.pad(images, (0, pad_w, 0, pad_h)) if pad_h or pad_w else images  # (B, C, H + pad_h, W + pad_w)
        maps = self.backbone(x)
        feat = self.fusion(maps) if self.fusion is not None else maps[-1]  # (B, C', h, w)
        logits = self.decoder(feat)  # (B, K, h, w)
        logits = F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return {"logits": logits[..., :H, :W]}  # (B, K, H, W)


def build_segmenter(cfg: ModelConfig) -> Segmenter:
    """A :class:`Segmenter` from its config (the backbone through ``timm.create_model``)."""
    backbone = create_backbone(
        cfg.backbone,
        img_size=cfg.img_size,
        in_chans=cfg.in_chans,
        out_indices=cfg.out_indices,
        pretrained=cfg.pretrained,
        pretrained_file=cfg.pretrained_file,
        drop_path_rate=cfg.drop_path_rate,
        lifeify=cfg.lifeify,
        init_checkpoint=cfg.init_checkpoint,
        life_options=cfg.life_options,
        **cfg.backbone_kwargs,
    )
    in_dim = backbone.channels[-1]
    fusion = FeatureFusion(backbone.channels, in_dim) if len(backbone.channels) > 1 else None
    if cfg.decoder == "linear":
        decoder: nn.Module = LinearDecoder(in_dim, cfg.num_classes)
    else:
        dim = cfg.decoder_dim or in_dim
        heads = cfg.decoder_heads or max(dim // 64, 1)
        decoder = MaskTransformerDecoder(
            in_dim, cfg.num_classes, dim=dim, depth=cfg.decoder_layers, num_heads=heads, drop_path=cfg.decoder_drop_path
        )
    return Segmenter(backbone, decoder, fusion)
