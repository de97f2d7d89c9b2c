"""Hot paths on the DBAPI connection with fixed SQL.

Posting a label and fetching the next task run a handful of statements each; built through
SQLAlchemy's expression layer they spent ~3-40 ms per request in statement construction on a
slow 2-core machine, against well under a millisecond in the database. Here the SQL is
written once, with `?` placeholders turned into the driver's style (`%s` for psycopg).
Semantics match the store: a label and its comparison's label_count change in one transaction.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError

from prefloop.errors import PrefloopError


class Contended(PrefloopError):
    """The database is fine but too many concurrent requests raced for the same rows (a task
    fetch whose every pick was leased away meanwhile): retry."""


def _unavailable_errors() -> tuple[type[Exception], ...]:
    errors: list[type[Exception]] = [OperationalError, sqlite3.OperationalError, Contended]
    try:
        import psycopg

        errors.append(psycopg.OperationalError)  # also deadlocks and serialization failures
    except ImportError:  # PostgreSQL support not installed
        pass
    return tuple(errors)


# "the database is locked, unreachable, aborted us or was raced: retry" -- from SQLAlchemy or, on the raw
# DBAPI cursors here, from the driver itself. The app answers these with 503 + Retry-After.
UNAVAILABLE = _unavailable_errors()
SQLITE_WRITE_LOCK = threading.Lock()  # one SQLite writer per process (see write_cursor)


class Cursor:
    """A DBAPI cursor that accepts `?` placeholders on every driver."""

    def __init__(self, raw: Any, dialect: str) -> None:
        self.cur = raw.cursor()
        self.dialect = dialect

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Cursor:
        if self.dialect != "sqlite":
            sql = sql.replace("?", "%s")
        self.cur.execute(sql, tuple(params))
        return self

    def one(self) -> Any:
        return self.cur.fetchone()

    @property
    def rowcount(self) -> int:
        return int(self.cur.rowcount)

    def time(self, t: datetime) -> Any:
        """A timestamp as the store's DateTime column keeps it (SQLite: naive UTC text)."""
        if self.dialect == "sqlite":
            return t.replace(tzinfo=None).strftime("%Y-%m-%d %H:%M:%S.%f")
        return t


class Rollback(Exception):
    """Raise inside write_cursor to roll the transaction back and return normally."""


@contextlib.contextmanager
def write_cursor(engine: Engine, *, durable: bool = True) -> Iterator[Cursor]:
    """One write transaction: commit on success, roll back on any exception.

    durable=False (PostgreSQL): the commit does not wait for the WAL flush (~5 ms here). Only
    for writes whose loss in a database crash is harmless, like task leases; labels are always
    durable before they are acknowledged.

    SQLite has a single writer: threads of this process queue on a lock rather than on SQLite's
    busy handler, which sleeps in growing steps (up to 100 ms) under contention; BEGIN
    IMMEDIATE takes the write lock up front so a reader never has to upgrade mid-transaction.
    """
    dialect = engine.dialect.name
    raw = engine.raw_connection()
    lock = SQLITE_WRITE_LOCK if dialect == "sqlite" else contextlib.nullcontext()
    try:
        with lock:
            cur = Cursor(raw, dialect)
            try:
                if dialect == "sqlite":  # the store runs pysqlite without implicit BEGINs
                    cur.execute("BEGIN IMMEDIATE")
                elif not durable:
                    cur.execute("SET LOCAL synchronous_commit TO OFF")
                yield cur
                _end(raw, cur, "COMMIT")
            except Rollback:
                _end(raw, cur, "ROLLBACK")
            except BaseException:
                with contextlib.suppress(Exception):  # a dead connection: the pool drops it
                    _end(raw, cur, "ROLLBACK")
                raise
            finally:
                cur.cur.close()
    finally:
        raw.close()  # back to the pool


@contextlib.contextmanager
def read_cursor(engine: Engine) -> Iterator[Cursor]:
    """A cursor for reads (autocommit on SQLite; a transaction rolled back after, elsewhere)."""
    raw = engine.raw_connection()
    cur = Cursor(raw, engine.dialect.name)
    try:
        yield cur
    finally:
        cur.cur.close()
        if cur.dialect != "sqlite":
            raw.rollback()
        raw.close()


def _end(raw: Any, cur: Cursor, how: str) -> None:
    if cur.dialect == "sqlite":
        cur.execute(how)
    elif how == "COMMIT":
        raw.commit()
    else:
        raw.rollback()


LABEL_COLUMNS = ("comparison_id", "annotator_id", "choice", "strength", "reason", "shown_left",
                 "seconds", "idempotency_key", "created_at")  # fmt: skip
_BUMP = "UPDATE comparisons SET label_count = label_count + ? WHERE id = ?"
_INSERT = (
    f"INSERT INTO labels ({', '.join(LABEL_COLUMNS)}) VALUES ({', '.join('?' * 9)}) "
    "ON CONFLICT DO NOTHING RETURNING id"
)
_RELEASE = "DELETE FROM app_leases WHERE comparison_id = ? AND annotator_id = ?"


MISSING = -1  # insert_labels: the comparison does not exist
DISABLED = -2  # insert_labels: the annotator is disabled (or gone)


def enabled_annotators(cur: Cursor, ids: set[int]) -> set[int]:
    """Which of `ids` are enabled. On PostgreSQL their rows are KEY SHARE-locked until the
    transaction ends: store.set_disabled (FOR UPDATE) then waits, so a label is never counted
    for an annotator whose disabling did not see it."""
    if cur.dialect == "sqlite":
        marks = ", ".join("?" * len(ids))
        cur.execute(f"SELECT id FROM annotators WHERE NOT disabled AND id IN ({marks})", list(ids))
    else:
        cur.execute(
            "SELECT id FROM annotators WHERE NOT disabled AND id = ANY(?) FOR KEY SHARE",
            [list(ids)],
        )
    return {int(r[0]) for r in cur.cur.fetchall()}


def insert_labels(engine: Engine, rows: list[dict[str, Any]]) -> list[int | None]:
    """Insert and count labels in ONE transaction (one commit for the whole batch). Per row:
    the new id; None when a unique constraint (idempotency key, or one label per annotator and
    comparison) already holds a row; MISSING for an unknown comparison; DISABLED when the
    annotator is disabled. Rows that are not inserted change nothing."""
    if engine.dialect.name == "postgresql":
        return _insert_labels_pg(engine, rows)
    out: list[int | None] = []
    with write_cursor(engine) as cur:
        enabled = enabled_annotators(cur, {values["annotator_id"] for values in rows})
        for values in rows:
            cid = values["comparison_id"]
            if values["annotator_id"] not in enabled:
                out.append(DISABLED)
                continue
            if cur.execute(_BUMP, (1, cid)).rowcount == 0:
                out.append(MISSING)
                continue
            row = [values[c] for c in LABEL_COLUMNS]
            row[-1] = cur.time(values["created_at"])
            found = cur.execute(_INSERT, row).one()
            if found is None:
                cur.execute(_BUMP, (-1, cid))  # not inserted: take the count back
                out.append(None)
                continue
            out.append(int(found[0]))
            cur.execute(_RELEASE, (cid, values["annotator_id"]))
    return out


# PostgreSQL: the whole batch in one statement (a round trip there costs ~0.2 ms of CPU on a
# loaded 2-core machine, and the row-by-row path above makes three per label). Rows of unknown
# comparisons are dropped by the join; conflicting rows by ON CONFLICT; label_count grows by
# what was inserted and the inserted labels' leases are released, all in the same statement.
# Rows go in in input order, so (as row by row) the first of two clashing rows is the one kept.
_PG_BATCH = f"""
WITH v AS (
  SELECT * FROM unnest(%s::int[], %s::int[], %s::text[], %s::int[], %s::text[], %s::text[],
                       %s::float8[], %s::text[], %s::timestamptz[])
    WITH ORDINALITY AS v({", ".join(LABEL_COLUMNS)}, ord)
), ins AS (
  INSERT INTO labels ({", ".join(LABEL_COLUMNS)})
  SELECT {", ".join("v." + c for c in LABEL_COLUMNS)} FROM v
  JOIN comparisons c ON c.id = v.comparison_id ORDER BY v.ord
  ON CONFLICT DO NOTHING RETURNING id, comparison_id, annotator_id, idempotency_key
), bump AS (
  UPDATE comparisons c SET label_count = c.label_count + n.n
  FROM (SELECT comparison_id, count(*) AS n FROM ins GROUP BY comparison_id) n
  WHERE c.id = n.comparison_id
), rel AS (
  DELETE FROM app_leases x USING ins
  WHERE x.comparison_id = ins.comparison_id AND x.annotator_id = ins.annotator_id
)
SELECT id, comparison_id, annotator_id, idempotency_key FROM ins
"""


def _insert_labels_pg(engine: Engine, all_rows: list[dict[str, Any]]) -> list[int | None]:
    with write_cursor(engine) as cur:
        enabled = enabled_annotators(cur, {values["annotator_id"] for values in all_rows})
        rows = [values for values in all_rows if values["annotator_id"] in enabled]
        if not rows:
            return [DISABLED] * len(all_rows)
        columns = [[values[c] for values in rows] for c in LABEL_COLUMNS]
        cur.cur.execute(_PG_BATCH, columns)
        stored = {key: (new_id, cid, aid) for new_id, cid, aid, key in cur.cur.fetchall()}
        out: list[int | None] = []
        for values in rows:  # each stored key goes to the first row that carries it
            key = values["idempotency_key"]
            hit = stored.get(key)
            if hit is not None and hit[1:] == (values["comparison_id"], values["annotator_id"]):
                del stored[key]
                out.append(int(hit[0]))
            else:
                out.append(None)
        if None in out:  # rare: tell unknown comparisons from unique-constraint hits
            asked = [v["comparison_id"] for v, o in zip(rows, out, strict=True) if o is None]
            cur.cur.execute("SELECT id FROM comparisons WHERE id = ANY(%s)", (asked,))
            known = {r[0] for r in cur.cur.fetchall()}
            out = [
                MISSING if o is None and v["comparison_id"] not in known else o
                for v, o in zip(rows, out, strict=True)
            ]
    if len(rows) < len(all_rows):  # put the disabled annotators' rows back in their places
        done = iter(out)
        return [next(done) if v["annotator_id"] in enabled else DISABLED for v in all_rows]
    return out


def insert_label(engine: Engine, values: dict[str, Any]) -> int | None:
    """insert_labels for one label (same results)."""
    return insert_labels(engine, [values])[0]
