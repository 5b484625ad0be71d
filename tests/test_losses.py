"""Losses against hand computations; the stop-gradient; schedules at given steps."""
import math

import pytest
import torch

from distill.losses import distill_loss, hard_loss
from distill.schedules import lam


def test_binary_distill_is_bce_against_teacher_probability():
    s, t = torch.tensor([0.3, -1.2]), torch.tensor([2.0, 0.5])
    p = torch.sigmoid(t)
    q = torch.sigmoid(s)
    hand = -(p * torch.log(q) + (1 - p) * torch.log(1 - q)).mean()
    assert distill_loss(s, t, "binary").item() == pytest.approx(hand.item(), rel=1e-6)


def test_binary_temperature_softens_both_and_scales_by_t_squared():
    s, t, T = torch.tensor([1.5]), torch.tensor([-0.5]), 3.0
    p, q = 1 / (1 + math.exp(0.5 / T)), 1 / (1 + math.exp(-1.5 / T))
    hand = -(p * math.log(q) + (1 - p) * math.log(1 - q)) * T * T
    assert distill_loss(s, t, "binary", temperature=T).item() == pytest.approx(hand, rel=1e-6)


def test_multiclass_soft_cross_entropy_with_t_squared():
    s = torch.tensor([[1.0, 2.0, 0.5]])
    t = torch.tensor([[3.0, 0.0, -1.0]])
    T = 2.0
    pt = [math.exp(v / T) for v in (3.0, 0.0, -1.0)]
    pt = [v / sum(pt) for v in pt]
    zs = [v / T for v in (1.0, 2.0, 0.5)]
    log_norm = math.log(sum(math.exp(v) for v in zs))
    hand = -sum(p * (z - log_norm) for p, z in zip(pt, zs)) * T * T
    assert distill_loss(s, t, "multiclass", temperature=T).item() == pytest.approx(hand, rel=1e-6)


def test_regression_distill_is_mse_and_ignores_temperature():
    s, t = torch.tensor([1.0, 2.0]), torch.tensor([0.0, 4.0])
    assert distill_loss(s, t, "regression", temperature=5.0).item() == pytest.approx((1 + 4) / 2)


def test_hard_losses_match_hand_values():
    z, y = torch.tensor([0.0, 2.0]), torch.tensor([1.0, 0.0])
    hand = (math.log(2) + math.log(1 + math.exp(2))) / 2
    assert hard_loss(z, y, "binary").item() == pytest.approx(hand, rel=1e-6)
    w = torch.tensor([1.0, 3.0])
    assert hard_loss(z, y, "binary", w).item() == pytest.approx((math.log(2) + 3 * math.log(1 + math.exp(2))) / 4, rel=1e-6)
    logits = torch.tensor([[2.0, 0.0]])
    assert hard_loss(logits, torch.tensor([1]), "multiclass").item() == pytest.approx(math.log(1 + math.exp(2)), rel=1e-6)


@pytest.mark.parametrize("task", ["binary", "multiclass", "regression"])
def test_teacher_gets_exactly_zero_gradient_from_distill_loss(task):
    shape = (4, 3) if task == "multiclass" else (4,)
    t = torch.randn(shape, requires_grad=True)
    s = torch.randn(shape, requires_grad=True)
    distill_loss(s, t, task, temperature=2.0).backward()
    assert t.grad is None or torch.count_nonzero(t.grad) == 0
    assert torch.count_nonzero(s.grad) > 0


def test_student_gradient_vanishes_when_it_matches_the_teacher():
    t = torch.randn(5, 4)
    s = t.clone().requires_grad_(True)
    distill_loss(s, t, "multiclass", temperature=4.0).backward()
    assert s.grad.abs().max().item() < 1e-6


@pytest.mark.parametrize("kind,step,expected", [
    ("constant", 0, 0.6), ("constant", 999, 0.6),
    ("delayed", 0, 0.0), ("delayed", 99, 0.0), ("delayed", 100, 0.6), ("delayed", 5000, 0.6),
    ("linear", 0, 0.0), ("linear", 25, 0.15), ("linear", 100, 0.6), ("linear", 400, 0.6),
    ("cosine", 0, 0.0), ("cosine", 50, 0.3), ("cosine", 100, 0.6), ("cosine", 25, 0.6 * (1 - math.cos(math.pi / 4)) / 2),
])
def test_schedule_values(kind, step, expected):
    assert lam(kind, step, weight=0.6, steps=100) == pytest.approx(expected)


def test_unknown_schedule_is_refused():
    with pytest.raises(ValueError, match="unknown schedule"):
        lam("exp", 1, 0.5, 10)
