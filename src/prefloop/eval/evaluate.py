"""`prefloop eval A B`: compare two policies on held-out prompts.

Per model: mean reward-model score, mean gold score (where a gold scorer exists), KL to the
reference policy (k1 summed over the response, on the model's own samples), response length and
EOS rate. Between them: the win-rate of A over B by a judge — the gold scorer (noise-free), a
simulated annotator (gold with calibrated noise), the reward model, or any reward source —
with a bootstrap 95% interval; and a few samples side by side.
"""

from __future__ import annotations

import gc
from dataclasses import asdict, dataclass
from typing import Any

import torch

from prefloop.configs import EvalConfig
from prefloop.errors import PrefloopError
from prefloop.eval.winrate import preferences_from_scores, win_rate
from prefloop.models.sampler import Sampler, SamplingParams, left_pad, right_pad, sequence_logprobs
from prefloop.train.rewards import RewardSource, build_reward

EMBEDDED_GOLD = "python:prefloop.feedback.gold.sentiment_gold"


@dataclass
class ModelSamples:
    name: str
    texts: list[str]
    finished: list[bool]
    lengths: list[int]
    kl: list[float] | None  # k1 per response vs the reference, None when not computable


def _params(cfg: EvalConfig) -> SamplingParams:
    return SamplingParams(
        max_new_tokens=cfg.max_new_tokens,
        temperature=cfg.temperature,
        top_p=cfg.top_p,
        seed=cfg.seed,
    )


@torch.no_grad()
def sample_model(
    path: str, name: str, prompts: list[str], cfg: EvalConfig, ref: Any
) -> ModelSamples:
    """Sample one response per prompt; with `ref` = (model, tokenizer) also the KL to it."""
    from prefloop.models.lm import load_model_and_tokenizer

    model, tok = load_model_and_tokenizer(path)
    sampler, params = Sampler(model, tok), _params(cfg)
    generation = sampler.generate(prompts, params)
    rows, responses, logprobs = generation.prompt_ids, generation.response_ids, generation.logprobs
    kl: list[float] | None = None
    if ref is not None and ref[1].get_vocab() == tok.get_vocab():
        kl = []
        for i in range(0, len(rows), params.batch_size):
            q, qm = left_pad(rows[i : i + params.batch_size], sampler.pad_id)
            a, am = right_pad(responses[i : i + params.batch_size], sampler.pad_id)
            ref_lp, _ = sequence_logprobs(ref[0], q, qm, a, am, cfg.temperature)
            for j, row_lp in enumerate(logprobs[i : i + params.batch_size]):
                kl.append(float(sum(row_lp) - ref_lp[j, : len(row_lp)].sum()))
    del model
    gc.collect()
    return ModelSamples(
        name, generation.texts, generation.finished, [len(r) for r in responses], kl
    )


def _mean(values: list[float] | torch.Tensor | None) -> float | None:
    if values is None:
        return None
    t = torch.as_tensor(values, dtype=torch.float64)
    t = t[torch.isfinite(t)]
    return float(t.mean()) if t.numel() else None


def judge_preferences(
    cfg: EvalConfig,
    prompts: list[str],
    a: ModelSamples,
    b: ModelSamples,
    gold: RewardSource | None,
    reward: RewardSource | None,
    ws: Any,
) -> list[float]:
    """1 / 0.5 / 0 per prompt: A better / tie / B better."""
    if cfg.judge == "annotator":
        if gold is None:
            raise PrefloopError("the simulated annotator needs a gold scorer", field="gold")
        from prefloop.feedback.annotators import SimulatedAnnotator
        from prefloop.feedback.models import ComparisonView

        gold_fn = gold
        annotator = SimulatedAnnotator(
            lambda p, r: gold_fn.score(p, r).tolist(),
            agreement=cfg.annotator_agreement,
            seed=cfg.seed,
        )
        views = [
            ComparisonView(i, p, None, ra, rb, "eval", False)
            for i, (p, ra, rb) in enumerate(zip(prompts, a.texts, b.texts, strict=True))
        ]
        value = {"a": 1.0, "b": 0.0}
        return [value.get(label.choice, 0.5) for label in annotator.label(views)]
    named = {"gold": gold, "reward": reward}
    judge = named[cfg.judge] if cfg.judge in named else build_reward([cfg.judge], ws)
    if judge is None:
        raise PrefloopError(
            f"judge '{cfg.judge}' is not available (no {cfg.judge} scorer)", field="judge"
        )
    return preferences_from_scores(
        judge.score(prompts, a.texts).tolist(), judge.score(prompts, b.texts).tolist()
    )


def eval_prompts(cfg: EvalConfig) -> list[str]:
    if cfg.prompts:
        from prefloop.train.ppo import PpoConfig, load_prompts

        return load_prompts(PpoConfig(prompts=cfg.prompts))
    from prefloop.data.reviews import rl_prompts

    return rl_prompts(cfg.num_prompts, cfg.seed, "eval")


def evaluate(ws: Any, model_a: str, model_b: str, cfg: EvalConfig) -> dict[str, Any]:
    """Compare two policies; returns a JSON-able dict (see module docstring)."""
    from prefloop.models.lm import load_model_and_tokenizer

    prompts = eval_prompts(cfg)
    gold_spec = EMBEDDED_GOLD if cfg.gold == "auto" and not cfg.prompts else cfg.gold
    gold = build_reward([gold_spec], ws) if gold_spec and gold_spec != "auto" else None
    reward = None if cfg.reward in ([], ["none"]) else build_reward(cfg.reward, ws)
    ref = None
    if cfg.reference != "none":
        ref = load_model_and_tokenizer(ws.resolve(cfg.reference))
    sides = [sample_model(ws.resolve(m), m, prompts, cfg, ref) for m in (model_a, model_b)]
    models: dict[str, dict[str, Any]] = {}
    scores: dict[str, dict[str, list[float]]] = {}
    for s in sides:
        scores[s.name] = {
            "reward": reward.score(prompts, s.texts).tolist() if reward else [],
            "gold": gold.score(prompts, s.texts).tolist() if gold else [],
        }
        models[s.name] = {
            "reward": _mean(scores[s.name]["reward"] or None),
            "gold": _mean(scores[s.name]["gold"] or None),
            "kl_to_ref": _mean(s.kl),
            "length": _mean([float(n) for n in s.lengths]),
            "eos_rate": _mean([float(f) for f in s.finished]),
        }
    a, b = sides
    prefs = judge_preferences(cfg, prompts, a, b, gold, reward, ws)
    wr = win_rate(prefs, seed=cfg.seed)
    samples = [
        {
            "prompt": prompts[i],
            "a": a.texts[i],
            "b": b.texts[i],
            **{
                f"{k}_{side}": scores[s.name][k][i]
                for side, s in (("a", a), ("b", b))
                for k in ("reward", "gold")
                if scores[s.name][k]
            },
        }
        for i in range(min(cfg.show_samples, len(prompts)))
    ]
    return {
        "a": model_a,
        "b": model_b,
        "prompts": len(prompts),
        "judge": cfg.judge,
        "reference": cfg.reference,
        "models": models,
        "win_rate": wr.as_dict(),
        "samples": samples,
        "config": asdict(cfg),
    }
