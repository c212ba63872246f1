"""Several SMTP processes on one listener (``[smtp] processes``).

One Python process answers SMTP on about one core: under load the SMTP side
(sessions, SPF/DKIM/DMARC, the spool commit) is the ceiling while the other
cores idle. With ``processes = N`` the main process and N-1 SMTP processes bind
the same addresses with SO_REUSEPORT and the kernel spreads new connections over
them. Each SMTP process has its own store connection, spool writer, DNS cache
and check chain; what must stay one for the whole gateway stays in the main
process and is reached over a control pipe per child:

* session counts and rate windows (``gateway/smtp/limits.py``): a client gets
  ``max_sessions_per_ip`` sessions and its rate across all processes, not per process;
* the pipeline wake-up after a spool commit (the main process wakes its workers);
* metrics: on each scrape the main process asks every child for its samples and
  adds them to its own, so ``/metrics`` stays one view of the service (a dead
  child's counters are kept, so no counter goes backwards);
* SIGHUP (the main process validates the file, then sends the new config) and
  SIGTERM (each child drains its own sessions within ``shutdown_grace``).

A child that dies is restarted; connections waiting in its accept queue are
reset by the kernel and the client retries (no accepted message is lost: the
250 comes only after the spool commit).
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
from dataclasses import dataclass, field
from typing import Any, Callable

from gateway.smtp.checks import DataCheck, HeaderSectionCheck, LoopCheck
from gateway.config.load import Config
from gateway.smtp.limits import Limits
from gateway.runtime.childlink import ParentLink, read_when_ready
from gateway.runtime.metrics import Metrics, Snapshot, retire, snapshot
from gateway.smtp.replies import Reply

log = logging.getLogger(__name__)
_CTX = multiprocessing.get_context("spawn")  # never fork a process that runs an event loop and threads
Listen = list[tuple[str, int]]


# -- child side -------------------------------------------------------------------------------------------
class RemoteLimits:
    """``gateway.smtp.limits.LimitsClient`` of an SMTP child: asks the main process's authority."""

    def __init__(self, link: ParentLink, cfg: Config) -> None:
        self.link = link
        self.cfg = cfg

    @property
    def rates_on(self) -> bool:
        return bool(self.cfg.smtp.rate_per_ip or self.cfg.smtp.rate_per_sender)

    async def open(self, ip: str | None) -> Reply | None:
        return await self.link.ask("open", ip)  # None (allowed) if the parent is gone: we are stopping

    def close(self, ip: str | None) -> None:
        self.link.send(("close", ip))

    async def rate_check(self, ip: str, sender: str) -> Reply | None:
        return await self.link.ask("rate", ip, sender)

    def rate_hit(self, ip: str, sender: str) -> None:
        self.link.send(("hit", ip, sender))


def build_checks(cfg: Config, executor: concurrent.futures.Executor | None, resolver: list) -> list[DataCheck]:
    """The SMTP-time check chain of one SMTP process. ``resolver`` is a one-item box holding that
    process's DNS resolver (and cache): reused across reloads unless ``[dns]`` changed."""
    checks: list[DataCheck] = [HeaderSectionCheck(),
                               LoopCheck(cfg.smtp.hostname, cfg.smtp.loop_marker, cfg.smtp.max_received_headers)]
    from gateway.auth.dns import Resolver
    from gateway.smtp.auth_check import AuthCheck
    current = resolver[0]
    if current is None or getattr(current, "ticketmx_dns_cfg", None) != cfg.dns:
        current = resolver[0] = Resolver(cfg.dns.nameservers, cfg.dns.timeout)
        current.ticketmx_dns_cfg = cfg.dns
    checks.append(AuthCheck.from_config(cfg, executor, resolver=current))
    from gateway.smtp.rspamd_check import build_data_checks
    from gateway.config.pipeline import PipelinePolicy
    checks += build_data_checks(cfg.policy or PipelinePolicy(), cfg.mailbox_policies)
    return checks


def child_main(cfg: Config, slot: int, listen: Listen, conn: multiprocessing.connection.Connection) -> None:
    """Entry point of an SMTP child process."""
    from gateway.runtime.allocator import tune
    tune()  # not inherited through spawn (gateway/runtime/allocator.py)
    from gateway.runtime.logsetup import setup_logging
    from gateway.runtime.proctitle import set_name
    set_name(f"ticketmx-smtp{slot}")
    setup_logging(cfg.log.level, cfg.log.json)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C goes to the main process, which stops us in order
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # reloads come from the main process, already validated
    from gateway.runtime.eventloop import run
    prof = os.environ.get("TICKETMX_SMTP_CPROFILE")  # profiling aid (docs/perf.md)
    if prof:
        import cProfile
        with cProfile.Profile() as p:
            try:
                run(_child(cfg, slot, listen, conn), cfg.smtp.event_loop)
            finally:
                p.dump_stats(f"{prof}.smtp{slot}-{os.getpid()}")
        return
    run(_child(cfg, slot, listen, conn), cfg.smtp.event_loop)


async def _child(cfg: Config, slot: int, listen: Listen, conn: multiprocessing.connection.Connection) -> None:
    from gateway.pipeline.runner.worker import make_executor
    from gateway.config.recipients import RecipientMap
    from gateway.smtpd import Handler, SmtpListener
    from gateway.spool import SpoolWriter
    from gateway.store import open_store

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    store = open_store(cfg)
    await store.open()
    await store.defer_checkpoints(run_here=False)  # the main process checkpoints for every SMTP process
    executor = make_executor()
    metrics = Metrics()
    metrics.smtp_processes.set(0)  # the main process counts the listening processes
    resolver_box: list[Any] = [None]
    metrics.watch_resolver(lambda: resolver_box[0])
    listener: SmtpListener | None = None

    def on_message(msg: tuple[Any, ...]) -> None:
        if msg[0] == "metrics":
            link.send(("metrics", snapshot(metrics)))
        elif msg[0] == "reload" and listener is not None:
            new: Config = msg[1]
            try:
                listener.reconfigure(new, build_checks(new, executor, resolver_box))
                limits.cfg = new
            except Exception:
                log.exception("SMTP process %d: reload failed, keeping the running config", slot)

    link = ParentLink(conn, on_message, stop.set)
    limits = RemoteLimits(link, cfg)
    spool = SpoolWriter(store, metrics, on_commit=lambda: link.send(("wake",)))
    spool.start()
    handler = Handler(cfg, RecipientMap(cfg.mailboxes), spool, metrics, build_checks(cfg, executor, resolver_box),
                      limits)
    listener = SmtpListener(cfg, handler, metrics)
    try:
        await listener.start(listen, reuse_port=True)
    except OSError as exc:
        log.error("SMTP process %d cannot bind %s: %s", slot, listen, exc)
        raise SystemExit(1)
    link.send(("ready", os.getpid()))
    log.debug("SMTP process %d listening (pid %d)", slot, os.getpid())
    await stop.wait()
    await listener.close(cfg.smtp.shutdown_grace if not link.closed else min(5.0, cfg.smtp.shutdown_grace))
    await spool.close()
    link.send(("metrics", snapshot(metrics)))  # the final counts: the parent keeps them
    executor.shutdown(wait=True, cancel_futures=True)
    await store.close()


# -- parent side ------------------------------------------------------------------------------------------
@dataclass
class _Child:
    slot: int
    proc: Any  # multiprocessing.Process (spawn context)
    conn: multiprocessing.connection.Connection
    pid: int | None = None
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    last: Snapshot = field(default_factory=list)
    fresh: asyncio.Event = field(default_factory=asyncio.Event)
    gone: bool = False


class SmtpGroup:
    """Starts ``extra`` SMTP child processes on ``listen``, serves their limits, restarts the dead."""

    def __init__(self, cfg: Config, extra: int, listen: Listen, limits: Limits, metrics: Metrics,
                 on_wake: Callable[[], None]) -> None:
        self.cfg = cfg
        self.extra = extra
        self.listen = listen
        self.limits = limits
        self.metrics = metrics
        self.on_wake = on_wake
        self.children: dict[int, _Child] = {}
        self.retired: Snapshot = []  # counters of children that exited (counters never go backwards)
        self._stopping = False
        self._restarts: set[asyncio.Task[None]] = set()

    async def start(self, timeout: float = 30.0) -> None:
        """Spawn every child and wait until each one listens (a child that cannot bind fails the start)."""
        for slot in range(1, self.extra + 1):
            self._spawn(slot)
        for child in list(self.children.values()):
            waiter = asyncio.ensure_future(child.ready.wait())
            done, _ = await asyncio.wait({waiter}, timeout=timeout)
            if not done or child.gone:
                waiter.cancel()
                raise RuntimeError(f"SMTP process {child.slot} did not start (see the log above)")
        self._update_gauge()

    def _spawn(self, slot: int) -> None:
        parent_conn, child_conn = _CTX.Pipe(duplex=True)
        proc = _CTX.Process(target=child_main, args=(self.cfg, slot, self.listen, child_conn),
                            name=f"ticketmx-smtp-{slot}", daemon=True)
        proc.start()
        child_conn.close()
        child = _Child(slot, proc, parent_conn)
        self.children[slot] = child
        loop = asyncio.get_running_loop()
        read_when_ready(loop, parent_conn, self._readable, child)
        loop.add_reader(proc.sentinel, self._on_exit, child)

    def _send(self, child: _Child, msg: tuple[Any, ...]) -> None:
        if child.gone:
            return
        try:
            child.conn.send(msg)
        except (OSError, EOFError):
            pass  # it is dying; _on_exit cleans up

    def _readable(self, child: _Child) -> None:
        try:
            while child.conn.poll():
                self._dispatch(child, child.conn.recv())
        except (EOFError, OSError):
            try:
                asyncio.get_running_loop().remove_reader(child.conn.fileno())
            except (ValueError, OSError):
                pass

    def _dispatch(self, child: _Child, msg: tuple[Any, ...]) -> None:
        kind = msg[0]
        if kind == "wake":
            self.on_wake()
        elif kind == "open":
            self._send(child, ("reply", msg[1], self.limits.open(child.slot, msg[2])))
        elif kind == "close":
            self.limits.close(child.slot, msg[1])
        elif kind == "rate":
            self._send(child, ("reply", msg[1], self.limits.rate_check(msg[2], msg[3])))
        elif kind == "hit":
            self.limits.rate_hit(msg[1], msg[2])
        elif kind == "metrics":
            child.last = msg[1]
            child.fresh.set()
        elif kind == "ready":
            child.pid = msg[1]
            child.ready.set()
            log.info("SMTP process %d started (pid %d)", child.slot, msg[1])

    def _on_exit(self, child: _Child) -> None:
        if child.gone:
            return  # already handled (close() and the sentinel callback can both get here)
        loop = asyncio.get_running_loop()
        loop.remove_reader(child.proc.sentinel)
        self._readable(child)  # its last words: final metrics, closes
        try:
            loop.remove_reader(child.conn.fileno())
        except (ValueError, OSError):
            pass
        child.gone = True
        child.conn.close()
        child.proc.join(0)
        child.ready.set()  # wakes start() if it died before listening
        child.fresh.set()
        self.limits.drop_slot(child.slot)
        self.retired = retire(self.retired, child.last)
        if self.children.get(child.slot) is child:
            del self.children[child.slot]
        self._update_gauge()
        if self._stopping:
            return
        log.error("SMTP process %d died (exit code %s); restarting it", child.slot, child.proc.exitcode)
        task = loop.create_task(self._restart(child.slot))
        self._restarts.add(task)
        task.add_done_callback(self._restarts.discard)

    async def _restart(self, slot: int) -> None:
        await asyncio.sleep(0.5)  # no hot restart loop if the child dies at once
        if not self._stopping and slot not in self.children:
            self._spawn(slot)
            await self.children[slot].ready.wait()
            self._update_gauge()

    def _update_gauge(self) -> None:
        self.metrics.smtp_processes.set(1 + sum(1 for c in self.children.values() if c.ready.is_set()
                                                and not c.gone))

    async def snapshots(self, timeout: float = 2.0) -> list[Snapshot]:
        """Every child's current samples (asked now; the last known if a child does not answer in time),
        plus the counters of children that exited."""
        live = [c for c in self.children.values() if not c.gone and c.ready.is_set()]
        for child in live:
            child.fresh.clear()
            self._send(child, ("metrics",))
        if live:
            waits = [asyncio.ensure_future(c.fresh.wait()) for c in live]
            _, pending = await asyncio.wait(waits, timeout=timeout)
            for w in pending:
                w.cancel()
        return [c.last for c in live] + [self.retired]

    def reload(self, cfg: Config) -> None:
        """Send a validated config to every child (they apply it to their next command or session)."""
        self.cfg = cfg
        for child in self.children.values():
            self._send(child, ("reload", cfg))

    @property
    def pids(self) -> list[int]:
        return [c.pid for c in self.children.values() if c.pid is not None and not c.gone]

    async def close(self, grace: float) -> None:
        """SIGTERM every child (each drains its sessions within ``grace``), then kill what is left."""
        self._stopping = True
        for task in list(self._restarts):
            task.cancel()
        children = list(self.children.values())
        for child in children:
            if child.proc.is_alive():
                child.proc.terminate()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace + 10
        for child in children:
            while child.proc.is_alive() and loop.time() < deadline:
                await asyncio.sleep(0.05)
            if child.proc.is_alive():
                log.error("SMTP process %d did not stop in %.0fs; killing it", child.slot, grace + 10)
                child.proc.kill()
                child.proc.join(1)
        await asyncio.sleep(0)  # let the exit callbacks run (final metrics)
        for child in children:
            if not child.gone:
                self._on_exit(child)
