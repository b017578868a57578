"""Post-processing box formats and the detection metrics."""

import pytest
import torch

from lifevit.tasks.detection.metrics import DetectionEvaluator, f1_counts
from lifevit.tasks.detection.postprocess import PostProcess


def _outputs():
    logits = torch.full((1, 2, 3), -6.0)
    logits[0, 0, 2] = 2.0  # query 0: class 2, score sigmoid(2)
    logits[0, 1, 0] = 0.0  # query 1: class 0, score 0.5
    boxes = torch.tensor([[[0.5, 0.25, 0.2, 0.1], [0.1, 0.1, 0.4, 0.4]]])  # cx, cy, w, h normalised
    return {"pred_logits": logits, "pred_boxes": boxes}


def test_postprocess_formats():
    size = torch.tensor([[200, 100]])  # H=200, W=100
    res = {f: PostProcess(num_select=2, box_format=f)(_outputs(), size)[0] for f in ("xyxy", "xywh", "cxcywh")}
    assert res["xyxy"]["labels"].tolist() == [2, 0]
    assert res["xyxy"]["scores"][0].item() == pytest.approx(torch.sigmoid(torch.tensor(2.0)).item())
    assert res["xyxy"]["boxes"][0].tolist() == pytest.approx([40.0, 40.0, 60.0, 60.0])
    assert res["xywh"]["boxes"][0].tolist() == pytest.approx([40.0, 40.0, 20.0, 20.0])
    assert res["cxcywh"]["boxes"][0].tolist() == pytest.approx([50.0, 50.0, 20.0, 20.0])
    # box 1 reaches outside the image (x0 = -10, y0 = -20): clipped to it
    assert res["xyxy"]["boxes"][1].tolist() == pytest.approx([0.0, 0.0, 30.0, 60.0])


def test_postprocess_bad_input():
    with pytest.raises(ValueError, match="box_format must be one of"):
        PostProcess(box_format="yxyx")
    with pytest.raises(ValueError, match=r"target_sizes must be \(B, 2\)"):
        PostProcess()(_outputs(), torch.tensor([200, 100]))


def _gt():
    return {"boxes": torch.tensor([[10.0, 10.0, 50.0, 50.0], [60.0, 60.0, 90.0, 90.0]]), "labels": torch.tensor([1, 2])}


def test_perfect_predictions():
    ev = DetectionEvaluator()
    gt = _gt()
    ev.update([{"boxes": gt["boxes"], "labels": gt["labels"], "scores": torch.tensor([0.9, 0.8])}], [gt])
    m = ev.compute()
    assert m["map_50"] == pytest.approx(1.0) and m["map"] == pytest.approx(1.0)
    assert m["f1"] == pytest.approx(1.0) and m["num_images"] == 1
    assert m["f1_best"] == pytest.approx(1.0) and m["f1_best_threshold"] == pytest.approx(0.05)


def test_f1_best_threshold():
    gt = _gt()
    # a correct detection at 0.6 and a false one at 0.45: F1 is best once the threshold passes 0.45
    pred = {
        "boxes": torch.tensor([[10.0, 10.0, 50.0, 50.0], [0.0, 0.0, 5.0, 5.0]]),
        "labels": torch.tensor([1, 1]),
        "scores": torch.tensor([0.6, 0.45]),
    }
    ev = DetectionEvaluator(score_threshold=0.3)
    ev.update([pred], [gt])
    m = ev.compute()
    assert m["f1"] == pytest.approx(0.5)  # P = 1/2, R = 1/2
    assert m["f1_best"] == pytest.approx(2 / 3) and m["f1_best_threshold"] == pytest.approx(0.5)


def test_f1_threshold_class_and_iou():
    gt = _gt()
    pred = {
        "boxes": torch.tensor(
            [[10.0, 10.0, 50.0, 50.0], [60.0, 60.0, 90.0, 90.0], [60.0, 60.0, 90.0, 90.0], [0.0, 0.0, 5.0, 5.0]]
        ),
        "labels": torch.tensor([1, 0, 2, 1]),
        "scores": torch.tensor([0.9, 0.8, 0.4, 0.7]),
    }
    # kept (score >= 0.5): TP (class 1), wrong class at box 2 -> FP, far box -> FP; class-2 box missed -> FN
    assert f1_counts(pred, gt, score_threshold=0.5) == {"tp": 1, "fp": 2, "fn": 1}
    assert f1_counts(pred, gt, score_threshold=0.3) == {"tp": 2, "fp": 2, "fn": 0}


def test_difficult_boxes_are_ignored():
    gt = dict(_gt(), iscrowd=torch.tensor([0, 1]))
    pred = {"boxes": gt["boxes"][:1], "labels": torch.tensor([1]), "scores": torch.tensor([0.9])}
    assert f1_counts(pred, gt) == {"tp": 1, "fp": 0, "fn": 0}  # the missed difficult box is no FN
    ev = DetectionEvaluator()
    ev.update([pred], [gt])
    assert ev.compute()["map_50"] == pytest.approx(1.0)
