"""Group-committing spool writer: many messages, one fsync, no 250 before its commit.

The room between the two worlds: every ingress (SMTP, HTTP posts, pulled mailboxes) writes here.
May import: gateway.runtime, gateway.store.
"""
from __future__ import annotations

import asyncio
import logging
import secrets
import time
from typing import Callable

from gateway.runtime.metrics import Metrics
from gateway.store.base import SpoolEntry, Store

log = logging.getLogger(__name__)

MAX_BATCH = 256
MAX_BATCH_BYTES = 64 * 1024 * 1024


def new_spool_id() -> str:
    """Time-ordered, unguessable id (ms since epoch + 32 random bits); also the trace id."""
    return f"{time.time_ns() // 1_000_000:011x}{secrets.token_hex(4)}"


class SpoolWriter:
    """Collects entries from concurrent SMTP sessions and commits them together.

    While one commit (and its fsync) is running, new entries queue up and go in
    the next one: under load the batch grows by itself, at low load each message
    commits alone with no added wait.
    """

    def __init__(self, store: Store, metrics: Metrics | None = None,
                 on_commit: Callable[[], None] | None = None) -> None:
        self.store = store
        self.metrics = metrics
        self.on_commit = on_commit
        self._queue: asyncio.Queue[tuple[SpoolEntry, asyncio.Future[None]]] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="spool-writer")

    async def close(self) -> None:
        """Commit what is queued, then stop."""
        if self._task is not None:
            await self._queue.join()
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    async def commit(self, entry: SpoolEntry) -> None:
        """Return once ``entry`` is durably committed; raise if it could not be."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((entry, fut))
        await fut

    async def _run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            size = batch[0][0].size
            while not self._queue.empty() and len(batch) < MAX_BATCH and size < MAX_BATCH_BYTES:
                item = self._queue.get_nowait()
                batch.append(item)
                size += item[0].size
            try:
                await self._write(batch)
            finally:
                for _ in batch:
                    self._queue.task_done()

    async def _write(self, batch: list[tuple[SpoolEntry, asyncio.Future[None]]]) -> None:
        try:
            await self.store.spool_insert([e for e, _ in batch])
        except Exception:
            if len(batch) == 1:
                log.exception("spool commit failed for %s", batch[0][0].id)
                _settle(batch[0][1], RuntimeError("spool commit failed"))
                return
            # One bad entry must not fail its neighbours: commit them one by one.
            for item in batch:
                await self._write([item])
            return
        if self.metrics is not None:
            self.metrics.spool_commit_batch.observe(len(batch))
        for _, fut in batch:
            _settle(fut, None)
        if self.on_commit is not None:
            self.on_commit()


def _settle(fut: asyncio.Future[None], error: Exception | None) -> None:
    if fut.done():
        return
    if error is None:
        fut.set_result(None)
    else:
        fut.set_exception(error)
