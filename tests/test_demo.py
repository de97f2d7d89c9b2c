"""`prefloop demo` end to end at toy scale: every stage runs and metrics.json holds numbers."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

KEYS = (
    "wall_seconds", "comparisons_used", "rm_accuracy_gold", "rm_accuracy_labels", "gold_reward_sft",
    "gold_reward_ppo", "kl_to_ref", "win_rate_vs_sft", "win_rate_ci_low", "win_rate_ci_high",
)  # fmt: skip


@pytest.mark.slow
def test_demo_runs_every_stage_and_writes_metrics(tmp_path):
    args = ["--pretrain-steps", "30", "--sft-steps", "10", "--comparisons", "240",
            "--ppo-rollouts", "1", "--eval-prompts", "24"]  # fmt: skip
    p = subprocess.run(
        [sys.executable, "-m", "prefloop.cli", "demo", "--workspace", str(tmp_path), *args],
        capture_output=True, text=True, timeout=900, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert p.returncode == 0, p.stderr[-3000:]
    last = p.stdout.strip().splitlines()[-1]
    report = Path(last)
    assert report.name == "report.html" and report.exists(), last
    metrics = json.loads((report.parent / "metrics.json").read_text())
    for key in KEYS:
        assert isinstance(metrics[key], int | float) and math.isfinite(metrics[key]), (key, metrics)
    assert (
        0
        <= metrics["win_rate_ci_low"]
        <= metrics["win_rate_vs_sft"]
        <= metrics["win_rate_ci_high"]
        <= 1
    )
    assert 0 < metrics["comparisons_used"] <= 240
    assert isinstance(metrics["over_optimization"], bool)  # the report's reward-hacking flag
    assert (report.parent / "report.md").exists()
    for stage in ("[1/8] pretrain", "[5/8] reward model", "[6/8] ppo", "[8/8] report"):
        assert stage in p.stdout


def test_demo_with_a_given_model_skips_pretraining_and_fine_tunes_it(
    make_model, tokenizer, tmp_path, capsys
):
    """`prefloop demo --model FOLDER` (a hub id works the same way): no pretraining stage; SFT
    starts from the given weights and tokenizer, and the SFT version records it as its parent."""
    from prefloop.demo import DemoConfig, run_demo
    from prefloop.models.lm import save_pretrained
    from prefloop.workspace import Workspace

    given = tmp_path / "given-qwen2"
    save_pretrained(make_model("qwen2"), tokenizer, given)
    ws = Workspace.init(tmp_path / "ws")
    out = run_demo(ws, DemoConfig(model=str(given), until="sft", sft_steps=3))
    printed = capsys.readouterr().out
    assert "pretrain" not in printed and "[1/1] sft" in printed
    sft = ws.get(out["sft_version"])
    assert sft.meta["parent"] == str(given)
    assert [v for v in ws.versions() if v.meta["stage"] == "pretrain"] == []
