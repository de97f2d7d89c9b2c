"""Task assignment: which comparison annotator X sees next.

Rules: a regular comparison is open while it has fewer than `required_labels` labels (its
overlap k); nobody is shown a comparison they labelled or skipped; a comparison is leased to
the annotator looking at it, so no more than k people hold it at once; gold (honeypot)
comparisons with a known answer are mixed in at `gold_rate`, and everyone may label each gold
comparison once. The open queue is the store's partial index `ix_comparisons_open`
(label_count < required_labels) walked in id order, so the cost does not grow with the number
of finished comparisons.
"""

from __future__ import annotations

import random
import time
from typing import Any

from sqlalchemy import Connection, Engine, Select, delete, exists, func, select, update
from sqlalchemy.dialects import postgresql, sqlite

from prefloop.errors import PrefloopError
from prefloop.feedback.app.tables import comparisons, labels, leases, skips

DEFAULT_LEASE_S = 300.0


def next_comparison(
    conn: Connection,
    annotator_id: int,
    *,
    gold_rate: float = 0.0,
    rng: random.Random | None = None,
    now: float | None = None,
) -> int | None:
    """The id of the comparison to show next (None: nothing left for this annotator)."""
    now = time.time() if now is None else now
    want_gold = gold_rate > 0 and (rng or random).random() < gold_rate
    order = (True, False) if want_gold else (False, True)
    for gold in order:
        if gold and gold_rate <= 0:
            continue
        found = conn.execute(_candidate_query(annotator_id, gold, now)).scalar()
        if found is not None:
            return int(found)
    return None


def _candidate_query(annotator_id: int, gold: bool, now: float) -> Select[Any]:
    c = comparisons.c
    labelled = exists().where(labels.c.comparison_id == c.id, labels.c.annotator_id == annotator_id)
    skipped = exists().where(skips.c.comparison_id == c.id, skips.c.annotator_id == annotator_id)
    q = select(c.id).where(~labelled, ~skipped).order_by(c.id).limit(1)
    if gold:
        return q.where(c.is_gold.is_(True))
    held_by_others = (
        select(func.count())
        .where(
            leases.c.comparison_id == c.id,
            leases.c.annotator_id != annotator_id,
            leases.c.expires_at > now,
        )
        .scalar_subquery()
    )
    return q.where(
        c.label_count < c.required_labels,  # the partial index's condition, verbatim
        c.is_gold.is_(False),
        c.label_count + held_by_others < c.required_labels,
    )


def lease(conn: Connection, comparison_id: int, annotator_id: int, seconds: float) -> None:
    """Hold `comparison_id` for `annotator_id` for `seconds` (renewed if already held)."""
    values = {
        "comparison_id": comparison_id,
        "annotator_id": annotator_id,
        "expires_at": time.time() + seconds,
    }
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    stmt = dialect.insert(leases).values(**values)
    conn.execute(
        stmt.on_conflict_do_update(
            index_elements=["comparison_id", "annotator_id"],
            set_={"expires_at": stmt.excluded.expires_at},
        )
    )


def release(conn: Connection, comparison_id: int, annotator_id: int) -> None:
    conn.execute(
        delete(leases).where(
            leases.c.comparison_id == comparison_id, leases.c.annotator_id == annotator_id
        )
    )


def skip(conn: Connection, comparison_id: int, annotator_id: int) -> None:
    """Never show `comparison_id` to `annotator_id` again (and free their lease on it)."""
    if (
        conn.execute(select(comparisons.c.id).where(comparisons.c.id == comparison_id)).first()
        is None
    ):
        raise PrefloopError(f"unknown comparison id {comparison_id}", field="comparison_id")
    release(conn, comparison_id, annotator_id)
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    conn.execute(
        dialect.insert(skips)
        .values(annotator_id=annotator_id, comparison_id=comparison_id, created_at=time.time())
        .on_conflict_do_nothing()
    )


def set_overlap(engine: Engine, k: int, source: str | None = None) -> int:
    """Ask for k labels per regular comparison (optionally of one source); returns how many
    comparisons changed. Comparisons that already have k labels simply leave the queue."""
    if k < 1:
        raise PrefloopError("overlap must be >= 1", field="overlap")
    q = update(comparisons).where(
        comparisons.c.is_gold.is_(False), comparisons.c.required_labels != k
    )
    if source is not None:
        q = q.where(comparisons.c.source == source)
    with engine.execution_options(prefloop_begin="IMMEDIATE").begin() as conn:
        return int(conn.execute(q.values(required_labels=k)).rowcount)


def purge_expired_leases(conn: Connection, now: float | None = None) -> None:
    conn.execute(delete(leases).where(leases.c.expires_at <= (time.time() if now is None else now)))
