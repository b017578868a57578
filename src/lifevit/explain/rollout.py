"""Attention roll-out (Abnar & Zuidema, 2020) and Dense Attention Roll-Out (Akkaya et al., 2024).

Notation (the full definitions, with formulas, are in ``docs/explain.md``): layer l has attention
``A_l`` of shape (heads, N, N), rows summing to 1.

1. Head fusion: ``Â_l = mean_h A_l[h]`` (or max / min over heads).
2. Discard (optional, ratio r): in each query row, the ``floor(r * N_patch)`` smallest entries over the *patch*
   columns are set to 0 (prefix-token columns are never discarded).
3. Residual: ``Ã_l = (Â_l + I) / rowsum(Â_l + I)``, modelling the skip connection; rows sum to 1.
4. Roll-out: ``R = Ã_L Ã_{L-1} ... Ã_1`` (rows still sum to 1). ``R[i, j]`` is how much output token i
   draws on input token j. When the token grid shrinks between layers (SwinV2 patch merging by a factor f),
   a pooling matrix ``P`` (each coarse token averages its f x f fine tokens) is inserted: ``R = ... Ã P Ã ...``.

Maps:

* class-token roll-out: ``m(j) = R[cls, j]`` over the patch columns j (models without a class token use the
  mean of the patch rows, which is what an average-pooled classifier reads);
* Dense Attention Roll-Out for class c, given per-output-token weights ``w_ic`` (the class probability of the
  tokens predicted as c, or detection scores of the boxes of class c containing the token):
  ``m_c(j) = sum_i w_ic R[i, j] / sum_i w_ic``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from .capture import AttentionRecord

__all__ = [
    "HEAD_FUSIONS",
    "Rollout",
    "attention_rollout",
    "box_token_weights",
    "class_token_map",
    "dense_rollout",
    "fuse_heads",
    "pooling_matrix",
    "residual_normalize",
    "rollout_records",
    "select_chain",
    "token_class_weights",
]

HEAD_FUSIONS = ("mean", "max", "min")


@dataclass
class Rollout:
    """A rolled-out attention matrix with the token layout of its rows (outputs) and columns (inputs).

    Attributes:
        matrix: ``(B, N_out, N_in)``; rows sum to 1.
        out_prefix: Prefix tokens among the rows; the other rows are on ``out_grid``.
        out_grid: (H, W) grid of the output patch tokens, or None.
        in_prefix: Prefix tokens among the columns.
        in_grid: (H, W) grid of the input patch tokens (the grid of the maps), or None.
    """

    matrix: torch.Tensor
    out_prefix: int = 0
    out_grid: Optional[Tuple[int, int]] = None
    in_prefix: int = 0
    in_grid: Optional[Tuple[int, int]] = None


def fuse_heads(attn: torch.Tensor, head_fusion: str = "mean") -> torch.Tensor:
    """Fuse the heads of ``(B, heads, N, N)`` attention into ``(B, N, N)`` (a 3-d input is returned as is)."""
    if head_fusion not in HEAD_FUSIONS:
        raise ValueError(f"head_fusion must be one of {HEAD_FUSIONS}, got {head_fusion!r}")
    if attn.ndim == 3:
        return attn
    if attn.ndim != 4 or attn.shape[-1] != attn.shape[-2]:
        raise ValueError(f"attention must be (B, heads, N, N) or (B, N, N), got shape {tuple(attn.shape)}")
    if head_fusion == "mean":
        return attn.mean(1)
    if head_fusion == "max":
        return attn.amax(1)
    return attn.amin(1)


def discard_lowest(attn: torch.Tensor, ratio: float, num_prefix_tokens: int = 0) -> torch.Tensor:
    """Zero, in every row of ``(B, N, N)`` attention, the ``floor(ratio * N_patch)`` smallest patch columns."""
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"discard_ratio must be in [0, 1), got {ratio}")
    num_patch = attn.shape[-1] - num_prefix_tokens
    k = int(ratio * num_patch)
    if k == 0:
        return attn
    patches = attn[..., num_prefix_tokens:]  # (B, N, N_patch)
    lowest = patches.topk(k, dim=-1, largest=False).indices  # (B, N, k)
    patches = patches.scatter(-1, lowest, 0.0)
    return torch.cat((attn[..., :num_prefix_tokens], patches), dim=-1)


def residual_normalize(attn: torch.Tensor) -> torch.Tensor:
    """``(A + I) / rowsum(A + I)`` for ``(B, N, N)`` attention: the skip connection's share of each token."""
    eye = torch.eye(attn.shape[-1], dtype=attn.dtype, device=attn.device)
    attn = attn + eye
    return attn / attn.sum(-1, keepdim=True)


def pooling_matrix(fine: Tuple[int, int], coarse: Tuple[int, int], device=None, dtype=torch.float32) -> torch.Tensor:
    """``(H_c * W_c, H_f * W_f)`` matrix whose row for coarse token (i, j) averages its f x f fine tokens.

    This is how SwinV2 patch merging (f = 2) relates the token grids of consecutive stages.
    """
    (Hf, Wf), (Hc, Wc) = fine, coarse
    if Hf % Hc or Wf % Wc or Hf // Hc != Wf // Wc:
        raise ValueError(f"cannot pool a {Hf}x{Wf} token grid to {Hc}x{Wc}: expected an integer factor")
    f = Hf // Hc
    coarse_of_fine = (torch.arange(Hf, device=device)[:, None] // f) * Wc + torch.arange(Wf, device=device)[None] // f
    pool = F.one_hot(coarse_of_fine.reshape(-1), Hc * Wc).T.to(dtype)  # (Nc, Nf)
    return pool / (f * f)


def attention_rollout(
    attentions: Sequence[torch.Tensor],
    head_fusion: str = "mean",
    discard_ratio: float = 0.0,
    num_prefix_tokens: int = 0,
) -> torch.Tensor:
    """Roll out attention over layers that share one token sequence.

    Args:
        attentions: Per layer, ``(B, heads, N, N)`` (or head-fused ``(B, N, N)``) probabilities, first layer first.
        head_fusion: "mean", "max" or "min" over heads.
        discard_ratio: Fraction of the lowest patch attentions zeroed per row before the residual step.
        num_prefix_tokens: Prefix tokens (never discarded).

    Returns:
        ``R = Ã_L ... Ã_1`` of shape (B, N, N); rows sum to 1.
    """
    if not attentions:
        raise ValueError("attention_rollout needs at least one attention map, got none")
    result = None
    for layer, attn in enumerate(attentions):
        fused = fuse_heads(attn.float(), head_fusion)
        if result is not None and fused.shape != result.shape:
            raise ValueError(
                f"layer {layer} attention has shape {tuple(fused.shape)} after head fusion, expected "
                f"{tuple(result.shape)} like the layers before; use rollout_records for changing grids"
            )
        step = residual_normalize(discard_lowest(fused, discard_ratio, num_prefix_tokens))
        result = step if result is None else step @ result
    return result


def select_chain(records: Sequence[AttentionRecord]) -> List[AttentionRecord]:
    """The trailing run of records that roll-out can chain: same token count, or a grid shrinking by an integer
    factor (SwinV2 stages). Earlier records on unrelated sequences (T2T-ViT soft-split stages) are left out."""
    if not records:
        raise ValueError("no attention records to roll out")
    chain = [records[-1]]
    for rec in reversed(records[:-1]):
        nxt = chain[0]
        same = rec.num_tokens == nxt.num_tokens and rec.num_prefix_tokens == nxt.num_prefix_tokens
        drops_prefix = (  # e.g. a ViT backbone (class token + grid) feeding a detection encoder (grid only)
            rec.grid_size is not None and rec.grid_size == nxt.grid_size and nxt.num_prefix_tokens == 0
        )
        pools = (
            rec.grid_size is not None
            and nxt.grid_size is not None
            and rec.num_prefix_tokens == nxt.num_prefix_tokens == 0
            and rec.grid_size[0] % nxt.grid_size[0] == 0
            and rec.grid_size[1] % nxt.grid_size[1] == 0
            and rec.grid_size[0] // nxt.grid_size[0] == rec.grid_size[1] // nxt.grid_size[1]
        )
        if not (same or drops_prefix or pools):
            break
        chain.insert(0, rec)
    return chain


def rollout_records(
    records: Sequence[AttentionRecord],
    head_fusion: str = "mean",
    discard_ratio: float = 0.0,
) -> Rollout:
    """Roll out captured attention records (see :func:`select_chain` for which records take part).

    Between records whose grids differ by an integer factor (SwinV2 stages) the pooling matrix of
    :func:`pooling_matrix` is inserted, so the roll-out maps the last stage's tokens to the first stage's.
    When a record without prefix tokens follows one with them on the same grid (a detection encoder after a
    ViT backbone), the prefix rows are dropped: the encoder reads the patch tokens only.
    """
    chain = select_chain(records)
    result: Optional[torch.Tensor] = None
    grid, prefix = chain[0].grid_size, chain[0].num_prefix_tokens
    for rec in chain:
        fused = fuse_heads(rec.attn.float(), head_fusion)
        step = residual_normalize(discard_lowest(fused, discard_ratio, rec.num_prefix_tokens))
        if result is not None and step.shape[-1] != result.shape[-2]:
            if prefix and not rec.num_prefix_tokens:
                result = result[:, prefix:]  # (B, N_patch, N_in): the next layers see only the patch tokens
            if rec.grid_size != grid:
                pool = pooling_matrix(grid, rec.grid_size, device=result.device, dtype=result.dtype)
                result = pool @ result  # (B, N_coarse, N_in)
        result = step if result is None else step @ result
        grid, prefix = rec.grid_size, rec.num_prefix_tokens
    first, last = chain[0], chain[-1]
    return Rollout(result, last.num_prefix_tokens, last.grid_size, first.num_prefix_tokens, first.grid_size)


def _check_grid(grid: Optional[Tuple[int, int]], what: str) -> Tuple[int, int]:
    if grid is None:
        raise ValueError(f"the {what} token grid is unknown; pass grid_size")
    return grid


def class_token_map(rollout: Rollout, token_index: int = 0, average_pool: bool = False) -> torch.Tensor:
    """Class-token roll-out map ``(B, H_in, W_in)``: row ``token_index`` of R over the input patch columns.

    Models without prefix tokens (SwinV2, detection encoders) have no class token, and average-pooled ViTs
    (``average_pool=True``) do not read it: the map is then the mean of the patch rows, the roll-out of the
    average-pooled feature the classifier reads.
    """
    R = rollout.matrix
    H, W = _check_grid(rollout.in_grid, "input")
    B = R.shape[0]
    if rollout.out_prefix > 0 and not average_pool:
        if not 0 <= token_index < rollout.out_prefix:
            raise ValueError(f"token_index must be one of the {rollout.out_prefix} prefix tokens, got {token_index}")
        row = R[:, token_index, rollout.in_prefix :]  # (B, H*W)
    else:
        row = R[:, rollout.out_prefix :, rollout.in_prefix :].mean(1)  # (B, H*W)
    return row.reshape(B, H, W)


def token_class_weights(token_probs: torch.Tensor, ignore_index: Optional[int] = None) -> torch.Tensor:
    """Weights ``w_ic = p_ic * [argmax_k p_ik == c]`` from per-token class probabilities ``(B, N, K)``.

    Args:
        token_probs: Class probabilities of each output patch token, rows summing to 1.
        ignore_index: A class (e.g. background) whose predicted tokens are given to no map.
    """
    if token_probs.ndim != 3:
        raise ValueError(f"token_probs must be (B, N, K), got shape {tuple(token_probs.shape)}")
    pred = token_probs.argmax(-1, keepdim=True)  # (B, N, 1)
    weights = torch.zeros_like(token_probs).scatter(-1, pred, token_probs.gather(-1, pred))
    if ignore_index is not None:
        weights[..., ignore_index] = 0.0
    return weights


def box_token_weights(
    boxes: Sequence[torch.Tensor],
    labels: Sequence[torch.Tensor],
    scores: Sequence[torch.Tensor],
    img_size: Tuple[int, int],
    grid_size: Tuple[int, int],
    num_classes: int,
) -> torch.Tensor:
    """Weights ``w_ic = sum_b score_b [label_b == c] [centre of token i inside box b]`` for detections.

    Args:
        boxes: Per image, ``(n, 4)`` predicted boxes (x1, y1, x2, y2) in pixels of an ``img_size`` input.
        labels: Per image, ``(n,)`` class indices in ``[0, num_classes)``.
        scores: Per image, ``(n,)`` confidences.
        img_size: (H, W) of the input in pixels.
        grid_size: (H, W) output token grid.
        num_classes: K.

    Returns:
        ``(B, H * W, K)`` token weights.
    """
    Hi, Wi = img_size
    H, W = grid_size
    cy = (torch.arange(H, dtype=torch.float32) + 0.5) * (Hi / H)  # token centres in pixels
    cx = (torch.arange(W, dtype=torch.float32) + 0.5) * (Wi / W)
    cy, cx = cy[:, None].expand(H, W).reshape(-1), cx[None].expand(H, W).reshape(-1)  # (H*W,)
    out = []
    for b, lab, sc in zip(boxes, labels, scores):
        b, lab, sc = b.float().cpu(), lab.long().cpu(), sc.float().cpu()
        if lab.numel() and (lab.min() < 0 or lab.max() >= num_classes):
            raise ValueError(f"box labels must be in [0, {num_classes}), got {lab.tolist()}")
        inside = (
            (cx[:, None] >= b[None, :, 0])
            & (cx[:, None] <= b[None, :, 2])
            & (cy[:, None] >= b[None, :, 1])
            & (cy[:, None] <= b[None, :, 3])
        ).float()  # (H*W, n)
        onehot = F.one_hot(lab, num_classes).float() * sc[:, None]  # (n, K)
        out.append(inside @ onehot)  # (H*W, K)
    return torch.stack(out)


def dense_rollout(
    rollout: Rollout,
    token_weights: torch.Tensor,
    fallback_weights: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Dense Attention Roll-Out maps ``m_c(j) = sum_i w_ic R[i, j] / sum_i w_ic`` for every class c.

    Args:
        rollout: Roll-out whose rows include the output patch tokens (prefix rows are not used).
        token_weights: ``(B, N_out_patch, K)`` non-negative weights of each output patch token for each class
            (:func:`token_class_weights` or :func:`box_token_weights`).
        fallback_weights: Optional ``(B, N_out_patch, K)`` weights used for (image, class) pairs whose
            ``token_weights`` are all zero (e.g. the soft class probabilities when no token is predicted as c).

    Returns:
        (maps ``(B, K, H_in, W_in)``, defined ``(B, K)`` bool: False where all weights were zero and the map is 0).
    """
    R = rollout.matrix
    H, W = _check_grid(rollout.in_grid, "input")
    B, N_out, _ = R.shape
    patches = R[:, rollout.out_prefix :, rollout.in_prefix :]  # (B, N_out_patch, H*W)
    if token_weights.ndim != 3 or token_weights.shape[:2] != patches.shape[:2]:
        raise ValueError(
            f"token_weights must be (B, N_out_patch, K) = ({B}, {patches.shape[1]}, K), "
            f"got {tuple(token_weights.shape)}"
        )
    if (token_weights < 0).any():
        raise ValueError("token_weights must be non-negative")
    weights = token_weights.to(patches)
    total = weights.sum(1)  # (B, K)
    if fallback_weights is not None:
        use_fallback = total <= 0
        weights = torch.where(use_fallback[:, None, :], fallback_weights.to(patches), weights)
        total = weights.sum(1)
    defined = total > 0
    maps = weights.transpose(1, 2) @ patches  # (B, K, H*W)
    maps = maps / total.clamp_min(torch.finfo(maps.dtype).tiny)[..., None]
    return maps.reshape(B, -1, H, W), defined
