"""Gradient-weighted attention relevance (Chefer, Gur & Wolf, ICCV 2021, "Generic Attention-model Explainability
for Interpreting Bi-Modal and Encoder-Decoder Transformers") and Grad-CAM on transformer tokens.

Written from the paper's equations (numbers below are the paper's):

* (5) per layer, ``Ā = E_h[(∇A ⊙ A)^+]``: the attention probabilities times the gradient of the target with
  respect to *the same* probabilities, negative values clipped, averaged over heads;
* (6) self-attention: ``R <- R + Ā R``, starting from ``R = I`` (each token relevant to itself);
* (8, 9) normalisation of a self-relevance: ``R̄ = rownorm(R - I) + I``;
* (10) cross-attention of queries q to image tokens i: ``R^{qi} <- R^{qi} + (R̄^{qq})^T Ā^{qi} R̄^{ii}``, with the
  decoder self-attention updating ``R^{qq} <- R^{qq} + Ā^{qq} R^{qq}`` and ``R^{qi} <- R^{qi} + Ā^{qq} R^{qi}``
  (6, 7).

Grad-CAM (Selvaraju et al., 2017) on the tokens ``X`` (N x C) of the last block: ``α = mean_j ∂y/∂X_j`` over the
patch tokens, ``m(j) = ReLU(Σ_c α_c X_jc)``.

The roll-out chain's token-set changes (SwinV2 patch merging, a detection encoder that reads only the patch tokens)
are applied to R as in :func:`lifevit.explain.rollout.rollout_records`.
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .capture import AttentionRecord
from .rollout import Rollout, pooling_matrix

__all__ = [
    "MultiheadAttentionRecorder",
    "cross_attention_relevance",
    "grad_cam",
    "gradient_weighted_attention",
    "normalize_self_relevance",
    "self_attention_relevance",
]


def gradient_weighted_attention(attn: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """Eq. 5: ``Ā = mean_h (grad ⊙ attn)^+`` for ``(B, heads, N, M)`` probabilities and their gradient -> (B, N, M)."""
    if attn.shape != grad.shape or attn.ndim != 4:
        raise ValueError(
            f"attention and gradient must both be (B, heads, N, M), got {tuple(attn.shape)} and {tuple(grad.shape)}"
        )
    return (grad.float() * attn.float()).clamp_min(0).mean(1)


def self_attention_relevance(records: Sequence[AttentionRecord], grads: Sequence[torch.Tensor]) -> Rollout:
    """Eq. 6 over a chain of self-attention records: ``R = I``, then ``R <- R + Ā_l R`` for l = 1..L.

    Args:
        records: The chain (first layer first), e.g. from :func:`lifevit.explain.rollout.select_chain`.
        grads: Per record, the gradient of the target with respect to ``record.attn`` (same shape).

    Returns:
        A :class:`Rollout` whose ``matrix`` is R (rows: the last layer's tokens, columns: the first layer's).
    """
    if not records or len(records) != len(grads):
        raise ValueError(f"need one gradient per attention record, got {len(records)} records, {len(grads)} grads")
    first = records[0]
    B, N0 = first.attn.shape[0], first.num_tokens
    R = torch.eye(N0, device=first.attn.device).expand(B, N0, N0).clone()  # (B, N0, N0)
    grid, prefix = first.grid_size, first.num_prefix_tokens
    for rec, grad in zip(records, grads):
        cam = gradient_weighted_attention(rec.attn, grad)  # (B, N, N)
        if cam.shape[-1] != R.shape[-2]:
            if prefix and not rec.num_prefix_tokens:
                R = R[:, prefix:]  # (B, N_patch, N_in): the next layers read the patch tokens only
            if rec.grid_size != grid:
                R = pooling_matrix(grid, rec.grid_size, device=R.device, dtype=R.dtype) @ R  # (B, N_coarse, N_in)
        R = R + cam @ R
        grid, prefix = rec.grid_size, rec.num_prefix_tokens
    last = records[-1]
    return Rollout(R, last.num_prefix_tokens, last.grid_size, first.num_prefix_tokens, first.grid_size)


def normalize_self_relevance(R: torch.Tensor) -> torch.Tensor:
    """Eq. 8-9: ``R̄ = rownorm(R - I) + I`` for ``(B, N, N)`` self-relevance (a zero row stays zero before + I)."""
    eye = torch.eye(R.shape[-1], dtype=R.dtype, device=R.device)
    extra = R - eye
    extra = extra / extra.sum(-1, keepdim=True).clamp_min(torch.finfo(R.dtype).tiny)
    return extra + eye


def cross_attention_relevance(
    image_relevance: torch.Tensor,
    layers: Sequence[Tuple[torch.Tensor, torch.Tensor]],
    normalize: bool = True,
) -> torch.Tensor:
    """Relevance of the image tokens for each decoder query, eq. 6, 7 and 10.

    Args:
        image_relevance: ``R^{ii}`` (B, N_mem, N_in): relevance of the input tokens for the encoder memory tokens
            (square when both are on the same grid; a SwinV2 backbone gives a coarser memory grid).
        layers: Per decoder layer, (``Ā^{qq}`` (B, Q, Q) of its self-attention, ``Ā^{qi}`` (B, Q, N) of its
            cross-attention), both from :func:`gradient_weighted_attention`.
        normalize: Apply eq. 8-9 to ``R^{qq}`` and (when square) ``R^{ii}`` inside eq. 10 (the paper's default).

    Returns:
        ``R^{qi}`` (B, Q, N_in).
    """
    if not layers:
        raise ValueError("cross_attention_relevance needs at least one decoder layer")
    B, N_mem, N_in = image_relevance.shape
    Q = layers[0][0].shape[-1]
    R_qq = torch.eye(Q, device=image_relevance.device).expand(B, Q, Q).clone()
    R_qi = image_relevance.new_zeros(B, Q, N_in)
    square = N_mem == N_in
    R_ii = normalize_self_relevance(image_relevance) if normalize and square else image_relevance
    for cam_qq, cam_qi in layers:
        R_qq, R_qi = R_qq + cam_qq @ R_qq, R_qi + cam_qq @ R_qi
        R_qq_bar = normalize_self_relevance(R_qq) if normalize else R_qq
        R_qi = R_qi + R_qq_bar.transpose(1, 2) @ cam_qi @ R_ii  # (B, Q, N_in)
    return R_qi


def grad_cam(tokens: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    """Grad-CAM over tokens: ``m(j) = ReLU(Σ_c α_c X_jc)`` with ``α = mean_j ∂y/∂X_j``.

    Args:
        tokens: ``(B, N, C)`` patch-token features X of a block (prefix tokens removed).
        grads: ``(B, N, C)`` gradient of the target y with respect to them.

    Returns:
        ``(B, N)`` non-negative map.
    """
    if tokens.shape != grads.shape or tokens.ndim != 3:
        raise ValueError(f"tokens and grads must both be (B, N, C), got {tuple(tokens.shape)}, {tuple(grads.shape)}")
    alpha = grads.float().mean(1, keepdim=True)  # (B, 1, C)
    return (alpha * tokens.float()).sum(-1).clamp_min(0)  # (B, N)


class MultiheadAttentionRecorder:
    """Records differentiable attention probabilities of ``nn.MultiheadAttention`` modules (a DETR-style decoder).

    ``nn.MultiheadAttention`` returns no probabilities on its fast path (``need_weights=False``), and the weights it
    returns otherwise are a copy off the autograd path. While recording, a forward hook recomputes each call
    explicitly from the module's own projections, ``softmax(q k^T / sqrt(d) + mask) v`` then ``out_proj``, checks
    it against the module's output (a ``RuntimeError`` beyond 1e-4) and returns it, so that the recorded
    probabilities are the ones the output depends on. Hooks are removed on exit.

    Args:
        root: Module whose ``nn.MultiheadAttention`` descendants are recorded.

    Attributes:
        records: (qualified name, probabilities ``(B, heads, L_q, L_k)``) per call, in call order.
    """

    def __init__(self, root: nn.Module) -> None:
        self.modules = [(n, m) for n, m in root.named_modules() if isinstance(m, nn.MultiheadAttention)]
        if not self.modules:
            raise ValueError(f"{type(root).__name__} has no nn.MultiheadAttention module to record")
        self.records: List[Tuple[str, torch.Tensor]] = []
        self._handles: List[Any] = []

    def _hook(self, name: str):
        def hook(m: nn.MultiheadAttention, args: Tuple[Any, ...], kwargs: Dict[str, Any], output: Any):
            names = ("query", "key", "value", "key_padding_mask", "need_weights", "attn_mask")
            call = dict(zip(names, args), **kwargs)
            unsupported = (
                not m.batch_first
                or not m._qkv_same_embed_dim
                or m.bias_k is not None
                or m.add_zero_attn
                or call.get("attn_mask") is not None
            )
            if unsupported:
                raise RuntimeError(
                    f"{name}: only batch-first nn.MultiheadAttention with packed projections, no bias_k / "
                    "add_zero_attn and no attn_mask can be recorded"
                )
            query, key, value = call["query"], call["key"], call["value"]
            B, Lq, D = query.shape
            Lk, h = key.shape[1], m.num_heads
            w_q, w_k, w_v = m.in_proj_weight.chunk(3)
            b_q, b_k, b_v = m.in_proj_bias.chunk(3) if m.in_proj_bias is not None else (None, None, None)
            q = F.linear(query, w_q, b_q).view(B, Lq, h, D // h).transpose(1, 2)  # (B, h, Lq, d)
            k = F.linear(key, w_k, b_k).view(B, Lk, h, D // h).transpose(1, 2)  # (B, h, Lk, d)
            v = F.linear(value, w_v, b_v).view(B, Lk, h, D // h).transpose(1, 2)  # (B, h, Lk, d)
            logits = q @ k.transpose(-2, -1) / math.sqrt(D // h)  # (B, h, Lq, Lk)
            padding = call.get("key_padding_mask")
            if padding is not None:
                logits = logits.masked_fill(padding[:, None, None, :].bool(), float("-inf"))
            attn = logits.softmax(-1)  # (B, h, Lq, Lk)
            out = m.out_proj((attn @ v).transpose(1, 2).reshape(B, Lq, D))  # (B, Lq, D)
            ref = output[0]
            if not torch.allclose(out, ref, atol=1e-4, rtol=1e-4):
                raise RuntimeError(
                    f"{name}: explicit attention differs from the module's output by "
                    f"{(out - ref).abs().max().item():.2e} (unsupported nn.MultiheadAttention configuration)"
                )
            self.records.append((name, attn))
            return out, None

        return hook

    def __enter__(self) -> MultiheadAttentionRecorder:
        self.records = []
        for name, m in self.modules:
            self._handles.append(m.register_forward_hook(self._hook(name), with_kwargs=True))
        return self

    def __exit__(self, *exc: Any) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


def relevance_readout_rows(relevance: Rollout, subtract_identity: bool) -> torch.Tensor:
    """The patch-row x patch-column block of R ``(B, N_out_patch, N_in_patch)``, minus I when asked and square."""
    R = relevance.matrix[:, relevance.out_prefix :, relevance.in_prefix :]
    if subtract_identity and R.shape[-1] == R.shape[-2]:
        R = R - torch.eye(R.shape[-1], dtype=R.dtype, device=R.device)
    return R
