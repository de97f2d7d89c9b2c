"""`prefloop init DIR` and `prefloop models` (list / promote)."""

from __future__ import annotations

import argparse
from typing import Any

from prefloop.workspace import Workspace


def _init(args: argparse.Namespace) -> int:
    ws = Workspace.init(args.dir)
    print(f"workspace ready: {ws.root.resolve()}")
    print(f"  config   {ws.root / 'config.yaml'}")
    print(f"  models   {ws.models_dir}")
    print(f"  store    {ws.db_url}")
    return 0


def _models(args: argparse.Namespace) -> int:
    ws = Workspace.open(args.workspace)
    if args.promote:
        v = ws.promote(args.promote)
        print(f"production -> {v.name}")
        return 0
    prod = ws.production()
    for v in ws.versions():
        mark = "*" if prod and prod.name == v.name else " "
        metrics = ", ".join(
            f"{k}={val:.4g}" if isinstance(val, float) else f"{k}={val}"
            for k, val in list(v.meta.get("metrics", {}).items())[:4]
        )
        print(f"{mark} {v.name:<16} parent={v.meta.get('parent')!s:<16} {metrics}")
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser(
        "init", help="create a workspace folder", description="create a workspace folder"
    )
    p.add_argument("dir", nargs="?", default="prefloop-workspace", help="folder to create")
    p.set_defaults(func=_init)
    m = sub.add_parser(
        "models",
        help="list model versions; --promote NAME marks production",
        description="list model versions in the registry (* = production)",
    )
    m.add_argument("--workspace", default="prefloop-workspace", help="workspace folder")
    m.add_argument("--promote", metavar="NAME", help="make version NAME the production model")
    m.set_defaults(func=_models)
