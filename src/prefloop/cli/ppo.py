"""`prefloop ppo`: optimize the policy against a reward source with PPO and a KL penalty."""

from __future__ import annotations

import argparse
from typing import Any

from prefloop.cli._common import add_command, quiet_transformers, workspace_and_config
from prefloop.configs import PpoConfig


def _ppo(args: argparse.Namespace) -> int:
    from prefloop.train.ppo import run_ppo

    quiet_transformers()
    ws, cfg = workspace_and_config(args, PpoConfig)
    version = run_ppo(ws, cfg)
    m = version.meta.get("metrics", {})
    shown = ("score", "gold", "kl_k1", "response_length", "eos_rate", "step_seconds")
    summary = ", ".join(f"{k}={m[k]:.3g}" for k in shown if isinstance(m.get(k), int | float))
    print(f"{version.name} from {version.meta.get('parent')}: {summary}")
    print(f"  run: {version.meta.get('run_dir')}")
    return 0


def register(sub: Any) -> None:
    add_command(
        sub,
        "ppo",
        "train the policy with PPO against a reward model, function or server",
        _ppo,
        PpoConfig,
    )
