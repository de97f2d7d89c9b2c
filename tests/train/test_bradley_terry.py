"""Bradley-Terry losses against values computed by hand."""

from __future__ import annotations

import math

import torch

from prefloop.train.losses import bradley_terry, bradley_terry_tie


def test_bradley_terry_matches_hand_computed_values() -> None:
    r_c = torch.tensor([1.0, 0.0, -2.0, 3.0])
    r_r = torch.tensor([0.0, 0.0, 1.0, -1.0])
    # -log sigmoid(d) = log(1 + e^-d) for d = 1, 0, -3, 4
    expected = [
        math.log1p(math.exp(-1)),
        math.log(2),
        math.log1p(math.exp(3)),
        math.log1p(math.exp(-4)),
    ]
    assert torch.allclose(bradley_terry(r_c, r_r), torch.tensor(expected), atol=1e-6)


def test_margin_shifts_the_difference() -> None:
    r_c, r_r = torch.tensor([2.0, 2.0]), torch.tensor([1.0, 1.0])
    loss = bradley_terry(r_c, r_r, margin=torch.tensor([0.0, 1.0]))
    # d = 1 without margin, d = 1 - 1 = 0 with margin 1
    assert torch.allclose(loss, torch.tensor([math.log1p(math.exp(-1)), math.log(2)]), atol=1e-6)
    # a margin makes the same pair cost more
    assert loss[1] > loss[0]


def test_large_differences_are_stable() -> None:
    loss = bradley_terry(torch.tensor([100.0, -100.0]), torch.tensor([0.0, 0.0]))
    assert torch.isfinite(loss).all()
    assert loss[0].item() < 1e-6
    assert abs(loss[1].item() - 100.0) < 1e-4


def test_tie_loss_is_symmetric_and_minimal_at_equal_scores() -> None:
    a, b = torch.tensor([0.0, 2.0, -1.0]), torch.tensor([0.0, 0.0, 1.0])
    loss = bradley_terry_tie(a, b)
    # d = 0: log 2; d = 2: (log(1+e^-2) + log(1+e^2)) / 2; d = -2: same by symmetry
    two = 0.5 * (math.log1p(math.exp(-2)) + math.log1p(math.exp(2)))
    assert torch.allclose(loss, torch.tensor([math.log(2), two, two]), atol=1e-6)
    assert torch.allclose(bradley_terry_tie(b, a), loss)


def test_gradient_pushes_chosen_up_and_rejected_down() -> None:
    r_c = torch.tensor([0.5], requires_grad=True)
    r_r = torch.tensor([0.5], requires_grad=True)
    bradley_terry(r_c, r_r).sum().backward()
    assert r_c.grad is not None and r_r.grad is not None
    # d/dr_c [-log sigmoid(r_c - r_r)] = -(1 - sigmoid(0)) = -0.5
    assert abs(r_c.grad.item() + 0.5) < 1e-6
    assert abs(r_r.grad.item() - 0.5) < 1e-6
