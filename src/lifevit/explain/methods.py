"""The gradient methods behind :func:`lifevit.explain.explain`: ``chefer`` and ``gradcam``.

One forward pass records, on the autograd graph, the attention probabilities of the rolled-out chain (the same
layers as roll-out), the decoder attention of a detection head and the output tokens of the chain's last block;
then one backward pass per mapped class takes the gradient of that class's *target* with respect to them:

* classifier: the logit of the class (each image's predicted class by default);
* segmentation: ``Σ_p w_p logit_c(p)`` over the pixels predicted as c (``w_p = 1``), or, in an image where no
  pixel is, over all pixels with ``w_p = p_c(p)`` (detached);
* detection: ``Σ_q w_q logit_{q,c}`` over the queries whose class-c score ``s_qc >= tau`` (``w_q = s_qc``), or, in
  an image with none, over the top-100 (query, class) pairs of class c (``w_q = s_qc``).

Read-out (``chefer``; R from :func:`~lifevit.explain.relevance.self_attention_relevance`):

* classifier: row ``token_index`` of R over the patch columns (the patch-row mean for models without a class
  token or with average pooling);
* segmentation: ``m_c(j) = Σ_i w_ic (R - I)[i, j] / Σ_i w_ic`` with the token weights of Dense Attention Roll-Out;
  the identity (each token's own, unmixed share) is taken out, else every map would be the prediction mask;
* detection: the encoder-decoder rule, ``m_c = Σ_q w_q R^{qi}[q] / Σ_q w_q``
  (:func:`~lifevit.explain.relevance.cross_attention_relevance`).

``gradcam`` reads :func:`~lifevit.explain.relevance.grad_cam` of the patch tokens entering the last block (the
tokens its attention mixes; the ones leaving it reach a class-token head only through the class token, so their
gradient is 0) for the same targets.
"""

from __future__ import annotations

from contextlib import ExitStack
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from .capture import AttentionRecorder, record_gradient
from .relevance import (
    MultiheadAttentionRecorder,
    cross_attention_relevance,
    grad_cam,
    gradient_weighted_attention,
    relevance_readout_rows,
    self_attention_relevance,
)
from .rollout import select_chain

__all__ = ["gradient_maps"]


def _grads(target: torch.Tensor, tensors: Sequence[torch.Tensor]) -> List[torch.Tensor]:
    got = torch.autograd.grad(target, list(tensors), retain_graph=True, allow_unused=True)
    return [torch.zeros_like(x) if g is None else g for g, x in zip(got, tensors)]


def _targets(
    task: str, output: Any, classes: Optional[Sequence[int]], score_threshold: float
) -> Tuple[List[int], List[torch.Tensor], torch.Tensor, List[Optional[torch.Tensor]]]:
    """Per mapped class: the scalar target, whether it is predicted per image, and (detection) query weights."""
    if task == "classification":
        logits = output  # (B, K)
        K = logits.shape[-1]
        if classes is None:
            top = logits.argmax(-1)  # (B,)
            target = logits.gather(1, top[:, None]).sum()
            return [-1], [target], torch.ones(logits.shape[0], 1, dtype=torch.bool), [None]
        class_ids = _valid(classes, K)
        predicted = torch.ones(logits.shape[0], len(class_ids), dtype=torch.bool)
        return class_ids, [logits[:, c].sum() for c in class_ids], predicted, [None] * len(class_ids)
    if task == "segmentation":
        logits = output["logits"]  # (B, K, H, W)
        K = logits.shape[1]
        class_ids = list(range(K)) if classes is None else _valid(classes, K)
        pred = logits.argmax(1)  # (B, H, W)
        probs = logits.detach().softmax(1)
        targets, predicted = [], []
        for c in class_ids:
            mask = (pred == c).float()  # (B, H, W)
            has = mask.flatten(1).sum(1) > 0  # (B,)
            w = torch.where(has[:, None, None], mask, probs[:, c])
            targets.append((w * logits[:, c]).sum())
            predicted.append(has)
        return class_ids, targets, torch.stack(predicted, 1).cpu(), [None] * len(class_ids)
    logits = output["pred_logits"]  # (B, Q, K)
    B, Q, K = logits.shape
    class_ids = list(range(K)) if classes is None else _valid(classes, K)
    scores = logits.detach().sigmoid()  # (B, Q, K)
    top = scores.flatten(1).topk(min(100, Q * K), dim=1).indices  # (B, S) the top-100 (query, class) pairs
    in_top = torch.zeros(B, Q * K, dtype=torch.bool, device=logits.device).scatter(1, top, True).view(B, Q, K)
    targets, predicted, query_weights = [], [], []
    for c in class_ids:
        kept = scores[..., c] >= score_threshold  # (B, Q)
        has = kept.any(1)  # (B,)
        use = torch.where(has[:, None], kept, in_top[..., c])
        w = scores[..., c] * use  # (B, Q)
        targets.append((w * logits[..., c]).sum())
        predicted.append(has)
        query_weights.append(w)
    return class_ids, targets, torch.stack(predicted, 1).cpu(), query_weights


def _valid(classes: Sequence[int], K: int) -> List[int]:
    class_ids = [int(c) for c in classes]
    bad = [c for c in class_ids if not 0 <= c < K]
    if bad:
        raise ValueError(f"classes must be in [0, {K}), got {bad}")
    return class_ids


def _block_tokens(out: torch.Tensor, prefix: int) -> torch.Tensor:
    """(B, N, C) patch tokens of a block output: (B, P + N, C) with prefix tokens, or a (B, H, W, C) Swin map."""
    if out.ndim == 4:
        return out.flatten(1, 2)  # (B, H*W, C)
    return out[:, prefix:]


def gradient_maps(
    model: nn.Module,
    images: torch.Tensor,
    task: str,
    method: str,
    *,
    grid: Optional[Tuple[int, int]],
    prefixes: Optional[Sequence[str]],
    classes: Optional[Sequence[int]] = None,
    score_threshold: float = 0.3,
    token_index: int = 0,
    average_pool: bool = False,
) -> Dict[str, Any]:
    """Maps of ``chefer`` or ``gradcam`` (see the module docstring); called by :func:`lifevit.explain.explain`.

    Returns:
        ``token_maps`` (B, K, h, w), ``classes``, ``predicted`` (B, K), ``output`` (detached), and ``relevance``
        (``chefer``: R of the last class) / ``detections`` (detection models).
    """
    from .api import dense_token_weights

    images = images.detach().requires_grad_(True)  # builds the graph even for a frozen model
    block_out: Dict[str, torch.Tensor] = {}  # the last block's input tokens
    with ExitStack() as stack:
        recorder = stack.enter_context(AttentionRecorder(model, grid_size=grid, detach=False, include=prefixes))
        decoder = None
        if task == "detection" and method == "chefer":
            decoder = stack.enter_context(MultiheadAttentionRecorder(model.head.decoder))
        handles = []
        if method == "gradcam":
            # the tokens entering the chain's last block (the parent of the last attention module): in a class-token
            # classifier the patch tokens leaving the last block reach no output, so their gradient is 0
            names = [n for n, _ in recorder._modules]
            block = model.get_submodule(names[-1].rsplit(".", 1)[0])
            handles.append(block.register_forward_pre_hook(lambda m, a: block_out.__setitem__("x", a[0])))
        try:
            output = model(images)
        finally:
            for h in handles:
                h.remove()
    chain = select_chain(recorder.records)
    class_ids, targets, predicted, query_weights = _targets(task, output, classes, score_threshold)
    B = images.shape[0]

    if task == "segmentation":
        probs_out = chain[-1].grid_size
        weights, fallback, _ = dense_token_weights(model, {"logits": output["logits"].detach()}, task, probs_out,
                                                   tuple(images.shape[-2:]), score_threshold)  # fmt: skip
        use_fallback = weights.sum(1, keepdim=True) <= 0
        weights = torch.where(use_fallback, fallback, weights)  # (B, N, K)

    maps, relevance = [], None
    for k, (c, target) in enumerate(zip(class_ids, targets)):
        if method == "gradcam":
            x = block_out["x"]
            g = _grads(target, [x])[0]
            prefix = chain[-1].num_prefix_tokens
            cam = grad_cam(_block_tokens(x.detach(), prefix), _block_tokens(g, prefix))  # (B, N)
            h, w = chain[-1].grid_size
            maps.append(cam.reshape(B, h, w))
            continue
        dec_tensors = [a for _, a in decoder.records] if decoder is not None else []
        grads = _grads(target, [r.source for r in chain] + dec_tensors)
        enc_grads = [record_gradient(r, g) for r, g in zip(chain, grads[: len(chain)])]
        detached = [_detached(r) for r in chain]
        relevance = self_attention_relevance(detached, enc_grads)
        h, w = relevance.in_grid
        if task == "classification":
            R = relevance.matrix
            if relevance.out_prefix > 0 and not average_pool:
                row = R[:, token_index, relevance.in_prefix :]
            else:
                row = R[:, relevance.out_prefix :, relevance.in_prefix :].mean(1)
            maps.append(row.reshape(B, h, w))
        elif task == "segmentation":
            rows = relevance_readout_rows(relevance, subtract_identity=True)  # (B, N_out, N_in)
            wc = weights[..., c].to(rows)  # (B, N_out)
            m = (wc[:, None, :] @ rows)[:, 0] / wc.sum(1, keepdim=True).clamp_min(1e-12)
            maps.append(m.reshape(B, h, w))
        else:
            R_ii = relevance_readout_rows(relevance, subtract_identity=False)  # (B, N_enc, N_in)
            layers = []
            dec_grads = grads[len(chain) :]
            for i in range(0, len(dec_tensors), 2):  # (self-attention, cross-attention) per decoder layer
                layers.append(
                    tuple(gradient_weighted_attention(a.detach(), g) for a, g in zip(dec_tensors[i : i + 2],
                                                                                     dec_grads[i : i + 2]))
                )  # fmt: skip
            R_qi = cross_attention_relevance(R_ii, layers)  # (B, Q, N_in)
            wq = query_weights[k].to(R_qi)  # (B, Q)
            m = (wq[:, None, :] @ R_qi)[:, 0] / wq.sum(1, keepdim=True).clamp_min(1e-12)
            maps.append(m.reshape(B, h, w))
    token_maps = torch.stack(maps, 1).detach()  # (B, K, h, w)
    out = {"token_maps": token_maps, "classes": class_ids, "predicted": predicted, "output": _detach(output)}
    if relevance is not None:
        relevance.matrix = relevance.matrix.detach()
        out["relevance"] = relevance
    if task == "detection":
        _, _, dets = dense_token_weights(model, _detach(output), task, chain[-1].grid_size, tuple(images.shape[-2:]),
                                         score_threshold)  # fmt: skip
        out["detections"] = dets
    return out


def _detached(rec):
    from dataclasses import replace

    return replace(rec, attn=rec.attn.detach(), source=None)


def _detach(output: Any) -> Any:
    if isinstance(output, torch.Tensor):
        return output.detach()
    if isinstance(output, dict):
        return {k: _detach(v) for k, v in output.items()}
    if isinstance(output, (list, tuple)):
        return type(output)(_detach(v) for v in output)
    return output
