"""Admin operations: per-annotator quality and aggregated exports.

Labels of disabled annotators are excluded from peer statistics, Fleiss' kappa and exports
(that is what "exclude" means); their own row still shows their numbers so an admin can see why
they were disabled.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from sqlalchemy import Engine, select
from sqlalchemy.orm import aliased

from prefloop.errors import PrefloopError
from prefloop.feedback import formats, quality
from prefloop.feedback.app import schemas
from prefloop.feedback.app.tables import annotators, comparisons, labels, prompts, responses
from prefloop.feedback.models import PreferenceRecord


def label_records(
    engine: Engine,
    *,
    include_disabled: bool = True,
    include_gold: bool = True,
    annotator_names: Sequence[str] | None = None,
    sources: Sequence[str] | None = None,
) -> list[quality.LabelRecord]:
    c, lab, ann = comparisons.c, labels.c, annotators.c
    q = (
        select(
            lab.comparison_id, lab.annotator_id, lab.choice, lab.shown_left, lab.seconds,
            c.gold_choice, c.is_gold, c.response_a_id, c.response_b_id,
        )
        .join(comparisons, c.id == lab.comparison_id)
        .join(annotators, ann.id == lab.annotator_id)
        .order_by(lab.id)
    )  # fmt: skip
    if not include_disabled:
        q = q.where(ann.disabled.is_(False))
    if not include_gold:
        q = q.where(c.is_gold.is_(False))
    if annotator_names:
        q = q.where(ann.name.in_(annotator_names))
    if sources:
        q = q.where(c.source.in_(sources))
    with engine.connect() as conn:
        return [
            quality.LabelRecord(
                r.comparison_id, r.annotator_id, r.choice, r.shown_left, r.seconds,
                r.gold_choice if r.is_gold else None, r.response_a_id, r.response_b_id,
            )
            for r in conn.execute(q)
        ]  # fmt: skip


def quality_report(engine: Engine) -> schemas.QualityOut:
    records = label_records(engine)
    with engine.connect() as conn:
        people = conn.execute(select(annotators).order_by(annotators.c.name)).all()
    disabled = {p.id for p in people if p.disabled}
    active = [r for r in records if r.annotator_id not in disabled]
    stats = quality.annotator_quality(active)
    # disabled annotators: their own numbers, measured against the active peers
    for p in people:
        if p.id in disabled:
            mine = [r for r in records if r.annotator_id == p.id]
            peers_on_mine = {r.comparison_id for r in mine}
            context = [r for r in active if r.comparison_id in peers_on_mine]
            stats[p.id] = quality.annotator_quality(mine + context).get(p.id)  # type: ignore[assignment]
    groups: dict[int, list[str]] = defaultdict(list)
    for r in active:
        groups[r.comparison_id].append(r.choice)
    rows = []
    for p in people:
        s = stats.get(p.id)
        rows.append(
            schemas.AnnotatorStats(
                id=p.id, name=p.name, kind=p.kind, role=p.role, disabled=p.disabled,
                labels=s.labels if s else 0, gold_labels=s.gold_labels if s else 0,
                gold_accuracy=s.gold_accuracy if s else None,
                peer_agreement=s.peer_agreement if s else None,
                cohen_kappa=s.cohen_kappa if s else None,
                median_seconds=s.median_seconds if s else None,
                left_rate=s.left_rate if s else None,
            )
        )  # fmt: skip
    return schemas.QualityOut(
        annotators=rows,
        labels=len(active),
        comparisons=len(groups),
        fleiss_kappa=quality.fleiss_kappa(groups.values()),
    )


def export_aggregated(
    engine: Engine,
    method: str = "majority",
    *,
    annotator_names: Sequence[str] | None = None,
    sources: Sequence[str] | None = None,
) -> schemas.ExportOut:
    """One preference pair per comparison, aggregated over the labels of enabled annotators.
    Gold comparisons are not exported (they are honeypots); balanced votes are dropped."""
    if method not in quality.AGGREGATORS:
        raise PrefloopError(
            f"aggregation must be one of {', '.join(quality.AGGREGATORS)}", field="aggregate"
        )
    records = label_records(
        engine, include_disabled=False, include_gold=False,
        annotator_names=annotator_names, sources=sources,
    )  # fmt: skip
    aggregates = quality.AGGREGATORS[method](records)
    texts = _comparison_texts(engine, [a.comparison_id for a in aggregates])
    rows, dropped = [], 0
    for agg in aggregates:
        winner = agg.winner
        if winner is None:
            dropped += 1
            continue
        source, prompt, messages, text_a, text_b = texts[agg.comparison_id]
        chosen, rejected = (text_a, text_b) if winner == "a" else (text_b, text_a)
        rows.append(
            schemas.ExportRow(
                comparison_id=agg.comparison_id, source=source, prompt=prompt, messages=messages,
                chosen=chosen, rejected=rejected, votes=agg.votes, agreement=agg.agreement,
                p_chosen=agg.p_a if winner == "a" else 1.0 - agg.p_a,
            )
        )  # fmt: skip
    return schemas.ExportOut(method=method, rows=rows, dropped_balanced=dropped)  # type: ignore[arg-type]


def _comparison_texts(
    engine: Engine, ids: list[int]
) -> dict[int, tuple[str, str, list | None, str, str]]:
    ra, rb = aliased(responses), aliased(responses)
    out = {}
    with engine.connect() as conn:
        for start in range(0, len(ids), 5000):  # bounded IN lists
            chunk = ids[start : start + 5000]
            q = (
                select(
                    comparisons.c.id, comparisons.c.source, prompts.c.text, prompts.c.messages,
                    ra.c.text, rb.c.text,
                )
                .join(prompts, prompts.c.id == comparisons.c.prompt_id)
                .join(ra, ra.c.id == comparisons.c.response_a_id)
                .join(rb, rb.c.id == comparisons.c.response_b_id)
                .where(comparisons.c.id.in_(chunk))
            )  # fmt: skip
            for cid, *rest in conn.execute(q):
                out[cid] = (rest[0], rest[1], rest[2], rest[3], rest[4])
    return out


def write_aggregated(
    out: schemas.ExportOut,
    path: str | os.PathLike[str],
    fmt: str | None = None,
    *,
    style: str = "auto",
    overwrite: bool = False,
) -> Path:
    """Write aggregated pairs with the store's TRL writer (jsonl | parquet | datasets, chosen
    from the suffix unless `fmt`; atomic), adding `comparison_id`, `p_chosen` and `votes`
    columns (TRL's trainers ignore extra columns)."""
    records = [
        PreferenceRecord(0, r.comparison_id, r.prompt, r.messages, r.chosen, r.rejected, "a",
                         None, f"aggregate:{out.method}", "aggregate", r.source)
        for r in out.rows
    ]  # fmt: skip
    rows = formats.to_trl_rows(records, style)
    for row, r in zip(rows, out.rows, strict=True):
        row.update(comparison_id=r.comparison_id, p_chosen=r.p_chosen, votes=r.votes)
    return formats.write_rows(rows, path, formats.format_of(path, fmt), overwrite=overwrite)
