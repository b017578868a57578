"""The baselines behind explain(): Chefer et al.'s relevance, Grad-CAM on tokens, random maps; known answers."""

import numpy as np
import pytest
import timm
import torch
from torch import nn

import lifevit  # noqa: F401
from lifevit.explain import (
    AttentionRecord,
    AttentionRecorder,
    MultiheadAttentionRecorder,
    cross_attention_relevance,
    explain,
    grad_cam,
    gradient_weighted_attention,
    normalize_self_relevance,
    self_attention_relevance,
)


def _record(attn, prefix=0, grid=None):
    return AttentionRecord("x", attn, prefix, grid)


def test_gradient_weighted_attention_clips_negatives_then_averages_heads():
    attn = torch.tensor([[[[0.5, 0.5], [1.0, 0.0]], [[0.2, 0.8], [0.4, 0.6]]]])  # (1, 2 heads, 2, 2)
    grad = torch.tensor([[[[2.0, -2.0], [1.0, 3.0]], [[-1.0, 1.0], [1.0, 1.0]]]])
    # head 0: [[1, 0], [1, 0]]; head 1: [[0, 0.8], [0.4, 0.6]] -> mean
    expected = torch.tensor([[[0.5, 0.4], [0.7, 0.3]]])
    torch.testing.assert_close(gradient_weighted_attention(attn, grad), expected)
    with pytest.raises(ValueError, match="must both be"):
        gradient_weighted_attention(attn, grad[:, :1])


def test_self_attention_relevance_accumulates_in_layer_order():
    # gradient 1 everywhere and one head: Ā_l = A_l, so R = (I + A_2)(I + A_1), not (I + A_1)(I + A_2)
    A1 = torch.tensor([[0.0, 1.0, 0.0], [0.0, 1.0, 0.0], [0.0, 1.0, 0.0]])  # everyone attends token 1
    A2 = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, 1.0], [0.0, 0.0, 1.0]])  # everyone attends token 2
    recs = [_record(A[None, None]) for A in (A1, A2)]
    ones = [torch.ones(1, 1, 3, 3)] * 2
    R = self_attention_relevance(recs, ones).matrix[0]
    eye = torch.eye(3)
    torch.testing.assert_close(R, (eye + A2) @ (eye + A1))
    assert not torch.allclose(R, (eye + A1) @ (eye + A2))
    # no gradient, no relevance beyond the identity
    torch.testing.assert_close(self_attention_relevance(recs, [torch.zeros(1, 1, 3, 3)] * 2).matrix[0], eye)
    # negative gradients are clipped: the same as no gradient
    torch.testing.assert_close(self_attention_relevance(recs, [-o for o in ones]).matrix[0], eye)


def test_self_attention_relevance_drops_the_prefix_rows_for_a_patch_only_encoder():
    A = torch.full((1, 1, 5, 5), 0.2)  # class token + 2x2 grid
    E = torch.eye(4)[None, None]  # encoder on the 4 patch tokens, attending itself
    recs = [_record(A, 1, (2, 2)), _record(E, 0, (2, 2))]
    rel = self_attention_relevance(recs, [torch.ones_like(A), torch.ones_like(E)])
    R1 = torch.eye(5) + A[0, 0]
    expected = (torch.eye(4) + E[0, 0]) @ R1[1:]  # the encoder reads the patch rows
    torch.testing.assert_close(rel.matrix[0], expected)
    assert (rel.out_prefix, rel.in_prefix, rel.in_grid) == (0, 1, (2, 2))


def test_normalize_self_relevance_eq_8_9():
    R = torch.tensor([[[3.0, 2.0], [0.0, 1.0]]])  # R - I = [[2, 2], [0, 0]]
    torch.testing.assert_close(normalize_self_relevance(R), torch.tensor([[[1.5, 0.5], [0.0, 1.0]]]))


def test_cross_attention_relevance_known_cases():
    cam_qi = torch.tensor([[[0.0, 0.7, 0.3], [0.5, 0.0, 0.5]]])  # (1, Q=2, N=3)
    zero_qq = torch.zeros(1, 2, 2)
    # no decoder self-attention relevance and R^{ii} = I: R^{qi} is the cross-attention relevance itself
    torch.testing.assert_close(cross_attention_relevance(torch.eye(3)[None], [(zero_qq, cam_qi)]), cam_qi)
    # R^{ii} mixes the image tokens: R^{qi} = Ā^{qi} R̄^{ii}
    R_ii = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 2.0], [0.0, 0.0, 1.0]]])  # R - I rows normalised: [0, 0, 1]
    R_bar = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 1.0], [0.0, 0.0, 1.0]]])
    torch.testing.assert_close(cross_attention_relevance(R_ii, [(zero_qq, cam_qi)]), cam_qi @ R_bar)
    # query 1 attends query 0 in the decoder self-attention: R^{qq} = [[1, 0], [1, 1]], R̄^{qq} = same, so
    # R^{qi} = R̄^T Ā^{qi}: query 0 gathers query 1's cross-attention too
    cam_qq = torch.tensor([[[0.0, 0.0], [1.0, 0.0]]])
    out = cross_attention_relevance(torch.eye(3)[None], [(cam_qq, cam_qi)])
    torch.testing.assert_close(out, torch.tensor([[[1.0, 0.0], [1.0, 1.0]]]).transpose(1, 2) @ cam_qi)


def test_multihead_attention_recorder_returns_the_module_output_and_its_probabilities():
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(8, 2, batch_first=True).eval()
    q, kv = torch.randn(2, 3, 8), torch.randn(2, 5, 8)
    pad = torch.tensor([[False] * 5, [False, False, False, True, True]])
    ref, ref_w = mha(q, kv, kv, key_padding_mask=pad, need_weights=True, average_attn_weights=False)
    with MultiheadAttentionRecorder(mha) as rec:
        out, _ = mha(q, kv, kv, key_padding_mask=pad, need_weights=False)
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=1e-5)
    name, attn = rec.records[0]
    torch.testing.assert_close(attn, ref_w, atol=1e-6, rtol=1e-5)
    assert attn[1, :, :, 3:].abs().max() == 0  # padding keys get no attention
    assert not mha._forward_hooks and not mha._forward_hooks_with_kwargs  # hooks removed


def test_grad_cam_on_a_linear_head_over_mean_pooled_tokens():
    # y = w . mean_j X_j: dy/dX_j = w / N, so alpha = w / N and m(j) = ReLU(w . X_j) / N
    torch.manual_seed(0)
    X = torch.randn(1, 6, 4, requires_grad=True)
    w = torch.tensor([1.0, -2.0, 0.5, 3.0])
    y = X.mean(1) @ w
    (g,) = torch.autograd.grad(y.sum(), X)
    expected = (X.detach()[0] @ w).clamp_min(0) / 6
    torch.testing.assert_close(grad_cam(X.detach(), g)[0], expected)
    assert (grad_cam(X.detach(), g) >= 0).all()


def _vit(depth=2):
    torch.manual_seed(0)
    return timm.create_model("vit_lite_patch4_28", depth=depth).eval()


def test_chefer_pairs_each_layer_with_its_own_gradient():
    """A last block whose attention output is cut off gets zero gradient, so R = I + Ā_1 from the first block alone:
    gradients paired with the wrong layers (e.g. collected in backward order and not reversed) would break this."""
    model = _vit()
    with torch.no_grad():
        model.blocks[1].attn.proj.weight.zero_()
        model.blocks[1].attn.proj.bias.zero_()
    x = torch.randn(2, 1, 28, 28)
    result = explain(model, x, "chefer")
    # reference: the first block's probabilities and the gradient of the predicted logit, by hand
    x_req = x.clone().requires_grad_(True)
    with torch.enable_grad(), AttentionRecorder(model, detach=False) as rec:
        logits = model(x_req)
    target = logits.gather(1, logits.argmax(-1, keepdim=True)).sum()
    g0, g1 = torch.autograd.grad(target, [r.attn for r in rec.records])
    assert g1.abs().max() == 0 and g0.abs().max() > 0
    cam0 = (g0 * rec.records[0].attn).clamp_min(0).mean(1).detach()  # (B, 50, 50)
    expected = (torch.eye(50) + cam0)[:, 0, 1:].reshape(2, 7, 7)
    np.testing.assert_allclose(result.token_maps[:, 0], expected.numpy(), rtol=1e-5, atol=1e-9)
    assert result.classes == [-1] and result.maps.shape == (2, 1, 28, 28)
    # the model is left as it was: no hooks, fused attention restored, no gradients accumulated
    assert all(p.grad is None for p in model.parameters())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_chefer_and_gradcam_for_given_classes_and_average_pooled_models():
    model = _vit()
    x = torch.randn(2, 1, 28, 28)
    for method in ("chefer", "gradcam"):
        res = explain(model, x, method, classes=[3, 7])
        assert res.token_maps.shape == (2, 2, 7, 7) and res.classes == [3, 7]
        assert np.isfinite(res.token_maps).all() and (res.token_maps >= 0).all()
        assert not np.allclose(res.token_maps[:, 0], res.token_maps[:, 1])  # class-specific
    pooled = timm.create_model("vit_lite_patch4_28", depth=2, global_pool="avg", class_token=False).eval()
    res = explain(pooled, x, "chefer")
    assert res.token_maps.shape == (2, 1, 7, 7) and (res.token_maps > 0).all()
    with pytest.raises(ValueError, match=r"classes must be in \[0, 10\)"):
        explain(model, x, "gradcam", classes=[10])


def test_gradcam_on_a_classifier_uses_the_tokens_entering_the_last_block():
    model = _vit()
    x = torch.randn(1, 1, 28, 28)
    res = explain(model, x, "gradcam")
    store = {}
    hook = model.blocks[-1].register_forward_pre_hook(lambda m, a: store.__setitem__("x", a[0]))
    with torch.enable_grad():
        logits = model(x)
        (g,) = torch.autograd.grad(logits[0, logits.argmax()], store["x"])
    hook.remove()
    expected = grad_cam(store["x"][:, 1:].detach(), g[:, 1:])  # patch tokens only
    np.testing.assert_allclose(res.token_maps[0, 0].reshape(-1), expected[0].numpy(), rtol=1e-5, atol=1e-9)
    assert res.token_maps.max() > 0


def test_random_maps_are_seeded_uniform_and_ignore_the_model():
    model = _vit()
    x = torch.randn(3, 1, 28, 28)
    a, b = explain(model, x, "random", seed=1), explain(model, x, "random", seed=1)
    np.testing.assert_array_equal(a.token_maps, b.token_maps)
    c = explain(model, x, "random", seed=2)
    assert not np.array_equal(a.token_maps, c.token_maps)
    assert a.token_maps.shape == (3, 1, 7, 7) and (a.token_maps >= 0).all() and (a.token_maps < 1).all()
    big = explain(model, torch.randn(64, 1, 28, 28), "random", seed=0).token_maps
    assert abs(big.mean() - 0.5) < 0.02  # uniform on [0, 1): mean 1/2
    other = _vit(depth=1)
    np.testing.assert_array_equal(explain(other, x, "random", seed=1).token_maps, a.token_maps)


def _segmenter():
    from lifevit.tasks.segmentation import ModelConfig, build_segmenter

    torch.manual_seed(0)
    cfg = ModelConfig(
        backbone="vit_lite_patch4_28_life", decoder="linear", num_classes=3, img_size=(32, 32),
        backbone_kwargs={"patch_size": 8, "depth": 2},
    )  # fmt: skip
    return build_segmenter(cfg).eval()


def test_dense_tasks_get_one_map_per_class_from_every_method():
    from lifevit.tasks.detection import ModelConfig, build_detector

    seg = _segmenter()
    x = torch.randn(2, 3, 32, 32)
    dense = explain(seg, x, "dense-rollout")
    for method in ("chefer", "gradcam", "random"):
        res = explain(seg, x, method)
        assert res.token_maps.shape == (2, 3, 4, 4) and res.maps.shape == (2, 3, 32, 32)
        assert res.predicted.tolist() == dense.predicted.tolist()
        assert np.isfinite(res.token_maps).all() and (res.token_maps >= 0).all()
    torch.manual_seed(0)
    cfg = ModelConfig(backbone_kwargs={"patch_size": 8, "in_chans": 3, "depth": 2}, enc_layers=1, dec_layers=2)
    det = build_detector(cfg, num_classes=3, img_size=32).eval()
    dense = explain(det, x, "dense-rollout", score_threshold=0.0)
    for method in ("chefer", "gradcam"):
        res = explain(det, x, method, score_threshold=0.0)
        assert res.token_maps.shape == (2, 3, 4, 4) and res.predicted.tolist() == dense.predicted.tolist()
        assert np.isfinite(res.token_maps).all() and (res.token_maps >= 0).all() and res.token_maps.max() > 0
        assert len(res.detections) == 2


def test_chefer_detection_reads_the_decoder_queries():
    """With one decoder layer whose cross-attention gets all the relevance, R^{qi} of the scored queries is what the
    map reads: zeroing the decoder's cross-attention output projection makes every map 0 (no path to the memory)."""
    from lifevit.tasks.detection import ModelConfig, build_detector

    torch.manual_seed(0)
    cfg = ModelConfig(backbone_kwargs={"patch_size": 8, "in_chans": 3, "depth": 1}, enc_layers=1, dec_layers=1)
    det = build_detector(cfg, num_classes=2, img_size=32).eval()
    x = torch.randn(1, 3, 32, 32)
    assert explain(det, x, "chefer", score_threshold=0.0).token_maps.max() > 0
    with torch.no_grad():
        det.head.decoder[0].cross_attn.out_proj.weight.zero_()
    res = explain(det, x, "chefer", score_threshold=0.0)
    assert res.token_maps.max() == 0


def test_unknown_method_names_the_choices():
    with pytest.raises(ValueError, match=r"method must be one of .*'chefer'.*got 'lrp'"):
        explain(_vit(), torch.randn(1, 1, 28, 28), "lrp")


def test_chefer_and_gradcam_on_swinv2_window_attention():
    """SwinV2: gradients of the window probabilities are scattered to the global grid like the probabilities."""
    from lifevit.explain import record_gradient, windows_to_global

    torch.manual_seed(0)
    model = timm.create_model(
        "swinv2_tiny_patch1_window8_32_life", embed_dim=12, depths=(2, 2), num_heads=(1, 2), num_classes=5
    ).eval()
    with torch.no_grad():  # timm starts the residual post-norms at 0 (no gradient reaches the attention): undo that
        for m in model.modules():
            if isinstance(m, nn.LayerNorm):
                m.weight.fill_(1.0)
    x = torch.randn(1, 3, 32, 32)
    with torch.enable_grad(), AttentionRecorder(model, detach=False) as rec:
        logits = model(x.requires_grad_(True))
    first = rec.records[0]
    (g,) = torch.autograd.grad(logits[0, 0], [first.source])
    grid, window, shift = first.window
    torch.testing.assert_close(record_gradient(first, g), windows_to_global(g, grid, window, shift, renormalize=False))
    assert g.abs().max() > 0
    res = explain(model, x.detach(), "chefer")
    assert res.token_maps.shape == (1, 1, 32, 32) and np.ptp(res.token_maps) > 0  # not a constant map
    cam = explain(model, x.detach(), "gradcam")
    assert cam.token_maps.shape == (1, 1, 16, 16)  # the last stage's grid
