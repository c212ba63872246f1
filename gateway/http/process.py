"""HTTP server processes (``[http] processes``, default 1): the API beside the SMTP process, not in it.

Python runs one thread of Python per process at a time: with uvicorn in the SMTP process's loop, a
busy API (JSON encoding, FastAPI's validation, store reads) took SMTP throughput down to 0.73-0.79 of
idle (bench/bench_http_smtp.py, docs/benchmarks.md). Here the API runs in spawned children, like the
pipeline workers and the extra SMTP processes. The main process binds ``[http] listen`` once (port 0
resolves once, a bind error fails the start with the key) and hands the listening socket to every
child: they accept from one queue, so a child that dies leaves waiting connections to the others or
to its successor. Each child has its own store connection (SQLite WAL; its own PostgreSQL pool),
spool writer (HTTP inbound: no 2xx before its commit), executor and DNS resolver. What must be one for
the service stays in the main process and is reached over one control pipe per child:

* the pipeline wake-up after a spool commit, replay or release, and the relay wake-up after a reply;
* ``/metrics``: the child asks the main process, which adds up every process's samples (its own, the
  pipeline's reports, the SMTP and HTTP processes', asked at scrape time) — one exposition;
* ``/readyz``: the main process tells each child when the service is ready and when it stops;
* ``[http] rate_per_token`` with several children: the main process holds the windows (with one
  child, that child holds them itself: it sees every request);
* SIGHUP: the main process validates the file and sends the new config; SIGTERM: each child stops
  accepting and lets requests in flight finish within ``[http] shutdown_grace``.

A child that dies is restarted after 0.5 s.
"""
from __future__ import annotations

import asyncio
import logging
import multiprocessing.connection
import os
import signal
import socket
from typing import Any, Callable

Config = Any  # gateway.config.load.Config (gateway.http does not import the config room)

from gateway.http.deps import Problem, Services, take
from gateway.runtime.childgroup import Child, ChildGroup
from gateway.runtime.childlink import ParentLink
from gateway.runtime.metrics import Metrics, snapshot
from gateway.runtime.ratelimit import SlidingWindow

log = logging.getLogger(__name__)
EX_STORE_UNAVAILABLE = 75  # could not open the store: restarted with backoff (up to 30 s), not every 0.5 s


# -- child side -------------------------------------------------------------------------------------------
class _Host:
    """What :class:`Services` reads in an HTTP process (the gateway object's role in-process)."""

    def __init__(self, cfg: Config, store: Any, metrics: Metrics, spool: Any, executor: Any) -> None:
        self.cfg, self.store, self.metrics, self.spool, self.executor = cfg, store, metrics, spool, executor
        self.ready = False   # set by the main process: ready once the whole service is
        self.resolver = None


class ChildServices(Services):
    """:class:`Services` of an HTTP process: what belongs to the whole service goes to the main process."""

    def __init__(self, host: _Host, link: ParentLink, shared_rate: bool) -> None:
        super().__init__(host)
        self.link = link
        self.shared_rate = shared_rate  # several HTTP processes: the rate windows are the main process's

    def wake_relay(self) -> None:
        self.link.send(("wake_relay",))

    def wake_pipeline(self) -> None:
        self.link.send(("wake",))

    @property
    def sources(self) -> Any:
        """The pull sources run in the main process: pause / resume go there, so they act at once."""
        return _ParentSources(self.link)

    async def render_metrics(self) -> bytes:
        body = await self.link.ask("render")
        if body is None:
            raise Problem(503, "Service Unavailable", "the gateway is stopping", headers={"Retry-After": "5"})
        return body

    async def rate_check(self, name: str) -> int | None:
        if not self.shared_rate or self.cfg.http.rate_per_token is None:
            return await super().rate_check(name)
        return await self.link.ask("rate", name)


def child_main(cfg: Config, slot: int, sock: socket.socket, conn: multiprocessing.connection.Connection,
               shared_rate: bool, ready: bool = False) -> None:
    """Entry point of an HTTP process."""
    from gateway.runtime.allocator import tune
    tune()  # not inherited through spawn (gateway/runtime/allocator.py)
    from gateway.runtime.logsetup import setup_logging
    from gateway.runtime.proctitle import set_name
    set_name(f"ticketmx-http{slot}")
    setup_logging(cfg.log.level, cfg.log.json)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C goes to the main process, which stops us in order
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # reloads come from the main process, already validated
    from gateway.runtime.eventloop import run
    run(_child(cfg, slot, sock, conn, shared_rate, ready), cfg.smtp.event_loop)


async def _child(cfg: Config, slot: int, sock: socket.socket, conn: multiprocessing.connection.Connection,
                 shared_rate: bool, ready: bool) -> None:
    from gateway.http.server import HttpServer
    from gateway.pipeline.runner.worker import make_executor
    from gateway.spool import SpoolWriter
    from gateway.store import open_store

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    store = open_store(cfg)
    store.webhooks = cfg.webhooks  # API writes queue webhook events in their transaction
    try:
        await store.open()
    except Exception as exc:  # one line, not a traceback per restart while the store is down
        log.error("HTTP process %d cannot open the store: %s: %s; exiting with code %d", slot, type(exc).__name__,
                  " ".join(str(exc).split())[:300], EX_STORE_UNAVAILABLE)
        raise SystemExit(EX_STORE_UNAVAILABLE) from None
    await store.defer_checkpoints(run_here=False)  # the main process checkpoints for everyone
    executor = make_executor()
    metrics = Metrics()
    metrics.smtp_processes.set(0)  # the main process counts the SMTP processes
    link: ParentLink
    spool = SpoolWriter(store, metrics, on_commit=lambda: link.send(("wake",)))
    host = _Host(cfg, store, metrics, spool, executor)
    host.ready = ready  # a restarted process serves a ready service: ready from its first request

    def on_message(msg: tuple[Any, ...]) -> None:
        if msg[0] == "metrics":
            link.send(("metrics", snapshot(metrics)))
        elif msg[0] == "ready":
            host.ready = bool(msg[1])
        elif msg[0] == "reload":
            host.cfg = msg[1]
            store.webhooks = msg[1].webhooks

    link = ParentLink(conn, on_message, stop.set)
    spool.start()
    server = HttpServer(ChildServices(host, link, shared_rate), cfg.http)
    await server.start(sock)
    link.send(("ready", os.getpid()))
    await stop.wait()
    host.ready = False
    await server.close()
    await spool.close()
    link.send(("metrics", snapshot(metrics)))  # the final counts: the main process keeps them
    executor.shutdown(wait=True, cancel_futures=True)
    await store.close()


# -- parent side ------------------------------------------------------------------------------------------
class _ParentSources:
    """``pause`` / ``resume`` of the main process's source manager, asked over the control pipe (the
    store write happens there, before the answer, so a GET right after sees it)."""

    def __init__(self, link: ParentLink) -> None:
        self.link = link

    async def pause(self, name: str, reason: str) -> None:
        if await self.link.ask("source", "pause", name, reason) is None:
            raise Problem(503, "Service Unavailable", "the gateway is stopping", headers={"Retry-After": "5"})

    async def resume(self, name: str) -> None:
        if await self.link.ask("source", "resume", name, "") is None:
            raise Problem(503, "Service Unavailable", "the gateway is stopping", headers={"Retry-After": "5"})


class HttpGroup(ChildGroup):
    """Starts ``[http] processes`` children on one listening socket, answers them, restarts the dead."""

    label = "HTTP"

    def __init__(self, cfg: Config, sock: socket.socket, metrics: Metrics, on_wake: Callable[[], None],
                 on_wake_relay: Callable[[], None],
                 sources: Callable[[], Any] = lambda: None) -> None:
        super().__init__(cfg, cfg.http.processes, child_main, on_wake)
        self.sources = sources  # () -> the running SourceManager (or None), asked by "source" messages
        self.sock = sock
        self.metrics = metrics
        self.on_wake_relay = on_wake_relay
        self.n = cfg.http.processes
        self._open_failures = 0  # HTTP processes in a row that could not open the store
        self._ready = False
        self._limiter: SlidingWindow | None = None

    @property
    def port(self) -> int:
        return self.sock.getsockname()[1]

    def child_args(self, slot: int, conn: multiprocessing.connection.Connection) -> tuple[Any, ...]:
        return (self.cfg, slot, self.sock, conn, self.n > 1, self._ready)

    async def start(self, timeout: float = 60.0) -> None:
        """Spawn every child and wait until each one serves (one that cannot start fails the start)."""
        await super().start(timeout)
        log.info("HTTP API served by %d process(es) on http://%s:%d/api/v1/", self.n, self.cfg.http.listen[0],
                 self.port)

    def handle(self, child: Child, msg: tuple[Any, ...]) -> None:
        kind = msg[0]
        if kind == "wake_relay":
            self.on_wake_relay()
        elif kind == "rate":
            self.send(child, ("reply", msg[1], take(self._rate_limiter(), msg[2])))
        elif kind == "render":
            self.spawn_task(self._render(child, msg[1]))
        elif kind == "source":
            self.spawn_task(self._source(child, msg[1], msg[2], msg[3], msg[4]))
        else:
            super().handle(child, msg)

    def on_ready(self, child: Child) -> None:
        self._open_failures = 0
        self.send(child, ("ready", self._ready))

    def restart_delay(self, child: Child) -> float:
        if child.proc.exitcode == EX_STORE_UNAVAILABLE:  # it said why in one line
            self._open_failures += 1
            delay = min(30.0, 0.5 * 2 ** self._open_failures)
            log.warning("HTTP process %d could not open the store; next try in %.0fs", child.slot, delay)
            return delay
        return super().restart_delay(child)

    async def _render(self, child: Child, rid: int) -> None:
        try:
            body: bytes | None = await self.metrics.render_all()
        except Exception:
            log.exception("metrics for HTTP process %d failed", child.slot)
            body = None
        self.send(child, ("reply", rid, body))

    async def _source(self, child: Child, rid: int, action: str, name: str, reason: str) -> None:
        """A pause / resume from the API, applied by the running manager (None: no manager runs)."""
        manager = self.sources()
        ok: bool | None = None
        try:
            if manager is not None:
                await (manager.pause(name, reason) if action == "pause" else manager.resume(name))
                ok = True
        except Exception:
            log.exception("source %s %s asked by HTTP process %d failed", action, name, child.slot)
        self.send(child, ("reply", rid, ok))

    def _rate_limiter(self) -> SlidingWindow | None:
        rate = self.cfg.http.rate_per_token
        if rate is None:
            return None
        if self._limiter is None or self._limiter.rate != rate:
            self._limiter = SlidingWindow(rate)
        return self._limiter

    def set_ready(self, ready: bool) -> None:
        """The service became ready (or is stopping): /readyz of every child says so."""
        self._ready = ready
        for child in self.children.values():
            if child.ready.is_set():
                self.send(child, ("ready", ready))

    async def close(self, grace: float | None = None) -> None:
        """SIGTERM every child (each finishes its requests within ``[http] shutdown_grace``), kill what is left."""
        await super().close(self.cfg.http.shutdown_grace if grace is None else grace)
        self.sock.close()
