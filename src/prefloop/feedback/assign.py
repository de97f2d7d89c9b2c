"""Task assignment: which comparison annotator X sees next.

Rules: a regular comparison is open while it has fewer than `required_labels` labels (its
overlap k); nobody is shown a comparison they labelled or skipped; a shown comparison is leased
to its viewer, so no more than k people hold it at once; gold (honeypot) comparisons with a
known answer are mixed in at `gold_rate`, and everyone may label each gold comparison once.

The open queue is the store's partial index `ix_comparisons_open` (label_count <
required_labels) walked in id order, so a fetch costs the same with a million finished
comparisons as with none. The SQL is fixed text run on a DBAPI cursor (app/fastpath.py): this
is the hottest read of the app.
"""

from __future__ import annotations

import random
import time

from sqlalchemy import Engine, update

from prefloop.errors import PrefloopError
from prefloop.feedback.app.fastpath import Cursor
from prefloop.feedback.app.tables import comparisons

DEFAULT_LEASE_S = 300.0

_NOT_MINE = """
  AND NOT EXISTS (SELECT 1 FROM labels l WHERE l.comparison_id = c.id AND l.annotator_id = ?)
  AND NOT EXISTS (SELECT 1 FROM app_skips s WHERE s.annotator_id = ? AND s.comparison_id = c.id)
"""
# `c.label_count < c.required_labels` verbatim: the partial index's condition
OPEN_QUERY = f"""
SELECT c.id FROM comparisons c
WHERE c.label_count < c.required_labels AND NOT c.is_gold {_NOT_MINE}
  AND c.label_count + (SELECT count(*) FROM app_leases x WHERE x.comparison_id = c.id
                       AND x.annotator_id <> ? AND x.expires_at > ?) < c.required_labels
ORDER BY c.id LIMIT 1
"""
GOLD_QUERY = f"SELECT c.id FROM comparisons c WHERE c.is_gold {_NOT_MINE} ORDER BY c.id LIMIT 1"
LEASE = """
INSERT INTO app_leases (comparison_id, annotator_id, expires_at) VALUES (?, ?, ?)
ON CONFLICT (comparison_id, annotator_id) DO UPDATE SET expires_at = excluded.expires_at
"""
RELEASE = "DELETE FROM app_leases WHERE comparison_id = ? AND annotator_id = ?"


def next_comparison(
    cur: Cursor,
    annotator_id: int,
    *,
    gold_rate: float = 0.0,
    rng: random.Random | None = None,
    now: float | None = None,
) -> int | None:
    """The id of the comparison to show next (None: nothing left for this annotator)."""
    now = time.time() if now is None else now
    want_gold = gold_rate > 0 and (rng or random).random() < gold_rate
    for gold in (True, False) if want_gold else (False, True):
        if gold and gold_rate <= 0:
            continue
        if gold:
            row = cur.execute(GOLD_QUERY, (annotator_id, annotator_id)).one()
        else:
            params = (annotator_id, annotator_id, annotator_id, now)
            row = cur.execute(OPEN_QUERY, params).one()
        if row is not None:
            return int(row[0])
    return None


def lease(cur: Cursor, comparison_id: int, annotator_id: int, seconds: float) -> None:
    """Hold `comparison_id` for `annotator_id` for `seconds` (renewed if already held)."""
    cur.execute(LEASE, (comparison_id, annotator_id, time.time() + seconds))


def release(cur: Cursor, comparison_id: int, annotator_id: int) -> None:
    cur.execute(RELEASE, (comparison_id, annotator_id))


def skip(cur: Cursor, comparison_id: int, annotator_id: int) -> None:
    """Never show `comparison_id` to `annotator_id` again (and free their lease on it)."""
    if cur.execute("SELECT 1 FROM comparisons WHERE id = ?", (comparison_id,)).one() is None:
        raise PrefloopError(f"unknown comparison id {comparison_id}", field="comparison_id")
    release(cur, comparison_id, annotator_id)
    cur.execute(
        "INSERT INTO app_skips (annotator_id, comparison_id, created_at) VALUES (?, ?, ?) "
        "ON CONFLICT DO NOTHING",
        (annotator_id, comparison_id, time.time()),
    )


def set_overlap(engine: Engine, k: int, source: str | None = None) -> int:
    """Ask for k labels per regular comparison (optionally of one source); returns how many
    comparisons changed. Comparisons that already have k labels simply leave the queue."""
    if k < 1:
        raise PrefloopError("overlap must be >= 1", field="overlap")
    c = comparisons.c
    q = update(comparisons).where(c.is_gold.is_(False), c.required_labels != k)
    if source is not None:
        q = q.where(c.source == source)
    with engine.execution_options(prefloop_begin="IMMEDIATE").begin() as conn:
        return int(conn.execute(q.values(required_labels=k)).rowcount)
