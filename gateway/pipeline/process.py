"""Pipeline worker processes and their supervisor.

Python runs one thread of Python at a time per process, so the SMTP loop and
the pipeline (MIME parsing, ticket writes) in one process share one core. Here
the pipeline runs in child processes with their own store connection: spool
claims are transactional (and owned by a worker id), so any number of workers
can share the spool. The parent

* wakes the children through a pipe after each spool commit (no polling delay),
* receives their metric reports through another pipe and applies them to its
  Prometheus registry (one /metrics for the whole service),
* restarts a child that dies, first releasing exactly that child's claims.
"""
from __future__ import annotations

import asyncio
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
from dataclasses import dataclass, field
from typing import Any, Callable

from ..config import Config
from ..metrics import Metrics
from ..store import open_store
from ..store.base import Store
from .worker import MetricsSink, Worker, make_executor

log = logging.getLogger(__name__)
_CTX = multiprocessing.get_context("spawn")  # never fork a process that runs an event loop and threads


# -- child side -------------------------------------------------------------------------------------------
class ReportingSink:
    """Buffers a batch's stats in the child and sends them to the parent in one message."""

    def __init__(self, conn: multiprocessing.connection.Connection) -> None:
        self.conn = conn
        self.pending: dict[str, Any] = {"outcomes": [], "errors": 0, "batches": []}

    def consecutive_failures(self, n: int) -> None:
        self.pending["consecutive"] = n

    def notifications_queued(self, n: int) -> None:
        self.pending["notified"] = self.pending.get("notified", 0) + n

    def outcome(self, state: str, latency: float | None) -> None:
        self.pending["outcomes"].append((state, latency))

    def acks_suppressed(self, reasons: dict[str, int]) -> None:
        acc = self.pending.setdefault("acks_suppressed", {})
        for reason, n in reasons.items():
            acc[reason] = acc.get(reason, 0) + n

    def error(self) -> None:
        self.pending["errors"] += 1

    def batch(self, seconds: float) -> None:
        self.pending["batches"].append(seconds)
        self.flush()

    def flush(self) -> None:
        if self.pending["outcomes"] or self.pending["errors"] or self.pending["batches"] or \
                "consecutive" in self.pending or "notified" in self.pending or "acks_suppressed" in self.pending:
            try:
                self.conn.send(self.pending)
            except OSError:
                pass  # the parent is gone; the store holds the truth anyway
            self.pending = {"outcomes": [], "errors": 0, "batches": []}


def child_main(cfg: Config, owner: str, wake: multiprocessing.connection.Connection,
               report: multiprocessing.connection.Connection) -> None:
    """Entry point of a worker process."""
    from ..logsetup import setup_logging
    from ..proctitle import set_name
    set_name("ticketmx-worker")
    setup_logging(cfg.log.level, cfg.log.json)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C goes to the parent, which stops us in order
    from ..eventloop import run
    prof_dir = os.environ.get("TICKETMX_WORKER_CPROFILE")  # profiling aid (bench/perf.py, docs/perf.md)
    if prof_dir:
        import cProfile
        with cProfile.Profile() as prof:
            try:
                run(_child(cfg, owner, wake, report), cfg.smtp.event_loop)
            finally:
                prof.dump_stats(os.path.join(prof_dir, f"worker-{os.getpid()}.prof"))
        return
    run(_child(cfg, owner, wake, report), cfg.smtp.event_loop)


async def _child(cfg: Config, owner: str, wake: multiprocessing.connection.Connection,
                 report: multiprocessing.connection.Connection) -> None:
    loop = asyncio.get_running_loop()
    store = open_store(cfg)
    await store.open()
    executor = make_executor()
    sink = ReportingSink(report)
    worker = Worker(cfg, store, sink, executor, owner=owner)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    fd = wake.fileno()
    os.set_blocking(fd, False)

    def on_wake() -> None:
        try:
            if not os.read(fd, 4096):  # EOF: the parent died
                stop.set()
        except BlockingIOError:
            return
        except OSError:
            stop.set()
        worker.wake()

    loop.add_reader(fd, on_wake)
    worker.start()
    log.debug("pipeline worker %s started (pid %d)", owner, os.getpid())
    await stop.wait()
    loop.remove_reader(fd)
    await worker.close()
    sink.flush()
    executor.shutdown(wait=True, cancel_futures=True)
    await store.close()


# -- parent side ------------------------------------------------------------------------------------------
@dataclass
class _Child:
    owner: str
    proc: Any  # multiprocessing.Process (spawn context)
    wake_w: int
    report_r: multiprocessing.connection.Connection
    closing: bool = field(default=False)


class WorkerPool:
    """Starts ``n`` worker processes, wakes them, collects their reports, restarts the dead."""

    def __init__(self, cfg: Config, store: Store, metrics: Metrics, n: int,
                 on_notify: "Callable[[], None] | None" = None) -> None:
        self.cfg = cfg
        self.store = store
        self.sink = MetricsSink(metrics, on_notify)
        self.n = n
        self.children: list[_Child] = []
        self._generation = 0
        self._stopping = False
        self._restarts: set[asyncio.Task[None]] = set()
        self._retired: list[_Child] = []  # replaced on reload, still finishing their batch

    def start(self) -> None:
        for slot in range(self.n):
            self._spawn(slot)

    def _spawn(self, slot: int) -> None:
        self._generation += 1
        owner = f"{os.uname().nodename}:{os.getpid()}:w{slot}.{self._generation}"
        wake_r, wake_w = _CTX.Pipe(duplex=False)
        report_r, report_w = _CTX.Pipe(duplex=False)
        proc = _CTX.Process(target=child_main, args=(self.cfg, owner, wake_r, report_w),
                            name=f"ticketmx-worker-{slot}", daemon=True)
        proc.start()
        wake_r.close()
        report_w.close()
        os.set_blocking(wake_w.fileno(), False)
        child = _Child(owner, proc, os.dup(wake_w.fileno()), report_r)
        wake_w.close()
        loop = asyncio.get_running_loop()
        loop.add_reader(report_r.fileno(), self._on_report, child)
        loop.add_reader(proc.sentinel, self._on_exit, child, slot)
        if slot < len(self.children):
            self.children[slot] = child
        else:
            self.children.append(child)
        log.info("pipeline worker %s started (pid %d)", owner, proc.pid)

    def wake(self) -> None:
        for child in self.children:
            if child.wake_w < 0:
                continue
            try:
                os.write(child.wake_w, b"\0")
            except (BlockingIOError, BrokenPipeError, OSError):
                pass  # a full pipe already means "wake up"; a dead child is being restarted

    def _on_report(self, child: _Child) -> None:
        try:
            while child.report_r.poll():
                report = child.report_r.recv()
                for state, latency in report["outcomes"]:
                    self.sink.outcome(state, latency)
                for _ in range(report["errors"]):
                    self.sink.error()
                for seconds in report["batches"]:
                    self.sink.batch(seconds)
                if "consecutive" in report:
                    self.sink.consecutive_failures(report["consecutive"])
                if report.get("notified"):
                    self.sink.notifications_queued(report["notified"])
                if report.get("acks_suppressed"):
                    self.sink.acks_suppressed(report["acks_suppressed"])
        except (EOFError, OSError):
            asyncio.get_running_loop().remove_reader(child.report_r.fileno())

    def _on_exit(self, child: _Child, slot: int) -> None:
        loop = asyncio.get_running_loop()
        loop.remove_reader(child.proc.sentinel)
        self._on_report(child)
        try:
            loop.remove_reader(child.report_r.fileno())
        except (ValueError, OSError):
            pass
        os.close(child.wake_w)
        child.wake_w = -1  # the fd number will be reused (by a client socket!): never write to it again
        child.proc.join(0)
        if child in self._retired:
            self._retired.remove(child)
        if self._stopping or child.closing:
            return
        log.error("pipeline worker %s died (exit code %s); releasing its claims and restarting",
                  child.owner, child.proc.exitcode)
        task = loop.create_task(self._restart(child, slot))
        self._restarts.add(task)
        task.add_done_callback(self._restarts.discard)

    async def _restart(self, child: _Child, slot: int) -> None:
        released = await self.store.spool_recover(child.owner)
        if released:
            log.warning("released %d spool entries claimed by %s", released, child.owner)
        await asyncio.sleep(0.5)  # no hot restart loop if the child dies at once
        if not self._stopping:
            self._spawn(slot)
            self.wake()

    def replace_all(self, cfg: Config) -> None:
        """Config reload: start fresh workers with ``cfg``; the old ones finish their batch and exit."""
        self.cfg = cfg
        for slot, child in enumerate(list(self.children)):
            child.closing = True
            if child.proc.is_alive():
                child.proc.terminate()
            self._retired.append(child)
            self._spawn(slot)

    async def close(self, timeout: float) -> None:
        """SIGTERM every child (it finishes its batch), wait up to ``timeout``, then kill."""
        self._stopping = True
        for task in list(self._restarts):
            task.cancel()
        everyone = self.children + self._retired
        for child in everyone:
            child.closing = True
            if child.proc.is_alive():
                child.proc.terminate()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        for child in everyone:
            while child.proc.is_alive() and loop.time() < deadline:
                await asyncio.sleep(0.05)
            if child.proc.is_alive():
                log.error("pipeline worker %s did not stop in %.0fs; killing it", child.owner, timeout)
                child.proc.kill()
            child.proc.join(1)
            self._on_report(child)

    @property
    def owners(self) -> list[str]:
        return [c.owner for c in self.children]
