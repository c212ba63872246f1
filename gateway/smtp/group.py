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
import multiprocessing.connection
import os
import signal
from typing import Any, Callable

from gateway.smtp.checks import DataCheck, HeaderSectionCheck, LoopCheck
from gateway.config.load import Config
from gateway.smtp.limits import Limits
from gateway.runtime.childgroup import Child, ChildGroup
from gateway.runtime.childlink import ParentLink
from gateway.runtime.metrics import Metrics, snapshot
from gateway.smtp.replies import Reply

log = logging.getLogger(__name__)
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
class SmtpGroup(ChildGroup):
    """Starts ``extra`` SMTP child processes on ``listen``, serves their limits, restarts the dead."""

    label = "SMTP"
    kill_after = 10.0

    def __init__(self, cfg: Config, extra: int, listen: Listen, limits: Limits, metrics: Metrics,
                 on_wake: Callable[[], None]) -> None:
        super().__init__(cfg, extra, child_main, on_wake)
        self.extra = extra
        self.listen = listen
        self.limits = limits
        self.metrics = metrics

    def child_args(self, slot: int, conn: multiprocessing.connection.Connection) -> tuple[Any, ...]:
        return (self.cfg, slot, self.listen, conn)

    async def start(self, timeout: float = 30.0) -> None:
        """Spawn every child and wait until each one listens (a child that cannot bind fails the start)."""
        await super().start(timeout)
        self._update_gauge()

    def handle(self, child: Child, msg: tuple[Any, ...]) -> None:
        kind = msg[0]
        if kind == "open":
            self.send(child, ("reply", msg[1], self.limits.open(child.slot, msg[2])))
        elif kind == "close":
            self.limits.close(child.slot, msg[1])
        elif kind == "rate":
            self.send(child, ("reply", msg[1], self.limits.rate_check(msg[2], msg[3])))
        elif kind == "hit":
            self.limits.rate_hit(msg[1], msg[2])
        else:
            super().handle(child, msg)

    def on_ready(self, child: Child) -> None:
        self._update_gauge()

    def on_gone(self, child: Child) -> None:
        self.limits.drop_slot(child.slot)
        self._update_gauge()

    def _update_gauge(self) -> None:
        self.metrics.smtp_processes.set(1 + sum(1 for c in self.children.values() if c.ready.is_set()
                                                and not c.gone))
