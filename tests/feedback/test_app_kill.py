"""Nothing acknowledged is lost: SIGKILL the server while 32 clients post labels, restart it,
and check that every label that got a 2xx is stored exactly once (SQLite and PostgreSQL).
Tokens are cached, as in production, so the posts go through group commit (app/writer.py)."""

from __future__ import annotations

import os
import signal
import threading
import time

import httpx
import pytest
from sqlalchemy import func, select

from prefloop.feedback import accounts
from prefloop.feedback.app.tables import comparisons, labels
from prefloop.feedback.store import PreferenceStore
from tests.feedback.test_app_support import (
    HOT_CACHE_S,
    free_port,
    seed,
    sqlite_url,
    start_server,
)

CLIENTS = 32
PER_CLIENT = 12


def _client_loop(base: str, token: str, work: list[int], idx: int, acked: list[str],
                 stop: threading.Event) -> None:  # fmt: skip
    """Post each label until acknowledged, retrying the same idempotency key after errors."""
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=base, headers=headers, timeout=5) as http:
        for cid in work:
            key = f"kill-{idx}-{cid}"
            body = {"comparison_id": cid, "choice": "a", "shown_left": "b", "idempotency_key": key}
            while not stop.is_set():
                try:
                    r = http.post("/api/labels", json=body)
                except httpx.HTTPError:
                    time.sleep(0.25)  # server down: retry the same key
                    continue
                if r.status_code in (200, 201):
                    acked.append(key)
                    break
                assert r.status_code in (429, 503), r.text
                time.sleep(0.05)


def _run_kill_test(url: str, tmp_path) -> None:
    with PreferenceStore(url) as store:
        ids = seed(store, CLIENTS * PER_CLIENT)
        tokens = [accounts.add_user(store.engine, f"c{i}").token for i in range(CLIENTS)]
    port = free_port()
    log = tmp_path / "server.log"
    server = start_server(url, port, log, auth_cache_s=HOT_CACHE_S)
    acked: list[str] = []
    stop = threading.Event()
    threads = [
        threading.Thread(target=_client_loop, daemon=True, args=(
            f"http://127.0.0.1:{port}", tokens[i], ids[i::CLIENTS], i, acked, stop))
        for i in range(CLIENTS)
    ]  # fmt: skip
    for t in threads:
        t.start()
    try:
        deadline = time.monotonic() + 30
        while len(acked) < CLIENTS * 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        os.kill(server.pid, signal.SIGKILL)  # mid-stream: requests are in flight
        server.wait()
        acked_before_kill = len(acked)
        server = start_server(url, port, log, auth_cache_s=HOT_CACHE_S)
        for t in threads:
            t.join(timeout=90)
        assert not any(t.is_alive() for t in threads), "clients did not finish"
    finally:
        stop.set()
        server.kill()
        server.wait()
    assert 0 < acked_before_kill < CLIENTS * PER_CLIENT, "the kill did not land mid-stream"
    with PreferenceStore(url) as store, store.engine.connect() as conn:
        keys = [k for (k,) in conn.execute(select(labels.c.idempotency_key))]
        counted = conn.execute(select(func.sum(comparisons.c.label_count))).scalar_one()
    assert len(acked) == len(set(acked)) == CLIENTS * PER_CLIENT
    assert len(keys) == len(set(keys)), "a label was stored twice"
    assert set(acked) == set(keys)  # every acknowledged label is there, nothing else is
    assert counted == len(keys)  # label_count stayed consistent through the crash


@pytest.mark.slow
def test_sigkill_sqlite(tmp_path) -> None:
    _run_kill_test(sqlite_url(tmp_path), tmp_path)


@pytest.mark.slow
@pytest.mark.postgres
def test_sigkill_postgresql(fresh_pg_url, tmp_path) -> None:
    _run_kill_test(fresh_pg_url("kill"), tmp_path)
