"""Decode heads (Segmenter, Strudel et al. ICCV 2021) and the fusion of several backbone maps.

* :class:`LinearDecoder`: a per-patch linear classifier (1x1 conv) on the last feature map.
* :class:`MaskTransformerDecoder`: K learnable class embeddings are appended to the patch tokens and processed
  jointly by a few transformer blocks (timm ``Block``); the mask of class k is the scalar product of the
  L2-normalised patch and class embeddings, followed by a LayerNorm over the K masks.
* :class:`FeatureFusion`: for several maps (SwinV2 stages, several ViT blocks), each is projected by a 1x1 conv to
  a common width, up-sampled to the finest map and summed, giving one map for either decoder.

All heads take a map (B, C, h, w) and return class logits (B, K, h, w) at that resolution; the
:class:`~lifevit.tasks.segmentation.model.Segmenter` up-samples them to the input size.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from timm.layers import trunc_normal_
from timm.models.vision_transformer import Block
from torch import nn

__all__ = ["FeatureFusion", "LinearDecoder", "MaskTransformerDecoder"]


class LinearDecoder(nn.Module):
    """Segmenter's linear decoder: class logits of every patch from its feature vector.

    Args:
        in_dim: Channels of the feature map.
        num_classes: Output classes K.
    """

    def __init__(self, in_dim: int, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.head = nn.Conv2d(in_dim, num_classes, kernel_size=1)
        trunc_normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) -> (B, K, h, w)."""
        return self.head(x)


class MaskTransformerDecoder(nn.Module):
    """Segmenter's mask transformer.

    Args:
        in_dim: Channels of the feature map.
        num_classes: Output classes K (one learnable class embedding each).
        dim: Width of the decoder tokens.
        depth: Transformer blocks.
        num_heads: Attention heads (``dim`` must be divisible by it).
        mlp_ratio: MLP hidden width / ``dim``.
        drop_path: Stochastic depth, increasing linearly to this value over the blocks.
    """

    def __init__(
        self,
        in_dim: int,
        num_classes: int,
        dim: int = 192,
        depth: int = 2,
        num_heads: int = 3,
        mlp_ratio: float = 4.0,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"decoder width {dim} is not divisible by its {num_heads} heads")
        self.num_classes = num_classes
        self.proj_in = nn.Linear(in_dim, dim)
        self.cls_emb = nn.Parameter(torch.zeros(1, num_classes, dim))
        dpr = [drop_path * i / max(depth - 1, 1) for i in range(depth)]
        self.blocks = nn.Sequential(
            *(Block(dim, num_heads, mlp_ratio=mlp_ratio, qkv_bias=True, drop_path=dpr[i]) for i in range(depth))
        )
        self.norm = nn.LayerNorm(dim)
        self.proj_patch = nn.Linear(dim, dim, bias=False)
        self.proj_classes = nn.Linear(dim, dim, bias=False)
        self.mask_norm = nn.LayerNorm(num_classes)
        trunc_normal_(self.cls_emb, std=0.02)
        self.apply(_init_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) -> (B, K, h, w)."""
        B, _, h, w = x.shape
        K = self.num_classes
        tokens = self.proj_in(x.flatten(2).transpose(1, 2))  # (B, h*w, D)
        tokens = torch.cat([tokens, self.cls_emb.expand(B, -1, -1)], dim=1)  # (B, h*w + K, D)
        tokens = self.norm(self.blocks(tokens))
        patches, classes = tokens[:, : h * w], tokens[:, h * w :]  # (B, h*w, D), (B, K, D)
        patches = F.normalize(self.proj_patch(patches), dim=-1)
        classes = F.normalize(self.proj_classes(classes), dim=-1)
        masks = self.mask_norm(patches @ classes.transpose(1, 2))  # (B, h*w, K)
        return masks.transpose(1, 2).reshape(B, K, h, w)  # (B, K, h, w)


class FeatureFusion(nn.Module):
    """Several maps -> one: 1x1 projection of each to ``out_dim``, bilinear up-sampling to the first (finest)
    map's size, sum.

    Args:
        in_dims: Channels of each input map, finest first.
        out_dim: Channels of the fused map.
    """

    def __init__(self, in_dims: Sequence[int], out_dim: int) -> None:
        super().__init__()
        self.proj = nn.ModuleList(nn.Conv2d(c, out_dim, kernel_size=1) for c in in_dims)

    def forward(self, maps: Sequence[torch.Tensor]) -> torch.Tensor:
        """[(B, C_i, h_i, w_i)] finest first -> (B, out_dim, h_0, w_0)."""
        size = maps[0].shape[-2:]
        out = self.proj[0](maps[0])
        for proj, m in zip(self.proj[1:], maps[1:]):
            out = out + F.interpolate(proj(m), size=size, mode="bilinear", align_corners=False)
        return out


def _init_weights(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
