"""Making experience: generate -> score -> reference log-probs -> values -> rewards -> GAE.

Everything here runs under no_grad and ends in an `Experience` batch, the learner's only input.
The trainable networks (policy, value) live in one `PolicyAndValue` module because the training
loop trains one nn.Module; the reference policy and the reward source stay outside it, frozen.

Shapes: B = rollout rows, P = padded prompt length, T = response length, V = vocabulary.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn
from transformers import PreTrainedModel

from prefloop.errors import PrefloopError
from prefloop.models.sampler import (
    Sampler,
    SamplingParams,
    left_pad,
    position_ids,
    response_logits,
    response_positions,
    right_pad,
    token_logprobs,
)
from prefloop.train import losses as L
from prefloop.train.experience import Experience
from prefloop.train.rewards import RewardSource

if TYPE_CHECKING:
    from prefloop.train.ppo import PpoConfig

log = logging.getLogger("prefloop.ppo")


class PolicyAndValue(nn.Module):
    """Policy plus value function. The value comes from a separate sequence-classification
    model (initialized from the reward model, as in the N+ study) or, with `value_model=None`,
    from a linear head on the policy's last hidden state (less memory, coupled losses)."""

    def __init__(self, policy: PreTrainedModel, value_model: PreTrainedModel | None) -> None:
        super().__init__()
        self.policy = policy
        self.value_model = value_model
        self.value_head: nn.Linear | None = None
        if value_model is None:
            width = int(policy.config.get_text_config().hidden_size)
            self.value_head = nn.Linear(width, 1)
            nn.init.zeros_(self.value_head.weight)  # start at V = 0: no bias toward any score
            nn.init.zeros_(self.value_head.bias)

    def forward(self, ids: Tensor, mask: Tensor, prompt_len: int) -> tuple[Tensor, Tensor]:
        """Response-aligned logits (B, T, V) and values (B, T) of `ids` = prompt + response.

        Position P-1+t holds the state before response token t: its logits predict a_t and its
        value is V(s_t). The LM head runs on those positions only (logits_to_keep).
        """
        out = self.policy(
            input_ids=ids,
            attention_mask=mask,
            position_ids=position_ids(mask),
            use_cache=False,
            output_hidden_states=self.value_head is not None,
            logits_to_keep=response_positions(ids.shape[1], ids.shape[1] - prompt_len),
        )
        logits = out.logits  # (B, T, V)
        if self.value_head is not None:
            hidden = out.hidden_states[-1][:, prompt_len - 1 : -1]  # (B, T, C)
            return logits, self.value_head(hidden).squeeze(-1).float()
        return logits, self.values(ids, mask, prompt_len)

    def values(self, ids: Tensor, mask: Tensor, prompt_len: int) -> Tensor:
        """Values (B, T) alone: the value network's forward, without the policy's LM head."""
        pos = position_ids(mask)
        if self.value_model is None:
            assert self.value_head is not None
            out = self.policy(
                input_ids=ids,
                attention_mask=mask,
                position_ids=pos,
                use_cache=False,
                output_hidden_states=True,
                logits_to_keep=1,
            )
            hidden = out.hidden_states[-1][:, prompt_len - 1 : -1]  # (B, T, C)
            return self.value_head(hidden).squeeze(-1).float()
        hidden = self.value_model.base_model(
            input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False
        ).last_hidden_state[:, prompt_len - 1 : -1]
        head = self.value_model.get_submodule("score")
        return head(hidden).squeeze(-1).float()


@dataclass
class Rollout:
    """One batch of experience plus what to log about it."""

    experience: Experience
    metrics: dict[str, float]
    samples: list[dict[str, Any]] = field(default_factory=list)  # prompt, response, score


def _drop_nonfinite(scores: Tensor, cfg: PpoConfig, dropped_so_far: int) -> Tensor:
    """Indices of rows with a finite score; halts once too many rows were dropped in the run."""
    keep = torch.isfinite(scores)
    dropped = int((~keep).sum())
    if dropped:
        total = dropped_so_far + dropped
        log.warning(
            "dropped %d sample(s) whose reward was not a number (%d so far)", dropped, total
        )
        if total > cfg.max_nan_rewards:
            raise PrefloopError(
                f"the reward source returned NaN for {total} samples (more than "
                f"max_nan_rewards={cfg.max_nan_rewards}); fix the reward source or raise the limit",
                field="reward",
            )
        if not bool(keep.any()):
            raise PrefloopError("the reward source scored no sample of a rollout", field="reward")
    return keep.nonzero().squeeze(-1)


@torch.no_grad()
def make_experience(
    nets: PolicyAndValue,
    ref: nn.Module,  # the reference policy (or the LoRA policy with adapters off)
    tokenizer: Any,
    reward: RewardSource,
    prompts: Sequence[str],
    cfg: PpoConfig,
    kl_coef: float,
    seed: int,
    dropped_so_far: int = 0,
    gold: RewardSource | None = None,
) -> Rollout:
    """Sample one response per prompt from the policy and turn it into an Experience batch."""
    params = SamplingParams(
        max_new_tokens=cfg.max_new_tokens,
        temperature=cfg.temperature,
        top_p=cfg.top_p,
        top_k=cfg.top_k,
        seed=seed,
    )
    sampler = Sampler(nets.policy, tokenizer)
    rows = sampler.encode(list(prompts), params)  # as the sampler always does: left-truncated
    gen = torch.Generator().manual_seed(seed)
    # the sampler's log-probs are the behaviour policy's (equal to a forward pass within 1e-5,
    # tests/models/test_sampler.py): no second policy forward over the rollout
    sampled = sampler.generate_ids(rows, params, gen, entropy=True)
    responses, finished = sampled.response_ids, sampled.finished
    texts = tokenizer.batch_decode(responses, skip_special_tokens=True)
    raw_scores = reward.score(list(prompts), texts).float()  # (B,)
    keep = _drop_nonfinite(raw_scores, cfg, dropped_so_far).tolist()

    query, query_mask = left_pad([rows[i] for i in keep], sampler.pad_id)  # (B, P)
    resp, resp_mask = right_pad([responses[i] for i in keep], sampler.pad_id)  # (B, T)
    ids = torch.cat([query, resp], 1)
    mask = torch.cat([query_mask, resp_mask], 1)
    P, rmask = query.shape[1], resp_mask.float()
    done = torch.tensor([finished[i] for i in keep])

    T = resp.shape[1]
    old_logp = right_pad([sampled.logprobs[i] for i in keep], 0.0, T, torch.float32)[0]
    entropy = right_pad([sampled.entropy[i] for i in keep], 0.0, T, torch.float32)[0]
    entropy = L.masked_mean(entropy, rmask)
    values = nets.values(ids, mask, P)
    ref_logp = token_logprobs(response_logits(ref, ids, mask, T), resp, cfg.temperature) * rmask

    scores = L.apply_missing_eos_penalty(
        raw_scores[keep], done, cfg.missing_eos_penalty if cfg.penalize_missing_eos else None
    )
    rewards, non_score = L.per_token_rewards(scores, old_logp, ref_logp, rmask, kl_coef)
    if cfg.whiten_rewards:
        rewards = L.masked_whiten(rewards, rmask, shift_mean=False)
    values = values * rmask
    advantages, returns = L.gae(rewards, values, rmask, cfg.gamma, cfg.lam)
    if cfg.whiten_advantages:
        advantages = L.masked_whiten(advantages, rmask)

    exp = Experience(
        sequences=ids,
        attention_mask=mask,
        response_mask=rmask,
        old_logprobs=old_logp,
        ref_logprobs=ref_logp,
        values=values,
        rewards=rewards,
        advantages=advantages,
        returns=returns,
        scores=scores,
    )
    metrics = rollout_metrics(exp, raw_scores[keep], non_score, done, entropy)
    metrics["charts/kl_coef"] = kl_coef
    metrics["charts/dropped_samples"] = float(len(prompts) - len(keep))
    kept_texts = [texts[i] for i in keep]
    if gold is not None:  # a logged yardstick: full precision whatever autocast the run uses
        with torch.autocast(ids.device.type, enabled=False):
            gold_scores = gold.score([prompts[i] for i in keep], kept_texts)
        metrics["charts/gold"] = float(gold_scores.nanmean())
    samples = [
        {"prompt": prompts[i], "response": t, "score": float(s)}
        for i, t, s in zip(keep, kept_texts, scores.tolist(), strict=True)
    ]
    return Rollout(exp, metrics, samples)


def rollout_metrics(
    exp: Experience, raw_scores: Tensor, non_score: Tensor, done: Tensor, entropy: Tensor
) -> dict[str, float]:
    """What the N-implementation-details study says to watch, per rollout."""
    m = exp.response_mask
    k1 = L.kl_k1(exp.old_logprobs, exp.ref_logprobs) * m
    k3 = L.kl_k3(exp.old_logprobs, exp.ref_logprobs) * m
    ev = L.explained_variance(exp.values, exp.returns, m)
    return {
        "charts/score": float(raw_scores.mean()),
        "charts/score_after_eos_penalty": float(exp.scores.mean()),
        "charts/non_score_reward": float(non_score.sum(1).mean()),
        "charts/kl_k1": float(k1.sum(1).mean()),  # per response, in nats
        "charts/kl_k3": float(k3.sum(1).mean()),
        "charts/entropy": float(entropy),
        "charts/explained_variance": ev if math.isfinite(ev) else 0.0,
        "charts/response_length": float(m.sum(1).mean()),
        "charts/eos_rate": float(done.float().mean()),
        "charts/value_mean": float(L.masked_mean(exp.values, m)),
    }
