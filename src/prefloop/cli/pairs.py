"""`prefloop pairs`: sample k responses per prompt and store the pairs as comparisons."""

from __future__ import annotations

import argparse
from typing import Any

from prefloop.cli._common import add_command, quiet_transformers, workspace_and_config
from prefloop.feedback.pairs import PairsConfig, generate_pairs
from prefloop.feedback.store import PreferenceStore


def _pairs(args: argparse.Namespace) -> int:
    quiet_transformers()
    ws, cfg = workspace_and_config(args, PairsConfig)
    path = ws.resolve(cfg.model)
    version = ws.version_of(path) or cfg.model
    with PreferenceStore(args.db or ws.db_url) as store:
        s = generate_pairs(store, cfg, path, version)
        pending = store.stats()["pending"]
    print(
        f"pairs from {s.model_version}: {s.prompts} prompts, {s.responses} distinct responses, "
        f"{s.comparisons} comparisons stored ({pending} pending labels in the store)"
    )
    if s.dropped_identical or s.dropped_empty:
        print(
            f"  dropped {s.dropped_identical} identical and {s.dropped_empty} empty responses; "
            f"{s.prompts_without_pair} prompts had fewer than 2 distinct responses"
        )
    return 0


def register(sub: Any) -> None:
    p = add_command(
        sub,
        "pairs",
        "sample k responses per prompt and store all pairs as comparisons waiting for labels",
        _pairs,
        PairsConfig,
    )
    p.add_argument("-k", dest="k", type=int, default=None, help="same as --k")
    p.add_argument("--db", default=None, help="store URL (default: the workspace's SQLite file)")
