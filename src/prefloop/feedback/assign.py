"""Task assignment: which comparison annotator X sees next.

Rules: a regular comparison is open while it has fewer than `required_labels` labels (its
overlap k); nobody is shown a comparison they labelled or skipped; a shown comparison is leased
to its viewer, so no more than k people hold it at once (minus its labels), and asking again
returns the comparison one holds; gold (honeypot) comparisons with a
known answer are mixed in at `gold_rate`, and everyone may label each gold comparison once.

The open queue is the store's partial index `ix_comparisons_open` (label_count <
required_labels) walked in id order, so a fetch costs the same with a million finished
comparisons as with none. The SQL is fixed text run on a DBAPI cursor (app/fastpath.py): this
is the hottest read of the app.

Concurrency: SQLite has a single writer, so a fetch (pick + lease, one write transaction) sees
every earlier one. On PostgreSQL fetches run at once under READ COMMITTED: the pick locks its
row (FOR NO KEY UPDATE SKIP LOCKED: concurrent fetchers take different rows instead of
queueing), and the lease is inserted only if a fresh look still finds room (LEASE_IF_ROOM).
"""

from __future__ import annotations

import random
import time
from typing import Any

from sqlalchemy import Engine, update

from prefloop.errors import PrefloopError
from prefloop.feedback.app.fastpath import Contended, Cursor
from prefloop.feedback.app.tables import comparisons

DEFAULT_LEASE_S = 300.0

_NOT_MINE = """
  AND NOT EXISTS (SELECT 1 FROM labels l WHERE l.comparison_id = c.id AND l.annotator_id = ?)
  AND NOT EXISTS (SELECT 1 FROM app_skips s WHERE s.annotator_id = ? AND s.comparison_id = c.id)
"""
_OTHERS_LIVE = """(SELECT count(*) FROM app_leases x WHERE x.comparison_id = c.id
                       AND x.annotator_id <> ? AND x.expires_at > ?)"""
# `c.label_count < c.required_labels` verbatim: the partial index's condition
OPEN_QUERY = f"""
SELECT c.id FROM comparisons c
WHERE c.label_count < c.required_labels AND NOT c.is_gold {_NOT_MINE}
  AND c.label_count + {_OTHERS_LIVE} < c.required_labels
ORDER BY c.id LIMIT 1
"""
# The caller's own live lease on a regular comparison still open to them comes first (a reload
# shows the same task; one person never holds two); otherwise the open-queue walk. On
# PostgreSQL the walk locks the row it picks and skips rows other fetches have locked, so
# concurrent fetchers decide on different rows (`{lock}`; SQLite has one writer already).
# COALESCE runs the walk only when there is no own lease.
_OWN = f"""
SELECT x.comparison_id FROM app_leases x JOIN comparisons c ON c.id = x.comparison_id
WHERE x.annotator_id = ? AND x.expires_at > ?
  AND c.label_count < c.required_labels AND NOT c.is_gold {_NOT_MINE}
ORDER BY x.comparison_id LIMIT 1
"""
PICK_QUERY = "SELECT coalesce(({own}), ({walk}))".format(
    own=_OWN.strip(), walk=OPEN_QUERY.strip().replace("LIMIT 1", "LIMIT 1 {lock}")
)
PG_LOCK = "FOR NO KEY UPDATE OF c"  # NO KEY: label inserts' FK checks don't wait
# SKIP LOCKED first: concurrent fetchers spread over different rows. When that finds nothing,
# the only rows left may be ones other fetches are deciding on, which may still have room
# (k > 1): walk again waiting for their locks, then LEASE_IF_ROOM looks afresh.
PG_LOCKS = (PG_LOCK + " SKIP LOCKED", PG_LOCK)
GOLD_QUERY = f"SELECT c.id FROM comparisons c WHERE c.is_gold {_NOT_MINE} ORDER BY c.id LIMIT 1"
LEASE = """
INSERT INTO app_leases (comparison_id, annotator_id, expires_at) VALUES (?, ?, ?)
ON CONFLICT (comparison_id, annotator_id) DO UPDATE SET expires_at = excluded.expires_at
"""
# The lease of a picked regular comparison, taken only if there is still room: a new statement
# (PostgreSQL: a new snapshot, taken after the pick's row lock) sees every lease committed by a
# fetch that held the row before, which the pick's own snapshot may have missed. Renewing a
# live lease of one's own always succeeds: it does not take a second place.
LEASE_IF_ROOM = f"""
INSERT INTO app_leases (comparison_id, annotator_id, expires_at)
SELECT c.id, ?, ? FROM comparisons c
WHERE c.id = ? AND c.label_count < c.required_labels
  AND (EXISTS (SELECT 1 FROM app_leases m WHERE m.comparison_id = c.id AND m.annotator_id = ?
               AND m.expires_at > ?)
       OR c.label_count + {_OTHERS_LIVE} < c.required_labels)
ON CONFLICT (comparison_id, annotator_id) DO UPDATE SET expires_at = excluded.expires_at
RETURNING comparison_id
"""
RELEASE = "DELETE FROM app_leases WHERE comparison_id = ? AND annotator_id = ?"
_TRIES = 8  # a pick loses LEASE_IF_ROOM only to a fetch that committed during it


def next_comparison(
    cur: Cursor,
    annotator_id: int,
    *,
    gold_rate: float = 0.0,
    rng: random.Random | None = None,
    now: float | None = None,
) -> int | None:
    """The id of the comparison to show next (None: nothing left for this annotator). To hand
    it out, use `take`, which leases it in the same transaction."""
    return _pick(cur, annotator_id, gold_rate, rng, time.time() if now is None else now)[0]


def _pick(
    cur: Cursor, annotator_id: int, gold_rate: float, rng: random.Random | None, now: float
) -> tuple[int | None, bool]:
    """(comparison id or None, whether it is gold). On PostgreSQL a regular pick stays
    row-locked until the transaction ends."""
    want_gold = gold_rate > 0 and (rng or random).random() < gold_rate
    for gold in (True, False) if want_gold else (False, True):
        if gold and gold_rate <= 0:
            continue
        if gold:
            row = cur.execute(GOLD_QUERY, (annotator_id, annotator_id)).one()
        else:
            row = _walk(cur, annotator_id, now)
        if row is not None and row[0] is not None:
            return int(row[0]), gold
    return None, False


def _walk(cur: Cursor, annotator_id: int, now: float) -> Any:
    """The PICK_QUERY row (None or (None,): nothing for this annotator)."""
    params = _pick_params(annotator_id, now)
    row = None
    for lock in ("",) if cur.dialect == "sqlite" else PG_LOCKS:
        row = cur.execute(PICK_QUERY.format(lock=lock), params).one()
        if row is not None and row[0] is not None:
            break
    return row


def take(
    cur: Cursor,
    annotator_id: int,
    seconds: float,
    *,
    gold_rate: float = 0.0,
    rng: random.Random | None = None,
) -> int | None:
    """Pick the next comparison for `annotator_id` and lease it to them for `seconds`, in the
    caller's write transaction. A regular comparison is never leased beyond k minus its labels
    minus others' live leases, however many fetches run at once."""
    for _ in range(_TRIES):
        now = time.time()
        cid, gold = _pick(cur, annotator_id, gold_rate, rng, now)
        if cid is None:
            return None
        if gold:  # no cap: everyone answers each gold comparison once
            cur.execute(LEASE, (cid, annotator_id, now + seconds))
            return cid
        params = (annotator_id, now + seconds, cid, annotator_id, now, annotator_id, now)
        if cur.execute(LEASE_IF_ROOM, params).one() is not None:
            return cid
        gold_rate = 0.0  # lost the row to a fetch that committed meanwhile: walk again
    raise Contended("too many simultaneous task fetches, retry")


def _pick_params(annotator_id: int, now: float) -> tuple[object, ...]:
    a = annotator_id
    return (a, now, a, a, a, a, a, now)


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
