"""Benchmark of the annotation app (not a test): labels ingested per second over HTTP with 64
concurrent clients on loopback, and next-task latency with 1,000,000 comparisons stored.

    python bench/annotate_load.py ingest --db sqlite --workers 2 --labels 40000
    python bench/annotate_load.py ingest --db postgresql --workers 2 --labels 40000
    python bench/annotate_load.py ingest --db sqlite --labels 100000 --batch 50   # batched posts
    python bench/annotate_load.py next --db sqlite --clients 1 --keep /tmp/next1m.db

`ingest` with --batch 1 (the default) is the headline: one label per `POST /api/labels`, as the
labeling page and most scripts post. --batch N > 1 posts N labels per `POST /api/labels/batch`
and is a different figure. Every ingest run counts the stored labels afterwards.

The server is `uvicorn prefloop.feedback.app.main:app_from_env` (what `prefloop annotate`
runs) in its own processes, with uvicorn's HTTP parser and event loop given by --http/--loop
("auto", as `prefloop annotate`: httptools and uvloop when installed, else h11 and asyncio --
about 4x apart here). The load generator is another process: a minimal keep-alive HTTP/1.1
client on asyncio, so the client costs as little CPU as possible on a 2-core machine, one
token per client. The per-token rate limit is off (rate_limit=0) because 64 tokens at the
default 20/s cap the load at 1,280/s; tokens are cached for 30 s (default 5 s: either way all
but the first request of a token take the lean path, app/hot.py). `next` seeds 1,000,000
comparisons (k = 3) inside the database in seconds; --keep keeps and reuses them (without the
leases of earlier runs). Prints one JSON line with the result, the stack, the date and the load.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

PG_ADMIN = "host=127.0.0.1 port=5432 user=postgres dbname=test"


def make_db(kind: str, tmp: Path, keep: str | None = None) -> tuple[str, str | None, bool]:
    """(url, database to drop at the end, whether it already existed). `keep`: a SQLite path
    or PostgreSQL database name that is kept (and reused when present)."""
    if kind == "sqlite":
        path = Path(keep) if keep else tmp / "bench.db"
        return f"sqlite:///{path}", None, path.exists()
    import psycopg

    name = keep or f"prefloop_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as c:
        exists = c.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if not exists:
            c.execute(f'CREATE DATABASE "{name}"')
    url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    return url, None if keep else name, bool(exists)


def drop_db(name: str | None) -> None:
    if name:
        import psycopg

        with psycopg.connect(PG_ADMIN, autocommit=True) as c:
            c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def bulk_seed(url: str, n: int, required: int = 1) -> None:
    """n prompts, 2n responses, n comparisons (ids 1..n; responses 2i-1 and 2i), generated
    inside the database by INSERT .. SELECT over a number series: no rows cross the driver, so
    1,000,000 comparisons take about a minute instead of many."""
    from prefloop.feedback.store import PreferenceStore

    with PreferenceStore(url) as store, store.engine.begin() as conn:
        pg = conn.dialect.name == "postgresql"
        for start in range(0, n, 250_000):  # chunks keep SQLite's recursive series small
            lo, hi = start + 1, min(n, start + 250_000)
            series = (
                f"SELECT generate_series({lo}, {hi}) AS i"
                if pg
                else f"WITH RECURSIVE s(i) AS (SELECT {lo} UNION ALL SELECT i + 1 FROM s "
                f"WHERE i < {hi}) SELECT i FROM s"
            )
            now, false = ("now()", "false") if pg else ("CURRENT_TIMESTAMP", "0")
            conn.exec_driver_sql(
                f"INSERT INTO prompts (id, text, source, created_at) "
                f"SELECT i, 'prompt ' || i, 'bench', {now} FROM ({series}) t"
            )
            conn.exec_driver_sql(
                f"INSERT INTO responses (id, prompt_id, text, model_version, created_at) "
                f"SELECT 2 * i - 1 + k, i, 'answer ' || k || ' to ' || i, 'm', {now} "
                f"FROM ({series}) t CROSS JOIN (SELECT 0 AS k UNION ALL SELECT 1) ks"
            )
            conn.exec_driver_sql(
                f"INSERT INTO comparisons (id, prompt_id, response_a_id, response_b_id, source, "
                f"required_labels, label_count, is_gold, created_at) "
                f"SELECT i, i, 2 * i - 1, 2 * i, 'bench', {required}, 0, {false}, {now} "
                f"FROM ({series}) t"
            )
        if pg:
            for table in ("prompts", "responses", "comparisons"):
                conn.exec_driver_sql(
                    f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), {2 * n})"
                )
            conn.exec_driver_sql("ANALYZE")


def make_users(url: str, n: int) -> list[str]:
    from prefloop.feedback import accounts
    from prefloop.feedback.store import PreferenceStore

    with PreferenceStore(url) as store:
        return [
            accounts.add_user(store.engine, f"bench{i}-{uuid.uuid4().hex[:6]}").token
            for i in range(n)
        ]


def resolve_stack(http: str, loop: str) -> tuple[str, str]:
    """What uvicorn's "auto" picks: httptools and uvloop when installed, else h11 and asyncio."""
    import importlib.util

    if http == "auto":
        http = "httptools" if importlib.util.find_spec("httptools") else "h11"
    if loop == "auto":
        loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    return http, loop


def start_server(url: str, port: int, workers: int, stack: tuple[str, str]) -> subprocess.Popen:
    from prefloop.feedback.app.settings import ENV_VAR, AppSettings

    settings = AppSettings(db=url, port=port, workers=workers, rate_limit=0.0, gold_rate=0.0,
                           auth_cache_s=30.0)  # fmt: skip
    cmd = [sys.executable, "-m", "uvicorn", "prefloop.feedback.app.main:app_from_env", "--factory",
           "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers),
           "--log-level", "warning", "--no-access-log", "--http", stack[0], "--loop", stack[1]]  # fmt: skip
    proc = subprocess.Popen(cmd, env={**os.environ, ENV_VAR: settings.to_env()})
    import httpx

    for _ in range(600):
        try:
            httpx.get(f"http://127.0.0.1:{port}/login", timeout=1)
            time.sleep(1.0 if workers > 1 else 0)  # let every worker come up
            return proc
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError("server did not start")


# ---- the load generator (runs in its own process) --------------------------------------------


async def _request(reader, writer, method: str, path: str, token: str, body: bytes = b"") -> int:  # type: ignore[no-untyped-def]
    head = (f"{method} {path} HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {token}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n")  # fmt: skip
    writer.write(head.encode() + body)
    status = int((await reader.readline()).split()[1])
    length = 0
    while (line := await reader.readline()) not in (b"\r\n", b""):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    await reader.readexactly(length)
    return status


async def _client(port: int, token: str, jobs: list[tuple], stats: dict, lat: list[float]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    for method, path, body in jobs:
        t = time.perf_counter()
        status = await _request(reader, writer, method, path, token, body)
        lat.append(time.perf_counter() - t)
        stats[status] = stats.get(status, 0) + 1
    writer.close()


async def _load(port: int, plan: list[tuple[str, list[tuple]]]) -> dict:
    stats: dict[int, int] = {}
    lat: list[float] = []
    t0 = time.perf_counter()
    await asyncio.gather(*(_client(port, tok, jobs, stats, lat) for tok, jobs in plan))
    wall = time.perf_counter() - t0
    lat.sort()
    return {"requests": len(lat), "wall_s": round(wall, 3), "per_s": round(len(lat) / wall, 1),
            "status": stats, "p50_ms": round(1000 * lat[len(lat) // 2], 2),
            "p99_ms": round(1000 * lat[int(len(lat) * 0.99)], 2)}  # fmt: skip


def loadgen_main(plan_file: str, port: int) -> None:
    plan = json.loads(Path(plan_file).read_text())
    plan = [(tok, [(m, p, b.encode()) for m, p, b in jobs]) for tok, jobs in plan]
    print(json.dumps(asyncio.run(_load(port, plan))))


def run_loadgen(port: int, plan: list, tmp: Path) -> dict:
    plan_file = tmp / "plan.json"
    plan_file.write_text(json.dumps(plan))
    out = subprocess.run([sys.executable, __file__, "loadgen", str(plan_file), str(port)],
                         check=True, capture_output=True, text=True)  # fmt: skip
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


# ---- scenarios -------------------------------------------------------------------------------


def ingest(args: argparse.Namespace, url: str, tmp: Path) -> dict:
    bulk_seed(url, args.labels)
    tokens = make_users(url, args.clients)
    plan = []
    for i, tok in enumerate(tokens):
        bodies = [
            {"comparison_id": cid, "choice": "a", "shown_left": "b", "seconds": 3.0,
             "idempotency_key": f"bench-{i}-{cid}"}
            for cid in range(i + 1, args.labels + 1, args.clients)
        ]  # fmt: skip
        if args.batch == 1:
            jobs = [("POST", "/api/labels", json.dumps(b)) for b in bodies]
        else:
            jobs = [
                ("POST", "/api/labels/batch", json.dumps({"labels": bodies[k : k + args.batch]}))
                for k in range(0, len(bodies), args.batch)
            ]
        plan.append((tok, jobs))
    warm = max(1, 20 // args.batch)
    server = start_server(url, args.port, args.workers, args.stack)
    try:
        run_loadgen(args.port, [(t, j[:warm]) for t, j in plan], tmp)  # warm-up (not counted)
        result = run_loadgen(args.port, [(t, j[warm:]) for t, j in plan], tmp)
    finally:
        server.terminate()
        server.wait()
    labels = sum(body.count('"idempotency_key"') for _, jobs in plan for _, _, body in jobs[warm:])
    stored = count_labels(url)
    return {**result, "batch": args.batch, "labels_per_s": round(labels / result["wall_s"], 1),
            "labels_stored": stored}  # fmt: skip


def count_labels(url: str) -> int:
    from sqlalchemy import func, select

    from prefloop.feedback.app.tables import labels
    from prefloop.feedback.store import PreferenceStore

    with PreferenceStore(url) as store, store.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(labels)).scalar_one())


def next_task(args: argparse.Namespace, url: str, tmp: Path) -> dict:
    t = time.perf_counter()
    if not args.reused:
        bulk_seed(url, args.comparisons, required=3)
    else:  # start as a fresh store would: earlier runs' leases (300 s) would lengthen the walk
        from prefloop.feedback.store import PreferenceStore

        with PreferenceStore(url) as store, store.engine.begin() as conn:
            conn.exec_driver_sql("DELETE FROM app_leases")
    seed_s = time.perf_counter() - t
    tokens = make_users(url, args.clients)
    per = max(1, args.requests // args.clients)
    plan = [(tok, [("GET", "/api/tasks/next", "")] * per) for tok in tokens]
    server = start_server(url, args.port, args.workers, args.stack)
    try:
        run_loadgen(args.port, [(t, j[:5]) for t, j in plan], tmp)  # warm-up
        result = run_loadgen(args.port, plan, tmp)
    finally:
        server.terminate()
        server.wait()
    return {**result, "seed_s": round(seed_s, 1)}


def main() -> None:
    if sys.argv[1:2] == ["loadgen"]:
        loadgen_main(sys.argv[2], int(sys.argv[3]))
        return
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("scenario", choices=["ingest", "next"])
    p.add_argument("--db", choices=["sqlite", "postgresql"], default="sqlite")
    p.add_argument("--workers", type=int, default=2, help="uvicorn worker processes")
    p.add_argument("--clients", type=int, default=64, help="concurrent clients (one token each)")
    p.add_argument("--labels", type=int, default=20_000, help="ingest: labels to post")
    p.add_argument(
        "--batch",
        type=int,
        default=1,
        help="ingest: labels per request (1: POST /api/labels, more: /api/labels/batch)",
    )
    p.add_argument("--comparisons", type=int, default=1_000_000, help="next: comparisons stored")
    p.add_argument("--requests", type=int, default=2_000, help="next: task fetches to time")
    p.add_argument("--port", type=int, default=8391)
    p.add_argument(
        "--http",
        choices=["auto", "h11", "httptools"],
        default="auto",
        help="uvicorn HTTP parser (auto, as `prefloop annotate`: httptools if installed)",
    )
    p.add_argument("--loop", choices=["auto", "asyncio", "uvloop"], default="auto",
                   help="uvicorn event loop (auto: uvloop if installed)")  # fmt: skip
    p.add_argument(
        "--keep",
        help="keep the seeded store (SQLite path or PostgreSQL database "
        "name) and reuse it when present (next scenario)",
    )
    args = p.parse_args()
    args.stack = resolve_stack(args.http, args.loop)
    with tempfile.TemporaryDirectory() as d:
        url, pg_name, args.reused = make_db(args.db, Path(d), args.keep)
        try:
            fn = ingest if args.scenario == "ingest" else next_task
            result = fn(args, url, Path(d))
        finally:
            drop_db(pg_name)
    print(json.dumps({"scenario": args.scenario, "db": args.db, "workers": args.workers,
                      "clients": args.clients, "http": args.stack[0], "loop": args.stack[1],
                      "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
                      "loadavg_1m": os.getloadavg()[0], **result}))  # fmt: skip


if __name__ == "__main__":
    main()
