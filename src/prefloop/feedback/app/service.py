"""The app's operations as plain functions over an Engine: routes stay thin and tests can call
these directly. Domain errors (NotFound, Conflict, Forbidden) are PrefloopErrors that the app
maps to HTTP status codes in one place (app/__init__.py)."""

from __future__ import annotations

import json
import random
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from sqlalchemy import Engine, select

from prefloop.errors import PrefloopError
from prefloop.feedback import assign
from prefloop.feedback.accounts import Principal
from prefloop.feedback.app import fastpath, schemas
from prefloop.feedback.app.fastpath import Cursor, read_cursor, write_cursor
from prefloop.feedback.app.settings import AppSettings
from prefloop.feedback.app.tables import labels

STRENGTH_IN = {"slight": 1, "much": 2}
STRENGTH_OUT: dict[int, Literal["slight", "much"]] = {1: "slight", 2: "much"}


class NotFound(PrefloopError):
    pass


class Conflict(PrefloopError):
    pass


class Forbidden(PrefloopError):
    pass


# ---- tasks --------------------------------------------------------------------------------


def next_task(
    engine: Engine, user: Principal, settings: AppSettings, rng: random.Random
) -> schemas.Task | None:
    with write_cursor(engine, durable=False) as cur:  # a lease lost in a crash just expires
        return _next_in(cur, user, settings, rng)[0]


def _next_in(
    cur: Cursor, user: Principal, settings: AppSettings, rng: random.Random, count: bool = False
) -> tuple[schemas.Task | None, int | None]:
    """(the next task, and with `count` the caller's label count, read with the task)."""
    cid = assign.take(cur, user.id, settings.lease_s, gold_rate=settings.gold_rate, rng=rng)
    if cid is None:
        return None, _labeled(cur, user.id) if count else None
    return _view(cur, cid, rng, count_for=user.id if count else None)


_VIEW = """
SELECT p.text, p.messages, ra.text, rb.text{count} FROM comparisons c
JOIN prompts p ON p.id = c.prompt_id
JOIN responses ra ON ra.id = c.response_a_id
JOIN responses rb ON rb.id = c.response_b_id
WHERE c.id = ?
"""
_COUNT = ", (SELECT count(*) FROM labels WHERE annotator_id = ?)"


def _view(
    cur: Cursor, comparison_id: int, rng: random.Random, count_for: int | None = None
) -> tuple[schemas.Task, int | None]:
    """The task for `comparison_id`, and with `count_for` that annotator's label count (in the
    same statement: one round trip fewer on PostgreSQL)."""
    if count_for is None:
        row = cur.execute(_VIEW.format(count=""), (comparison_id,)).one()
    else:
        row = cur.execute(_VIEW.format(count=_COUNT), (count_for, comparison_id)).one()
    prompt, messages, text_a, text_b = row[:4]
    labeled = None if count_for is None else int(row[4])
    if isinstance(messages, str):  # SQLite hands JSON columns back as text
        messages = json.loads(messages)
    shown_left: Literal["a", "b"] = rng.choice(("a", "b"))  # random per view, stored with the label
    left, right = (text_a, text_b) if shown_left == "a" else (text_b, text_a)
    turns = None
    if messages:
        turns = [
            schemas.Turn(role=str(m.get("role", "user")), content=str(m.get("content", "")))
            for m in messages
            if isinstance(m, dict)
        ]
    task = schemas.Task(
        comparison_id=comparison_id,
        prompt=prompt,
        messages=turns,
        left=left,
        right=right,
        shown_left=shown_left,
        view_id=uuid.uuid4().hex,
    )
    return task, labeled


def next_task_out(state: Any, user: Principal) -> schemas.TaskOut:
    """GET /api/tasks/next: the next task and the caller's progress (`state`: app.state)."""
    engine = state.engine
    with write_cursor(engine, durable=False) as cur:
        # PostgreSQL: count in the same transaction, with the task (round trips fewer than a
        # second checkout); SQLite: after it, so a long count does not hold the single write lock
        count = cur.dialect != "sqlite"
        task, labeled = _next_in(cur, user, state.settings, state.rng, count=count)
    if labeled is None:
        with read_cursor(engine) as cur:
            labeled = _labeled(cur, user.id)
    available = state.open_count.get(engine)
    return schemas.TaskOut(
        task=task, progress=schemas.Progress(labeled=labeled, available=available)
    )


def skip_task(engine: Engine, user: Principal, comparison_id: int) -> None:
    try:
        with write_cursor(engine) as cur:
            assign.skip(cur, comparison_id, user.id)
    except PrefloopError as e:
        raise NotFound(e.message, field="comparison_id") from None


# ---- labels -------------------------------------------------------------------------------


def label_values(
    user: Principal, body: schemas.LabelIn, now: datetime | None = None
) -> dict[str, Any]:
    """The labels row for `body` posted by `user` (created now unless `now` is given)."""
    return {
        "comparison_id": body.comparison_id,
        "annotator_id": user.id,
        "choice": body.choice,
        "strength": STRENGTH_IN.get(body.strength) if body.strength else None,
        "reason": body.reason,
        "shown_left": body.shown_left,
        "seconds": body.seconds,
        "idempotency_key": body.idempotency_key,
        "created_at": now or datetime.now(UTC),
    }


def post_label(engine: Engine, user: Principal, body: schemas.LabelIn) -> schemas.LabelPosted:
    """Store one label: one UPDATE (label_count, which also proves the comparison exists) and one
    INSERT .. ON CONFLICT DO NOTHING in one transaction (fastpath.py); a retry with the same
    idempotency key returns the stored label instead of a duplicate."""
    values = label_values(user, body)
    new_id = fastpath.insert_label(engine, values)
    raise_if_refused(body, new_id)
    if new_id is None:
        return resolve_replay(engine, user, body)
    return schemas.LabelPosted(label=label_out({**values, "id": new_id}), duplicate=False)


def raise_if_refused(body: schemas.LabelIn, new_id: int | None) -> None:
    """The error for a label that insert_labels refused (an unknown comparison, or an account
    disabled while its token was still cached)."""
    if new_id == fastpath.MISSING:
        missing = f"unknown comparison id {body.comparison_id}"
        raise NotFound(missing, field="comparison_id")
    if new_id == fastpath.DISABLED:
        raise Forbidden("this account is disabled")


def post_labels(
    engine: Engine, user: Principal, batch: schemas.LabelBatchIn
) -> schemas.LabelBatchOut:
    """Many labels, one transaction and one commit; each item succeeds or fails on its own and
    is acknowledged only after the commit."""
    now = datetime.now(UTC)
    values = [label_values(user, body, now) for body in batch.labels]
    results = []
    new_ids = fastpath.insert_labels(engine, values)
    if fastpath.DISABLED in new_ids:  # one caller, so all of them
        raise Forbidden("this account is disabled")
    for body, new_id in zip(batch.labels, new_ids, strict=True):
        if new_id == fastpath.MISSING:
            missing = f"unknown comparison id {body.comparison_id}"
            item = schemas.BatchItem(status="not_found", detail=missing)
        elif new_id is not None:
            item = schemas.BatchItem(status="created", label_id=new_id)
        else:
            try:
                old = resolve_replay(engine, user, body)
                item = schemas.BatchItem(status="duplicate", label_id=old.label.id)
            except Conflict as e:
                item = schemas.BatchItem(status="conflict", detail=e.message)
        results.append(item)
    return schemas.LabelBatchOut(results=results)


def resolve_replay(engine: Engine, user: Principal, body: schemas.LabelIn) -> schemas.LabelPosted:
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
    return schemas.LabelPosted(label=label_out(row._mapping), duplicate=True)


def label_out(row: Any) -> schemas.LabelOut:
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


_LAST = (
    "SELECT id, comparison_id, choice, shown_left, strength, reason, seconds, created_at "
    "FROM labels WHERE annotator_id = ? ORDER BY id DESC LIMIT 1"
)


def undo_last(
    engine: Engine, user: Principal, settings: AppSettings, rng: random.Random
) -> tuple[schemas.LabelOut | None, schemas.Task | None]:
    """Delete the annotator's most recent label (if younger than the undo window) and hand the
    comparison back to them."""
    with write_cursor(engine) as cur:
        if not fastpath.enabled_annotators(cur, {user.id}):  # (disabled, token still cached)
            raise Forbidden("this account is disabled")
        row = cur.execute(_LAST, (user.id,)).one()
        if row is None or _age_s(row[7]) > settings.undo_window_s:
            return None, None
        keys = ("id", "comparison_id", "choice", "shown_left", "strength", "reason", "seconds",
                "created_at")  # fmt: skip
        label = dict(zip(keys, row, strict=True))
        cur.execute("DELETE FROM labels WHERE id = ?", (label["id"],))
        cur.execute("UPDATE comparisons SET label_count = label_count - 1 WHERE id = ?",
                    (label["comparison_id"],))  # fmt: skip
        assign.lease(cur, label["comparison_id"], user.id, settings.lease_s)
        return label_out(label), _view(cur, label["comparison_id"], rng)[0]


def _age_s(created: datetime | str) -> float:
    if isinstance(created, str):
        created = datetime.fromisoformat(created)
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
    return [label_out(r._mapping) for r in rows]


# ---- progress -----------------------------------------------------------------------------


class OpenCount:
    """Comparisons still short of labels, recounted in the background at most every `ttl_s`
    seconds: counting the open queue walks an index of up to millions of rows (about a second
    on SQLite), far too slow to do inside a task fetch. None until the first count is done."""

    def __init__(self, ttl_s: float = 10.0) -> None:
        self.ttl_s = ttl_s
        self._value: int | None = None
        self._at = -1e18
        self._lock = threading.Lock()

    def get(self, engine: Engine) -> int | None:
        with self._lock:
            if time.monotonic() - self._at > self.ttl_s:
                self._at = time.monotonic()  # one recount at a time
                threading.Thread(target=self._count, args=(engine,), daemon=True).start()
            return self._value

    def _count(self, engine: Engine) -> None:
        sql = "SELECT count(*) FROM comparisons WHERE label_count < required_labels AND NOT is_gold"
        with read_cursor(engine) as cur:
            value = int(cur.execute(sql).one()[0])
        with self._lock:
            self._value = value


def _labeled(cur: Cursor, annotator_id: int) -> int:
    return int(
        cur.execute("SELECT count(*) FROM labels WHERE annotator_id = ?", (annotator_id,)).one()[0]
    )


def progress(engine: Engine, user: Principal, open_count: OpenCount) -> schemas.Progress:
    with read_cursor(engine) as cur:
        labeled = _labeled(cur, user.id)
    return schemas.Progress(labeled=labeled, available=open_count.get(engine))
