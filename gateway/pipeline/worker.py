"""The pipeline worker: claims spooled messages, runs the stages, commits the outcome.

Parsing runs in a bounded executor (a process pool by default) so big or
hostile MIME never blocks the event loop; all outcomes of a batch are written
in one store transaction that also marks the spool entries done.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import multiprocessing
import time
from typing import Iterable

from ..config import Config
from ..metrics import Metrics
from ..recipients import RecipientMap
from ..store.base import QUARANTINED, Delivery, SpoolEntry, Store
from .mime import parse_message
from .stages import CONTINUE, DEFAULT_ORDER, DROP, QUARANTINE, STAGES, TICKET, Context, Inbound, Stage

log = logging.getLogger(__name__)


def make_executor(workers: int) -> concurrent.futures.Executor:
    """Process pool (uses the other core, isolates parser crashes) or one thread when workers == 0."""
    if workers <= 0:
        return concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="parse")
    return concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))


class Worker:
    def __init__(self, cfg: Config, store: Store, metrics: Metrics, executor: concurrent.futures.Executor,
                 stage_names: Iterable[str] = DEFAULT_ORDER) -> None:
        self.cfg = cfg
        self.store = store
        self.metrics = metrics
        self.executor = executor
        self.stages: list[Stage] = [STAGES[n]() for n in stage_names]
        self.ctx = Context(cfg=cfg, recipients=RecipientMap(cfg.mailboxes))
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    def wake(self) -> None:
        """New mail was spooled: look now rather than at the next poll."""
        self._wake.set()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="pipeline-worker")

    async def close(self, drain: bool = True) -> None:
        """Finish the batch in hand (and, with ``drain``, what is already due), then stop."""
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            if not drain:
                self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    async def _run(self) -> None:
        while True:
            try:
                n = await self.run_once()
            except Exception:
                log.exception("pipeline batch failed; retrying after the poll interval")
                n = 0
            if n:
                continue
            if self._stopping:
                return
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), self.cfg.pipeline.poll_interval)
            except asyncio.TimeoutError:
                pass

    async def run_once(self) -> int:
        """Process one batch of due entries; returns how many were claimed."""
        started = time.perf_counter()
        entries = await self.store.spool_claim(self.cfg.pipeline.batch_size, time.time())
        if not entries:
            return 0
        deliveries: list[Delivery] = []
        results = await asyncio.gather(*(self._process(e) for e in entries))
        for entry, outcome in zip(entries, results):
            if outcome is not None:
                deliveries.append(outcome)
        if deliveries:
            await self._deliver(deliveries)
        self.metrics.stage_duration.observe(time.perf_counter() - started)
        return len(entries)

    async def _process(self, entry: SpoolEntry) -> Delivery | None:
        """The delivery for one entry, or None when it was rescheduled after an error."""
        max_attempts = self.cfg.pipeline.max_attempts
        if entry.attempts > max_attempts:
            # Claimed more often than allowed without finishing: it crashed the process each time.
            return Delivery(entry.id, "quarantine", reason=f"failed {entry.attempts - 1} times: "
                            f"{entry.last_error or 'processing crashed'}")
        try:
            loop = asyncio.get_running_loop()
            parsed = await loop.run_in_executor(self.executor, parse_message, entry.raw)
            return await self._run_stages(Inbound(entry, parsed))
        except Exception as exc:
            self.metrics.pipeline_errors.inc()
            error = f"{type(exc).__name__}: {exc}"[:500]
            log.warning("pipeline error on %s (attempt %d/%d): %s", entry.id, entry.attempts, max_attempts,
                        error, extra={"trace_id": entry.id})
            if entry.attempts >= max_attempts:
                return Delivery(entry.id, "quarantine", reason=f"failed {entry.attempts} times: {error}")
            await self.store.spool_retry(entry.id, error, time.time() + self.cfg.pipeline.retry_delay)
            return None

    async def _run_stages(self, msg: Inbound) -> Delivery:
        history: list[dict[str, str]] = []
        for stage in self.stages:
            verdict = await stage.run(msg, self.ctx)
            history.append({"stage": stage.name, "action": verdict.action, "reason": verdict.reason})
            if verdict.action == CONTINUE:
                continue
            if verdict.action == DROP:
                return Delivery(msg.entry.id, "suppress", reason=verdict.reason, history=tuple(history))
            if verdict.action == QUARANTINE:
                return Delivery(msg.entry.id, "quarantine", reason=verdict.reason, history=tuple(history))
            if verdict.action == TICKET:
                return Delivery(msg.entry.id, "ticket", reason=verdict.reason, queue=verdict.queue,
                                mailbox=verdict.mailbox, article=verdict.article, thread_refs=verdict.thread_refs,
                                ticket_flags=verdict.ticket_flags, history=tuple(history))
            raise ValueError(f"stage {stage.name} returned unknown action {verdict.action!r}")
        return Delivery(msg.entry.id, "quarantine", reason="no stage reached a final verdict",
                        history=tuple(history))

    async def _deliver(self, deliveries: list[Delivery]) -> None:
        now = time.time()
        try:
            results = await self.store.deliver(deliveries, now)
        except Exception:
            if len(deliveries) == 1:
                d = deliveries[0]
                log.exception("store rejected the outcome of %s", d.spool_id, extra={"trace_id": d.spool_id})
                entry = await self.store.spool_get(d.spool_id)
                attempts = entry.attempts if entry else self.cfg.pipeline.max_attempts
                if attempts >= self.cfg.pipeline.max_attempts or d.kind == "quarantine":
                    await self.store.deliver([Delivery(d.spool_id, "quarantine",
                                                       reason="store error while saving the outcome")], now)
                    self.metrics.outcomes.labels(state=QUARANTINED).inc()
                else:
                    await self.store.spool_retry(d.spool_id, "store error while saving the outcome",
                                                 now + self.cfg.pipeline.retry_delay)
                return
            for d in deliveries:  # isolate the one that fails
                await self._deliver([d])
            return
        for r in results:
            self.metrics.outcomes.labels(state=r.state).inc()
            log.info("%s -> %s%s%s", r.spool_id, r.state, f" {r.ticket_number}" if r.ticket_number else "",
                     f" ({r.reason})" if r.reason else "", extra={"trace_id": r.spool_id})
            received = _received_at(r.spool_id)
            if received:
                self.metrics.processing_latency.observe(max(0.0, now - received))


def _received_at(spool_id: str) -> float:
    """Receive time encoded in the spool id (ms since epoch in the first 11 hex digits)."""
    try:
        return int(spool_id[:11], 16) / 1000.0
    except ValueError:
        return 0.0
