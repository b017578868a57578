"""explain() on classifiers, segmentation and detection models; per-token probabilities; overlays."""

import numpy as np
import pytest
import timm
import torch
from PIL import Image

import lifevit  # noqa: F401
from lifevit.explain import capture_attention, explain, rollout_records, save_overlay, segmentation_token_probs


def test_segmentation_token_probs_average_the_pixel_softmax_per_cell():
    logits = torch.zeros(1, 2, 4, 4)
    logits[0, 1, :2, :2] = 100.0  # top-left cell: class 1 everywhere
    logits[0, 1, 2, 2] = 100.0  # bottom-right cell: class 1 on one pixel of four
    probs = segmentation_token_probs(logits, (2, 2))
    torch.testing.assert_close(probs[0, :, 1], torch.tensor([1.0, 0.5, 0.5, 0.625]))
    torch.testing.assert_close(probs.sum(-1), torch.ones(1, 4))
    # 3x3 image on a 2x2 grid: cells are 2x2 pixels of the zero-padded 4x4 image; padding is not averaged in
    logits = torch.full((1, 2, 3, 3), -100.0)
    logits[0, 0] = 100.0
    logits[0, :, 2, 2] = torch.tensor([-100.0, 100.0])  # the only real pixel of the bottom-right cell is class 1
    probs = segmentation_token_probs(logits, (2, 2))
    torch.testing.assert_close(probs[0, 3], torch.tensor([0.0, 1.0]))
    torch.testing.assert_close(probs[0, 1], torch.tensor([1.0, 0.0]))


def test_classifier_rollout_reads_the_class_token_row():
    torch.manual_seed(0)
    model = timm.create_model("vit_lite_patch4_28_life").eval()
    x = torch.randn(2, 1, 28, 28)
    result = explain(model, x)
    _, records = capture_attention(model, x)
    R = rollout_records(records).matrix
    np.testing.assert_allclose(result.token_maps[:, 0], R[:, 0, 1:].reshape(2, 7, 7).numpy(), rtol=1e-6)
    assert result.maps.shape == (2, 1, 28, 28) and result.classes == [-1]
    np.testing.assert_allclose(result.output.numpy(), model(x).detach().numpy(), atol=1e-5)
    with pytest.raises(ValueError, match="method must be one of"):
        explain(model, x, "lrp")


def test_segmentation_dense_rollout_maps_and_predictions():
    from lifevit.tasks.segmentation import ModelConfig, build_segmenter

    torch.manual_seed(0)
    cfg = ModelConfig(
        backbone="vit_lite_patch4_28_life",
        decoder="mask_transformer",
        num_classes=4,
        img_size=(32, 32),
        backbone_kwargs={"patch_size": 8, "depth": 2},
        decoder_layers=1,
    )
    model = build_segmenter(cfg).eval()
    x = torch.randn(2, 3, 32, 32)
    result = explain(model, x, "dense-rollout")
    assert result.token_maps.shape == (2, 4, 4, 4) and result.maps.shape == (2, 4, 32, 32)
    # only the backbone's 2 blocks are rolled out (the mask-transformer decoder mixes class embeddings in)
    assert result.rollout.matrix.shape == (2, 17, 17)
    probs = segmentation_token_probs(result.output["logits"], (4, 4))
    predicted = torch.zeros(2, 4, dtype=torch.bool)
    for b in range(2):
        predicted[b, probs[b].argmax(-1).unique()] = True
    assert result.predicted.tolist() == predicted.tolist()
    # each map is a convex combination of roll-out rows: mass over patches in (0, 1]
    sums = result.token_maps.reshape(2, 4, -1).sum(-1)
    assert (sums > 0).all() and (sums <= 1 + 1e-5).all()
    # a predicted class's map only mixes the rows of its predicted tokens
    b, c = 0, int(probs[0].argmax(-1)[0])
    rows = probs[0].argmax(-1) == c
    w = probs[0, rows, c]
    R = result.rollout.matrix[0, 1:, 1:]
    expected = (w[:, None] * R[rows]).sum(0) / w.sum()
    np.testing.assert_allclose(result.token_maps[b, c].reshape(-1), expected.numpy(), rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match=r"classes must be in \[0, 4\)"):
        explain(model, x, "dense-rollout", classes=[4])


def test_detection_rollout_chains_backbone_and_encoder():
    from lifevit.tasks.detection import ModelConfig, build_detector

    torch.manual_seed(0)
    cfg = ModelConfig(backbone_kwargs={"patch_size": 8, "in_chans": 3, "depth": 2}, enc_layers=1, dec_layers=1)
    model = build_detector(cfg, num_classes=3, img_size=32).eval()
    x = torch.randn(1, 3, 32, 32)
    _, records = capture_attention(model, x, modules=["backbone.", "head.encoder."])
    assert [r.name for r in records] == [
        "backbone.model.blocks.0.attn",
        "backbone.model.blocks.1.attn",
        "head.encoder.0.attn",
    ]
    assert [r.num_prefix_tokens for r in records] == [1, 1, 0]
    result = explain(model, x, "dense-rollout", score_threshold=0.0)
    assert result.rollout.matrix.shape == (1, 16, 17)  # encoder tokens -> backbone input tokens (class token first)
    torch.testing.assert_close(result.rollout.matrix.sum(-1), torch.ones(1, 16))
    assert result.maps.shape == (1, 3, 32, 32) and len(result.detections) == 1
    labels = set(result.detections[0]["labels"].tolist())
    assert set(np.flatnonzero(result.predicted[0]).tolist()) <= labels


def test_swinv2_life_capture_keeps_outputs():
    torch.manual_seed(0)
    model = timm.create_model(
        "swinv2_tiny_patch1_window8_32_life", embed_dim=12, depths=(2, 2), num_heads=(1, 2), num_classes=5
    ).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        before = model(x)
    result = explain(model, x)
    assert result.rollout.in_grid == (32, 32) and result.rollout.out_grid == (16, 16)
    torch.testing.assert_close(result.output, before)
    with torch.no_grad():
        assert torch.equal(model(x), before)


def test_save_overlay_writes_side_by_side_panels(tmp_path):
    img = np.zeros((20, 30, 3), np.uint8)
    heat = np.linspace(0, 1, 600).reshape(20, 30)
    out = save_overlay(img, [heat, heat[::-1]], ["a", "b"], tmp_path / "sub" / "o.png", panel_size=2.0)
    png = np.asarray(Image.open(out))
    assert png.shape[0] < png.shape[1] and png.shape[1] == 600  # 3 panels x 2 in x 100 dpi
    with pytest.raises(ValueError, match=r"every map must have the image size \(20, 30\)"):
        save_overlay(img, [heat[:10]], ["a"], tmp_path / "x.png")
    with pytest.raises(ValueError, match="one title per map"):
        save_overlay(img, [heat], [], tmp_path / "x.png")
