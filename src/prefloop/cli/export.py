"""`prefloop export OUT`: write labels in TRL's preference format (prompt/chosen/rejected)."""

from __future__ import annotations

import argparse
from typing import Any

from prefloop.cli._common import add_command
from prefloop.feedback.formats import FORMATS, STYLES, export_file
from prefloop.feedback.models import ANNOTATOR_KINDS
from prefloop.feedback.store import PreferenceStore
from prefloop.workspace import Workspace


def _export(args: argparse.Namespace) -> int:
    ws = Workspace.open(args.workspace)
    with PreferenceStore(args.db or ws.db_url) as store:
        path, n = export_file(
            store,
            args.out,
            args.format,
            style=args.style,
            kinds=args.kind,
            sources=args.source,
            annotators=args.annotator,
            include_disabled=args.include_disabled,
            include_ties=args.ties,
            overwrite=args.overwrite,
        )
    print(f"exported {n} preferences to {path}")
    return 0


def register(sub: Any) -> None:
    p = add_command(
        sub,
        "export",
        "export labels as TRL preference data (JSONL, Parquet or a "
        "datasets folder) for RewardTrainer / DPOTrainer",
        _export,
    )
    p.add_argument("out", help="output file (.jsonl, .parquet) or folder (datasets)")
    p.add_argument(
        "--format",
        choices=FORMATS,
        default=None,
        help="default: from OUT's suffix (.jsonl, .parquet; else datasets)",
    )
    p.add_argument(
        "--style",
        choices=STYLES,
        default="auto",
        help="plain strings or conversational messages (auto: conversational if "
        "any prompt is a conversation)",
    )
    p.add_argument("--kind", nargs="+", choices=ANNOTATOR_KINDS, help="only these annotator kinds")
    p.add_argument("--source", nargs="+", help="only comparisons with these sources")
    p.add_argument("--annotator", nargs="+", help="only these annotators (names)")
    p.add_argument(
        "--include-disabled",
        action="store_true",
        help="keep labels of disabled annotators (left out by default)",
    )
    p.add_argument(
        "--ties",
        action="store_true",
        help="also write tie / both-bad labels, marked by a boolean 'tie' column "
        "(TRL would train on them as preferences: not for TRL)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    p.add_argument("--db", default=None, help="store URL (default: the workspace's SQLite file)")
