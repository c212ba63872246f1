"""The main process's side of a group of spawned child processes (SMTP processes, HTTP processes).

Both groups do the same supervision: spawn each slot with a duplex control pipe, read the pipe on the
running loop, answer the child's requests, keep its last metrics snapshot (and the counters of the
dead: counters never go backwards), restart a child that dies, send validated configs on reload,
and stop the children in order (SIGTERM, a grace, then SIGKILL). What differs — the messages each
kind of child sends, how a restart waits — is in the subclass (gateway/smtp/group.py,
gateway/http/process.py). The child's end of the pipe is :class:`gateway.runtime.childlink.ParentLink`.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import multiprocessing
import multiprocessing.connection
from dataclasses import dataclass, field
from multiprocessing.reduction import ForkingPickler
from typing import Any, Callable, Coroutine

from gateway.runtime.childlink import read_when_ready
from gateway.runtime.metrics import Snapshot, retire

log = logging.getLogger(__name__)
INLINE_MAX = 16 * 1024  # bytes: a pickled message up to this size is written on the loop (well under a socket buffer)
_CTX = multiprocessing.get_context("spawn")  # never fork a process that runs an event loop and threads


def _write(conn: multiprocessing.connection.Connection, data: bytes) -> None:
    try:
        conn.send_bytes(data)
    except (OSError, EOFError, ValueError):
        pass  # the child exited (or its pipe was closed): _on_exit cleans up


@dataclass
class Child:
    slot: int
    proc: Any  # multiprocessing.Process (spawn context)
    conn: multiprocessing.connection.Connection
    pid: int | None = None
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    last: Snapshot = field(default_factory=list)
    fresh: asyncio.Event = field(default_factory=asyncio.Event)
    gone: bool = False
    # big messages (and whatever follows them) are written by this one thread, in order: see send()
    writer: concurrent.futures.ThreadPoolExecutor | None = None
    backlog: int = 0  # messages handed to the writer and not yet written


class ChildGroup:
    """Spawns ``count`` children of ``target``, answers their pipes, restarts the dead, stops them."""

    label = "child"        # in log lines and process names: "SMTP", "HTTP"
    kill_after = 5.0       # seconds past the stop grace before SIGKILL

    def __init__(self, cfg: Any, count: int, target: Callable[..., None], on_wake: Callable[[], None]) -> None:
        self.cfg = cfg
        self.count = count
        self.target = target
        self.on_wake = on_wake
        self.children: dict[int, Child] = {}
        self.retired: Snapshot = []  # counters of children that exited
        self.restarts = 0
        self._stopping = False
        self._tasks: set[asyncio.Task[Any]] = set()

    # -- what a kind of child adds ---------------------------------------------------------------------
    def child_args(self, slot: int, conn: multiprocessing.connection.Connection) -> tuple[Any, ...]:
        """The arguments of ``target`` for ``slot`` (``conn`` is the child's end of the pipe)."""
        raise NotImplementedError

    def handle(self, child: Child, msg: tuple[Any, ...]) -> None:
        """A message beyond the common ones (wake, metrics, ready)."""
        log.warning("%s process %d sent an unknown message %r", self.label, child.slot, msg[0])

    def on_ready(self, child: Child) -> None:
        """The child serves."""

    def on_gone(self, child: Child) -> None:
        """The child exited (before any restart)."""

    def restart_delay(self, child: Child) -> float:
        """How long to wait before restarting ``child`` (logged here): no hot loop if it dies at once."""
        log.error("%s process %d died (exit code %s); restarting it", self.label, child.slot, child.proc.exitcode)
        return 0.5

    # -- supervision -----------------------------------------------------------------------------------
    @property
    def pids(self) -> list[int]:
        return [c.pid for c in self.children.values() if c.pid is not None and not c.gone]

    async def start(self, timeout: float) -> None:
        """Spawn every child and wait until each one serves (one that cannot start fails the start)."""
        for slot in range(1, self.count + 1):
            self._spawn(slot)
        for child in list(self.children.values()):
            waiter = asyncio.ensure_future(child.ready.wait())
            done, _ = await asyncio.wait({waiter}, timeout=timeout)
            if not done or child.gone:
                waiter.cancel()
                raise RuntimeError(f"{self.label} process {child.slot} did not start (see the log above)")

    def _spawn(self, slot: int) -> None:
        parent_conn, child_conn = _CTX.Pipe(duplex=True)
        proc = _CTX.Process(target=self.target, args=self.child_args(slot, child_conn),
                            name=f"ticketmx-{self.label.lower()}-{slot}", daemon=True)
        proc.start()
        child_conn.close()
        child = Child(slot, proc, parent_conn)
        self.children[slot] = child
        loop = asyncio.get_running_loop()
        read_when_ready(loop, parent_conn, self._readable, child)
        loop.add_reader(proc.sentinel, self._on_exit, child)

    def send(self, child: Child, msg: tuple[Any, ...]) -> None:
        """Send ``msg`` to ``child``. The pipe is blocking (childlink.read_when_ready), so a message
        larger than the socket buffer would hold the loop until the child reads it — and if the child
        is at that moment writing a big message to us (a snapshot while we answer its /metrics), neither
        would ever read: a deadlock. Small messages are written at once; a big one, and anything after
        it while it is being written, goes to the child's writer thread, so the loop keeps reading."""
        if child.gone:
            return
        data = ForkingPickler.dumps(msg)
        if child.backlog == 0 and len(data) <= INLINE_MAX:
            try:
                child.conn.send_bytes(data)
            except (OSError, EOFError):
                pass  # it is dying; _on_exit cleans up
            return
        if child.writer is None:
            child.writer = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=f"{self.label}-pipe{child.slot}")
        child.backlog += 1
        loop = asyncio.get_running_loop()
        fut = loop.run_in_executor(child.writer, _write, child.conn, data)
        fut.add_done_callback(lambda _f: setattr(child, "backlog", child.backlog - 1))

    def spawn_task(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Run ``coro`` on the loop, kept referenced until done and cancelled by close()."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _readable(self, child: Child) -> None:
        try:
            while child.conn.poll():
                self._dispatch(child, child.conn.recv())
        except (EOFError, OSError):
            try:
                asyncio.get_running_loop().remove_reader(child.conn.fileno())
            except (ValueError, OSError):
                pass

    def _dispatch(self, child: Child, msg: tuple[Any, ...]) -> None:
        kind = msg[0]
        if kind == "wake":
            self.on_wake()
        elif kind == "metrics":
            child.last = msg[1]
            child.fresh.set()
        elif kind == "ready":
            child.pid = msg[1]
            child.ready.set()
            self.on_ready(child)
            log.info("%s process %d started (pid %d)", self.label, child.slot, msg[1])
        else:
            self.handle(child, msg)

    def _on_exit(self, child: Child) -> None:
        if child.gone:
            return  # already handled (close() and the sentinel callback can both get here)
        loop = asyncio.get_running_loop()
        loop.remove_reader(child.proc.sentinel)
        self._readable(child)  # its last words: final metrics
        try:
            loop.remove_reader(child.conn.fileno())
        except (ValueError, OSError):
            pass
        child.gone = True
        if child.writer is not None:  # close after the writes queued before (they fail fast: it exited)
            child.writer.submit(child.conn.close)
            child.writer.shutdown(wait=False)
        else:
            child.conn.close()
        child.proc.join(1)  # the sentinel fired: it is exiting; reaped, its exit code is known
        child.ready.set()  # wakes start() if it died before serving
        child.fresh.set()
        self.retired = retire(self.retired, child.last)
        if self.children.get(child.slot) is child:
            del self.children[child.slot]
        self.on_gone(child)
        if self._stopping:
            return
        self.spawn_task(self._restart(child.slot, self.restart_delay(child)))

    async def _restart(self, slot: int, delay: float) -> None:
        await asyncio.sleep(delay)
        if not self._stopping and slot not in self.children:
            self.restarts += 1
            self._spawn(slot)

    async def snapshots(self, timeout: float = 2.0) -> list[Snapshot]:
        """Every child's current samples (asked now; the last known if a child does not answer in time),
        plus the counters of children that exited."""
        live = [c for c in self.children.values() if not c.gone and c.ready.is_set()]
        for child in live:
            child.fresh.clear()
            self.send(child, ("metrics",))
        if live:
            waits = [asyncio.ensure_future(c.fresh.wait()) for c in live]
            _, pending = await asyncio.wait(waits, timeout=timeout)
            for w in pending:
                w.cancel()
        return [c.last for c in live] + [self.retired]

    def reload(self, cfg: Any) -> None:
        """Send a validated config to every child (its next request or session sees it)."""
        self.cfg = cfg
        for child in self.children.values():
            self.send(child, ("reload", cfg))

    async def close(self, grace: float) -> None:
        """SIGTERM every child (each finishes its work in flight within ``grace``), then kill what is left."""
        self._stopping = True
        for task in list(self._tasks):
            task.cancel()
        children = list(self.children.values())
        for child in children:
            if child.proc.is_alive():
                child.proc.terminate()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace + self.kill_after
        for child in children:
            while child.proc.is_alive() and loop.time() < deadline:
                await asyncio.sleep(0.05)
            if child.proc.is_alive():
                log.error("%s process %d did not stop in %.0fs; killing it", self.label, child.slot,
                          grace + self.kill_after)
                child.proc.kill()
                child.proc.join(1)
        await asyncio.sleep(0)  # let the exit callbacks run (final metrics)
        for child in children:
            if not child.gone:
                self._on_exit(child)
