"""Hot paths on the DBAPI connection with fixed SQL.

Posting a label and fetching the next task run a handful of statements each; built through
SQLAlchemy's expression layer they spent ~3-40 ms per request in statement construction on a
slow 2-core machine, against well under a millisecond in the database. Here the SQL is
written once, with `?` placeholders turned into the driver's style (`%s` for psycopg).
Semantics match the store: a label and its comparison's label_count change in one transaction.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Engine

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


class UnknownComparison(Exception):
    pass


MISSING = -1  # insert_labels: the comparison does not exist


def insert_labels(engine: Engine, rows: list[dict[str, Any]]) -> list[int | None]:
    """Insert and count labels in ONE transaction (one commit for the whole batch). Per row:
    the new id; None when a unique constraint (idempotency key, or one label per annotator and
    comparison) already holds a row; MISSING for an unknown comparison. Rows that are not
    inserted change nothing."""
    out: list[int | None] = []
    with write_cursor(engine) as cur:
        for values in rows:
            cid = values["comparison_id"]
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


def insert_label(engine: Engine, values: dict[str, Any]) -> int | None:
    """insert_labels for one label; raises UnknownComparison for an unknown comparison."""
    [new_id] = insert_labels(engine, [values])
    if new_id == MISSING:
        raise UnknownComparison()
    return new_id
