"""The app's operations as plain functions over an Engine: routes stay thin and tests can call
these directly. Domain errors (NotFound, Conflict, Forbidden) are PrefloopErrors that the app
maps to HTTP status codes in one place (app/__init__.py)."""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from sqlalchemy import Connection, Engine, delete, func, select, update
from sqlalchemy.orm import aliased

from prefloop.errors import PrefloopError
from prefloop.feedback import assign
from prefloop.feedback.accounts import Principal
from prefloop.feedback.app import fastpath, schemas
from prefloop.feedback.app.settings import AppSettings
from prefloop.feedback.app.tables import comparisons, labels, prompts, responses

STRENGTH_IN = {"slight": 1, "much": 2}
STRENGTH_OUT: dict[int, Literal["slight", "much"]] = {1: "slight", 2: "much"}


class NotFound(PrefloopError):
    pass


class Conflict(PrefloopError):
    pass


class Forbidden(PrefloopError):
    pass


@contextmanager
def write_transaction(engine: Engine) -> Iterator[Connection]:
    """One write transaction. SQLite has one writer at a time: threads of this process queue on
    a lock instead of on SQLite's busy handler, which sleeps in growing steps (up to 100 ms)
    and made contended posts slow. Transactions start with BEGIN IMMEDIATE (see the store)."""
    if engine.dialect.name != "sqlite":
        with engine.begin() as conn:
            yield conn
        return
    with (
        fastpath.SQLITE_WRITE_LOCK,
        engine.execution_options(prefloop_begin="IMMEDIATE").begin() as conn,
    ):
        yield conn


# ---- tasks --------------------------------------------------------------------------------


def next_task(
    engine: Engine, user: Principal, settings: AppSettings, rng: random.Random
) -> schemas.Task | None:
    with write_transaction(engine) as conn:
        cid = assign.next_comparison(conn, user.id, gold_rate=settings.gold_rate, rng=rng)
        if cid is None:
            return None
        assign.lease(conn, cid, user.id, settings.lease_s)
        return _view(conn, cid, rng)


def _view(conn: Connection, comparison_id: int, rng: random.Random) -> schemas.Task:
    ra, rb = aliased(responses), aliased(responses)
    row = conn.execute(
        select(prompts.c.text, prompts.c.messages, ra.c.text, rb.c.text)
        .select_from(comparisons)
        .join(prompts, prompts.c.id == comparisons.c.prompt_id)
        .join(ra, ra.c.id == comparisons.c.response_a_id)
        .join(rb, rb.c.id == comparisons.c.response_b_id)
        .where(comparisons.c.id == comparison_id)
    ).one()
    prompt, messages, text_a, text_b = row
    shown_left: Literal["a", "b"] = rng.choice(
        ("a", "b")
    )  # a new random side per view, recorded with the label
    left, right = (text_a, text_b) if shown_left == "a" else (text_b, text_a)
    turns = None
    if messages:
        turns = [
            schemas.Turn(role=str(m.get("role", "user")), content=str(m.get("content", "")))
            for m in messages
            if isinstance(m, dict)
        ]
    return schemas.Task(
        comparison_id=comparison_id,
        prompt=prompt,
        messages=turns,
        left=left,
        right=right,
        shown_left=shown_left,
        view_id=uuid.uuid4().hex,
    )


def skip_task(engine: Engine, user: Principal, comparison_id: int) -> None:
    with write_transaction(engine) as conn:
        try:
            assign.skip(conn, comparison_id, user.id)
        except PrefloopError as e:
            raise NotFound(e.message, field="comparison_id") from None


# ---- labels -------------------------------------------------------------------------------


def post_label(engine: Engine, user: Principal, body: schemas.LabelIn) -> schemas.LabelPosted:
    """Store one label: one UPDATE (label_count, which also proves the comparison exists) and one
    INSERT .. ON CONFLICT DO NOTHING in one transaction (fastpath.py); a retry with the same
    idempotency key returns the stored label instead of a duplicate."""
    now = datetime.now(UTC)
    values = {
        "comparison_id": body.comparison_id,
        "annotator_id": user.id,
        "choice": body.choice,
        "strength": STRENGTH_IN.get(body.strength) if body.strength else None,
        "reason": body.reason,
        "shown_left": body.shown_left,
        "seconds": body.seconds,
        "idempotency_key": body.idempotency_key,
        "created_at": now,
    }
    try:
        new_id = fastpath.insert_label(engine, values)
    except fastpath.UnknownComparison:
        raise NotFound(
            f"unknown comparison id {body.comparison_id}", field="comparison_id"
        ) from None
    if new_id is None:
        return _resolve_replay(engine, user, body)
    return schemas.LabelPosted(label=_label_out({**values, "id": new_id}), duplicate=False)


def _resolve_replay(engine: Engine, user: Principal, body: schemas.LabelIn) -> schemas.LabelPosted:
    with engine.connect() as conn:
        row = conn.execute(
            select(labels).where(labels.c.idempotency_key == body.idempotency_key)
        ).first()
    if row is None:
        raise Conflict(
            f"you already labeled comparison {body.comparison_id}", field="comparison_id"
        )
    if (row.annotator_id, row.comparison_id) != (user.id, body.comparison_id):
        raise Conflict("this idempotency key was already used for another label",
                       field="idempotency_key")  # fmt: skip
    return schemas.LabelPosted(label=_label_out(row._mapping), duplicate=True)


def _label_out(row: Any) -> schemas.LabelOut:
    created = row["created_at"]
    return schemas.LabelOut(
        id=row["id"],
        comparison_id=row["comparison_id"],
        choice=row["choice"],
        shown_left=row["shown_left"],
        strength=STRENGTH_OUT.get(row["strength"]) if row["strength"] else None,
        reason=row["reason"],
        seconds=row["seconds"],
        created_at=created.isoformat() if hasattr(created, "isoformat") else str(created),
    )


def undo_last(
    engine: Engine, user: Principal, settings: AppSettings, rng: random.Random
) -> tuple[schemas.LabelOut | None, schemas.Task | None]:
    """Delete the annotator's most recent label (if younger than the undo window) and hand the
    comparison back to them."""
    with write_transaction(engine) as conn:
        row = conn.execute(
            select(labels)
            .where(labels.c.annotator_id == user.id)
            .order_by(labels.c.id.desc())
            .limit(1)
        ).first()
        if row is None or _age_s(row.created_at) > settings.undo_window_s:
            return None, None
        conn.execute(delete(labels).where(labels.c.id == row.id))
        conn.execute(
            update(comparisons)
            .where(comparisons.c.id == row.comparison_id)
            .values(label_count=comparisons.c.label_count - 1)
        )
        assign.lease(conn, row.comparison_id, user.id, settings.lease_s)
        return _label_out(row._mapping), _view(conn, row.comparison_id, rng)


def _age_s(created: datetime) -> float:
    if created.tzinfo is None:  # SQLite returns naive datetimes (stored as UTC)
        created = created.replace(tzinfo=UTC)
    return (datetime.now(UTC) - created) / timedelta(seconds=1)


def list_labels(
    engine: Engine, annotator_id: int, limit: int, offset: int
) -> list[schemas.LabelOut]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(labels)
            .where(labels.c.annotator_id == annotator_id)
            .order_by(labels.c.id.desc())
            .limit(limit)
            .offset(offset)
        ).all()
    return [_label_out(r._mapping) for r in rows]


# ---- progress -----------------------------------------------------------------------------


class OpenCount:
    """Comparisons still short of labels, recounted at most every `ttl_s` seconds: counting the
    open queue walks an index of up to millions of rows, too slow for every task fetch."""

    def __init__(self, ttl_s: float = 10.0) -> None:
        self.ttl_s = ttl_s
        self._value = 0
        self._at = -1e18
        self._lock = threading.Lock()

    def get(self, engine: Engine) -> int:
        with self._lock:
            if time.monotonic() - self._at > self.ttl_s:
                c = comparisons.c
                with engine.connect() as conn:
                    self._value = int(
                        conn.execute(
                            select(func.count()).where(
                                c.label_count < c.required_labels, c.is_gold.is_(False)
                            )
                        ).scalar_one()
                    )
                self._at = time.monotonic()
            return self._value


def progress(engine: Engine, user: Principal, open_count: OpenCount) -> schemas.Progress:
    with engine.connect() as conn:
        labeled = conn.execute(
            select(func.count()).where(labels.c.annotator_id == user.id)
        ).scalar_one()
    return schemas.Progress(labeled=int(labeled), available=open_count.get(engine))
