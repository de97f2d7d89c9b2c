"""`evaluate` on tiny registered models, and the report from a (synthetic) PPO run history."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from prefloop.eval.evaluate import EvalConfig, evaluate
from prefloop.eval.report import over_optimization, write_report
from prefloop.workspace import Workspace


@pytest.fixture
def ws(tmp_path: Path, make_model, tokenizer) -> Workspace:
    from prefloop.models.reward import build_reward_model

    ws = Workspace.init(tmp_path / "ws")
    sft = ws.save_model(make_model("gpt2"), tokenizer, "sft")
    other = make_model("gpt2", seed=7)
    with torch.no_grad():  # sharpen its (tied) output layer: far from the near-uniform sft
        other.get_input_embeddings().weight.mul_(30.0)
    ws.save_model(other, tokenizer, "other")
    rm = build_reward_model(sft.path, tokenizer, seed=0)
    ws.save_model(
        rm, tokenizer, "reward", parent=sft.name, metrics={"accuracy": 0.71, "accuracy_gold": 0.83}
    )
    (tmp_path / "prompts.txt").write_text("".join(f"the movie {i} was\n" for i in range(24)))
    return ws


def cfg(ws: Workspace, **kw) -> EvalConfig:
    base = dict(
        prompts=str(ws.root.parent / "prompts.txt"),
        max_new_tokens=10,
        gold="python:prefloop.feedback.gold.sentiment_gold",
        show_samples=4,
    )
    return EvalConfig(**{**base, **kw})


def test_evaluate_same_model_is_a_coin_toss_with_zero_kl(ws: Workspace) -> None:
    r = evaluate(ws, "sft-v1", "sft-v1", cfg(ws, judge="reward"))
    assert r["prompts"] == 24
    m = r["models"]["sft-v1"]
    assert m["kl_to_ref"] == pytest.approx(0.0, abs=1e-3)  # the model is its own reference
    assert math.isfinite(m["reward"]) and math.isfinite(m["gold"])
    assert 0 < m["length"] <= 10 and 0 <= m["eos_rate"] <= 1
    wr = r["win_rate"]  # same seed, same samples: every comparison is a tie
    assert (wr["rate"], wr["ties"]) == (0.5, 24)
    assert len(r["samples"]) == 4 and {"prompt", "a", "b", "reward_a", "gold_b"} <= set(
        r["samples"][0]
    )
    json.dumps(r)  # JSON-able


def test_evaluate_different_models_and_judges(ws: Workspace) -> None:
    r = evaluate(ws, "other-v1", "sft-v1", cfg(ws, judge="reward"))
    assert r["models"]["other-v1"]["kl_to_ref"] > 0.5  # a different random model is far away
    wr = r["win_rate"]
    assert wr["ci_low"] <= wr["rate"] <= wr["ci_high"]
    assert wr["wins"] + wr["ties"] + wr["losses"] == 24
    for judge in ("gold", "annotator"):
        r2 = evaluate(ws, "other-v1", "sft-v1", cfg(ws, judge=judge, reward=["none"]))
        assert r2["models"]["sft-v1"]["reward"] is None
        assert 0.0 <= r2["win_rate"]["rate"] <= 1.0


def synthetic_history(rollouts: int, score, gold) -> list[dict[str, float]]:
    rows = []
    for r in range(rollouts):
        for k in range(2):
            rows.append(
                {
                    "step": 2 * r + k + 1,
                    "charts/rollout": r + 1,
                    "charts/score": score(r),
                    "charts/gold": gold(r),
                    "charts/kl_k1": 0.2 * r,
                    "charts/kl_k3": 0.19 * r,
                    "charts/entropy": 3.0 - 0.05 * r,
                    "loss/value": 1.0 / (r + 1),
                    "charts/clipfrac": 0.1,
                    "charts/approx_kl": 0.01,
                }
            )
    return rows


def test_over_optimization_flag() -> None:
    healthy = synthetic_history(12, lambda r: 0.2 * r, lambda r: 0.05 * r)
    hacked = synthetic_history(12, lambda r: 0.2 * r, lambda r: 0.3 - 0.02 * max(0, r - 5))
    # gold saturates near its ceiling while the reward model keeps climbing
    saturated = synthetic_history(16, lambda r: 0.2 * r, lambda r: 0.98 - 0.9 * math.exp(-r / 2.0))
    plateau = synthetic_history(12, lambda r: min(r, 6) * 0.3, lambda r: min(r, 6) * 0.1)
    assert over_optimization(healthy)["flagged"] is False
    assert over_optimization(plateau)["flagged"] is False  # both converged: nothing to flag
    flagged = over_optimization(hacked)
    assert flagged["flagged"] is True and flagged["score_rise"] > 1.0 and flagged["gold_rise"] < 0
    sat = over_optimization(saturated)
    assert sat["flagged"] is True and sat["gold_rise"] > 0
    no_gold = [{k: v for k, v in row.items() if k != "charts/gold"} for row in healthy]
    assert over_optimization(no_gold)["checked"] is False


def test_report_writes_plots_and_escapes_model_output(ws: Workspace, tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    history = synthetic_history(10, lambda r: 0.2 * r, lambda r: 0.3 - 0.03 * max(0, r - 4))
    (run / "history.jsonl").write_text("".join(json.dumps(h) + "\n" for h in history))
    hostile = "<script>alert(1)</script> | **bold**"
    (run / "samples.json").write_text(
        json.dumps(
            [
                [{"prompt": "p", "response": hostile, "score": 1.0}],
                [{"prompt": "p", "response": "ok", "score": 2.0}],
            ]
        )
    )
    copy = tmp_path / "policy-copy"  # register() writes its metadata into the source folder
    shutil.copytree(ws.get("sft-v1").path, copy)
    ws.register(
        copy,
        "ppo",
        parent="sft-v1",
        metrics={"score": 1.8, "kl_k1": 1.9},
        extra={"run_dir": str(run), "reward_versions": ["reward-v1"]},
    )
    evaluation = evaluate(ws, "other-v1", "sft-v1", cfg(ws, judge="gold"))
    evaluation["samples"][0]["a"] = hostile
    path = write_report(ws, ppo="latest:ppo", evaluation=evaluation, metrics={"wall_seconds": 12.5})
    out = path.parent
    for png in (
        "reward_gold.png",
        "kl.png",
        "entropy.png",
        "value_loss.png",
        "clipfrac.png",
        "rm_accuracy.png",
        "winrate.png",
    ):
        assert (out / png).stat().st_size > 1000, png
    page = path.read_text()
    assert "<script>alert" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "Over-optimization" in page and "wall_seconds" in page
    md = (out / "report.md").read_text()
    assert "<script>" not in md and "\\|" in md and "![reward and gold](reward_gold.png)" in md
    assert json.loads((out / "report.json").read_text())["over_optimization"]["flagged"] is True
