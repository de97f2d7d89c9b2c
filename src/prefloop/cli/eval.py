"""`prefloop eval A B`: compare two policies on held-out prompts; optionally write the report."""

from __future__ import annotations

import argparse
import json
import re
from typing import Any

from prefloop.cli._common import add_command, quiet_transformers, workspace_and_config
from prefloop.configs import EvalConfig


def _fmt(v: Any) -> str:
    return f"{v:.3f}" if isinstance(v, float) else "-"


def _eval(args: argparse.Namespace) -> int:
    from prefloop.eval.evaluate import evaluate

    quiet_transformers()
    ws, cfg = workspace_and_config(args, EvalConfig)
    result = evaluate(ws, args.a, args.b, cfg)
    ws.reports_dir.mkdir(parents=True, exist_ok=True)
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"eval-{args.a}-vs-{args.b}")
    out = ws.reports_dir / f"{safe}.json"
    out.write_text(json.dumps(result, indent=2))
    print(f"{'model':<20} {'reward':>8} {'gold':>8} {'KL':>8} {'length':>8} {'EOS':>6}")
    for name, m in result["models"].items():
        print(
            f"{name:<20} {_fmt(m['reward']):>8} {_fmt(m['gold']):>8} {_fmt(m['kl_to_ref']):>8} "
            f"{_fmt(m['length']):>8} {_fmt(m['eos_rate']):>6}"
        )
    wr = result["win_rate"]
    print(
        f"win-rate of {args.a} over {args.b} ({cfg.judge} judge, {result['prompts']} prompts): "
        f"{wr['rate']:.3f}  95% CI [{wr['ci_low']:.3f}, {wr['ci_high']:.3f}]"
    )
    print(f"  results: {out}")
    if args.report:
        from prefloop.eval.report import write_report

        print(f"  report:  {write_report(ws, ppo=args.a, evaluation=result)}")
    return 0


def register(sub: Any) -> None:
    p = add_command(
        sub,
        "eval",
        "compare policy A with policy B on held-out prompts (win-rate, KL, scores)",
        _eval,
        EvalConfig,
    )
    p.add_argument("a", help="model A (version, latest:<stage>, production, folder)")
    p.add_argument("b", help="model B, the baseline (e.g. latest:sft)")
    p.add_argument(
        "--report",
        action="store_true",
        help="also write the HTML/Markdown report of A's PPO run with this evaluation",
    )
