"""Loss pieces and KL estimators against values computed by hand."""

from __future__ import annotations

import math

import pytest
import torch

from prefloop.models.sampler import token_logprobs
from prefloop.train import losses as L


def test_masked_mean_ignores_padding() -> None:
    x = torch.tensor([[1.0, 2.0, 100.0], [3.0, 100.0, 100.0]])
    m = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    assert L.masked_mean(x, m).item() == pytest.approx(2.0)
    assert L.masked_mean(x, m, dim=1).tolist() == pytest.approx([1.5, 3.0])


def test_masked_var_bessel() -> None:
    x = torch.tensor([[1.0, 2.0, 3.0, 99.0]])
    m = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    assert L.masked_var(x, m).item() == pytest.approx(1.0)  # ((1+0+1)/3) * 3/2
    assert L.masked_var(x, m, unbiased=False).item() == pytest.approx(2 / 3)


def test_masked_whiten_shift_and_no_shift() -> None:
    x = torch.tensor([[1.0, 2.0, 3.0, 50.0]])
    m = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    w = L.masked_whiten(x, m)
    assert w[0, :3].tolist() == pytest.approx([-1.0, 0.0, 1.0], abs=1e-6)
    assert w[0, 3].item() == 0.0
    w2 = L.masked_whiten(x, m, shift_mean=False)
    assert w2[0, :3].tolist() == pytest.approx([1.0, 2.0, 3.0], abs=1e-6)  # std is 1 here


def test_kl_estimators_hand_values() -> None:
    logp = torch.tensor([math.log(0.5), math.log(0.2)])
    ref = torch.tensor([math.log(0.25), math.log(0.4)])
    assert L.kl_k1(logp, ref).tolist() == pytest.approx([math.log(2), math.log(0.5)])
    # r = ref/p: 0.5 and 2.0 -> (r-1) - log r
    k3 = L.kl_k3(logp, ref).tolist()
    assert k3 == pytest.approx([-0.5 - math.log(0.5), 1.0 - math.log(2.0)])
    assert min(k3) >= 0


def test_kl_estimators_unbiased_on_samples() -> None:
    g = torch.Generator().manual_seed(0)
    p = torch.tensor([0.7, 0.2, 0.1])
    q = torch.tensor([0.4, 0.4, 0.2])
    true_kl = float((p * (p / q).log()).sum())
    a = torch.multinomial(p, 200_000, replacement=True, generator=g)
    logp, logq = p.log()[a], q.log()[a]
    assert L.kl_k1(logp, logq).mean().item() == pytest.approx(true_kl, abs=5e-3)
    assert L.kl_k3(logp, logq).mean().item() == pytest.approx(true_kl, abs=5e-3)


def test_entropy_from_logits() -> None:
    logits = torch.log(torch.tensor([[[0.5, 0.25, 0.25]]]))
    h = -(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25))
    assert L.entropy_from_logits(logits).item() == pytest.approx(h, rel=1e-5)
    uniform = torch.zeros(1, 1, 8)
    assert L.entropy_from_logits(uniform).item() == pytest.approx(math.log(8), rel=1e-5)


def test_token_logprobs_use_temperature() -> None:
    logits = torch.tensor([[[2.0, 0.0]]])
    tok = torch.tensor([[0]])
    # at T=2 the logits become [1, 0]: p = e/(e+1)
    got = token_logprobs(logits, tok, temperature=2.0).item()
    assert got == pytest.approx(math.log(math.e / (math.e + 1)), rel=1e-6)


def test_per_token_rewards_and_missing_eos_penalty() -> None:
    logp = torch.tensor([[-1.0, -2.0, -3.0], [-1.0, -1.0, 0.0]])
    ref = torch.tensor([[-1.5, -2.0, -1.0], [-0.5, -1.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    scores = L.apply_missing_eos_penalty(
        torch.tensor([2.0, 3.0]), torch.tensor([False, True]), penalty=-1.0
    )
    assert scores.tolist() == [-1.0, 3.0]
    rewards, non_score = L.per_token_rewards(scores, logp, ref, mask, beta=0.1)
    # row 0: -0.1*(0.5, 0, -2) = (-0.05, 0, 0.2), score -1 at t=2
    assert rewards[0].tolist() == pytest.approx([-0.05, 0.0, 0.2 - 1.0])
    # row 1: -0.1*(-0.5, 0) = (0.05, 0), score 3 at t=1 (its last token), padding stays 0
    assert rewards[1].tolist() == pytest.approx([0.05, 3.0, 0.0])
    assert non_score[1].tolist() == pytest.approx([0.05, 0.0, 0.0])
    assert L.apply_missing_eos_penalty(scores, torch.tensor([False, False]), None).tolist() == [
        -1.0,
        3.0,
    ]


def test_ppo_clip_loss_hand_values() -> None:
    old = torch.zeros(1, 3)
    # ratios e^0.5 ≈ 1.65 (clipped to 1.2 for A>0), e^-0.5 ≈ 0.61 (clipped to 0.8 for A<0), 1
    new = torch.tensor([[0.5, -0.5, 0.0]])
    adv = torch.tensor([[1.0, -1.0, 2.0]])
    mask = torch.ones(1, 3)
    loss, d = L.ppo_clip_loss(new, old, adv, mask, clip_eps=0.2)
    # per token: max(-1*1.65, -1*1.2) = -1.2; max(0.61, 0.8) = 0.8; -2
    assert loss.item() == pytest.approx((-1.2 + 0.8 - 2.0) / 3, rel=1e-6)
    assert d["clipfrac"] == pytest.approx(2 / 3)
    expected_kl = ((math.exp(0.5) - 1 - 0.5) + (math.exp(-0.5) - 1 + 0.5)) / 3
    assert d["approx_kl"] == pytest.approx(expected_kl, rel=1e-5)


def test_ppo_clip_loss_gradient_zero_when_clipped() -> None:
    new = torch.tensor([[0.5, 0.0]], requires_grad=True)
    loss, _ = L.ppo_clip_loss(new, torch.zeros(1, 2), torch.tensor([[1.0, 1.0]]), torch.ones(1, 2))
    loss.backward()
    assert new.grad is not None
    assert new.grad[0, 0].item() == 0.0  # clipped: no push past 1+ε
    assert new.grad[0, 1].item() == pytest.approx(-0.5)  # -A·ρ/2 tokens at ρ=1


def test_value_loss_clipped_hand_values() -> None:
    values = torch.tensor([[1.0, 0.0]])
    old = torch.tensor([[0.0, 0.0]])
    returns = torch.tensor([[0.5, 1.0]])
    loss, d = L.value_loss_clipped(values, old, returns, torch.ones(1, 2), clip_eps=0.2)
    # t0: unclipped (0.5)^2=0.25, clipped V=0.2 -> 0.09 -> max 0.25; t1: both 1.0
    assert loss.item() == pytest.approx(0.5 * (0.25 + 1.0) / 2)
    assert d["vf_clipfrac"] == 0.0
    v2 = torch.tensor([[1.0]])
    loss2, d2 = L.value_loss_clipped(v2, torch.zeros(1, 1), torch.tensor([[3.0]]), torch.ones(1, 1))
    # unclipped (2)^2 = 4, clipped (2.8)^2 = 7.84 -> pessimistic max
    assert loss2.item() == pytest.approx(0.5 * 7.84)
    assert d2["vf_clipfrac"] == 1.0


def test_explained_variance() -> None:
    r = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    m = torch.ones(1, 4)
    assert L.explained_variance(r, r, m) == pytest.approx(1.0)
    assert L.explained_variance(torch.zeros(1, 4) + 2.5, r, m) == pytest.approx(0.0)
