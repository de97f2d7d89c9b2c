"""PPO on tiny models: the learner raises a toy reward, one step per model family, KL control,
NaN rewards, and the first-step ratio check (sampler and learner log-probs agree)."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch

from prefloop.errors import PrefloopError
from prefloop.train.loop import train
from prefloop.train.ppo import (
    AdaptiveKLController,
    FixedKLController,
    PpoConfig,
    PpoTask,
    frozen,
    kl_controller,
)
from prefloop.train.rewards import FunctionSource
from prefloop.train.rollout import PolicyAndValue, make_experience

PROMPTS = [f"the movie {i} was" for i in range(64)]


def count_e(prompts: list[str], responses: list[str]) -> list[float]:
    """Toy reward: +1 per occurrence of the token 'e' (single letters are tokens in the test
    vocabulary; merged tokens that contain the letter count too)."""
    return [float(r.count("e")) for r in responses]


def small_cfg(**kw) -> PpoConfig:
    base = dict(
        batch_size=32,
        max_new_tokens=12,
        num_minibatches=2,
        ppo_epochs=4,
        lr=2e-3,
        warmup_steps=2,
        kl_coef=0.0,
        penalize_missing_eos=False,
        checkpoint_every=0,
    )
    return PpoConfig(**{**base, **kw})


def value_model_like(policy, tokenizer):
    """A sequence-classification value network with the policy's architecture (fresh head)."""
    from transformers import AutoModelForSequenceClassification

    cfg = copy.deepcopy(policy.config)
    cfg.num_labels = 1
    cfg.pad_token_id = tokenizer.pad_token_id
    torch.manual_seed(1)
    return AutoModelForSequenceClassification.from_config(cfg).eval()


@pytest.mark.parametrize("bf16", [False, True], ids=["float32", "bf16"])
def test_ppo_raises_toy_reward(bf16: bool, make_model, tokenizer, tmp_path: Path) -> None:
    policy = make_model("gpt2")
    cfg = small_cfg(rollouts=10, bf16=bf16)
    task = PpoTask(
        PolicyAndValue(policy, None),
        frozen(copy.deepcopy(policy)),
        tokenizer,
        FunctionSource(count_e),
        PROMPTS,
        cfg,
    )
    result = train(task.nets, task, cfg.loop_config(), tmp_path, progress=False)
    per_rollout = [row["charts/score"] for row in result.history[:: cfg.steps_per_rollout]]
    assert len(per_rollout) == 10
    first, last = sum(per_rollout[:2]) / 2, sum(per_rollout[-2:]) / 2
    assert last > 1.5 * first + 0.3, per_rollout
    assert result.history[-1]["charts/kl_k1"] > 0.1  # it moved away from the reference
    # the first update sees the policy that sampled: in bf16 too, the sampler's and the
    # learner's log-probs agree up to rounding (a ratio far from 1 would make clipping noise)
    assert result.history[0]["charts/approx_kl"] < (1e-4 if bf16 else 1e-5)


@pytest.mark.parametrize("family", ["gpt2", "llama", "qwen2"])
def test_one_ppo_step_per_family(family: str, make_model, tokenizer, tmp_path: Path) -> None:
    policy = make_model(family)
    value = value_model_like(policy, tokenizer)
    nets = PolicyAndValue(policy, value)
    before = {k: v.clone() for k, v in nets.state_dict().items()}
    cfg = small_cfg(
        rollouts=1,
        ppo_epochs=1,
        num_minibatches=1,
        batch_size=8,
        kl_coef=0.05,
        penalize_missing_eos=True,
    )
    task = PpoTask(
        nets, frozen(copy.deepcopy(policy)), tokenizer, FunctionSource(count_e), PROMPTS[:8], cfg
    )
    result = train(nets, task, cfg.loop_config(), tmp_path, progress=False)
    row = result.history[0]
    for key in (
        "loss/policy",
        "loss/value",
        "charts/score",
        "charts/kl_k1",
        "charts/entropy",
        "charts/clipfrac",
        "charts/approx_kl",
        "charts/explained_variance",
        "charts/response_length",
        "charts/eos_rate",
        "charts/non_score_reward",
    ):
        assert math.isfinite(row[key]), key
    # the first minibatch sees the policy that sampled: ratio 1, nothing clipped
    assert row["charts/approx_kl"] < 1e-5
    assert row["charts/clipfrac"] == 0.0
    after = nets.state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert any(k.startswith("policy.") for k in changed)
    assert any(k.startswith("value_model.") for k in changed)


def test_rollout_logprobs_match_sampler_and_rewards(make_model, tokenizer) -> None:
    from prefloop.models.sampler import Sampler, SamplingParams

    policy = make_model("llama")
    cfg = small_cfg(
        temperature=0.7, kl_coef=0.1, penalize_missing_eos=True, missing_eos_penalty=-3.0
    )
    nets = PolicyAndValue(policy, None)
    r = make_experience(
        nets,
        frozen(copy.deepcopy(policy)),
        tokenizer,
        FunctionSource(count_e),
        PROMPTS[:16],
        cfg,
        kl_coef=0.1,
        seed=5,
    )
    exp = r.experience
    params = SamplingParams(max_new_tokens=12, temperature=0.7, seed=5)
    sampler = Sampler(policy, tokenizer)
    _, lps, finished, _ = sampler.generate_ids(
        sampler.encode(PROMPTS[:16], params), params, torch.Generator().manual_seed(5)
    )
    for i, lp in enumerate(lps):
        n = int(exp.response_mask[i].sum())
        assert n == len(lp)
        assert exp.old_logprobs[i, :n].tolist() == pytest.approx(lp, abs=1e-4)
    # policy == reference: no KL, rewards are just the (penalized) scores at the last token
    assert exp.ref_logprobs.allclose(exp.old_logprobs, atol=1e-5)
    raw = count_e([], [x["response"] for x in r.samples])
    expected = [s if f else -3.0 for s, f in zip(raw, finished, strict=True)]
    assert exp.scores.tolist() == pytest.approx(expected)
    assert exp.rewards.sum(1).tolist() == pytest.approx(exp.scores.tolist(), abs=1e-4)


def test_nan_rewards_dropped_then_halt(make_model, tokenizer, caplog) -> None:
    def half_nan(prompts: list[str], responses: list[str]) -> list[float]:
        return [math.nan if i % 2 else 1.0 for i in range(len(responses))]

    policy = make_model("gpt2")
    nets, ref = PolicyAndValue(policy, None), frozen(copy.deepcopy(policy))
    cfg = small_cfg(max_nan_rewards=10)
    r = make_experience(nets, ref, tokenizer, FunctionSource(half_nan), PROMPTS[:8], cfg, 0.05, 1)
    assert len(r.experience) == 4
    assert r.metrics["charts/dropped_samples"] == 4
    assert "dropped 4 sample(s) whose reward was not a number" in caplog.text
    with pytest.raises(PrefloopError, match="max_nan_rewards=10"):
        make_experience(
            nets,
            ref,
            tokenizer,
            FunctionSource(half_nan),
            PROMPTS[:16],
            cfg,
            0.05,
            1,
            dropped_so_far=4,
        )


def test_kl_controllers() -> None:
    fixed = FixedKLController(0.05)
    fixed.update(100.0, 64)
    assert fixed.value == 0.05
    ada = AdaptiveKLController(0.2, target=6.0, horizon=10_000)
    ada.update(9.0, 100)  # error clipped to +0.2: β *= 1 + 0.2 * 100/10000
    assert ada.value == pytest.approx(0.2 * 1.002)
    ada.update(5.4, 1000)  # error -0.1: β *= 1 - 0.1 * 0.1
    assert ada.value == pytest.approx(0.2 * 1.002 * 0.99)
    restored = kl_controller(PpoConfig(kl_controller="adaptive"))
    assert restored.value == 0.15
    restored.load_state_dict(ada.state_dict())
    assert restored.value == ada.value


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="kl_controller"):
        PpoConfig(kl_controller="pid")
    with pytest.raises(ValueError, match="temperature"):
        PpoConfig(temperature=0)
    with pytest.raises(ValueError, match="num_minibatches"):
        PpoConfig(batch_size=4, num_minibatches=8)
    cfg = PpoConfig(rollouts=3, ppo_epochs=2, num_minibatches=4, checkpoint_every=1)
    loop = cfg.loop_config()
    assert (loop.max_steps, loop.checkpoint_every) == (24, 8)
