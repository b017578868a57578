"""Criterion (ignore index), metrics (IoU numbers), post-processing and sliding-window inference."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lifevit.data.cityscapes import IGNORE_INDEX
from lifevit.tasks.segmentation import (
    ModelConfig,
    SegmentationCriterion,
    SegmentationMetrics,
    SegmentationPostProcess,
    build_segmenter,
    infer_logits,
    sliding_window_logits,
)
from lifevit.tasks.segmentation.postprocess import window_starts


def test_criterion_ignores_pixels():
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 5, 6, requires_grad=True)
    target = torch.randint(0, 4, (2, 5, 6))
    target[0, :2] = IGNORE_INDEX
    crit = SegmentationCriterion(4)
    loss = crit({"logits": logits}, target)["loss"]
    valid = target != IGNORE_INDEX
    expected = F.cross_entropy(logits.permute(0, 2, 3, 1)[valid], target[valid])
    assert torch.allclose(loss, expected)
    loss.backward()
    assert float(logits.grad[0, :, :2].abs().sum()) == 0.0  # ignored pixels get no gradient
    assert float(logits.grad[0, :, 2:].abs().sum()) > 0.0
    # changing the logits of ignored pixels does not change the loss
    changed = logits.detach().clone()
    changed[0, :, :2] += 100.0
    assert torch.allclose(crit({"logits": changed}, target)["loss"], expected)


@pytest.mark.parametrize("dice_weight", [0.0, 1.0])
def test_criterion_all_ignored_is_zero_not_nan(dice_weight):
    logits = torch.randn(1, 3, 4, 4, requires_grad=True)
    crit = SegmentationCriterion(3, dice_weight=dice_weight)
    loss = crit({"logits": logits}, torch.full((1, 4, 4), IGNORE_INDEX))["loss"]
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_criterion_shape_mismatch():
    with pytest.raises(ValueError, match="do not match targets"):
        SegmentationCriterion(3)({"logits": torch.randn(1, 3, 4, 4)}, torch.zeros(1, 4, 5, dtype=torch.long))


def test_dice_term_by_hand_and_ignore():
    # one image, 2 classes, 4 pixels: targets [0, 1, 1, ignore]; logits chosen so the probabilities are exact
    p1 = torch.tensor([0.2, 0.6, 0.9, 0.5])
    logits = torch.stack([torch.zeros(4), torch.log(p1 / (1 - p1))]).view(1, 2, 1, 4)
    target = torch.tensor([[[0, 1, 1, IGNORE_INDEX]]])
    # class 0: p = (0.8, 0.4, 0.1), y = (1, 0, 0); class 1: p = (0.2, 0.6, 0.9), y = (0, 1, 1)
    d0 = (2 * 0.8 + 1) / (1.3 + 1 + 1)
    d1 = (2 * 1.5 + 1) / (1.7 + 2 + 1)
    out = SegmentationCriterion(2, dice_weight=0.5)({"logits": logits}, target)
    assert out["loss_dice"].item() == pytest.approx(1 - (d0 + d1) / 2, abs=1e-6)
    assert out["loss"].item() == pytest.approx(out["loss_ce"].item() + 0.5 * out["loss_dice"].item(), abs=1e-6)
    # the ignored pixel does not count
    changed = logits.clone()
    changed[..., 3] = torch.tensor([5.0, -5.0]).view(1, 2, 1)
    assert SegmentationCriterion(2, dice_weight=0.5)({"logits": changed}, target)["loss"].item() == pytest.approx(
        out["loss"].item(), abs=1e-6
    )
    # a perfect, confident prediction has (almost) no Dice loss
    perfect = F.one_hot(target.clamp(max=1), 2).permute(0, 3, 1, 2).float() * 30
    assert SegmentationCriterion(2, dice_weight=1.0)({"logits": perfect}, target)["loss_dice"].item() < 1e-6
    with pytest.raises(ValueError, match="dice_weight"):
        SegmentationCriterion(2, dice_weight=-1.0)


def test_metrics_numbers():
    m = SegmentationMetrics(3, class_names=("a", "b", "c"))
    target = torch.tensor([[0, 0, 1, 1], [1, 255, 255, 0]])
    pred = torch.tensor([[0, 1, 1, 1], [0, 2, 0, 0]])
    m.update(pred, target)
    out = m.compute()
    # class a: TP 2, FP 1 (pred 0 at target 1), FN 1 -> 2/4; class b: TP 2, FP 1, FN 1 -> 2/4
    # class c: never in the target nor predicted on an evaluated pixel (255 pixels are skipped) -> NaN
    assert out["per_class_iou"]["a"] == pytest.approx(0.5)
    assert out["per_class_iou"]["b"] == pytest.approx(0.5)
    assert math.isnan(out["per_class_iou"]["c"])
    assert out["mIoU"] == pytest.approx(0.5)
    assert out["pixel_acc"] == pytest.approx(4 / 6)
    m.reset()
    m.update(target.clamp(max=2), target.clamp(max=2))
    assert m.compute()["mIoU"] == pytest.approx(1.0)


def test_postprocess_resizes_then_argmax():
    logits = torch.zeros(2, 3, 2, 2)
    logits[0, 1] = 1.0
    logits[1, 2, :, 1] = 1.0
    preds = SegmentationPostProcess()({"logits": logits}, [(4, 4), (2, 2)])
    assert preds[0].shape == (4, 4) and bool((preds[0] == 1).all())
    assert preds[1].tolist() == [[0, 2], [0, 2]]


def test_window_starts_cover_every_pixel():
    assert window_starts(10, 4, 3) == [0, 3, 6]
    assert window_starts(11, 4, 3) == [0, 3, 6, 7]
    assert window_starts(3, 8, 4) == [0]  # window clamped to the image
    for size, win, stride in ((1024, 512, 341), (2048, 768, 512), (37, 8, 5)):
        starts = window_starts(size, win, stride)
        covered = torch.zeros(size)
        for s in starts:
            covered[s : s + win] = 1
        assert covered.all() and starts[-1] + min(win, size) == size


class PerPixel(nn.Module):
    """A model whose output at a pixel depends only on that pixel (so windows cannot change it)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)

    def forward(self, x):
        return {"logits": self.conv(x)}


def test_sliding_window_equals_whole_for_a_per_pixel_model():
    model = PerPixel()
    x = torch.randn(2, 3, 37, 53)
    whole = infer_logits(model, x, "whole")
    slide = sliding_window_logits(model, x, window=(16, 24), stride=(10, 15), batch_size=3)
    assert torch.allclose(slide, whole, atol=1e-6)


def test_sliding_window_equals_whole_where_the_window_fits():
    """With a window as large as the image, sliding-window inference is exactly whole-image inference
    (a real LIFE segmenter, non-square input)."""
    cfg = ModelConfig(
        backbone="deit_tiny_patch16_224_life",
        decoder="mask_transformer",
        num_classes=4,
        img_size=64,
        decoder_layers=1,
        backbone_kwargs=dict(embed_dim=48, depth=2, num_heads=2),
    )
    model = build_segmenter(cfg).eval()
    x = torch.randn(1, 3, 48, 80)
    whole = infer_logits(model, x, "whole")
    for window in ((48, 80), (64, 96)):  # exactly the image, and larger (clamped)
        slide = infer_logits(model, x, "slide", window=window, stride=(32, 32))
        assert torch.allclose(slide, whole, atol=1e-5)
    # a smaller window gives a different (local) but complete prediction
    part = infer_logits(model, x, "slide", window=(32, 32), stride=(16, 16))
    assert part.shape == whole.shape and torch.isfinite(part).all() and not torch.allclose(part, whole)
    with pytest.raises(ValueError, match="inference mode"):
        infer_logits(model, x, "tiles")


class LeftEdge(nn.Module):
    """Not flip-equivariant: the logit of class 1 is the column index, so a flip changes the prediction."""

    def forward(self, x):
        B, _, H, W = x.shape
        cols = torch.arange(W, dtype=torch.float32).expand(B, 1, H, W)
        return {"logits": torch.cat([x[:, :1], cols], dim=1)}  # (B, 2, H, W)


@pytest.mark.parametrize("mode, mean_col", [("whole", 14.5), ("slide", 7.5)])
def test_flip_averages_the_flipped_prediction(mode, mean_col):
    x = torch.randn(2, 3, 20, 30)
    kw = dict(window=(12, 16), stride=(8, 14), batch_size=3)  # windows at x = 0 and 14: a flip swaps them
    plain = infer_logits(LeftEdge(), x, mode, **kw)
    flipped = infer_logits(LeftEdge(), x, mode, flip=True, **kw)
    # class 1: (j + (w - 1 - j)) / 2 everywhere, w = the image (30) or window (16) width; class 0 (the image,
    # flip-equivariant) unchanged
    assert not torch.allclose(plain[:, 1], torch.full_like(plain[:, 1], mean_col))
    assert torch.allclose(flipped[:, 1], torch.full_like(flipped[:, 1], mean_col))
    assert torch.allclose(flipped[:, 0], plain[:, 0], atol=1e-6)
    # a flip-equivariant model gives the same logits with and without the flip
    model = PerPixel()
    assert torch.allclose(infer_logits(model, x, mode, flip=True, **kw), infer_logits(model, x, mode, **kw), atol=1e-6)


class InputWidth(nn.Module):
    """The logit of class 1 is the width of the input it was given (class 0: the first image channel)."""

    def forward(self, x):
        B, _, H, W = x.shape
        return {"logits": torch.cat([x[:, :1], torch.full((B, 1, H, W), float(W))], dim=1)}  # (B, 2, H, W)


@pytest.mark.parametrize(
    "mode, kw, widths",
    [
        # whole image: the model sees the resized image, 32 * s wide
        ("whole", {}, (16.0, 32.0, 48.0)),
        # slide, 16-wide windows: the same window size at every scale, clamped to the image at scale 0.25 (8 wide)
        ("slide", dict(window=(16, 16), stride=(8, 8)), (8.0, 16.0, 16.0)),
    ],
)
@pytest.mark.parametrize("flip", [False, True])
def test_multi_scale_averages_the_prediction_at_every_scale(mode, kw, widths, flip):
    x = torch.randn(2, 3, 24, 32)
    scales = (0.5, 1.0, 1.5) if mode == "whole" else (0.25, 1.0, 2.0)
    logits = infer_logits(InputWidth(), x, mode, flip=flip, scales=scales, **kw)
    assert logits.shape == (2, 2, 24, 32)  # back at the input size
    assert torch.allclose(logits[:, 1], torch.full_like(logits[:, 1], sum(widths) / 3))
    # one scale of 1.0 is the single-scale prediction
    single = infer_logits(InputWidth(), x, mode, flip=flip, **kw)
    assert torch.equal(infer_logits(InputWidth(), x, mode, flip=flip, scales=[1.0], **kw), single)
    # a per-pixel model on a constant image predicts the same at every scale: the average is unchanged
    const = torch.ones(1, 3, 24, 32) * torch.tensor([0.5, -1.0, 2.0]).view(1, 3, 1, 1)
    model = PerPixel()
    ms = infer_logits(model, const, mode, flip=flip, scales=scales, **kw)
    assert torch.allclose(ms, infer_logits(model, const, mode, flip=flip, **kw), atol=1e-5)


@pytest.mark.parametrize("scales", [(), (0.0,), (1.0, -0.5)])
def test_multi_scale_refuses_bad_scales(scales):
    with pytest.raises(ValueError, match="inference scales must be one or more factors > 0"):
        infer_logits(PerPixel(), torch.randn(1, 3, 8, 8), scales=scales)
