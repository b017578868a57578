import pytest
import torch
from torch import nn

from lifevit.tasks.classification.criterion import ClassificationCriterion, DistillationCriterion


class _Fixed(nn.Module):
    def __init__(self, logits):
        super().__init__()
        self.logits = logits

    def forward(self, x):
        return self.logits


def test_soft_distillation_is_zero_when_student_matches_teacher():
    t = torch.randn(4, 5)
    crit = DistillationCriterion(nn.CrossEntropyLoss(), _Fixed(t), kind="soft", alpha=1.0, tau=2.0)
    assert crit(
        torch.zeros(4), (torch.randn(4, 5), t.clone()), torch.zeros(4, dtype=torch.long)
    ).item() == pytest.approx(0, abs=1e-6)
    loss = crit(torch.zeros(4), (torch.randn(4, 5), torch.randn(4, 5)), torch.zeros(4, dtype=torch.long))
    assert loss.item() > 0


def test_hard_distillation_uses_teacher_argmax_and_alpha():
    t = torch.tensor([[0.0, 5.0, 0.0], [3.0, 0.0, 0.0]])
    y = torch.tensor([2, 2])
    cls, dist = torch.randn(2, 3), torch.randn(2, 3)
    crit = DistillationCriterion(nn.CrossEntropyLoss(), _Fixed(t), kind="hard", alpha=0.25)
    expected = 0.75 * nn.functional.cross_entropy(cls, y) + 0.25 * nn.functional.cross_entropy(dist, t.argmax(-1))
    assert torch.allclose(crit(torch.zeros(2), (cls, dist), y), expected)
    assert not crit.teacher.training
    with pytest.raises(ValueError, match="distillation needs"):
        crit(torch.zeros(2), cls, y)
    with pytest.raises(ValueError, match="'soft' or 'hard'"):
        DistillationCriterion(nn.CrossEntropyLoss(), _Fixed(t), kind="medium")


def test_classification_criterion_averages_two_heads():
    a, b, y = torch.randn(3, 4), torch.randn(3, 4), torch.tensor([0, 1, 2])
    crit = ClassificationCriterion(nn.CrossEntropyLoss())
    assert torch.allclose(crit(None, (a, b), y), nn.functional.cross_entropy((a + b) / 2, y))
