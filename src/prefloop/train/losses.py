"""Losses and advantage estimators as small pure functions named after their math.

Shapes: B = sequences in a batch, T = response tokens (right-padded after the last token).
`mask` is (B, T) with 1 on response tokens (up to and including EOS) and 0 on padding.
Functions that produce diagnostics return `(value, dict_of_floats)`.

References: Huang et al., "The N Implementation Details of RLHF with PPO" (and the N+ TL;DR
study), OpenAI lm-human-preferences, CleanRL's ppo.py, John Schulman's note on KL approximation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

# ---- masked statistics ---------------------------------------------------------------------


def masked_sum(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Sum of `x` where `mask` is 1."""
    return (x * mask).sum() if dim is None else (x * mask).sum(dim)


def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of `x` over the positions where `mask` is 1 (over all of them, or along `dim`)."""
    count = mask.sum() if dim is None else mask.sum(dim)
    return masked_sum(x, mask, dim) / count.clamp(min=1)


def masked_var(x: Tensor, mask: Tensor, unbiased: bool = True) -> Tensor:
    """Variance of the masked entries (Bessel-corrected by default, as in lm-human-preferences)."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    n = mask.sum()
    if unbiased and n > 1:
        var = var * n / (n - 1)
    return var


def masked_whiten(x: Tensor, mask: Tensor, shift_mean: bool = True, eps: float = 1e-8) -> Tensor:
    """(x - mean) / std over masked entries; with shift_mean=False the mean is added back.

    Advantages are whitened with the shift; rewards, if at all, without it, so that the sign
    of a reward (good vs bad) survives the scaling.
    """
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    whitened = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask


def explained_variance(values: Tensor, returns: Tensor, mask: Tensor) -> float:
    """1 - Var[returns - values] / Var[returns]: 1 = perfect value function, <= 0 = useless."""
    var_returns = masked_var(returns, mask, unbiased=False)
    if var_returns.item() == 0:
        return float("nan")
    return float(1 - masked_var(returns - values, mask, unbiased=False) / var_returns)


# ---- entropy (token log-probs live beside the sampler: models.sampler.token_logprobs) ----


def entropy_from_logits(logits: Tensor, temperature: float = 1.0) -> Tensor:
    """H(π) = logsumexp(z) - Σ softmax(z)·z per position; logits (B, T, V) -> (B, T)."""
    z = logits.float() / temperature
    p = F.softmax(z, dim=-1)
    return torch.logsumexp(z, dim=-1) - (p * z).sum(-1)


# ---- KL estimators (Schulman, "Approximating KL divergence") ---------------------------------


def kl_k1(logp: Tensor, logp_ref: Tensor) -> Tensor:
    """k1 = log π(a) - log π_ref(a): unbiased for KL(π‖π_ref) under a ~ π, can be negative."""
    return logp - logp_ref


def kl_k3(logp: Tensor, logp_ref: Tensor) -> Tensor:
    """k3 = (r - 1) - log r with r = π_ref(a)/π(a): unbiased, always >= 0, lower variance."""
    log_r = logp_ref - logp
    return torch.expm1(log_r) - log_r


# ---- rewards and advantages ------------------------------------------------------------------


def apply_missing_eos_penalty(scores: Tensor, finished: Tensor, penalty: float | None) -> Tensor:
    """The "EOS trick": a response that hit the length limit gets `penalty` instead of its score."""
    if penalty is None:
        return scores
    return torch.where(finished.bool(), scores, torch.full_like(scores, penalty))


def last_index(mask: Tensor) -> Tensor:
    """Index of the last 1 in each row of a right-padded (B, T) mask (0 for an empty row)."""
    return (mask.sum(-1).long() - 1).clamp(min=0)


def per_token_rewards(
    scores: Tensor, logp: Tensor, logp_ref: Tensor, mask: Tensor, beta: float
) -> tuple[Tensor, Tensor]:
    """r_t = -β·(log π(a_t) - log π_ref(a_t)), plus the sequence score at the last response token.

    scores (B,), logp/logp_ref/mask (B, T) -> (rewards (B, T), non_score_rewards (B, T)).
    """
    non_score = -beta * kl_k1(logp, logp_ref) * mask
    rewards = non_score.clone()
    rows = torch.arange(scores.shape[0], device=scores.device)
    rewards[rows, last_index(mask)] += scores.to(rewards.dtype)
    return rewards, non_score


def gae(
    rewards: Tensor, values: Tensor, mask: Tensor, gamma: float = 1.0, lam: float = 0.95
) -> tuple[Tensor, Tensor]:
    """Generalized advantage estimation, a reverse loop over time vectorized over the batch.

    δ_t = r_t + γ·V_{t+1} - V_t;  A_t = δ_t + γλ·A_{t+1};  returns R_t = A_t + V_t.
    V after the last response token is 0 (the episode ends); rewards/values/mask (B, T).
    """
    values = values * mask
    rewards = rewards * mask
    T = rewards.shape[1]
    advantages = torch.zeros_like(rewards)
    next_adv = torch.zeros_like(rewards[:, 0])
    next_value = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(T)):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        next_adv = (delta + gamma * lam * next_adv) * mask[:, t]
        advantages[:, t] = next_adv
        next_value = values[:, t]
    returns = advantages + values
    return advantages * mask, returns * mask


# ---- PPO objectives --------------------------------------------------------------------------


def ppo_clip_loss(
    logp: Tensor, old_logp: Tensor, advantages: Tensor, mask: Tensor, clip_eps: float = 0.2
) -> tuple[Tensor, dict[str, float]]:
    """Clipped surrogate: mean over tokens of max(-A·ρ, -A·clip(ρ, 1-ε, 1+ε)), ρ = π/π_old.

    Diagnostics: clipfrac (share of tokens where the clipped branch is active) and approx_kl,
    the k3 estimate of KL(π_old‖π) — an early-stopping and health signal.
    """
    log_ratio = logp - old_logp
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_eps, 1.0 + clip_eps)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    with torch.no_grad():
        clipfrac = masked_mean((clipped > unclipped).float(), mask)
        approx_kl = masked_mean(torch.expm1(log_ratio) - log_ratio, mask)
        ratio_mean = masked_mean(ratio, mask)
    return loss, {
        "clipfrac": float(clipfrac),
        "approx_kl": float(approx_kl),
        "ratio": float(ratio_mean),
    }


def value_loss_clipped(
    values: Tensor, old_values: Tensor, returns: Tensor, mask: Tensor, clip_eps: float = 0.2
) -> tuple[Tensor, dict[str, float]]:
    """0.5·mean(max((V - R)², (clip(V, V_old ± ε_v) - R)²)); the caller applies the coefficient."""
    v_clipped = old_values + torch.clamp(values - old_values, -clip_eps, clip_eps)
    loss_unclipped = (values - returns) ** 2
    loss_clipped = (v_clipped - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(loss_unclipped, loss_clipped), mask)
    with torch.no_grad():
        clipfrac = masked_mean((loss_clipped > loss_unclipped).float(), mask)
    return loss, {"vf_clipfrac": float(clipfrac)}


# ---- reward model: Bradley-Terry ------------------------------------------------------------


def bradley_terry(r_chosen: Tensor, r_rejected: Tensor, margin: Tensor | None = None) -> Tensor:
    """Per-pair −log σ(r_chosen − r_rejected − margin).  (B,), (B,) -> (B,)

    The negative log-likelihood of the label under Bradley–Terry, P(chosen ≻ rejected) =
    σ(r_c − r_r). `margin` (Llama 2 style, from label strength) asks a clearly better response to
    win by at least that much before the loss flattens. softplus(-x) = −log σ(x), computed stably.
    """
    diff = r_chosen - r_rejected
    if margin is not None:
        diff = diff - margin
    return F.softplus(-diff)


def bradley_terry_tie(r_a: Tensor, r_b: Tensor) -> Tensor:
    """Per-pair loss of a tie: −½ log σ(r_a − r_b) − ½ log σ(r_b − r_a).  (B,), (B,) -> (B,)

    A tie counts as half a win each way (as in Chatbot Arena's Bradley–Terry aggregation);
    the loss is smallest, log 2, when the two scores are equal, and symmetric in a and b.
    """
    diff = r_a - r_b
    return 0.5 * (F.softplus(-diff) + F.softplus(diff))
