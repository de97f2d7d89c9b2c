"""PreferenceStore: the one interface to prompts, responses, comparisons, labels and annotators.

SQLAlchemy 2.x over an SQLite file (default: the workspace's `preferences.db`) or PostgreSQL
(`postgresql+psycopg://user@host/db`). Opening a store applies the Alembic migrations shipped in
`prefloop/feedback/migrations` (no alembic.ini needed).

Writes go through `store.transaction()`: everything inside one `with` block commits together or
not at all, which is what makes an import all-or-nothing. On SQLite, write transactions start
with BEGIN IMMEDIATE so concurrent writers queue on the busy timeout instead of failing with
"database is locked" when a read transaction tries to upgrade to a write.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import (
    Connection,
    Engine,
    Select,
    Table,
    bindparam,
    create_engine,
    event,
    exists,
    func,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, IntegrityError, OperationalError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.sql import ColumnElement

from prefloop.errors import PrefloopError
from prefloop.feedback.models import (
    ANNOTATOR_KINDS,
    CHOICES,
    ROLES,
    SIDES,
    Annotator,
    Comparison,
    ComparisonIn,
    ComparisonView,
    Label,
    LabelIn,
    PreferenceRecord,
    Prompt,
    PromptIn,
    Response,
    ResponseIn,
    utcnow,
)

__all__ = [
    "ComparisonIn",
    "ComparisonView",
    "LabelIn",
    "PreferenceRecord",
    "PreferenceStore",
    "PromptIn",
    "ResponseIn",
    "StoreTransaction",
    "set_disabled",
]

MIGRATIONS = Path(__file__).parent / "migrations"
SQLITE_BUSY_TIMEOUT_MS = 30_000
_IN_CHUNK = 5000


def _check(value: Any, allowed: Sequence[Any], what: str, where: str) -> None:
    if value not in allowed:
        raise PrefloopError(
            f"{where}: {what} must be one of {list(allowed)}, got {value!r}", field=what
        )


def _url(url: str) -> str:
    # `postgresql://` would pick psycopg2, which prefloop does not install; psycopg 3 is the driver
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def _connect_args(url: URL) -> dict[str, Any]:
    # psycopg prepares a statement after 5 runs, and PostgreSQL may then switch to a generic
    # plan; for the next-task query that plan hash-joins ALL of an annotator's labels (260 ms
    # at 200k labels instead of 0.1 ms). Custom plans cost ~0.3 ms of planning: always use them.
    if url.get_backend_name() == "postgresql" and "options" not in url.query:
        return {"options": "-c plan_cache_mode=force_custom_plan"}
    return {}


class PreferenceStore:
    """Open (and migrate) the store at `url`; use as a context manager or call `close()`."""

    def __init__(self, url: str, *, upgrade: bool = True, echo: bool = False) -> None:
        try:
            parsed = make_url(_url(url))
        except ArgumentError:
            raise PrefloopError(f"not a database URL: {url!r}") from None
        self.url = parsed.render_as_string(hide_password=True)
        self.dialect = parsed.get_backend_name()
        if self.dialect not in ("sqlite", "postgresql"):
            raise PrefloopError(
                f"unsupported database {self.url} (use sqlite:/// or postgresql://)"
            )
        try:
            # pre-ping survives PostgreSQL connections dropped by the server; a file needs none
            ping = self.dialect == "postgresql"
            self.engine: Engine = create_engine(
                parsed, echo=echo, pool_pre_ping=ping, connect_args=_connect_args(parsed)
            )
        except Exception as e:  # a missing driver or bad option in the URL is the user's to fix
            raise PrefloopError(f"cannot open preference store {self.url}: {e}") from None
        if self.dialect == "sqlite":
            _sqlite_setup(self.engine)
        self._read = sessionmaker(self.engine, expire_on_commit=False)
        self._write_engine = self.engine.execution_options(prefloop_begin="IMMEDIATE")
        # single-statement reads need no transaction: on PostgreSQL autocommit saves the BEGIN
        # and ROLLBACK round trips (2 of the 4 a task fetch would otherwise make)
        self._reader = self.engine
        if self.dialect == "postgresql":
            self._reader = self.engine.execution_options(isolation_level="AUTOCOMMIT")
        if upgrade:
            self.upgrade()

    def __enter__(self) -> PreferenceStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.engine.dispose()

    # ---- schema -------------------------------------------------------------------------
    def upgrade(self, revision: str = "head") -> None:
        """Apply the Alembic migrations (one transaction; serialized across processes)."""
        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        try:
            with self.engine.connect() as conn:
                conn = conn.execution_options(prefloop_begin="IMMEDIATE")
                with conn.begin():
                    if self.dialect == "postgresql":  # two processes opening a new database
                        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _LOCK_KEY})
                    cfg.attributes["connection"] = conn
                    command.upgrade(cfg, revision)
        except OperationalError as e:
            raise PrefloopError(f"cannot open preference store {self.url}: {e.orig}") from None

    def revision(self) -> str | None:
        from alembic.migration import MigrationContext

        with self.engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()

    # ---- transactions -------------------------------------------------------------------
    @contextmanager
    def transaction(self) -> Iterator[StoreTransaction]:
        """All writes inside commit together, or none does (on any exception)."""
        with self._write_engine.begin() as conn:
            yield StoreTransaction(conn)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A read session (for queries this class does not offer)."""
        with self._read() as session:
            yield session

    # ---- convenience writers (one transaction each) ---------------------------------------
    def add_annotator(self, name: str, kind: str, role: str = "annotator", **kw: Any) -> int:
        with self.transaction() as tx:
            return tx.add_annotator(name, kind, role, **kw)

    def ensure_annotator(self, name: str, kind: str) -> int:
        with self.transaction() as tx:
            return tx.ensure_annotator(name, kind)

    def set_annotator_disabled(self, name: str, disabled: bool = True) -> None:
        with self.transaction() as tx:
            tx.set_annotator_disabled(name, disabled)

    def add_prompts(self, prompts: Sequence[PromptIn]) -> list[int]:
        with self.transaction() as tx:
            return tx.add_prompts(prompts)

    def add_responses(self, responses: Sequence[ResponseIn]) -> list[int]:
        with self.transaction() as tx:
            return tx.add_responses(responses)

    def add_comparisons(self, comparisons: Sequence[ComparisonIn]) -> list[int]:
        with self.transaction() as tx:
            return tx.add_comparisons(comparisons)

    def add_labels(self, annotator_id: int, labels: Sequence[LabelIn]) -> list[int]:
        """Store labels; returns their ids. A label whose idempotency key is already stored
        for the same annotator and comparison returns the stored id instead of a duplicate."""
        try:
            with self.transaction() as tx:
                return tx.add_labels(annotator_id, labels)
        except IntegrityError:
            # a concurrent writer won a race between our checks and our insert; rerun the
            # checks against what is now stored: they give the idempotent answer or the error
            with self.transaction() as tx:
                return tx.add_labels(annotator_id, labels)

    # ---- reads --------------------------------------------------------------------------
    def annotator(self, name: str) -> Annotator | None:
        with self._read() as s:
            return s.scalar(select(Annotator).where(Annotator.name == name))

    def next_comparisons(
        self,
        annotator_id: int,
        limit: int | None = 1,
        *,
        gold: bool | None = False,
        after_id: int = 0,
        sources: Sequence[str] | None = None,
    ) -> list[ComparisonView]:
        """Comparisons annotator X may label next: short of labels (gold ones: any), not yet
        labelled by X, in id order after `after_id`. gold=False: regular only, True: gold only,
        None: both. limit=None: all of them.

        Plan: a walk of the partial index ix_comparisons_open from `after_id`, probing the
        (comparison_id, annotator_id) unique index per row; Core, not ORM, because the web app
        asks this on every task fetch."""
        q = next_task_query(annotator_id, limit, gold=gold, after_id=after_id, sources=sources)
        with self._reader.connect() as conn:
            return [_view(r) for r in conn.execute(q)]

    def pending_comparisons(
        self, limit: int | None = None, sources: Sequence[str] | None = None
    ) -> list[ComparisonView]:
        """Regular comparisons with fewer labels than required, oldest first."""
        c = _COMPARISONS.c
        q = _VIEW_QUERY.where(c.label_count < c.required_labels, c.is_gold.is_(False))
        if sources:
            q = q.where(c.source.in_(sources))
        with self._reader.connect() as conn:
            return [_view(r) for r in conn.execute(q.order_by(c.id).limit(limit))]

    def comparisons(self, ids: Sequence[int]) -> list[ComparisonView]:
        with self._reader.connect() as conn:
            return _views(conn, list(ids))

    def preferences(
        self,
        *,
        kinds: Sequence[str] | None = None,
        sources: Sequence[str] | None = None,
        annotators: Sequence[str] | None = None,
        include_disabled: bool = False,
        include_ties: bool = False,
        include_gold: bool = False,
    ) -> list[PreferenceRecord]:
        """Labelled comparisons as preference records (one per label), in label order.

        Ties and both-bad labels are not chosen/rejected pairs: skipped unless include_ties.
        Labels of disabled annotators and gold (honeypot) comparisons are left out by default.
        """
        c, lab, ann = _COMPARISONS.c, _LABELS.c, _ANNOTATORS.c
        q = (
            _VIEW_QUERY.add_columns(
                lab.id.label("label_id"), lab.choice, lab.strength, ann.name, ann.kind
            )
            .join(_LABELS, lab.comparison_id == c.id)
            .join(_ANNOTATORS, ann.id == lab.annotator_id)
            .order_by(lab.id)
        )
        if kinds:
            q = q.where(ann.kind.in_(kinds))
        if sources:
            q = q.where(c.source.in_(sources))
        if annotators:
            q = q.where(ann.name.in_(annotators))
        if not include_disabled:
            q = q.where(ann.disabled.is_(False))
        if not include_ties:
            q = q.where(lab.choice.in_(("a", "b")))
        if not include_gold:
            q = q.where(c.is_gold.is_(False))
        out = []
        with self._reader.connect() as conn:
            for r in conn.execute(q):
                a, b = r.response_a, r.response_b
                chosen, rejected = (b, a) if r.choice == "b" else (a, b)
                out.append(
                    PreferenceRecord(
                        r.label_id,
                        r.id,
                        r.prompt,
                        r.messages,
                        chosen,
                        rejected,
                        r.choice,
                        r.strength,
                        r.name,
                        r.kind,
                        r.source,
                    )
                )
        return out

    def stats(self) -> dict[str, Any]:
        """Counts: prompts, responses, comparisons, pending, labels, labels by choice and kind."""
        with self._read() as s:
            count = lambda model: s.scalar(select(func.count()).select_from(model))  # noqa: E731
            by_choice = dict(
                s.execute(select(Label.choice, func.count()).group_by(Label.choice)).all()
            )
            by_kind = dict(
                s.execute(
                    select(Annotator.kind, func.count())
                    .join(Label, Label.annotator_id == Annotator.id)
                    .group_by(Annotator.kind)
                ).all()
            )
            pending = s.scalar(
                select(func.count()).where(
                    Comparison.label_count < Comparison.required_labels, ~Comparison.is_gold
                )
            )
            return {
                "prompts": count(Prompt),
                "responses": count(Response),
                "comparisons": count(Comparison),
                "pending": pending,
                "labels": count(Label),
                "annotators": count(Annotator),
                "labels_by_choice": {c: by_choice.get(c, 0) for c in CHOICES},
                "labels_by_kind": {k: by_kind[k] for k in ANNOTATOR_KINDS if k in by_kind},
            }


_LOCK_KEY = zlib.crc32(b"prefloop.preference-store.migrations")


def _sqlite_setup(engine: Engine) -> None:
    """WAL (readers never block the writer), a busy timeout, foreign keys, and explicit BEGINs
    (pysqlite's own implicit transactions would defeat transactional DDL and BEGIN IMMEDIATE)."""

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cur.execute("PRAGMA foreign_keys=ON")
        # with WAL, NORMAL survives a killed process (only an OS crash can lose the last commits)
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql(f"BEGIN {conn.get_execution_options().get('prefloop_begin', '')}")


class StoreTransaction:
    """Writers sharing one transaction (see PreferenceStore.transaction). They use SQLAlchemy
    Core on the transaction's connection: label posts are the app's hot path, and the ORM's
    unit of work would cost several times more per label."""

    def __init__(self, conn: Connection) -> None:
        self.connection = conn

    def add_annotator(
        self,
        name: str,
        kind: str,
        role: str = "annotator",
        token_hash: str | None = None,
        disabled: bool = False,
    ) -> int:
        _check(kind, ANNOTATOR_KINDS, "kind", f"annotator '{name}'")
        _check(role, ROLES, "role", f"annotator '{name}'")
        if not name.strip():
            raise PrefloopError("annotator name must not be empty", field="name")
        if self._annotator_by_name(name) is not None:
            raise PrefloopError(f"annotator '{name}' already exists", field="name")
        row = {"name": name, "kind": kind, "role": role, "token_hash": token_hash}
        return self._insert(_ANNOTATORS, [{**row, "disabled": disabled}])[0]

    def ensure_annotator(self, name: str, kind: str) -> int:
        """The id of annotator `name`, created with `kind` if new (kind must match if not)."""
        row = self._annotator_by_name(name)
        if row is None:
            return self.add_annotator(name, kind)
        if row.kind != kind:
            raise PrefloopError(f"annotator '{name}' exists with kind {row.kind}, not {kind}")
        return int(row.id)

    def set_annotator_disabled(self, name: str, disabled: bool = True) -> None:
        row = self._annotator_by_name(name)
        if row is None:
            raise PrefloopError(f"unknown annotator '{name}'")
        set_disabled(self.connection, int(row.id), disabled)

    def _annotator_by_name(self, name: str) -> Any:
        q = select(_ANNOTATORS.c.id, _ANNOTATORS.c.kind).where(_ANNOTATORS.c.name == name)
        return self.connection.execute(q).first()

    def _rows_in(self, q: Any, column: Any, values: Iterable[Any]) -> Iterator[Any]:
        """Rows of `q` where `column` is in `values`, queried in bounded chunks (SQLite caps
        the number of parameters; large imports check hundreds of thousands of ids)."""
        values = list(values)
        for start in range(0, len(values), _IN_CHUNK):
            yield from self.connection.execute(
                q.where(column.in_(values[start : start + _IN_CHUNK]))
            )

    def _insert(self, table: Table, rows: list[dict[str, Any]]) -> list[int]:
        if not rows:
            return []
        now = utcnow()
        q = insert(table).returning(table.c.id, sort_by_parameter_order=True)
        return list(self.connection.scalars(q, [{"created_at": now, **r} for r in rows]))

    def add_prompts(self, prompts: Sequence[PromptIn]) -> list[int]:
        return self._insert(_PROMPTS, [vars(p) for p in prompts])

    def add_responses(self, responses: Sequence[ResponseIn]) -> list[int]:
        return self._insert(_RESPONSES, [vars(r) for r in responses])

    def add_comparisons(self, comparisons: Sequence[ComparisonIn]) -> list[int]:
        for i, c in enumerate(comparisons):
            if c.response_a_id == c.response_b_id:
                raise PrefloopError(f"comparison {i}: response A and B are the same response")
            if c.gold_choice is not None:
                _check(c.gold_choice, CHOICES, "gold_choice", f"comparison {i}")
            if c.required_labels < 1:
                raise PrefloopError(f"comparison {i}: required_labels must be >= 1")
        ids = {x for c in comparisons for x in (c.response_a_id, c.response_b_id)}
        q = select(_RESPONSES.c.id, _RESPONSES.c.prompt_id)
        found = {rid: pid for rid, pid in self._rows_in(q, _RESPONSES.c.id, ids)}
        for i, c in enumerate(comparisons):
            for rid in (c.response_a_id, c.response_b_id):
                if found.get(rid) != c.prompt_id:
                    raise PrefloopError(
                        f"comparison {i}: response {rid} is not a response to prompt {c.prompt_id}"
                    )
        return self._insert(_COMPARISONS, [{**vars(c), "label_count": 0} for c in comparisons])

    def add_labels(self, annotator_id: int, labels: Sequence[LabelIn]) -> list[int]:
        conn = self.connection
        who = conn.execute(  # KEY SHARE: a concurrent set_disabled waits for this transaction
            select(_ANNOTATORS.c.name, _ANNOTATORS.c.disabled)
            .where(_ANNOTATORS.c.id == annotator_id)
            .with_for_update(key_share=True)
        ).first()
        if who is None:
            raise PrefloopError(f"unknown annotator id {annotator_id}")
        if who.disabled:
            raise PrefloopError(f"annotator '{who.name}' is disabled")
        keys = [lab.idempotency_key for lab in labels if lab.idempotency_key is not None]
        replayed: dict[str, tuple[int, int, int]] = {}
        if keys:
            lab_t = _LABELS.c
            q = select(lab_t.idempotency_key, lab_t.id, lab_t.comparison_id, lab_t.annotator_id)
            for k, lid, cid, aid in self._rows_in(q, lab_t.idempotency_key, keys):
                replayed[k] = (lid, cid, aid)
        # known comparisons, and which of them this annotator already labelled, in one query
        cids = {lab.comparison_id for lab in labels}
        on = (_LABELS.c.comparison_id == _COMPARISONS.c.id) & (
            _LABELS.c.annotator_id == annotator_id
        )
        q = select(_COMPARISONS.c.id, _LABELS.c.id).select_from(_COMPARISONS.outerjoin(_LABELS, on))
        status = {
            int(row[0]): row[1] is not None for row in self._rows_in(q, _COMPARISONS.c.id, cids)
        }
        ids: list[int | None] = []
        new: list[dict[str, Any]] = []
        for i, lab in enumerate(labels):
            where = f"comparison {lab.comparison_id}"
            if len(labels) > 1:
                where = f"label {i + 1} ({where})"
            if lab.idempotency_key in replayed:
                lid, cid, aid = replayed[lab.idempotency_key]
                if (cid, aid) != (lab.comparison_id, annotator_id):
                    raise PrefloopError(f"{where}: idempotency key already used for another label")
                ids.append(lid)
                continue
            _validate_label(lab, where, status, who.name)
            status[lab.comparison_id] = True
            ids.append(None)
            new.append({**vars(lab), "annotator_id": annotator_id})
        new_ids = iter(self._insert(_LABELS, new))
        if new:  # an atomic increment per label keeps label_count exact under concurrency
            conn.execute(
                update(_COMPARISONS)
                .where(_COMPARISONS.c.id == bindparam("cid"))
                .values(label_count=_COMPARISONS.c.label_count + 1),
                [{"cid": row["comparison_id"]} for row in new],
            )
        return [i if i is not None else next(new_ids) for i in ids]


def set_disabled(conn: Connection, annotator_id: int, disabled: bool) -> bool:
    """Disable (or re-enable) an annotator in the caller's transaction; False if no such id.

    `comparisons.label_count` counts the labels of enabled annotators only, so a disabled
    annotator's comparisons go back to the open queue for others (and come back out when they
    are re-enabled). The annotator's row is locked FOR UPDATE first: label writers hold a KEY
    SHARE lock on it while they check `disabled`, so the two never interleave on PostgreSQL
    (SQLite has one writer at a time anyway).
    """
    a = _ANNOTATORS.c
    row = conn.execute(select(a.disabled).where(a.id == annotator_id).with_for_update()).first()
    if row is None:
        return False
    if bool(row.disabled) != disabled:
        conn.execute(update(_ANNOTATORS).where(a.id == annotator_id).values(disabled=disabled))
        theirs = select(_LABELS.c.comparison_id).where(_LABELS.c.annotator_id == annotator_id)
        conn.execute(
            update(_COMPARISONS)
            .where(_COMPARISONS.c.id.in_(theirs))
            .values(label_count=_COMPARISONS.c.label_count + (-1 if disabled else 1))
        )
    return True


def _validate_label(lab: LabelIn, where: str, status: dict[int, bool], annotator: str) -> None:
    """`status`: comparison id -> already labelled by this annotator (absent: unknown id)."""
    _check(lab.choice, CHOICES, "choice", where)
    _check(lab.strength, (None, 1, 2), "strength", where)
    _check(lab.shown_left, (None, *SIDES), "shown_left", where)
    if lab.seconds is not None and not lab.seconds >= 0:
        raise PrefloopError(f"{where}: seconds must be >= 0", field="seconds")
    if lab.comparison_id not in status:
        raise PrefloopError(f"{where}: unknown comparison id {lab.comparison_id}")
    if status[lab.comparison_id]:
        raise PrefloopError(
            f"{where}: annotator '{annotator}' already labelled comparison {lab.comparison_id}"
        )


def next_task_query(
    annotator_id: int,
    limit: int | None = 1,
    *,
    gold: bool | None = False,
    after_id: int = 0,
    sources: Sequence[str] | None = None,
) -> Select[Any]:
    """The statement behind PreferenceStore.next_comparisons (public so its plan can be checked)."""
    c, lab = _COMPARISONS.c, _LABELS.c
    labelled_by_x = exists().where(lab.comparison_id == c.id, lab.annotator_id == annotator_id)
    open_ = c.label_count < c.required_labels
    cond: ColumnElement[bool]
    if gold is True:
        cond = c.is_gold.is_(True)
    elif gold is False:
        cond = open_ & c.is_gold.is_(False)
    else:
        cond = open_ | c.is_gold.is_(True)
    q = _VIEW_QUERY.where(cond, c.id > after_id, ~labelled_by_x).order_by(c.id).limit(limit)
    return q.where(c.source.in_(sources)) if sources else q


def _views(conn: Connection, ids: list[int]) -> list[ComparisonView]:
    by_id = {}
    for start in range(0, len(ids), _IN_CHUNK):  # bounded IN lists (SQLite caps parameters)
        chunk = ids[start : start + _IN_CHUNK]
        for r in conn.execute(_VIEW_QUERY.where(_COMPARISONS.c.id.in_(chunk))):
            by_id[r.id] = _view(r)
    return [by_id[i] for i in ids if i in by_id]


def _view(r: Any) -> ComparisonView:
    return ComparisonView(
        r.id, r.prompt, r.messages, r.response_a, r.response_b, r.source, r.is_gold
    )


_ANNOTATORS: Table = Annotator.__table__  # type: ignore[assignment]
_PROMPTS: Table = Prompt.__table__  # type: ignore[assignment]
_RESPONSES: Table = Response.__table__  # type: ignore[assignment]
_COMPARISONS: Table = Comparison.__table__  # type: ignore[assignment]
_LABELS: Table = Label.__table__  # type: ignore[assignment]


def _by_id(column: Any, id_column: Any) -> Any:
    return select(column).where(column.table.c.id == id_column).scalar_subquery()


# A comparison with its texts. Scalar subqueries rather than a 4-way join: PostgreSQL plans
# them in ~0.2 ms instead of ~3 ms, and the web app asks for one task at a time.
_RA, _RB = _RESPONSES.alias("ra"), _RESPONSES.alias("rb")
_C = _COMPARISONS.c
_VIEW_QUERY = select(
    _C.id,
    _by_id(_PROMPTS.c.text, _C.prompt_id).label("prompt"),
    _by_id(_PROMPTS.c.messages, _C.prompt_id).label("messages"),
    _by_id(_RA.c.text, _C.response_a_id).label("response_a"),
    _by_id(_RB.c.text, _C.response_b_id).label("response_b"),
    _C.source,
    _C.is_gold,
)
