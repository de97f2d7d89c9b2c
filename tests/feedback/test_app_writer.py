"""Group commit (app/writer.py): concurrent label posts share one transaction, each gets its
own result only after the commit, and one bad label does not fail the others."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from sqlalchemy import func, select

from prefloop.feedback import accounts
from prefloop.feedback.app import fastpath
from prefloop.feedback.app.tables import comparisons, labels
from prefloop.feedback.app.writer import LabelWriter
from prefloop.feedback.store import PreferenceStore
from tests.feedback.test_app_support import seed, sqlite_url


def row(cid: int, annotator: int, key: str) -> dict:
    return {"comparison_id": cid, "annotator_id": annotator, "choice": "a", "strength": None,
            "reason": None, "shown_left": "a", "seconds": 1.0, "idempotency_key": key,
            "created_at": datetime.now(UTC)}  # fmt: skip


async def post_all(writer: LabelWriter, rows: list[dict]) -> list:
    """Queue every row while the writer is held (SQLite's write lock), then let it run."""
    fastpath.SQLITE_WRITE_LOCK.acquire()
    try:
        tasks = [asyncio.ensure_future(writer.insert(r)) for r in rows]
        await asyncio.sleep(0.2)  # all queued; the writer waits on the lock with its 1st batch
        assert not any(t.done() for t in tasks)  # nothing acknowledged before the commit
    finally:
        fastpath.SQLITE_WRITE_LOCK.release()
    return await asyncio.gather(*tasks, return_exceptions=True)


def test_concurrent_posts_share_a_commit_and_keep_their_own_results(tmp_path) -> None:
    with PreferenceStore(sqlite_url(tmp_path)) as store:
        ids = seed(store, 30)
        me = accounts.add_user(store.engine, "a1").id
        writer = LabelWriter(store.engine)
        rows = [row(cid, me, f"grp-{cid:05d}") for cid in ids]
        rows += [row(ids[0], me, "grp-00001"), row(ids[1], me, "other-key"), row(9999, me, "gone")]
        out = asyncio.run(post_all(writer, rows))
        assert all(isinstance(x, int) and x > 0 for x in out[:30])
        assert out[30:] == [None, None, fastpath.MISSING]  # replay, second label, unknown id
        assert writer.batches <= 2  # 33 posts: the one the writer had taken, then the rest
        with store.engine.connect() as conn:
            assert conn.execute(select(func.count()).select_from(labels)).scalar_one() == 30
            total = conn.execute(select(func.sum(comparisons.c.label_count))).scalar_one()
        assert total == 30


def test_a_failing_label_does_not_fail_its_batch(tmp_path) -> None:
    with PreferenceStore(sqlite_url(tmp_path)) as store:
        ids = seed(store, 3)
        me = accounts.add_user(store.engine, "a1").id
        writer = LabelWriter(store.engine)
        bad = {**row(ids[1], me, "bad-00001"), "choice": "sideways"}  # violates a CHECK
        out = asyncio.run(post_all(writer, [row(ids[0], me, "ok-000001"), bad,
                                            row(ids[2], me, "ok-000002")]))  # fmt: skip
        assert isinstance(out[0], int) and isinstance(out[2], int)
        assert isinstance(out[1], Exception)  # only the bad one fails (a 500: a bug, not input)
        with store.engine.connect() as conn:
            keys = {k for (k,) in conn.execute(select(labels.c.idempotency_key))}
        assert keys == {"ok-000001", "ok-000002"}
