"""`prefloop demo`: the whole pipeline offline on the embedded task (see prefloop.demo)."""

from __future__ import annotations

import argparse
from typing import Any

from prefloop.cli._common import add_command, quiet_transformers, workspace_and_config
from prefloop.demo import DemoConfig, run_demo


def _demo(args: argparse.Namespace) -> int:
    quiet_transformers()
    ws, cfg = workspace_and_config(args, DemoConfig)
    out = run_demo(ws, cfg)
    print()
    print("summary")
    for key in (
        "sft_version",
        "reward_version",
        "ppo_version",
        "comparisons_used",
        "rm_accuracy_labels",
        "rm_accuracy_gold",
        "gold_reward_sft",
        "gold_reward_ppo",
        "kl_to_ref",
        "win_rate_vs_sft",
        "win_rate_ci_low",
        "win_rate_ci_high",
        "wall_seconds",
        "over_optimization",
    ):
        if out.get(key) is not None:
            v = out[key]
            print(f"  {key:<20} {v:.3f}" if isinstance(v, float) else f"  {key:<20} {v}")
    print(
        f"  workspace            {out['workspace']}  (models: prefloop models --workspace {args.workspace})"
    )
    if "report" in out:
        print(out["report"])
    return 0


def register(sub: Any) -> None:
    add_command(
        sub, "demo", "run the whole pipeline offline on the embedded review task", _demo, DemoConfig
    )
