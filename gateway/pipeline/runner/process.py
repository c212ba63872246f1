"""Pipeline worker processes and their supervisor.

Python runs one thread of Python at a time per process, so the SMTP loop and
the pipeline (MIME parsing, ticket writes) in one process share one core. Here
the pipeline runs in child processes with their own store connection: spool
claims are transactional (and owned by a worker id), so any number of workers
can share the spool. The parent

* wakes the children through a pipe after each spool commit (no polling delay),
* receives their metric reports through another pipe and applies them to its
  Prometheus registry (one /metrics for the whole service),
* restarts a child that dies, first releasing exactly that child's claims,
* kills a child that one message keeps busy longer than ``[pipeline] message_budget``
  (it reads what each child is busy with from shared memory, :mod:`gateway.pipeline.runner.budget`),
  quarantines that message and hands the rest of its batch back at once.
"""
from __future__ import annotations

import asyncio
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from gateway.config.load import Config
from gateway.runtime.childlink import read_when_ready
from gateway.runtime.metrics import Metrics
from gateway.store import open_store
from gateway.store.base import PROCESSING, QUARANTINED, Delivery, Store
from gateway.pipeline.runner.budget import REASON, Slots, read_slot
from gateway.pipeline.runner.worker import MetricsSink, Worker, _received_at, make_executor

log = logging.getLogger(__name__)
_CTX = multiprocessing.get_context("spawn")  # never fork a process that runs an event loop and threads
EX_STORE_UNAVAILABLE = 75  # a worker that could not open the store: restarted with backoff, not at once


# -- child side -------------------------------------------------------------------------------------------
class ReportingSink:
    """Buffers a batch's stats in the child and sends them to the parent in one message."""

    def __init__(self, conn: multiprocessing.connection.Connection) -> None:
        self.conn = conn
        self.pending: dict[str, Any] = {"outcomes": [], "errors": 0, "batches": []}

    def budget_exceeded(self) -> None:
        self.pending["budget"] = self.pending.get("budget", 0) + 1

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

    def acknowledgements(self, results: dict[str, int]) -> None:
        acc = self.pending.setdefault("acks", {})
        for result, n in results.items():
            acc[result] = acc.get(result, 0) + n

    def error(self) -> None:
        self.pending["errors"] += 1

    def batch(self, seconds: float) -> None:
        self.pending["batches"].append(seconds)
        self.flush()

    def flush(self) -> None:
        if self.pending["outcomes"] or self.pending["errors"] or self.pending["batches"] or \
                "consecutive" in self.pending or "notified" in self.pending or "budget" in self.pending or \
                "acks_suppressed" in self.pending or "acks" in self.pending:
            try:
                self.conn.send(self.pending)
            except OSError:
                pass  # the parent is gone; the store holds the truth anyway
            self.pending = {"outcomes": [], "errors": 0, "batches": []}


def child_main(cfg: Config, owner: str, wake: multiprocessing.connection.Connection,
               report: multiprocessing.connection.Connection, slots: Slots | None = None) -> None:
    """Entry point of a worker process."""
    from gateway.runtime.allocator import tune
    tune()  # not inherited through spawn (gateway/runtime/allocator.py)
    from gateway.runtime.logsetup import setup_logging
    from gateway.runtime.proctitle import set_name
    set_name("ticketmx-worker")
    setup_logging(cfg.log.level, cfg.log.json)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C goes to the parent, which stops us in order
    _guard_orphan(os.getppid(), max(30.0, 2 * cfg.pipeline.message_budget))
    from gateway.runtime.eventloop import run
    prof_dir = os.environ.get("TICKETMX_WORKER_CPROFILE")  # profiling aid (bench/perf.py, docs/perf.md)
    if prof_dir:
        import cProfile
        with cProfile.Profile() as prof:
            try:
                run(_child(cfg, owner, wake, report, slots), cfg.smtp.event_loop)
            finally:
                prof.dump_stats(os.path.join(prof_dir, f"worker-{os.getpid()}.prof"))
        return
    run(_child(cfg, owner, wake, report, slots), cfg.smtp.event_loop)


def _guard_orphan(parent: int, grace: float) -> None:
    """If the supervisor dies, a healthy child drains (its wake pipe closes) and exits; one stuck on
    a message would spin forever with nobody left to kill it. This thread ends such an orphan after
    ``grace`` (it wakes once a second; nothing per message)."""
    import threading

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        time.sleep(grace)
        log.error("pipeline worker orphaned and still busy after %.0fs; exiting", grace)
        os._exit(70)
    threading.Thread(target=watch, name="orphan-guard", daemon=True).start()


async def _child(cfg: Config, owner: str, wake: multiprocessing.connection.Connection,
                 report: multiprocessing.connection.Connection, slots: Slots | None = None) -> None:
    loop = asyncio.get_running_loop()
    store = open_store(cfg)
    try:
        await store.open()
    except Exception as exc:  # one line, not a traceback per restart while the store is down
        log.error("pipeline worker %s cannot open the store: %s: %s; exiting with code %d", owner,
                  type(exc).__name__, " ".join(str(exc).split())[:300], EX_STORE_UNAVAILABLE)
        raise SystemExit(EX_STORE_UNAVAILABLE) from None
    executor = make_executor()
    sink = ReportingSink(report)
    worker = Worker(cfg, store, sink, executor, owner=owner, slots=slots)
    try:
        report.send({"steps": worker.meter.step_names})  # names for the supervisor's quarantine reason
    except OSError:
        pass
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
    slots: Slots
    closing: bool = field(default=False)
    steps: tuple[str, ...] = ("parse",)
    suspects: set[tuple[int, int]] = field(default_factory=set)  # (slot, seq) over budget at the last look
    killed_for: tuple[str, str, float] | None = None  # (spool id, step, busy seconds): killed over budget


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
        self._settling: set[asyncio.Task[None]] = set()  # after a budget kill: quarantine, release
        self._watch_task: asyncio.Task[None] | None = None
        self._open_failures: dict[int, int] = {}  # slot -> workers in a row that could not open the store

    def start(self) -> None:
        for slot in range(self.n):
            self._spawn(slot)
        self._watch_task = asyncio.get_running_loop().create_task(self._watch(), name="pipeline-budget")

    def _spawn(self, slot: int) -> None:
        self._generation += 1
        owner = f"{os.uname().nodename}:{os.getpid()}:w{slot}.{self._generation}"
        wake_r, wake_w = _CTX.Pipe(duplex=False)
        report_r, report_w = _CTX.Pipe(duplex=False)
        slots = _CTX.RawValue(Slots)  # what the child is busy with, read by _watch
        proc = _CTX.Process(target=child_main, args=(self.cfg, owner, wake_r, report_w, slots),
                            name=f"ticketmx-worker-{slot}", daemon=True)
        proc.start()
        wake_r.close()
        report_w.close()
        os.set_blocking(wake_w.fileno(), False)
        child = _Child(owner, proc, os.dup(wake_w.fileno()), report_r, slots)
        wake_w.close()
        loop = asyncio.get_running_loop()
        read_when_ready(loop, report_r, self._on_report, child)  # blocking: a report is read whole (uvloop)
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
                if "steps" in report:  # sent once the store is open
                    child.steps = tuple(report["steps"])
                    if child in self.children:
                        self._open_failures.pop(self.children.index(child), None)
                for state, latency in report.get("outcomes", ()):
                    self.sink.outcome(state, latency)
                for _ in range(report.get("errors", 0)):
                    self.sink.error()
                for seconds in report.get("batches", ()):
                    self.sink.batch(seconds)
                for _ in range(report.get("budget", 0)):
                    self.sink.budget_exceeded()
                if "consecutive" in report:
                    self.sink.consecutive_failures(report["consecutive"])
                if report.get("notified"):
                    self.sink.notifications_queued(report["notified"])
                if report.get("acks_suppressed"):
                    self.sink.acks_suppressed(report["acks_suppressed"])
                if report.get("acks"):
                    self.sink.acknowledgements(report["acks"])
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
        child.proc.join(1)  # the sentinel fired: it is exiting; reap it so exitcode is known
        if child in self._retired:
            self._retired.remove(child)
        if child.killed_for is not None:
            respawn = not (self._stopping or child.closing)
            task = loop.create_task(self._after_budget_kill(child, slot, respawn))
            self._settling.add(task)
            task.add_done_callback(self._settling.discard)
            return
        if self._stopping or child.closing:
            return
        delay = 0.5  # no hot restart loop if the child dies at once
        if child.proc.exitcode == EX_STORE_UNAVAILABLE:  # it said why in one line; back off to 30 s
            n = self._open_failures[slot] = self._open_failures.get(slot, 0) + 1
            delay = min(30.0, 0.5 * 2 ** n)
            log.warning("pipeline worker %s could not open the store; next try in %.0fs", child.owner, delay)
        else:
            log.error("pipeline worker %s died (exit code %s); releasing its claims and restarting",
                      child.owner, child.proc.exitcode)
        task = loop.create_task(self._restart(child, slot, delay))
        self._restarts.add(task)
        task.add_done_callback(self._restarts.discard)

    async def _restart(self, child: _Child, slot: int, delay: float = 0.5) -> None:
        failures = 0
        while child.proc.exitcode != EX_STORE_UNAVAILABLE and not self._stopping:  # (that one claimed nothing)
            try:
                await self._release_after_crash(child)
                break
            except Exception as exc:  # the store refuses writes: its claims must not stay processing
                failures += 1
                if failures & (failures - 1) == 0:  # 1st, 2nd, 4th, 8th ... try: a bounded log
                    log.error("could not release the claims of %s (try %d): %s: %s; retrying", child.owner,
                              failures, type(exc).__name__, " ".join(str(exc).split())[:300])
                await asyncio.sleep(min(30.0, 0.25 * 2 ** failures))
        await asyncio.sleep(delay)
        if not self._stopping:
            self._spawn(slot)
            self.wake()

    async def _release_after_crash(self, child: _Child) -> None:
        """A child died by itself: its claims go back, the attempt charged only to what it was busy on.

        The busy slots (shared memory, still readable after the death) name the message whose code
        was running on the event loop or in the parse thread at that moment: that message's processing
        crashed the worker, so its attempt counts. The rest of the batch was only waiting and gets its
        attempt back (a crasher in a batch of 20 no longer drags the 19 others to quarantine). With no
        slot busy nothing points at one message, and every claim keeps its attempt, as before: a
        message that crashes the worker some other way still reaches max_attempts."""
        now = time.monotonic()
        culprits = sorted({b.entry for b in (read_slot(child.slots.loop, now), read_slot(child.slots.thread, now))
                           if b is not None})
        if culprits:
            charged = await self.store.spool_release(culprits, child.owner, refund=False)
            refunded = await self.store.spool_recover(child.owner, refund=True)
            log.warning("released %d spool entries claimed by %s: %s busy when it died (attempt counted), "
                        "%d others with their attempt refunded", charged + refunded, child.owner,
                        ", ".join(culprits), refunded, extra={"trace_id": culprits[0]})
            return
        released = await self.store.spool_recover(child.owner)
        if released:
            log.warning("released %d spool entries claimed by %s", released, child.owner)

    # -- the message budget --------------------------------------------------------------------------
    def _tick(self) -> float:
        """How often the children's busy slots are read: a tenth of the budget, 50 ms to 500 ms."""
        return min(0.5, max(0.05, self.cfg.pipeline.message_budget / 10))

    async def _watch(self) -> None:
        """Kill a child that has been busy on one message for longer than the budget.

        A slot is only acted on when it was over budget at two looks in a row with the same
        sequence number: the child is still inside the very same slice, so the reading is not torn."""
        while True:
            await asyncio.sleep(self._tick())
            now = time.monotonic()
            for child in self.children + self._retired:
                if child.killed_for is None and child.wake_w >= 0:
                    self._check(child, now)

    def _check(self, child: _Child, now: float) -> None:
        budget = self.cfg.pipeline.message_budget
        over: set[tuple[int, int]] = set()
        for index, slot in enumerate((child.slots.loop, child.slots.thread)):
            busy = read_slot(slot, now)
            if busy is None or busy.spent <= budget:
                continue
            key = (index, busy.seq)
            over.add(key)
            if key not in child.suspects:
                continue  # confirm at the next look
            step = child.steps[busy.step] if 0 <= busy.step < len(child.steps) else "?"
            child.killed_for = (busy.entry, step, busy.spent)
            log.error("pipeline worker %s: %s busy for %.1fs on %s (in %s, budget %gs); killing it",
                      child.owner, "the event loop" if index == 0 else "the parse thread", busy.spent,
                      busy.entry, step, budget, extra={"trace_id": busy.entry})
            if child.proc.is_alive():
                child.proc.kill()
            return
        child.suspects = over

    async def _after_budget_kill(self, child: _Child, slot: int, respawn: bool) -> None:
        """The child is dead: quarantine the message it was stuck on, then give its other claims back
        with their attempt refunded (they did nothing wrong), and start a new child at once."""
        assert child.killed_for is not None
        sid, step, spent = child.killed_for
        budget = self.cfg.pipeline.message_budget
        reason = f"{REASON}: {spent:.1f}s busy, budget {budget:g}s, in {step} (worker killed)"
        quarantined = False
        try:
            entry = await self.store.spool_get(sid)
            if entry is not None and entry.state == PROCESSING:
                await self.store.deliver([Delivery(sid, "quarantine", reason=reason, history=(
                    {"stage": step, "action": "quarantine", "reason": reason},))], time.time())
                received = _received_at(sid)
                self.sink.outcome(QUARANTINED, max(0.0, time.time() - received) if received else None)
                self.sink.budget_exceeded()
                log.warning("%s -> quarantined (%s)", sid, reason, extra={"trace_id": sid})
            quarantined = True
        except Exception:
            log.exception("could not quarantine %s after its budget kill; its attempt counts", sid)
        try:
            # Refund only once the culprit is out of the way: otherwise it must not escape max_attempts.
            released = await self.store.spool_recover(child.owner, refund=quarantined)
            if released:
                log.warning("released %d spool entries claimed by %s", released, child.owner)
        except Exception:
            log.exception("could not release the claims of %s", child.owner)
        if respawn and not self._stopping:
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
        # The budget watch goes on while the children finish their batch: one stuck on a message
        # is killed at the budget rather than at ``timeout``.
        everyone = self.children + self._retired
        for child in everyone:
            child.closing = True
            if child.proc.is_alive():
                child.proc.terminate()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        killed: list[_Child] = []
        for child in everyone:
            while child.proc.is_alive() and loop.time() < deadline:
                await asyncio.sleep(0.05)
            if child.proc.is_alive():
                log.error("pipeline worker %s did not stop in %.0fs; killing it", child.owner, timeout)
                child.proc.kill()
                killed.append(child)
            child.proc.join(1)
            self._on_report(child)
        if self._watch_task is not None:
            self._watch_task.cancel()
            self._watch_task = None
        await asyncio.sleep(0)  # let _on_exit callbacks of the last children run
        if self._settling:
            await asyncio.gather(*self._settling, return_exceptions=True)
        for child in killed:  # stopped by us, not crashed by its message: claims back, attempts refunded
            if child.killed_for is not None:
                continue  # over budget: _after_budget_kill settled it
            try:
                released = await self.store.spool_recover(child.owner, refund=True)
                if released:
                    log.warning("released %d spool entries claimed by %s (stopped)", released, child.owner)
            except Exception as exc:  # recovered at the next start (as an interruption)
                log.warning("could not release the claims of %s at stop: %s", child.owner, exc)

    @property
    def owners(self) -> list[str]:
        return [c.owner for c in self.children]
