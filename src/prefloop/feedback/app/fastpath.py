"""The label write path on the DBAPI connection with fixed SQL: the hottest statement of the
app skips SQLAlchemy's statement building and compilation, which cost ~3 ms per label on a
slow 2-core machine. Same semantics as the store's add_labels: the label and its comparison's
label_count change in one transaction."""

from __future__ import annotations

import contextlib
import threading
from datetime import datetime
from typing import Any

from sqlalchemy import Engine

_COLUMNS = ("comparison_id", "annotator_id", "choice", "strength", "reason", "shown_left",
            "seconds", "idempotency_key", "created_at")  # fmt: skip
_SQL = {
    "sqlite": (
        "UPDATE comparisons SET label_count = label_count + 1 WHERE id = ?",
        f"INSERT INTO labels ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))}) "
        "ON CONFLICT DO NOTHING RETURNING id",
        "DELETE FROM app_leases WHERE comparison_id = ? AND annotator_id = ?",
    ),
    "postgresql": (
        "UPDATE comparisons SET label_count = label_count + 1 WHERE id = %s",
        f"INSERT INTO labels ({', '.join(_COLUMNS)}) VALUES ({', '.join(['%s'] * len(_COLUMNS))}) "
        "ON CONFLICT DO NOTHING RETURNING id",
        "DELETE FROM app_leases WHERE comparison_id = %s AND annotator_id = %s",
    ),
}
SQLITE_WRITE_LOCK = threading.Lock()  # one SQLite writer per process (see service.py)


class UnknownComparison(Exception):
    pass


def insert_label(engine: Engine, values: dict[str, Any]) -> int | None:
    """Insert one label; its id, or None when a unique constraint (idempotency key, or one label
    per annotator and comparison) already holds a row (nothing is changed then)."""
    dialect = engine.dialect.name
    bump, insert, release = _SQL[dialect]
    row = [values[c] for c in _COLUMNS]
    if dialect == "sqlite":  # SQLAlchemy stores naive UTC text in this format
        row[-1] = _sqlite_time(values["created_at"])
    raw = engine.raw_connection()
    try:
        if dialect == "sqlite":
            with SQLITE_WRITE_LOCK:
                return _write(raw, "BEGIN IMMEDIATE", bump, insert, release, row, values)
        return _write(raw, None, bump, insert, release, row, values)
    finally:
        raw.close()  # back to the pool


def _write(raw: Any, begin: str | None, bump: str, insert: str, release: str, row: list[Any],
           values: dict[str, Any]) -> int | None:  # fmt: skip
    cur = raw.cursor()
    try:
        if begin:
            cur.execute(begin)
        cur.execute(bump, (values["comparison_id"],))
        if cur.rowcount == 0:
            raise UnknownComparison()
        cur.execute(insert, row)
        found = cur.fetchone()
        if found is None:
            raw.rollback() if not begin else cur.execute("ROLLBACK")
            return None
        cur.execute(release, (values["comparison_id"], values["annotator_id"]))
        raw.commit() if not begin else cur.execute("COMMIT")
        return int(found[0])
    except BaseException:
        with contextlib.suppress(Exception):  # a dead connection: the pool discards it
            raw.rollback() if not begin else cur.execute("ROLLBACK")
        raise
    finally:
        cur.close()


def _sqlite_time(t: datetime) -> str:
    return t.replace(tzinfo=None).strftime("%Y-%m-%d %H:%M:%S.%f")
