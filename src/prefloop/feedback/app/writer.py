"""Group commit for label posts: one writer thread per server process.

Concurrent `POST /api/labels` requests put their label on a queue and wait; the writer takes
everything queued (up to `max_batch`), stores it in ONE transaction (fastpath.insert_labels)
and only after the commit wakes each request with its own result. Durability is unchanged --
nothing is acknowledged before it is committed -- but 64 concurrent posts cost one commit (one
fsync on PostgreSQL) instead of 64, and no request occupies a worker thread while it waits.

A batch that fails as a whole (a constraint the ON CONFLICT clause does not cover, a dropped
connection) is retried one label per transaction, so one bad label cannot fail its neighbours.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from typing import Any

from sqlalchemy import Engine

from prefloop.feedback.app import fastpath

Result = int | None  # a new label id, None (a unique constraint held: replay), MISSING or DISABLED


class LabelWriter:
    def __init__(self, engine: Engine, max_batch: int = 256) -> None:
        self.engine, self.max_batch = engine, max_batch
        self._queue: queue.SimpleQueue[tuple[dict[str, Any], asyncio.Future[Result]]] = (
            queue.SimpleQueue()
        )
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self.batches = 0  # transactions committed (for tests and curiosity)

    async def insert(self, values: dict[str, Any]) -> Result:
        """Store one label (see fastpath.insert_labels for the result); returns after commit."""
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._ensure_thread()
        self._queue.put((values, future))
        return await future

    def _ensure_thread(self) -> None:
        if self._thread is None:
            with self._start_lock:
                if self._thread is None:
                    self._thread = threading.Thread(
                        target=self._run, name="prefloop-label-writer", daemon=True
                    )
                    self._thread.start()

    def _run(self) -> None:
        while True:
            batch = [self._queue.get()]
            while len(batch) < self.max_batch:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            # comparison-id order: two processes' batches then lock comparison rows in the same
            # order (no deadlock between them); labels for one comparison keep arrival order
            batch.sort(key=lambda item: int(item[0]["comparison_id"]))
            self._store(batch)

    def _store(self, batch: list[tuple[dict[str, Any], asyncio.Future[Result]]]) -> None:
        try:
            ids: list[Result | BaseException] = list(
                fastpath.insert_labels(self.engine, [values for values, _ in batch])
            )
            self.batches += 1
        except Exception as e:
            if len(batch) > 1:
                for item in batch:
                    self._store([item])
                return
            ids = [e]
        # futures belong to their event loop: settle them there, one hop per loop
        by_loop: dict[asyncio.AbstractEventLoop, list[Any]] = {}
        for (_, future), result in zip(batch, ids, strict=True):
            by_loop.setdefault(future.get_loop(), []).append((future, result))
        for loop, settled in by_loop.items():
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits for these now
                loop.call_soon_threadsafe(_settle, settled)


def _settle(settled: list[tuple[asyncio.Future[Result], Result | BaseException]]) -> None:
    for future, result in settled:
        if future.done():  # the request was cancelled (client went away): the label is stored
            continue
        if isinstance(result, BaseException):
            future.set_exception(result)
        else:
            future.set_result(result)
