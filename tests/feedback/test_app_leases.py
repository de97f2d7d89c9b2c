"""Leases under concurrency: many annotators fetching at the same instant from the real server
(uvicorn in a subprocess, a thread pool of request handlers) are never handed more of a
comparison than it still needs, on SQLite and on PostgreSQL."""

from __future__ import annotations

import threading
import time
from collections import defaultdict

import httpx
import pytest

from prefloop.feedback import accounts
from prefloop.feedback.app.fastpath import read_cursor
from prefloop.feedback.store import PreferenceStore
from tests.feedback.test_app_support import (
    HOT_CACHE_S,
    free_port,
    seed,
    sqlite_url,
    start_server,
)

USERS = 24
COMPARISONS = 16  # fewer than users: most fetches race for the same few rows
ROUNDS = 3


def _fetch_rounds(base: str, token: str, barrier: threading.Barrier, got: list) -> None:
    """ROUNDS fetches, each started together with every other user's (the barrier)."""
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}) as http:
        http.get("/api/me")  # warm: connection open, token cached (the lean path)
        for _ in range(ROUNDS):
            barrier.wait(timeout=30)
            r = http.get("/api/tasks/next", timeout=30)
            assert r.status_code == 200, r.text
            task = r.json()["task"]
            got.append(None if task is None else task["comparison_id"])


def _run(url: str, tmp_path) -> None:
    with PreferenceStore(url) as store:
        ids = seed(store, COMPARISONS, required=1)
        users = [accounts.add_user(store.engine, f"u{i}") for i in range(USERS)]
    port = free_port()
    server = start_server(url, port, tmp_path / "server.log", auth_cache_s=HOT_CACHE_S)
    barrier = threading.Barrier(USERS)
    got: dict[int, list] = {u.id: [] for u in users}
    try:
        threads = [
            threading.Thread(target=_fetch_rounds, daemon=True,
                             args=(f"http://127.0.0.1:{port}", u.token, barrier, got[u.id]))
            for u in users
        ]  # fmt: skip
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert not any(t.is_alive() for t in threads), "clients did not finish"
    finally:
        server.terminate()
        server.wait()
    assert all(len(g) == ROUNDS for g in got.values()), "a client failed (see its thread)"
    holders: dict[int, set[int]] = defaultdict(set)
    for uid, picks in got.items():
        mine = {p for p in picks if p is not None}
        assert len(mine) <= 1, f"user {uid} was moved between comparisons {mine}"
        for cid in mine:
            holders[cid].add(uid)
    shared = {cid: who for cid, who in holders.items() if len(who) > 1}
    assert not shared, f"k=1 comparisons handed to several users at once: {shared}"
    # every comparison went to someone (nobody was turned away while one was free)
    assert set(holders) == set(ids)
    with PreferenceStore(url) as store, read_cursor(store.engine) as cur:
        cur.execute("SELECT comparison_id, count(*) FROM app_leases WHERE expires_at > ? "
                    "GROUP BY comparison_id", (time.time(),))  # fmt: skip
        assert {cid: n for cid, n in cur.cur.fetchall()} == dict.fromkeys(ids, 1)


def test_concurrent_fetches_never_overlease_sqlite(tmp_path) -> None:
    _run(sqlite_url(tmp_path), tmp_path)


@pytest.mark.postgres
def test_concurrent_fetches_never_overlease_postgresql(fresh_pg_url, tmp_path) -> None:
    _run(fresh_pg_url("leases"), tmp_path)
