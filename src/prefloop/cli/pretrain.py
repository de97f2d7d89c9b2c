"""`prefloop pretrain` and `prefloop sft`."""

from __future__ import annotations

import argparse
from typing import Any

from prefloop.cli._common import add_command, quiet_transformers, workspace_and_config
from prefloop.configs import PretrainConfig, SFTConfig


def _pretrain(args: argparse.Namespace) -> int:
    from prefloop.train.pretrain import pretrain

    quiet_transformers()
    ws, cfg = workspace_and_config(args, PretrainConfig)
    version, _ = pretrain(ws, cfg)
    m = version.meta["metrics"]
    print(
        f"pretrain: {m['parameters']:,} parameters, {m['tokens_seen']:,} tokens in {m['seconds']:.1f}s"
    )
    print(
        f"  eval loss {m.get('loss/eval', float('nan')):.3f} nats/token "
        f"(unigram entropy {m['unigram_entropy']:.3f}), perplexity {m.get('charts/eval_perplexity', 0):.1f}"
    )
    print(f"  model   {version.name}  ->  {version.path}")
    print(f"  logs    tensorboard --logdir {ws.runs_dir}")
    return 0


def _sft(args: argparse.Namespace) -> int:
    from prefloop.train.sft import sft

    quiet_transformers()
    ws, cfg = workspace_and_config(args, SFTConfig)
    version, _ = sft(ws, cfg)
    m = version.meta["metrics"]
    print(
        f"sft: {m['examples']:,} examples, {cfg.max_steps} steps in {m['seconds']:.1f}s, "
        f"eval loss {m.get('loss/eval', float('nan')):.3f}"
    )
    print(f"  model   {version.name} (parent {version.meta['parent']})  ->  {version.path}")
    return 0


def register(sub: Any) -> None:
    add_command(
        sub,
        "pretrain",
        "train a causal LM on a text corpus (default: the embedded reviews)",
        _pretrain,
        PretrainConfig,
    )
    add_command(
        sub,
        "sft",
        "supervised fine-tuning on prompt/response or messages data",
        _sft,
        SFTConfig,
    )
