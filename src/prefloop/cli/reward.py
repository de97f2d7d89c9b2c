"""`prefloop reward`: train a reward model on the labelled comparisons in the preference store."""

from __future__ import annotations

import argparse
import math
from typing import Any

from prefloop.cli._common import add_command, quiet_transformers, workspace_and_config
from prefloop.configs import RewardConfig


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def _reward(args: argparse.Namespace) -> int:
    from prefloop.train.reward import train_reward

    quiet_transformers()
    ws, cfg = workspace_and_config(args, RewardConfig)
    version, m = train_reward(ws, cfg)
    print(
        f"{version.name} from {version.meta.get('parent')}: {m['train_pairs']} training pairs, "
        f"{m['steps']} steps in {m['train_seconds']:.1f}s"
    )
    print(
        f"  held-out ({m['heldout_pairs']} pairs): accuracy {_fmt(m.get('accuracy'))} vs labels, "
        f"{_fmt(m.get('accuracy_gold'))} vs gold ({m.get('gold_pairs', 0)} pairs), "
        f"loss {_fmt(m.get('heldout_loss'))}, ECE {_fmt(m.get('ece'))}"
    )
    if m.get("calibration"):
        print("  calibration  P(favourite)  predicted  observed  count")
        for row in m["calibration"]:
            print(
                f"               {row['bin']:<12}  {_fmt(row['predicted']):>9}  "
                f"{_fmt(row['observed']):>8}  {row['count']:>5}"
            )
    return 0


def register(sub: Any) -> None:
    add_command(
        sub,
        "reward",
        "train a reward model (Bradley-Terry) on labelled comparisons from the preference store",
        _reward,
        RewardConfig,
    )
