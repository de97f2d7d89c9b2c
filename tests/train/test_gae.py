"""GAE against a plain per-sequence reverse-loop reference."""

from __future__ import annotations

import pytest
import torch

from prefloop.train.losses import gae


def reference_gae(
    rewards: list[float], values: list[float], gamma: float, lam: float
) -> tuple[list[float], list[float]]:
    """Textbook GAE for one episode of len(rewards) steps; value after the end is 0."""
    n = len(rewards)
    adv = [0.0] * n
    last = 0.0
    for t in reversed(range(n)):
        next_v = values[t + 1] if t + 1 < n else 0.0
        delta = rewards[t] + gamma * next_v - values[t]
        last = delta + gamma * lam * last
        adv[t] = last
    return adv, [a + v for a, v in zip(adv, values, strict=True)]


@pytest.mark.parametrize(("gamma", "lam"), [(1.0, 0.95), (0.99, 0.9), (1.0, 1.0), (0.9, 0.0)])
def test_gae_matches_reverse_loop(gamma: float, lam: float) -> None:
    g = torch.Generator().manual_seed(1)
    B, T = 5, 9
    lengths = [9, 1, 4, 7, 2]
    rewards = torch.randn(B, T, generator=g)
    values = torch.randn(B, T, generator=g)
    mask = torch.zeros(B, T)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
    adv, ret = gae(rewards, values, mask, gamma=gamma, lam=lam)
    for i, n in enumerate(lengths):
        ref_adv, ref_ret = reference_gae(
            rewards[i, :n].tolist(), values[i, :n].tolist(), gamma, lam
        )
        assert adv[i, :n].tolist() == pytest.approx(ref_adv, abs=1e-5)
        assert ret[i, :n].tolist() == pytest.approx(ref_ret, abs=1e-5)
        assert adv[i, n:].abs().sum().item() == 0.0  # padding carries nothing
        assert ret[i, n:].abs().sum().item() == 0.0


def test_gae_hand_example() -> None:
    # γ=1, λ=0.5; r=(0,1), V=(0.5,0.25): δ1 = 1-0.25 = 0.75; δ0 = 0+0.25-0.5 = -0.25
    # A1 = 0.75; A0 = -0.25 + 0.5*0.75 = 0.125
    adv, ret = gae(
        torch.tensor([[0.0, 1.0]]), torch.tensor([[0.5, 0.25]]), torch.ones(1, 2), 1.0, 0.5
    )
    assert adv.tolist() == [pytest.approx([0.125, 0.75])]
    assert ret.tolist() == [pytest.approx([0.625, 1.0])]
