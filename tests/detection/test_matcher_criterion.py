"""Hungarian matcher and set criterion on hand-made cases."""

import math

import pytest
import torch

from lifevit.tasks.detection.criterion import SetCriterion
from lifevit.tasks.detection.matcher import HungarianMatcher

BIG = 8.0  # logit whose sigmoid is ~1


def _targets():
    return [
        {"labels": torch.tensor([2, 0]), "boxes": torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.7, 0.6, 0.3, 0.4]])},
        {"labels": torch.tensor([1]), "boxes": torch.tensor([[0.5, 0.5, 0.4, 0.4]])},
        {"labels": torch.zeros(0, dtype=torch.int64), "boxes": torch.zeros(0, 4)},
    ]


def test_matcher_recovers_permutation():
    tg = _targets()[0]
    logits = torch.full((1, 4, 3), -BIG)
    boxes = torch.tensor([[[0.1, 0.1, 0.1, 0.1], [0.7, 0.6, 0.3, 0.4], [0.9, 0.9, 0.1, 0.1], [0.3, 0.3, 0.2, 0.2]]])
    logits[0, 1, 0] = logits[0, 3, 2] = BIG
    ((rows, cols),) = HungarianMatcher()({"pred_logits": logits, "pred_boxes": boxes}, [tg])
    assert dict(zip(rows.tolist(), cols.tolist())) == {1: 1, 3: 0}


def test_matcher_batched_equals_single():
    g = torch.Generator().manual_seed(0)
    out = {"pred_logits": torch.randn(3, 7, 3, generator=g), "pred_boxes": torch.rand(3, 7, 4, generator=g) * 0.5 + 0.2}
    tgs = _targets()
    matcher = HungarianMatcher()
    batched = matcher(out, tgs)
    for b in range(3):
        single = matcher({k: v[b : b + 1] for k, v in out.items()}, [tgs[b]])[0]
        assert torch.equal(batched[b][0], single[0]) and torch.equal(batched[b][1], single[1])
    assert len(batched[2][0]) == 0 and len(batched[0][0]) == 2 and len(batched[1][0]) == 1


def test_matcher_all_empty_targets():
    out = {"pred_logits": torch.randn(2, 5, 3), "pred_boxes": torch.rand(2, 5, 4)}
    empty = {"labels": torch.zeros(0, dtype=torch.int64), "boxes": torch.zeros(0, 4)}
    for rows, cols in HungarianMatcher()(out, [empty, empty]):
        assert rows.numel() == 0 and cols.numel() == 0


def _criterion(**kw):
    return SetCriterion(3, HungarianMatcher(), aux_loss=False, enc_loss=False, **kw)


def _focal(logit: float, target: float, alpha=0.25, gamma=2.0) -> float:
    p = 1 / (1 + math.exp(-logit))
    ce = -(target * math.log(p) + (1 - target) * math.log(1 - p))
    p_t = p * target + (1 - p) * (1 - target)
    a_t = alpha * target + (1 - alpha) * (1 - target)
    return a_t * ce * (1 - p_t) ** gamma


def test_criterion_perfect_boxes_and_hand_focal():
    tg = [_targets()[1]]
    logits = torch.full((1, 2, 3), -2.0)
    logits[0, 0, 1] = 3.0
    boxes = torch.tensor([[[0.5, 0.5, 0.4, 0.4], [0.1, 0.1, 0.05, 0.05]]])
    losses = _criterion()({"pred_logits": logits, "pred_boxes": boxes}, tg)
    assert losses["loss_bbox"].item() == pytest.approx(0.0, abs=1e-6)
    assert losses["loss_giou"].item() == pytest.approx(0.0, abs=1e-6)
    expected = _focal(3.0, 1.0) + 5 * _focal(-2.0, 0.0)  # one positive, five negatives; 1 target box
    assert losses["loss_cls"].item() == pytest.approx(expected, rel=1e-5)


def test_criterion_shifted_box():
    tg = [{"labels": torch.tensor([0]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]])}]
    logits = torch.full((1, 1, 3), -BIG)
    logits[0, 0, 0] = BIG
    pred = torch.tensor([[[0.6, 0.5, 0.2, 0.2]]])  # shifted right by half its width
    losses = _criterion()({"pred_logits": logits, "pred_boxes": pred}, tg)
    assert losses["loss_bbox"].item() == pytest.approx(0.1, abs=1e-6)
    # IoU = 0.1*0.2 / (2*0.04 - 0.02) = 1/3, enclosing box = union, so GIoU = 1/3
    assert losses["loss_giou"].item() == pytest.approx(1 - 1 / 3, abs=1e-5)
    total = _criterion().total(losses)
    assert total.item() == pytest.approx(2 * losses["loss_cls"].item() + 5 * 0.1 + 2 * (2 / 3), rel=1e-5)


def test_criterion_empty_targets_only_negatives():
    logits = torch.full((2, 3, 3), -1.0, requires_grad=True)
    boxes = torch.rand(2, 3, 4, requires_grad=True)
    empty = {"labels": torch.zeros(0, dtype=torch.int64), "boxes": torch.zeros(0, 4)}
    crit = _criterion()
    losses = crit({"pred_logits": logits, "pred_boxes": boxes}, [empty, empty])
    assert losses["loss_bbox"].item() == 0.0 and losses["loss_giou"].item() == 0.0
    assert losses["loss_cls"].item() == pytest.approx(18 * _focal(-1.0, 0.0), rel=1e-5)  # normalised by max(0, 1)
    crit.total(losses).backward()
    assert logits.grad is not None and boxes.grad is not None


def test_criterion_aux_and_enc_terms():
    out = {
        "pred_logits": torch.randn(1, 4, 3),
        "pred_boxes": torch.rand(1, 4, 4) * 0.5 + 0.2,
        "aux_outputs": [{"pred_logits": torch.randn(1, 4, 3), "pred_boxes": torch.rand(1, 4, 4) * 0.5 + 0.2}],
        "enc_outputs": {"pred_logits": torch.randn(1, 4, 3), "pred_boxes": torch.rand(1, 4, 4) * 0.5 + 0.2},
    }
    losses = SetCriterion(3, HungarianMatcher())(out, [_targets()[0]])
    assert set(losses) == {f"loss_{k}{s}" for k in ("cls", "bbox", "giou") for s in ("", "_0", "_enc")}
    assert all(torch.isfinite(v) for v in losses.values())
