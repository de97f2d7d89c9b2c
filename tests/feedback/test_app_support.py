"""Shared helpers of the annotation-app tests (imported by test_app*.py, test_assign.py and
test_browser*.py; holds no tests itself): seeded comparisons, users, clients, servers.
PostgreSQL databases come from the fixtures in conftest.py."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import httpx

from prefloop.feedback import accounts
from prefloop.feedback.app.main import build_app
from prefloop.feedback.app.settings import ENV_VAR, AppSettings
from prefloop.feedback.store import ComparisonIn, PreferenceStore, PromptIn, ResponseIn

# auth_cache_s=0: every request goes through FastAPI's routes. The lean path for label posts
# and task fetches (app/hot.py) needs a cached token: tests of it pass auth_cache_s=HOT_CACHE_S.
SETTINGS = AppSettings(gold_rate=0.0, rate_limit=0.0, auth_cache_s=0.0)
HOT_CACHE_S = 60.0


def seed(
    store: PreferenceStore,
    n: int,
    *,
    required: int = 1,
    gold: int = 0,
    texts: tuple[str, str] | None = None,
    messages: list[dict[str, str]] | None = None,
    source: str = "test",
) -> list[int]:
    """n regular comparisons (+ `gold` gold ones whose answer is 'a'); returns their ids."""
    with store.transaction() as tx:
        pids = tx.add_prompts(
            [PromptIn(f"prompt {i}", messages=messages, source=source) for i in range(n + gold)]
        )
        rows = []
        for i, pid in enumerate(pids):
            a, b = texts or (f"answer A{i}", f"answer B{i}")
            rows += [ResponseIn(pid, a, "m1"), ResponseIn(pid, b, "m2")]
        rids = tx.add_responses(rows)
        comps = [
            ComparisonIn(
                pid, rids[2 * i], rids[2 * i + 1], source=source, required_labels=required,
                is_gold=i >= n, gold_choice="a" if i >= n else None,
            )
            for i, pid in enumerate(pids)
        ]  # fmt: skip
        return tx.add_comparisons(comps)


def user(store: PreferenceStore, name: str, role: str = "annotator") -> dict[str, str]:
    """Authorization header of a new account."""
    new = accounts.add_user(store.engine, name, role)
    return {"Authorization": f"Bearer {new.token}"}


def client(store: PreferenceStore, **overrides: object):  # type: ignore[no-untyped-def]
    from fastapi.testclient import TestClient

    return TestClient(build_app(replace(SETTINGS, **overrides), store.engine))  # type: ignore[arg-type]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(db_url: str, port: int, log: Path, **overrides: object) -> subprocess.Popen:
    """uvicorn in a subprocess (what `prefloop annotate` runs), ready when it answers."""
    settings = replace(SETTINGS, db=db_url, port=port, **overrides)  # type: ignore[arg-type]
    env = {**os.environ, ENV_VAR: settings.to_env()}
    cmd = [sys.executable, "-m", "uvicorn", "prefloop.feedback.app.main:app_from_env", "--factory",
           "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]  # fmt: skip
    with log.open("ab") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {log.read_text()[-2000:]}")
        try:
            httpx.get(f"http://127.0.0.1:{port}/login", timeout=1)
            return proc
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("server did not start within 30 s")


def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'preferences.db'}"
