"""`prefloop demo`: the whole pipeline offline on the embedded review task.

    pretrain -> sft -> pairs -> simulated labels -> reward model -> ppo -> eval -> report

Simulated people prefer positive continuations (VADER, `feedback.gold`), so every stage has a
checkable target. Each stage is the same library call its command makes; the demo only chains
them and collects the headline numbers into metrics.json beside the report.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefloop.config import option
from prefloop.errors import PrefloopError
from prefloop.workspace import Workspace

STAGES = ("pretrain", "sft", "pairs", "label", "reward", "ppo", "eval", "report")


@dataclass
class DemoConfig:
    model: str = option(
        "", "start from this HF model (hub id or folder) instead of pretraining one"
    )
    until: str = option("report", f"stop after this stage: {', '.join(STAGES)}")
    comparisons: int = option(
        5000, "simulated comparisons collected for the reward model (<= 5,000)"
    )
    agreement: float = option(0.75, "simulated annotators' agreement with the noise-free gold")
    pretrain_steps: int = option(1000, "pretraining optimizer steps")
    sft_steps: int = option(200, "SFT optimizer steps")
    ppo_rollouts: int = option(36, "PPO iterations (rollout + 4 epochs of learning)")
    kl_coef: float = option(0.1, "PPO's KL penalty β (0 shows over-optimization)")
    ppo_lr: float = option(
        1e-4, "PPO learning rate (with --kl-coef 0, 3e-4 over-optimizes quickly)"
    )
    eval_prompts: int = option(200, "held-out prompts for the final win-rate")
    seed: int = option(0, "seed for every stage")


class _Progress:
    """One line per stage: '[3/8] pairs ... done in 4.2s: <summary>'."""

    def __init__(self, total: int) -> None:
        self.total, self.i, self.t0 = total, 0, time.perf_counter()

    def run(self, name: str, fn: Callable[[], Any], summary: Callable[[Any], str]) -> Any:
        self.i += 1
        print(f"[{self.i}/{self.total}] {name} ...", flush=True)
        t = time.perf_counter()
        out = fn()
        print(f"      done in {time.perf_counter() - t:.1f}s: {summary(out)}", flush=True)
        return out


def run_demo(ws: Workspace, cfg: DemoConfig) -> dict[str, Any]:
    from prefloop.feedback.annotators import SimulatedAnnotator, label_pending
    from prefloop.feedback.gold import sentiment_gold
    from prefloop.feedback.pairs import PairsConfig, generate_pairs
    from prefloop.feedback.store import PreferenceStore
    from prefloop.models.lm import load_model_and_tokenizer
    from prefloop.models.sampler import Sampler, SamplingParams
    from prefloop.train.pretrain import PretrainConfig, pretrain
    from prefloop.train.sft import SFTConfig, sft

    if cfg.until not in STAGES:
        raise PrefloopError(f"--until must be one of {', '.join(STAGES)}", field="until")
    if not 0 < cfg.comparisons <= 5000:
        raise PrefloopError("--comparisons must be between 1 and 5000", field="comparisons")
    stages = STAGES[: STAGES.index(cfg.until) + 1]
    if cfg.model:
        stages = tuple(s for s in stages if s != "pretrain")
    bar = _Progress(len(stages))
    t0 = time.perf_counter()
    out: dict[str, Any] = {"workspace": str(ws.root.resolve())}

    base = cfg.model
    if "pretrain" in stages:
        pv, _ = bar.run(
            "pretrain",
            lambda: pretrain(
                ws, PretrainConfig(max_steps=cfg.pretrain_steps, seed=cfg.seed), progress=False
            ),
            lambda r: (
                f"{r[0].name}, eval loss {r[0].meta['metrics']['loss/eval']:.2f} nats/token "
                f"(unigram entropy {r[0].meta['metrics']['unigram_entropy']:.2f})"
            ),
        )
        base = pv.name
    sv, _ = bar.run(
        "sft",
        lambda: sft(
            ws, SFTConfig(model=base, max_steps=cfg.sft_steps, seed=cfg.seed), progress=False
        ),
        lambda r: (
            f"{r[0].name}, eval loss {r[0].meta['metrics'].get('loss/eval', float('nan')):.2f}"
        ),
    )
    out["sft_version"] = sv.name
    model, tok = load_model_and_tokenizer(str(sv.path))
    from prefloop.data.reviews import rl_prompts

    show = rl_prompts(4, cfg.seed + 1, "eval")
    gen = Sampler(model, tok).generate(
        show, SamplingParams(max_new_tokens=32, top_p=0.9, seed=cfg.seed)
    )
    print("      samples from the SFT model:")
    for p, t in zip(gen.prompts, gen.texts, strict=True):
        print(f"        {p}\u2502{t}")
    if len(stages) > 2:
        with PreferenceStore(ws.db_url) as store:
            pcfg = PairsConfig(
                model=sv.name,
                # 3 responses per prompt give 3 comparisons: half the sampling of k=2
                k=3,
                default_prompts=max(1, cfg.comparisons // 3),
                seed=cfg.seed,
                source="demo",
                max_new_tokens=32,  # the same response budget PPO and eval use
            )
            bar.run(
                "pairs",
                lambda: generate_pairs(store, pcfg, str(sv.path), sv.name),
                lambda s: (
                    f"{s.comparisons} comparisons from {s.prompts} prompts ({s.dropped_identical} identical dropped)"
                ),
            )
            if "label" in stages:
                ann = SimulatedAnnotator(
                    sentiment_gold, cfg.agreement, 1e-6, cfg.seed, name="demo-simulated"
                )
                run = bar.run(
                    "label (simulated annotators)",
                    lambda: label_pending(store, ann, sources=["demo"]),
                    lambda r: f"{r.labelled} labels, agreement with gold {r.gold_agreement:.3f}",
                )
                out["comparisons_used"] = run.labelled
    if "reward" in stages:
        out.update(_reward_stage(ws, cfg, sv.name, bar))
    if "ppo" in stages:
        out.update(_ppo_stage(ws, cfg, sv.name, out["reward_version"], bar))
    if "eval" in stages:
        out.update(_eval_stage(ws, cfg, out["ppo_version"], sv.name, bar))
    out["wall_seconds"] = round(time.perf_counter() - t0, 1)
    if "report" in stages:
        out["report"] = str(_report_stage(ws, out, bar))
    return out


def _reward_stage(ws: Workspace, cfg: DemoConfig, sft_name: str, bar: _Progress) -> dict[str, Any]:
    from prefloop.train.reward import RewardConfig, train_reward

    rcfg = RewardConfig(model=sft_name, seed=cfg.seed, sources=["demo"])
    rv, m = bar.run(
        "reward model",
        lambda: train_reward(ws, rcfg, progress=False),
        lambda r: (
            f"{r[0].name}, held-out accuracy {r[1].get('accuracy', float('nan')):.3f} vs labels, "
            f"{r[1].get('accuracy_gold', float('nan')):.3f} vs noise-free gold"
        ),
    )
    return {
        "reward_version": rv.name,
        "rm_accuracy_labels": m.get("accuracy"),
        "rm_accuracy_gold": m.get("accuracy_gold"),
    }


def _ppo_stage(
    ws: Workspace, cfg: DemoConfig, sft_name: str, rm_name: str, bar: _Progress
) -> dict[str, Any]:
    from prefloop.train.ppo import PpoConfig, run_ppo

    pcfg = PpoConfig(
        policy=sft_name,
        reward=[rm_name],
        gold="python:prefloop.feedback.gold.sentiment_gold",
        rollouts=cfg.ppo_rollouts,
        kl_coef=cfg.kl_coef,
        lr=cfg.ppo_lr,
        seed=cfg.seed,
    )
    v = bar.run(
        "ppo",
        lambda: run_ppo(ws, pcfg, progress=True),
        lambda v: f"{v.name}, {v.meta['metrics'].get('step_seconds', 0) * 1000:.0f} ms/step",
    )
    return {"ppo_version": v.name}


def _eval_stage(
    ws: Workspace, cfg: DemoConfig, ppo_name: str, sft_name: str, bar: _Progress
) -> dict[str, Any]:
    from prefloop.eval.evaluate import EvalConfig, evaluate

    ecfg = EvalConfig(num_prompts=cfg.eval_prompts, reference=sft_name, seed=cfg.seed, judge="gold")
    res = bar.run(
        "eval (PPO vs SFT, judged by the noise-free gold)",
        lambda: evaluate(ws, ppo_name, sft_name, ecfg),
        lambda r: (
            f"win-rate {r['win_rate']['rate']:.3f} "
            f"[{r['win_rate']['ci_low']:.3f}, {r['win_rate']['ci_high']:.3f}]"
        ),
    )
    a, b = res["models"][ppo_name], res["models"][sft_name]
    return {
        "evaluation": res,
        "gold_reward_sft": b["gold"],
        "gold_reward_ppo": a["gold"],
        "rm_reward_sft": b["reward"],
        "rm_reward_ppo": a["reward"],
        "kl_to_ref": a["kl_to_ref"],
        "win_rate_vs_sft": res["win_rate"]["rate"],
        "win_rate_ci_low": res["win_rate"]["ci_low"],
        "win_rate_ci_high": res["win_rate"]["ci_high"],
    }


def _report_stage(ws: Workspace, out: dict[str, Any], bar: _Progress) -> Path:
    from prefloop.eval.report import write_report

    headline = {k: v for k, v in out.items() if k != "evaluation"}
    html = bar.run(
        "report",
        lambda: write_report(
            ws, ppo=out["ppo_version"], evaluation=out.get("evaluation"), metrics=headline
        ),
        lambda p: str(p.parent),
    )
    report = json.loads((html.parent / "report.json").read_text())
    out["over_optimization"] = headline["over_optimization"] = bool(
        report["over_optimization"]["flagged"]
    )
    (html.parent / "metrics.json").write_text(json.dumps(headline, indent=2, default=str))
    return html
