"""`prefloop import FILE`: load a TRL preference file into the store (all rows or none)."""

from __future__ import annotations

import argparse
from typing import Any

from prefloop.cli._common import add_command
from prefloop.feedback.formats import import_file
from prefloop.feedback.store import PreferenceStore
from prefloop.workspace import Workspace


def _import(args: argparse.Namespace) -> int:
    ws = Workspace.open(args.workspace)
    with PreferenceStore(args.db or ws.db_url) as store:
        s = import_file(store, args.file, annotator=args.annotator, source_name=args.source)
    ties = f" ({s.ties} ties)" if s.ties else ""
    print(
        f"imported {s.rows} preferences{ties} over {s.prompts} prompts from {s.file} "
        f"as annotator '{s.annotator}', source '{s.source}'"
    )
    return 0


def register(sub: Any) -> None:
    p = add_command(
        sub,
        "import",
        "import TRL preference data (prompt/chosen/rejected; JSONL, "
        "Parquet, datasets folder or hub id) as labels of kind 'imported'",
        _import,
    )
    p.add_argument(
        "file", help="JSONL / JSON / CSV / Parquet file, saved datasets folder, or dataset id"
    )
    p.add_argument("--annotator", default=None, help="annotator name (default: import:<file name>)")
    p.add_argument(
        "--source", default=None, help="comparison source tag (default: import:<file name>)"
    )
    p.add_argument("--db", default=None, help="store URL (default: the workspace's SQLite file)")
