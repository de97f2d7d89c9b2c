"""Annotator accounts: roles, hashed tokens, one-time login links.

A token is 32 random bytes (urlsafe base64) shown exactly once; only its SHA-256 is stored.
A fast hash is enough because tokens are random, not human passwords: there is nothing to
brute-force from the hash. Login links carry a one-time code that is exchanged (once, before it
expires) for a fresh session token. There are no default accounts or credentials: the first
admin is created with `prefloop users add NAME --role admin`.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time
from dataclasses import dataclass

from sqlalchemy import ColumnElement, Connection, Engine, insert, select, update
from sqlalchemy.exc import IntegrityError

from prefloop.errors import PrefloopError
from prefloop.feedback import store
from prefloop.feedback.app.tables import annotators, login_links, sessions
from prefloop.feedback.models import ANNOTATOR_KINDS, ROLES

TOKEN_PREFIX = "pfl_"
LOGIN_LINK_TTL_S = 7 * 24 * 3600
NAME_RE = re.compile(r"^[A-Za-z0-9_.@-]{1,100}$")


@dataclass(frozen=True)
class Principal:
    """Who is calling: the authenticated annotator."""

    id: int
    name: str
    role: str
    kind: str

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


@dataclass(frozen=True)
class NewUser:
    id: int
    name: str
    role: str
    token: str  # shown once, never stored
    login_code: str  # one-time; the link is /login#code=<login_code>

    @property
    def login_path(self) -> str:
        return f"/login#code={self.login_code}"


def new_secret() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


def add_user(engine: Engine, name: str, role: str = "annotator", kind: str = "human") -> NewUser:
    """Create an annotator with a token and a one-time login code."""
    if not NAME_RE.match(name):
        raise PrefloopError("a name is 1-100 letters, digits or _ . @ - characters", field="name")
    if role not in ROLES:
        raise PrefloopError(f"role must be one of {', '.join(ROLES)}, not {role!r}", field="role")
    if kind not in ANNOTATOR_KINDS:
        raise PrefloopError(f"kind must be one of {', '.join(ANNOTATOR_KINDS)}", field="kind")
    token = new_secret()
    try:
        with engine.begin() as conn:
            annotator_id = conn.execute(
                insert(annotators)
                .values(
                    name=name, role=role, kind=kind, token_hash=hash_secret(token), disabled=False
                )
                .returning(annotators.c.id)
            ).scalar_one()
    except IntegrityError:
        raise PrefloopError(f"an annotator named {name!r} already exists", field="name") from None
    code = create_login_code(engine, annotator_id)
    return NewUser(annotator_id, name, role, token, code)


def find_user(engine: Engine, name: str) -> int:
    with engine.connect() as conn:
        found = conn.execute(select(annotators.c.id).where(annotators.c.name == name)).scalar()
    if found is None:
        raise PrefloopError(f"no annotator named {name!r}", field="name")
    return int(found)


def create_login_code(engine: Engine, annotator_id: int, ttl_s: float = LOGIN_LINK_TTL_S) -> str:
    code = secrets.token_urlsafe(24)
    with engine.begin() as conn:
        conn.execute(
            insert(login_links).values(
                annotator_id=annotator_id,
                code_hash=hash_secret(code),
                expires_at=time.time() + ttl_s,
            )
        )
    return code


def redeem_login_code(engine: Engine, code: str) -> tuple[Principal, str]:
    """Exchange a one-time code for a new session token; a code works once, before it expires."""
    now = time.time()
    with engine.begin() as conn:
        # the conditional UPDATE is the "once": of two concurrent redeems only one matches
        row = conn.execute(
            update(login_links)
            .where(
                login_links.c.code_hash == hash_secret(code),
                login_links.c.used_at.is_(None),
                login_links.c.expires_at > now,
            )
            .values(used_at=now)
            .returning(login_links.c.annotator_id)
        ).first()
        if row is None:
            raise PrefloopError("login link is unknown, used or expired")
        user = _principal(conn, annotators.c.id == row[0])
        if user is None:
            raise PrefloopError("this account is disabled")
        token = new_secret()
        conn.execute(
            insert(sessions).values(
                annotator_id=user.id, token_hash=hash_secret(token), created_at=now
            )
        )
    return user, token


def authenticate(engine: Engine, token: str) -> Principal | None:
    """The enabled annotator owning `token` (API token or login-link session), else None."""
    digest = hash_secret(token)
    with engine.connect() as conn:
        user = _principal(conn, annotators.c.token_hash == digest)
        if user is None:
            owner = select(sessions.c.annotator_id).where(sessions.c.token_hash == digest)
            user = _principal(conn, annotators.c.id == owner.scalar_subquery())
    return user


def _principal(conn: Connection, condition: ColumnElement[bool]) -> Principal | None:
    row = conn.execute(
        select(annotators.c.id, annotators.c.name, annotators.c.role, annotators.c.kind).where(
            condition, annotators.c.disabled.is_(False)
        )
    ).first()
    return Principal(row.id, row.name, row.role, row.kind) if row else None


def set_disabled(engine: Engine, annotator_id: int, disabled: bool) -> None:
    """Disable or re-enable an account; a disabled annotator's labels stop counting toward
    their comparisons' k labels (store.set_disabled)."""
    with engine.execution_options(prefloop_begin="IMMEDIATE").begin() as conn:
        found = store.set_disabled(conn, annotator_id, disabled)
    if not found:
        raise PrefloopError(f"no annotator with id {annotator_id}", field="annotator_id")


def rotate_token(engine: Engine, annotator_id: int) -> str:
    """A new API token for the annotator; the old one stops working."""
    token = new_secret()
    with engine.begin() as conn:
        n = conn.execute(
            update(annotators)
            .where(annotators.c.id == annotator_id)
            .values(token_hash=hash_secret(token))
        ).rowcount
    if n == 0:
        raise PrefloopError(f"no annotator with id {annotator_id}", field="annotator_id")
    return token
