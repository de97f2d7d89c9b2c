"""`prefloop serve-reward`: serve a reward model (or any reward source) over HTTP."""

from __future__ import annotations

import argparse
from typing import Any

from prefloop.cli._common import add_command
from prefloop.workspace import Workspace


def _serve_reward(args: argparse.Namespace) -> int:
    import uvicorn

    from prefloop.serve_reward import create_app
    from prefloop.train.rewards import build_reward

    ws = Workspace.open(args.workspace)
    source = build_reward(args.reward, ws)
    print(f"serving {source.name} on http://{args.host}:{args.port}/score")
    uvicorn.run(create_app(source), host=args.host, port=args.port, log_level="warning")
    return 0


def register(sub: Any) -> None:
    p = add_command(
        sub, "serve-reward", "serve a reward model over HTTP (POST /score)", _serve_reward
    )
    p.add_argument(
        "--reward",
        nargs="+",
        default=["latest:reward"],
        metavar="SOURCE",
        help="reward source(s), [WEIGHT*]SOURCE: a model version/path, python:mod.func, or a URL "
        "(default: latest:reward)",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=8100, help="port (default: 8100)")
