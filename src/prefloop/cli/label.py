"""`prefloop label --simulated`: label pending comparisons with a simulated annotator."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

from prefloop.cli._common import add_command, workspace_and_config
from prefloop.config import option
from prefloop.errors import PrefloopError
from prefloop.feedback.store import PreferenceStore


@dataclass
class LabelConfig:
    simulated: bool = option(
        False, "label with a simulated annotator (people use `prefloop annotate`)"
    )
    agreement: float = option(0.75, "expected agreement with the noise-free gold, 0.5 .. 1")
    tie_epsilon: float = option(1e-6, "tie when the gold scores differ by less than this")
    seed: int = option(0, "seed of the annotator's choices")
    name: str = option("simulated", "annotator name stored with the labels")
    limit: int = option(0, "label at most this many comparisons (0 = all pending)")
    source: list[str] = option([], "only comparisons with these sources")  # noqa: RUF009


def _label(args: argparse.Namespace) -> int:
    ws, cfg = workspace_and_config(args, LabelConfig)
    if not cfg.simulated:
        raise PrefloopError(
            "only --simulated labelling runs here; people label with "
            "`prefloop annotate` (the web app)"
        )
    from prefloop.feedback.annotators import SimulatedAnnotator, label_pending
    from prefloop.feedback.gold import sentiment_gold

    if cfg.limit < 0:
        raise PrefloopError("limit must be >= 0", field="limit")
    annotator = SimulatedAnnotator(
        sentiment_gold, cfg.agreement, cfg.tie_epsilon, cfg.seed, name=cfg.name
    )
    with PreferenceStore(args.db or ws.db_url) as store:
        run = label_pending(store, annotator, limit=cfg.limit or None, sources=cfg.source or None)
    if run.labelled == 0:
        print("nothing to label: no pending comparisons for this annotator")
        return 0
    c = run.choices
    print(
        f"{run.annotator}: labelled {run.labelled} comparisons "
        f"(a {c['a']}, b {c['b']}, tie {c['tie']})"
    )
    if run.gold_agreement is not None:
        print(
            f"  agreement with noise-free gold {run.gold_agreement:.3f} "
            f"(configured {cfg.agreement}, Bradley-Terry temperature {run.temperature:.4g})"
        )
    return 0


def register(sub: Any) -> None:
    p = add_command(
        sub,
        "label",
        "label pending comparisons (--simulated: a gold-based annotator with calibrated noise)",
        _label,
        LabelConfig,
    )
    p.add_argument("--db", default=None, help="store URL (default: the workspace's SQLite file)")
