"""`prefloop users add|list|disable|enable|link`: annotation accounts (tokens stored hashed)."""

from __future__ import annotations

import argparse
from typing import Any

from sqlalchemy import func, select

from prefloop.feedback import accounts
from prefloop.feedback.app.tables import annotators, labels
from prefloop.feedback.store import PreferenceStore
from prefloop.workspace import DEFAULT_WORKSPACE, Workspace


def _store(args: argparse.Namespace) -> PreferenceStore:
    return PreferenceStore(args.db or Workspace.open(args.workspace).db_url)


def _link(args: argparse.Namespace, code: str) -> str:
    return f"{args.base_url.rstrip('/')}/login#code={code}"


def _add(args: argparse.Namespace) -> int:
    with _store(args) as store:
        new = accounts.add_user(store.engine, args.name, args.role, args.kind)
    print(f"added {new.role} {new.name} (id {new.id})")
    print(f"  token (shown once; scripts send 'Authorization: Bearer <token>'): {new.token}")
    print(f"  one-time login link (valid 7 days): {_link(args, new.login_code)}")
    return 0


def _list(args: argparse.Namespace) -> int:
    with _store(args) as store, store.engine.connect() as conn:
        counts: dict[int, int] = dict(
            conn.execute(
                select(labels.c.annotator_id, func.count()).group_by(labels.c.annotator_id)
            ).all()
        )
        rows = conn.execute(select(annotators).order_by(annotators.c.name)).all()
    for r in rows:
        state = "disabled" if r.disabled else "active"
        print(f"{r.name:<24} {r.role:<10} {r.kind:<10} {state:<9} labels={counts.get(r.id, 0)}")
    return 0


def _set_disabled(args: argparse.Namespace, disabled: bool) -> int:
    with _store(args) as store:
        accounts.set_disabled(store.engine, accounts.find_user(store.engine, args.name), disabled)
    print(f"{args.name}: {'disabled (labels excluded from exports)' if disabled else 'enabled'}")
    return 0


def _new_link(args: argparse.Namespace) -> int:
    with _store(args) as store:
        code = accounts.create_login_code(store.engine, accounts.find_user(store.engine, args.name))
    print(f"one-time login link for {args.name} (valid 7 days): {_link(args, code)}")
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser(
        "users",
        help="annotation accounts: add, list, disable, enable, link",
        description="annotation accounts (no default accounts exist)",
    )
    users = p.add_subparsers(dest="users_command", metavar="ACTION", required=True)

    def action(name: str, help: str, func: Any) -> argparse.ArgumentParser:
        a = users.add_parser(name, help=help, description=help)
        a.add_argument("--workspace", default=DEFAULT_WORKSPACE, help="workspace folder")
        a.add_argument("--db", help="database URL (default: the workspace's SQLite store)")
        a.set_defaults(func=func)
        return a

    add = action("add", "create an account; prints its token and a one-time login link", _add)
    add.add_argument("name", help="login name (letters, digits, _ . @ -)")
    add.add_argument("--role", choices=["annotator", "admin"], default="annotator")
    add.add_argument(
        "--kind",
        choices=["human", "simulated", "imported", "end_user"],
        default="human",
        help="who labels through this account",
    )
    for a in (add, action("link", "print a new one-time login link", _new_link)):
        a.add_argument(
            "--base-url",
            default="http://127.0.0.1:8300",
            help="where the annotation server is reached (for the link)",
        )
    users.choices["link"].add_argument("name")
    action("list", "list accounts and label counts", _list)
    action(
        "disable",
        "disable an account and exclude its labels from exports",
        lambda a: _set_disabled(a, True),
    ).add_argument("name")
    action("enable", "re-enable an account", lambda a: _set_disabled(a, False)).add_argument("name")
