"""`prefloop annotate`: the annotation web server; `prefloop annotate-export`: labels
aggregated per comparison (majority or Bradley-Terry) as preference pairs."""

from __future__ import annotations

import argparse
import dataclasses
import os
from typing import Any

from prefloop.cli._common import add_command, workspace_and_config
from prefloop.feedback.app.settings import ENV_VAR, AppSettings
from prefloop.workspace import Workspace


def _annotate(args: argparse.Namespace) -> int:
    import uvicorn

    from prefloop.feedback.app.main import create_app
    from prefloop.feedback.store import PreferenceStore

    ws, cfg = workspace_and_config(args, AppSettings)
    url = cfg.db or ws.db_url
    settings = dataclasses.replace(cfg, db=url)
    with PreferenceStore(url) as store:  # migrate once, before any worker starts
        print(f"store: {store.url}")
    print(f"annotation app: http://{settings.host}:{settings.port}/  (API: /openapi.json)")
    print("accounts: `prefloop users add NAME --role admin|annotator` (there are no defaults)")
    if settings.workers == 1:
        uvicorn.run(create_app(settings), host=settings.host, port=settings.port,
                    log_level="warning")  # fmt: skip
    else:
        os.environ[ENV_VAR] = settings.to_env()
        uvicorn.run("prefloop.feedback.app.main:app_from_env", factory=True, host=settings.host,
                    port=settings.port, workers=settings.workers, log_level="warning")  # fmt: skip
    return 0


def _export(args: argparse.Namespace) -> int:
    from prefloop.feedback.app.admin import export_aggregated, write_aggregated
    from prefloop.feedback.store import PreferenceStore

    url = args.db or Workspace.open(args.workspace).db_url
    with PreferenceStore(url) as store:
        out = export_aggregated(
            store.engine, args.aggregate, annotator_names=args.annotator, sources=args.source
        )
    path = write_aggregated(out, args.out, args.format, style=args.style, overwrite=args.overwrite)
    print(f"wrote {len(out.rows)} aggregated pairs ({out.method}) to {path}; "
          f"{out.dropped_balanced} comparisons with balanced votes left out")  # fmt: skip
    return 0


def register(sub: Any) -> None:
    add_command(sub, "annotate", "serve the annotation web app (labeling + admin pages, JSON API)",
                _annotate, AppSettings)  # fmt: skip
    p = sub.add_parser("annotate-export", help="export labels aggregated per comparison",
                       description="one chosen/rejected pair per comparison, aggregated over the "
                       "labels of enabled annotators (gold comparisons left out)")  # fmt: skip
    p.add_argument("--workspace", default="prefloop-workspace", help="workspace folder")
    p.add_argument("--db", help="database URL (default: the workspace's SQLite store)")
    p.add_argument("--aggregate", choices=["majority", "bradley_terry"], default="majority")
    p.add_argument("--annotator", action="append", help="only these annotators (repeatable)")
    p.add_argument("--source", action="append", help="only comparisons of these sources")
    p.add_argument(
        "--out",
        required=True,
        help="output: .jsonl, .parquet, or a folder (datasets) in TRL preference format",
    )
    p.add_argument(
        "--format",
        choices=["jsonl", "parquet", "datasets"],
        help="output format (default: from the --out suffix)",
    )
    p.add_argument(
        "--style",
        choices=["auto", "plain", "conversational"],
        default="auto",
        help="TRL style (auto: conversational if any prompt is a conversation)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.set_defaults(func=_export)
