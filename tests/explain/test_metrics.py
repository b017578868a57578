"""lifevit.explain.metrics on hand-made models and maps whose scores are known."""

import numpy as np
import pytest
import torch

from lifevit.explain.metrics import (
    deletion_insertion,
    mask_ap,
    mask_iou,
    perturbation_curve,
    perturbation_test,
    pointing_game,
    token_mask_to_pixels,
    trapezoid_auc,
)

# a 2 x 5 token grid (10 tokens, so 10 % steps remove one token each) of 4 x 4 pixel cells: 8 x 20 images
GRID, CELL = (2, 5), 4
KEY = 7  # the one token the hand-made model looks at: row 1, column 2


def _images(B=3):
    return torch.ones(B, 1, GRID[0] * CELL, GRID[1] * CELL)


def _key_present(x):
    r, c = divmod(KEY, GRID[1])
    return x[:, 0, r * CELL : (r + 1) * CELL, c * CELL : (c + 1) * CELL].mean((1, 2))  # 1 intact, 0 removed


def _model(x):
    """Class 1 while the key token is intact, class 0 once it is removed."""
    p = _key_present(x)
    return torch.stack((1 - p, p), dim=1)


def _maps(B=3, key_rank="top"):
    m = torch.arange(10, dtype=torch.float32).flip(0).repeat(B, 1)  # distinct scores 9..0
    m[:, KEY] = 100.0 if key_rank == "top" else -1.0
    return m.view(B, *GRID)


def test_trapezoid_auc():
    assert trapezoid_auc([0, 0.5, 1], [1, 1, 1]) == pytest.approx(1.0)
    assert trapezoid_auc(np.linspace(0, 0.9, 10), [100] * 10) == pytest.approx(90.0)
    assert trapezoid_auc([0, 1], [0, 2]) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="equal length"):
        trapezoid_auc([0, 1], [1])


def test_token_mask_to_pixels_repeats_cells_and_crops():
    m = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    px = token_mask_to_pixels(m, (3, 4))  # cells of ceil(3/2) = 2 x 2 pixels, cropped to 3 x 4
    expected = torch.tensor([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1]], dtype=torch.float32)
    torch.testing.assert_close(px[0, 0], expected)


def test_positive_and_negative_perturbation_auc_known_answers():
    x, labels = _images(), torch.ones(3, dtype=torch.long)
    good = perturbation_test(_model, x, labels, _maps(key_rank="top"))
    assert good["fractions"] == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9])
    # positive: the key token goes first, at 10 %: accuracy 100, then 0 -> area 100 * 0.1 / 2
    assert good["positive"] == [100.0] + [0.0] * 9
    assert good["positive_auc"] == pytest.approx(5.0)
    # negative: the key token would go last (at 100 %), so the accuracy stays 100 up to 90 %
    assert good["negative_auc"] == pytest.approx(90.0)
    bad = perturbation_test(_model, x, labels, _maps(key_rank="bottom"))
    assert bad["positive_auc"] == pytest.approx(90.0) and bad["negative_auc"] == pytest.approx(5.0)
    # a wrong label at 0 removal: the clean accuracy (0) is the first point
    wrong = perturbation_test(_model, x, torch.zeros(3, dtype=torch.long), _maps())
    assert wrong["positive"][0] == 0.0


def test_deletion_and_insertion_auc_known_answers():
    x = _images()
    res = deletion_insertion(_key_present, x, _maps(key_rank="top"), steps=10, insertion_baseline=0.0)
    # deletion: probability 1 at 0 %, 0 from 10 % on -> 0.05; insertion into zeros: 0 at 0 %, 1 from 10 % -> 0.95
    assert res["deletion"] == pytest.approx([1.0] + [0.0] * 10)
    assert res["deletion_auc"] == pytest.approx(0.05)
    assert res["insertion_auc"] == pytest.approx(0.95)
    late = deletion_insertion(_key_present, x, _maps(key_rank="bottom"), steps=10, insertion_baseline=0.0)
    assert late["deletion_auc"] == pytest.approx(0.95) and late["insertion_auc"] == pytest.approx(0.05)
    # the default insertion baseline is a blurred image: it differs from the image, and 100 % inserted is the image
    blurred = deletion_insertion(lambda im: im.mean((1, 2, 3)), torch.rand(2, 1, 8, 20), _maps(2), steps=2)
    assert len(blurred["insertion"]) == 3


def test_perturbation_curve_least_first_and_baseline():
    x = _images(1)
    maps = _maps(1)
    removed = perturbation_curve(lambda im: (im == 5.0).float().mean((1, 2, 3)), x, maps, [0.0, 0.5], baseline=5.0)
    torch.testing.assert_close(removed[:, 0], torch.tensor([0.0, 0.5]))  # half the cells take the baseline
    with pytest.raises(ValueError, match="fractions must be in"):
        perturbation_curve(_key_present, x, maps, [1.5])
    with pytest.raises(ValueError, match="same B"):
        perturbation_curve(_key_present, x, _maps(2), [0.0])


def test_mask_ap_known_answers():
    mask = np.array([[1, 0], [1, 0]])
    assert mask_ap(np.array([[0.9, 0.1], [0.8, 0.2]]), mask) == pytest.approx(1.0)  # positives ranked first
    # ranking 3, 2, 1, 0 on labels 1, 0, 1, 0: AP = 1/2 * 1 + 1/2 * 2/3
    assert mask_ap(np.array([3.0, 2.0, 1.0, 0.0]), np.array([1, 0, 1, 0])) == pytest.approx(5 / 6)
    # a constant map ranks nothing: AP is the positive fraction
    assert mask_ap(np.zeros((2, 2)), mask) == pytest.approx(0.5)
    assert np.isnan(mask_ap(np.ones(4), np.zeros(4)))
    with pytest.raises(ValueError, match="same shape"):
        mask_ap(np.ones(3), np.ones(4))


def test_mask_iou_thresholds_at_the_mean():
    mask = np.array([[1, 1, 0, 0]])
    assert mask_iou(np.array([[1.0, 1.0, 0.0, 0.0]]), mask) == pytest.approx(1.0)
    # mean 0.3: only the first pixel is above it -> IoU 1/2
    assert mask_iou(np.array([[1.0, 0.2, 0.0, 0.0]]), mask) == pytest.approx(0.5)
    assert mask_iou(np.array([[0.0, 0.0, 1.0, 1.0]]), mask) == pytest.approx(0.0)


def test_pointing_game_hits_on_the_peak():
    mask = np.array([[0, 1], [0, 0]])
    assert pointing_game(np.array([[0.1, 0.9], [0.3, 0.2]]), mask)
    assert not pointing_game(np.array([[0.1, 0.2], [0.9, 0.2]]), mask)
