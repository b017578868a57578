"""Transformer encoder-decoder detection heads: EncDec, EncDec-Linear and EncDec-LIFE.

All three share one structure, :class:`EncDecHead`; they differ only in the layers injected into it:

=================  =======================================  ==========================================
head               in front of the encoder (``input_proj``)  encoder self-attention (``enc_attn_layer``)
=================  =======================================  ==========================================
``encdec``         LayerNorm only; the head runs at the      timm ``Attention`` (linear qkv)
                   backbone width
``encdec_linear``  LayerNorm + Linear(backbone width ->      timm ``Attention`` (linear qkv)
                   ``hidden_dim``)
``encdec_life``    LayerNorm + Linear(backbone width ->      :class:`~lifevit.layers.LIFEAttention`: LIFE
                   ``hidden_dim``)                           qkv on the feature grid, no prefix tokens
=================  =======================================  ==========================================

Structure (fast-converging DETR variants, chosen to learn from small data in short runs):

1. Encoder: 2-D sine position embedding added to the tokens, then ``enc_layers`` pre-norm timm ``Block``\\ s.
2. Two-stage query selection (Deformable DETR two-stage / DINO): every encoder token predicts class logits and
   a box as a refinement of an anchor centred on its cell (side ``anchor_size``); the ``num_queries`` tokens
   with the highest class score become the queries: their (detached) features are the content queries and
   their (detached) boxes the initial reference boxes. These proposals get their own set loss.
3. Decoder: ``dec_layers`` post-norm layers (self-attention, cross-attention to the encoder memory, MLP). The
   positional query of each layer is an MLP of the sine embedding of the current reference box (DAB-DETR /
   conditional DETR); every layer refines the box in inverse-sigmoid space and detaches it for the next
   layer (Deformable DETR's iterative box refinement). Every layer's predictions get a loss (auxiliary losses).
4. Classification by per-class sigmoid (trained with focal loss), so there is no "no object" class.

Outputs (a dict):
    ``pred_logits`` (B, Q, K) and ``pred_boxes`` (B, Q, 4) normalised (cx, cy, w, h) of the last layer;
    ``aux_outputs``: the same for every earlier decoder layer; ``enc_outputs``: the selected proposals.
Boxes are normalised by the real (unpadded) image size.
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence, Tuple, Type

import torch
from timm.layers import Attention, Mlp
from timm.models.vision_transformer import Block
from torch import nn

from lifevit.layers import LIFEAttention, set_token_layout

__all__ = ["EncDecHead", "HEADS", "build_head", "sine_embed"]


def sine_embed(coords: torch.Tensor, num_feats: int, temperature: float = 10000.0) -> torch.Tensor:
    """Sine/cosine embedding of coordinates in [0, 1]: (..., k) -> (..., k * num_feats)."""
    half = num_feats // 2
    dim_t = temperature ** (torch.arange(half, device=coords.device, dtype=torch.float32) / half)  # (half,)
    x = coords.float()[..., None] * (2 * math.pi) / dim_t  # (..., k, half)
    emb = torch.cat((x.sin(), x.cos()), dim=-1)  # (..., k, 2*half)
    return emb.flatten(-2).to(coords.dtype)


def inverse_sigmoid(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    x = x.clamp(eps, 1 - eps)
    return torch.log(x / (1 - x))


def grid_geometry(
    mask: Optional[torch.Tensor], B: int, H: int, W: int, device: torch.device
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Normalised centres of the feature cells and which cells are valid.

    Args:
        mask: (B, H, W) True on cells of the real image (None: all valid).

    Returns:
        ``centers`` (B, H*W, 2) as (cx, cy) normalised by the valid extent, ``valid`` (B, H*W) bool.
    """
    if mask is None:
        mask = torch.ones(B, H, W, dtype=torch.bool, device=device)
    valid_h = mask[:, :, 0].sum(1).clamp(min=1).float()  # (B,)
    valid_w = mask[:, 0, :].sum(1).clamp(min=1).float()  # (B,)
    ys = torch.arange(H, device=device, dtype=torch.float32) + 0.5
    xs = torch.arange(W, device=device, dtype=torch.float32) + 0.5
    cy = ys[None, :, None] / valid_h[:, None, None]  # (B, H, 1)
    cx = xs[None, None, :] / valid_w[:, None, None]  # (B, 1, W)
    centers = torch.stack(torch.broadcast_tensors(cx, cy), dim=-1).reshape(B, H * W, 2)  # (B, H*W, 2)
    return centers, mask.reshape(B, H * W)


class DecoderLayer(nn.Module):
    """Post-norm decoder layer: self-attention over queries, cross-attention to the memory, MLP.

    Queries carry a positional part (``query_pos``) added to the attention queries/keys, never to the values.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(dim, num_heads, dropout=dropout, batch_first=True)
        self.cross_attn = nn.MultiheadAttention(dim, num_heads, dropout=dropout, batch_first=True)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=dropout)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.drop = nn.Dropout(dropout)

    def forward(
        self,
        tgt: torch.Tensor,
        query_pos: torch.Tensor,
        memory: torch.Tensor,
        memory_pos: torch.Tensor,
        memory_padding: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """tgt, query_pos (B, Q, D); memory, memory_pos (B, N, D); memory_padding (B, N) True = padding."""
        q = k = tgt + query_pos
        tgt = self.norm1(tgt + self.drop(self.self_attn(q, k, tgt, need_weights=False)[0]))
        attn = self.cross_attn(
            tgt + query_pos, memory + memory_pos, memory, key_padding_mask=memory_padding, need_weights=False
        )[0]
        tgt = self.norm2(tgt + self.drop(attn))
        return self.norm3(tgt + self.drop(self.mlp(tgt)))


class EncDecHead(nn.Module):
    """Transformer encoder-decoder set-prediction head with two-stage queries and box refinement.

    Args:
        in_dim: Channels of the backbone feature map.
        num_classes: Object classes (no background class: sigmoid classification).
        hidden_dim: Width of the transformer; must equal the output width of ``input_proj``.
        input_proj: Token-wise module in front of the encoder, ``in_dim -> hidden_dim``.
        enc_attn_layer: Attention class of the encoder blocks (timm ``Attention`` or ``LIFEAttention``).
        num_heads: Attention heads.
        enc_layers: Encoder blocks.
        dec_layers: Decoder layers.
        num_queries: Queries (selected encoder proposals).
        mlp_ratio: MLP width factor.
        dropout: Dropout.
        anchor_size: Side of the proposal anchors as a fraction of the image.
    """

    def __init__(
        self,
        in_dim: int,
        num_classes: int,
        hidden_dim: int,
        input_proj: nn.Module,
        enc_attn_layer: Type[nn.Module] = Attention,
        num_heads: int = 8,
        enc_layers: int = 1,
        dec_layers: int = 3,
        num_queries: int = 20,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
        anchor_size: float = 0.1,
    ) -> None:
        super().__init__()
        if hidden_dim % num_heads or hidden_dim % 4:
            raise ValueError(f"hidden_dim must be divisible by num_heads ({num_heads}) and 4, got {hidden_dim}")
        if num_queries < 1 or dec_layers < 1:
            raise ValueError(f"need num_queries >= 1 and dec_layers >= 1, got {num_queries}, {dec_layers}")
        if not 0 < anchor_size < 1:
            raise ValueError(f"anchor_size must be in (0, 1), got {anchor_size}")
        D = hidden_dim
        self.num_classes = num_classes
        self.hidden_dim = D
        self.num_queries = num_queries
        self.anchor_size = anchor_size
        self.input_proj = input_proj
        self.encoder = nn.ModuleList(
            Block(D, num_heads, mlp_ratio=mlp_ratio, qkv_bias=True, proj_drop=dropout, attn_layer=enc_attn_layer)
            for _ in range(enc_layers)
        )
        self.enc_norm = nn.LayerNorm(D)
        # two-stage proposals
        self.enc_output = nn.Sequential(nn.Linear(D, D), nn.LayerNorm(D))
        self.enc_class = nn.Linear(D, num_classes)
        self.enc_box = Mlp(D, D, 4)
        # decoder
        self.decoder = nn.ModuleList(DecoderLayer(D, num_heads, mlp_ratio, dropout) for _ in range(dec_layers))
        self.ref_point_head = Mlp(2 * D, D, D)  # sine(box) (2D) -> positional query (D)
        self.dec_class = nn.ModuleList(nn.Linear(D, num_classes) for _ in range(dec_layers))
        self.dec_box = nn.ModuleList(Mlp(D, D, 4) for _ in range(dec_layers))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        prior_bias = -math.log((1 - 0.01) / 0.01)  # focal-loss prior: initial scores ~0.01
        for lin in [self.enc_class, *self.dec_class]:
            nn.init.constant_(lin.bias, prior_bias)
        for mlp in [self.enc_box, *self.dec_box]:  # start at the anchor / reference box
            nn.init.zeros_(mlp.fc2.weight)
            nn.init.zeros_(mlp.fc2.bias)

    def forward(self, feats: torch.Tensor, mask: Optional[torch.Tensor] = None) -> Dict[str, object]:
        """feats (B, C, H, W) backbone map; mask (B, H, W) True on real image cells (None: all)."""
        B, _, H, W = feats.shape
        x = self.input_proj(feats.flatten(2).transpose(1, 2))  # (B, H*W, D)
        centers, valid = grid_geometry(mask, B, H, W, feats.device)  # (B, H*W, 2), (B, H*W)
        pos = sine_embed(centers.flip(-1), self.hidden_dim // 2).to(x.dtype)  # (B, H*W, D) from (cy, cx)
        x = x + pos
        set_token_layout(self.encoder, (H, W), 0)  # LIFE encoders see the feature grid, no prefix tokens
        attn_mask = None if bool(valid.all()) else valid[:, None, None, :]  # (B, 1, 1, H*W), True = attend
        for blk in self.encoder:
            x = blk(x, attn_mask=attn_mask)
        memory = self.enc_norm(x)  # (B, H*W, D)

        # two-stage: score every cell, keep the best num_queries as queries
        anchors = torch.cat((centers, centers.new_full(centers.shape, self.anchor_size)), dim=-1)  # (B, H*W, 4)
        out_mem = self.enc_output(memory)  # (B, H*W, D)
        enc_logits = self.enc_class(out_mem)  # (B, H*W, K)
        enc_boxes_unact = self.enc_box(out_mem) + inverse_sigmoid(anchors)  # (B, H*W, 4)
        scores = enc_logits.max(-1).values.masked_fill(~valid, float("-inf"))  # (B, H*W)
        Q = min(self.num_queries, H * W)
        top = scores.topk(Q, dim=1).indices  # (B, Q)
        enc_sel_logits = enc_logits.gather(1, top[..., None].expand(-1, -1, self.num_classes))  # (B, Q, K)
        enc_sel_boxes = enc_boxes_unact.gather(1, top[..., None].expand(-1, -1, 4)).sigmoid()  # (B, Q, 4)
        tgt = out_mem.gather(1, top[..., None].expand(-1, -1, self.hidden_dim)).detach()  # (B, Q, D)
        ref = enc_sel_boxes.detach()

        padding = None if attn_mask is None else ~valid  # (B, H*W), True = padding
        layers: List[Dict[str, torch.Tensor]] = []
        for layer, cls_head, box_head in zip(self.decoder, self.dec_class, self.dec_box):
            query_pos = self.ref_point_head(sine_embed(ref, self.hidden_dim // 2))  # (B, Q, D)
            tgt = layer(tgt, query_pos, memory, pos, padding)
            boxes = (box_head(tgt) + inverse_sigmoid(ref)).sigmoid()  # (B, Q, 4)
            layers.append({"pred_logits": cls_head(tgt), "pred_boxes": boxes})
            ref = boxes.detach()
        out: Dict[str, object] = dict(layers[-1])
        out["aux_outputs"] = layers[:-1]
        out["enc_outputs"] = {"pred_logits": enc_sel_logits, "pred_boxes": enc_sel_boxes}
        return out


def _proj(in_dim: int, hidden_dim: int) -> nn.Module:
    return nn.Sequential(nn.LayerNorm(in_dim), nn.Linear(in_dim, hidden_dim))


def encdec_head(in_dim: int, num_classes: int, hidden_dim: int = 256, **kwargs) -> EncDecHead:
    """EncDec: the encoder-decoder straight on the backbone tokens (LayerNorm only, width = backbone width)."""
    kwargs.pop("life_kernel_sizes", None), kwargs.pop("life_options", None)
    return EncDecHead(in_dim, num_classes, in_dim, nn.LayerNorm(in_dim), Attention, **kwargs)


def encdec_linear_head(in_dim: int, num_classes: int, hidden_dim: int = 256, **kwargs) -> EncDecHead:
    """EncDec-Linear: a linear projection (LayerNorm + Linear to ``hidden_dim``) in front of the encoder."""
    kwargs.pop("life_kernel_sizes", None), kwargs.pop("life_options", None)
    return EncDecHead(in_dim, num_classes, hidden_dim, _proj(in_dim, hidden_dim), Attention, **kwargs)


def encdec_life_head(
    in_dim: int,
    num_classes: int,
    hidden_dim: int = 256,
    life_kernel_sizes: Sequence[int] = (3, 5),
    life_options: Optional[Dict[str, Any]] = None,
    **kwargs,
) -> EncDecHead:
    """EncDec-LIFE: EncDec-Linear whose encoder self-attention has a LIFE qkv over the feature grid
    (``life_options``: LIFE's ``pointwise_bias`` / ``pointwise_init`` / ``shared_norm``, default LIFE's own)."""
    attn = LIFEAttention.bind(kernel_sizes=life_kernel_sizes, **(life_options or {}))
    return EncDecHead(in_dim, num_classes, hidden_dim, _proj(in_dim, hidden_dim), attn, **kwargs)


HEADS = {"encdec": encdec_head, "encdec_linear": encdec_linear_head, "encdec_life": encdec_life_head}


def build_head(name: str, in_dim: int, num_classes: int, **kwargs) -> EncDecHead:
    """A head by name (``encdec``, ``encdec_linear``, ``encdec_life``)."""
    if name not in HEADS:
        raise ValueError(f"unknown detection head {name!r}; expected one of {sorted(HEADS)}")
    return HEADS[name](in_dim, num_classes, **kwargs)
