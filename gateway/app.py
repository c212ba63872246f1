"""The gateway service: starts resources in order, stops them in reverse.

store -> spool writer -> pipeline worker -> metrics -> HTTP API -> SMTP listener;
on stop the listeners (SMTP, HTTP) close first (421 to new sessions, transactions in flight finish
within the grace time), then the worker drains, then the store closes.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import signal
import time
from dataclasses import replace

from gateway.smtp.checks import DataCheck
from gateway.config.load import Config, load_config
from relay.notify import deep_check
from gateway.config.errors import ConfigErrors
from gateway.smtp.limits import Limits, LocalLimits
from gateway.runtime.metrics import Metrics
from gateway.pipeline.runner.process import WorkerPool
from gateway.pipeline.runner.assemble import build_pipeline
from gateway.pipeline.runner.worker import MetricsSink, Worker, make_executor
from gateway.config.recipients import RecipientMap
from gateway.config.errors import ConfigError
from gateway.smtp.group import build_checks
from gateway.smtpd import Handler, SmtpListener, _tls_context
from gateway.spool import SpoolWriter
from gateway.store import open_store
from gateway.store.base import Store

log = logging.getLogger(__name__)

# Exit codes of `ticketmx serve` (sysexits.h; docs/operations.md, "Exit codes"). 78 (EX_CONFIG, from the
# CLI) is a config error: restarting cannot help, the unit does not restart on it. 75 is transient: the
# store could not be opened (locked past the busy timeout, disk full, read-only, unreachable PostgreSQL);
# the service manager restarts the process, which then tries again.
EX_FAIL = 1
EX_TEMPFAIL = 75


class StoreUnavailable(Exception):
    """The store could not be opened or prepared at start; the cause is chained (``__cause__``)."""


class Gateway:
    def __init__(self, cfg: Config, executor: concurrent.futures.Executor | None = None) -> None:
        self.cfg = cfg
        self.metrics = Metrics()
        self.store: Store = open_store(cfg)
        self._own_executor = executor is None
        self.executor = executor
        self.spool: SpoolWriter | None = None
        self.worker: Worker | None = None          # in-process pipeline ([pipeline] processes = 0)
        self.pool: WorkerPool | None = None        # pipeline worker processes (the default)
        self.relay = None                          # relay.worker.RelayWorker when a smarthost is configured
        self.listener: SmtpListener | None = None
        self.limits = Limits(cfg)                  # session counts and rates of every SMTP process
        self.group = None                          # gateway.smtp.group.SmtpGroup with [smtp] processes > 1
        self.metrics_server = None                 # gateway.http.metrics_server.MetricsServer ([metrics] listen)
        self.http = None                           # [http] listen set: gateway.http.process.HttpGroup (its own
                                                   # processes), or gateway.http.server.HttpServer (processes = 0)
        self._ready = False
        self._stopped = False
        self._depth_task: asyncio.Task[None] | None = None
        self._retention_task: asyncio.Task[None] | None = None
        self._sla_task: asyncio.Task[None] | None = None
        self._relay_metrics = None                 # relay.worker.RelayMetrics, registered once, kept across reloads
        self._relay_swap: asyncio.Task[None] | None = None
        self.webhooks = None                       # gateway.webhooks.worker.WebhookWorker with [[webhook]]s
        self._webhook_metrics = None               # registered once, kept across reloads
        self._webhooks_swap: asyncio.Task[None] | None = None
        self.sources = None                        # gateway.ingress.sources.manager.SourceManager with [[source]]s
        self._source_metrics = None                # registered once, kept across reloads
        self._sources_swap: asyncio.Task[None] | None = None
        self.resolver = None  # one DNS resolver (and cache) for the whole SMTP process
        self.metrics.watch_resolver(lambda: self.resolver)

    @property
    def ready(self) -> bool:
        return self._ready

    def build_checks(self) -> list[DataCheck]:
        box = [self.resolver]
        checks = build_checks(self.cfg, self.executor, box)
        self.resolver = box[0]
        return checks

    async def start(self) -> None:
        self.store.webhooks = self.cfg.webhooks  # also on a store a test put in place of open_store's
        try:
            await self.store.open()
            # The SMTP spool writer's commits (each one a 250 waiting) never carry a WAL checkpoint:
            # this process runs them in the background instead (docs/architecture.md, Durability).
            await self.store.defer_checkpoints(run_here=True)
            from gateway.pipeline.stages.twoway import ensure_thread_key
            await ensure_thread_key(self.store)  # before any worker starts: one key for all of them
            # Entries a previous run left in processing: their attempt is refunded and counted as an
            # interruption instead (docs/operations.md, "Crashes and interruptions").
            recovered = await self.store.spool_recover()
        except Exception as exc:
            raise StoreUnavailable(f"{type(exc).__name__}: {exc}") from exc
        if recovered:
            log.warning("recovered %d spool entries left in processing by a previous run", recovered)
        if self.executor is None:
            self.executor = make_executor()  # bounded thread pool for CPU-heavy work of this process
        if self.cfg.relay is not None and self.cfg.relay.enabled:
            self.relay = self._new_relay(self.cfg)
            await self.relay.start()
        if self.cfg.webhooks:
            self.webhooks = self._new_webhooks(self.cfg)
            await self.webhooks.start()
        wake_relay = self._wake_relay  # whichever relay worker runs now (a reload may replace it)
        if self.cfg.pipeline.processes > 0:
            self.pool = WorkerPool(self.cfg, self.store, self.metrics, self.cfg.pipeline.processes, wake_relay)
            self.pool.start()
            wake = self.pool.wake
        else:
            log.warning("[pipeline] processes = 0: message_budget is checked between a message's steps only; "
                        "one step that never ends stalls the pipeline (worker processes bound it: processes >= 1)")
            self.worker = Worker(self.cfg, self.store, MetricsSink(self.metrics, wake_relay), self.executor,
                                 inline_parse_max=0)  # the SMTP loop never parses MIME
            self.worker.start()
            wake = self.worker.wake
        self.spool = SpoolWriter(self.store, self.metrics, on_commit=wake)
        self.spool.start()
        if self.cfg.sources:
            await self._start_sources(self.cfg)
        if self.cfg.metrics.listen is not None:
            from gateway.http.metrics_server import MetricsServer
            host, port = self.cfg.metrics.listen
            self.metrics_server = MetricsServer(self.metrics, host, port, lambda: self._ready)
            await self.metrics_server.start()
        if self.cfg.http.enabled and self.cfg.http.processes > 0:
            from gateway.http.process import HttpGroup
            from gateway.http.server import bind
            sock = bind(*self.cfg.http.listen)
            self.http = HttpGroup(self.cfg, sock, self.metrics, wake, wake_relay, lambda: self.sources)
            await self.http.start()
        elif self.cfg.http.enabled:
            from gateway.http.deps import Services
            from gateway.http.server import HttpServer
            self.http = HttpServer(Services(self), self.cfg.http)
            await self.http.start()
        self.metrics.remote = self._remote_metrics
        handler = Handler(self.cfg, RecipientMap(self.cfg.mailboxes), self.spool, self.metrics,
                          self.build_checks(), LocalLimits(self.limits))
        self.listener = SmtpListener(self.cfg, handler, self.metrics)
        extra = self.cfg.smtp.processes - 1
        # With several SMTP processes, bind first (port 0 resolved for the others) but accept only once
        # they all listen: a client connecting early would otherwise always land on this process.
        await self.listener.start(reuse_port=extra > 0, serve=extra == 0)
        if extra > 0:
            from gateway.smtp.group import SmtpGroup
            self.group = SmtpGroup(self.cfg, extra, self.listener.addresses, self.limits, self.metrics, wake)
            await self.group.start()
            await self.listener.serve()
        self._depth_task = asyncio.get_running_loop().create_task(self._refresh_depth(), name="spool-depth")
        self._retention_task = asyncio.get_running_loop().create_task(self._retention(), name="retention")
        self._sync_sla()
        self._ready = True
        if hasattr(self.http, "set_ready"):
            self.http.set_ready(True)
        from gateway.store.postgres import redact_url
        log.info("ticketmx ready (%d mailboxes, store %s)", len(self.cfg.mailboxes), redact_url(self.cfg.store.url))

    async def stop(self, grace: float | None = None) -> None:
        if self._stopped:
            return
        self._stopped = True
        self._ready = False
        if hasattr(self.http, "set_ready"):
            self.http.set_ready(False)
        grace = self.cfg.smtp.shutdown_grace if grace is None else grace
        closing = []
        if self.listener is not None:
            closing.append(self.listener.close(grace))
        if self.group is not None:
            closing.append(self.group.close(grace))  # the other SMTP processes drain at the same time
        if self.http is not None:
            closing.append(self.http.close())  # requests in flight finish within [http] shutdown_grace
        await asyncio.gather(*closing)
        if self._sources_swap is not None:
            await asyncio.gather(self._sources_swap, return_exceptions=True)
        if self.sources is not None:
            await self.sources.close()  # before the spool writer: a fetch in flight commits or is fetched again
        if self.spool is not None:
            await self.spool.close()
        if self.worker is not None:
            await self.worker.close()
        if self.pool is not None:
            await self.pool.close(timeout=max(5.0, self.cfg.smtp.shutdown_grace))
        if self._relay_swap is not None:
            await asyncio.gather(self._relay_swap, return_exceptions=True)
        if self.relay is not None:
            await self.relay.close(grace=min(10.0, self.cfg.smtp.shutdown_grace))
        if self._webhooks_swap is not None:
            await asyncio.gather(self._webhooks_swap, return_exceptions=True)
        if self.webhooks is not None:
            await self.webhooks.close(grace=min(10.0, self.cfg.smtp.shutdown_grace))
        for task in (self._depth_task, self._retention_task, self._sla_task):
            if task is not None:
                task.cancel()
        if self.metrics_server is not None:
            await self.metrics_server.close()
        if self._own_executor and self.executor is not None:
            self.executor.shutdown(wait=True, cancel_futures=True)
        await self.store.close()
        log.info("ticketmx stopped")

    def reload(self, path: str | None) -> bool:
        """SIGHUP: apply a new config without dropping sessions; a bad one is refused, the old one kept.

        Mailboxes, limits, checks and the TLS certificate apply to the next SMTP command or session;
        pipeline workers are replaced by new ones (each old one finishes its batch first). A changed
        ``[relay]`` replaces the relay worker (:meth:`_swap_relay`). Listen addresses and the store URL
        need a restart (logged when they differ).
        """
        try:
            new = load_config(path)
            if errors := deep_check(new):  # a template that does not render refuses the reload
                raise ConfigErrors(errors)
            tls = _tls_context_or_error(new)
        except ConfigErrors as exc:
            log.error("reload refused, keeping the running config: %s", exc)
            _sd_notify(f"STATUS=reload refused: {str(exc).splitlines()[0][:200]}")
            return False
        if self.listener is None:
            return False
        for what, old_v, new_v in (("smtp.listen", self.cfg.smtp.listen, new.smtp.listen),
                                   ("smtp.processes", self.cfg.smtp.processes, new.smtp.processes),
                                   ("store.url", self.cfg.store.url, new.store.url),
                                   ("metrics.listen", self.cfg.metrics.listen, new.metrics.listen),
                                   ("http.listen", self.cfg.http.listen, new.http.listen),
                                   ("http.processes", self.cfg.http.processes, new.http.processes)):
            if old_v != new_v:
                log.warning("reload: %s changed; it takes effect at the next restart", what)
        new = replace(new, smtp=replace(new.smtp, listen=self.cfg.smtp.listen, processes=self.cfg.smtp.processes),
                      store=self.cfg.store, metrics=self.cfg.metrics,
                      http=replace(new.http, listen=self.cfg.http.listen, processes=self.cfg.http.processes))
        webhooks_changed = new.webhooks != self.cfg.webhooks
        relay_changed = (new.relay != self.cfg.relay or new.smtp.hostname != self.cfg.smtp.hostname
                         or _relay_keys(new) != _relay_keys(self.cfg))
        self.cfg = new
        self.limits.configure(new)
        self.listener.reconfigure(new, self.build_checks(), tls)
        if self.group is not None:
            self.group.reload(new)
        if hasattr(self.http, "reload"):
            self.http.reload(new)  # HTTP processes; in-process, the API reads self.cfg at each request
        if self.worker is not None:
            self.worker.cfg = new
            self.worker.ctx = replace(self.worker.ctx, cfg=new, recipients=RecipientMap(new.mailboxes))
            self.worker.stages = build_pipeline(new)
            self.worker.meter.budget = new.pipeline.message_budget
            self.worker.meter.step_names = ("parse", *(st.name for st in self.worker.stages))
            self.worker._keys_loaded = False
        if self.pool is not None:
            self.pool.replace_all(new)
        if relay_changed:
            previous = self._relay_swap
            self._relay_swap = asyncio.get_running_loop().create_task(self._swap_relay(new, previous),
                                                                      name="relay-reload")
        else:
            self._sync_sla()  # [twoway] queue targets may have changed
        if self.sources is not None or new.sources:
            previous_sources = self._sources_swap
            self._sources_swap = asyncio.get_running_loop().create_task(
                self._reload_sources(new, previous_sources), name="sources-reload")
        if webhooks_changed:
            self.store.webhooks = new.webhooks  # events queued from now on follow the new subscriptions
            self._webhooks_swap = asyncio.get_running_loop().create_task(self._swap_webhooks(new),
                                                                         name="webhooks-reload")
        log.info("config reloaded from %s (%d mailboxes)", path or "(embedded defaults)", len(new.mailboxes))
        _sd_notify(f"STATUS=running, config reloaded ({len(new.mailboxes)} mailboxes)")
        return True

    async def _remote_metrics(self) -> list:
        """The other processes' samples at scrape time: SMTP processes and HTTP processes."""
        out: list = []
        for group in (self.group, self.http):
            if hasattr(group, "snapshots"):
                out += await group.snapshots()
        return out

    async def _retention(self) -> None:
        """Purge old raw mail, quarantined mail and closed tickets per [retention]; with several nodes
        on one database only the holder of the "retention" lease purges (run once across nodes)."""
        import os
        import socket
        owner = f"{socket.gethostname()}:{os.getpid()}"
        while True:
            r = self.cfg.retention
            try:
                lease = getattr(self.store, "lease", None)
                if lease is not None and not await lease("retention", owner, r.interval * 2 + 60):
                    await asyncio.sleep(r.interval)
                    continue
                counts = await self.store.purge(time.time(), r.raw_days, r.quarantine_days, r.closed_ticket_days,
                                                relay_days=r.relay_days, audit_days=r.audit_days)
                if any(counts.values()):
                    log.info("retention purge: %s", counts)
            except Exception as exc:  # one line: a locked or full store would repeat it every interval
                log.error("retention purge failed: %s: %s", type(exc).__name__, " ".join(str(exc).split())[:300])
            await asyncio.sleep(r.interval)

    # -- pull sources (gateway/ingress/sources/, docs/sources.md) ----------------------------------------
    async def _start_sources(self, cfg: Config) -> None:
        from gateway.ingress.sources.manager import SourceManager, SourceMetrics
        if self._source_metrics is None:
            self._source_metrics = SourceMetrics(self.metrics.registry)
        assert self.spool is not None
        self.sources = SourceManager(cfg, self.store, self.spool, executor=self.executor,
                                     metrics=self._source_metrics, notify=self._tell_admin_source)
        await self.sources.start()

    async def _reload_sources(self, cfg: Config, previous: "asyncio.Task[None] | None") -> None:
        if previous is not None:
            await asyncio.gather(previous, return_exceptions=True)  # reloads apply in order
        try:
            if self.sources is None:
                if cfg.sources:
                    await self._start_sources(cfg)
            else:
                await self.sources.reload(cfg)
        except Exception:
            log.exception("sources reload failed; the sources running before keep running")

    async def _tell_admin_source(self, name: str, reason: str) -> None:
        """A source paused itself (stop_after_failures): mail to ``[pipeline] admin_address`` through the
        relay queue, as the pipeline's own pause does; without an admin address or a relay, the log line
        and ``ticketmx_source_paused`` are all there is."""
        admin = self.cfg.pipeline.admin_address
        if not admin or self.cfg.relay is None or not self.cfg.relay.enabled:
            log.warning("source %s paused itself; no [pipeline] admin_address with a relay to tell", name)
            return
        from relay.notify import MailboxInfo, Notifier, TicketInfo
        from gateway.store.relay_queue import enqueue
        notifier = Notifier(self.cfg.relay, hostname=self.cfg.smtp.hostname)
        mb = next((m for m in self.cfg.mailboxes if any(s.name == name and s.mailbox == m.address
                                                         for s in self.cfg.sources)), None)
        mb = mb or (self.cfg.mailboxes[0] if self.cfg.mailboxes else None)
        n = notifier.build("paused", ticket=TicketInfo(None, "source", "paused"),
                           mailbox=MailboxInfo(mb.address if mb else self.cfg.relay.from_address, mb.name if mb else ""),
                           to=[admin], context={"reason": reason, "hostname": self.cfg.smtp.hostname, "source": name},
                           dedupe_key=f"source-paused:{name}:{int(time.time() // 3600)}")  # one an hour per source
        await self.store.transaction(lambda conn: enqueue(conn, n))
        self._wake_relay()

    # -- webhooks -------------------------------------------------------------------------------------
    def _new_webhooks(self, cfg: Config):  # noqa: ANN202 - gateway.webhooks.worker.WebhookWorker
        from gateway.webhooks.worker import WebhookMetrics, WebhookWorker
        if self._webhook_metrics is None:
            self._webhook_metrics = WebhookMetrics(self.metrics.registry)
        return WebhookWorker(cfg.webhooks, self.store, metrics=self._webhook_metrics)

    async def _swap_webhooks(self, cfg: Config) -> None:
        """Reload with changed ``[[webhook]]``s: a worker on the new list, then the old one stopped
        (leases keep them from sending a row twice; the old one releases what it had not sent)."""
        old = self.webhooks
        try:
            new = self._new_webhooks(cfg) if cfg.webhooks else None
            if new is not None:
                await new.start(recover=False)
            self.webhooks = new
        except Exception:
            log.exception("webhooks reload failed; the previous webhook worker keeps running")
            return
        if old is not None:
            await old.close(grace=min(10.0, cfg.smtp.shutdown_grace))

    # -- relay ----------------------------------------------------------------------------------------
    def _new_relay(self, cfg: Config):  # noqa: ANN202 - relay.worker.RelayWorker, imported lazily
        from relay.worker import RelayMetrics, RelayWorker
        if self._relay_metrics is None:
            self._relay_metrics = RelayMetrics(self.metrics.registry)
        return RelayWorker(cfg.relay, self.store, hostname=cfg.smtp.hostname, metrics=self._relay_metrics)

    def _wake_relay(self) -> None:
        """A notification was queued (pipeline, SLA): wake the relay worker running now, if any."""
        if self.relay is not None:
            self.relay.wake()

    async def _swap_relay(self, cfg: Config, previous: "asyncio.Task[None] | None") -> None:
        """Reload with a changed ``[relay]``: start a worker on the new settings, then stop the old one.

        For a moment both run: claims are exclusive and leased, so no notification goes out twice; the
        old worker lets its deliveries in flight finish (up to ``shutdown_grace``, 10 s at most) and
        puts back what it had claimed but not started, for the new one to send. Smarthost circuit
        breakers start closed again, with the new smarthost list."""
        if previous is not None:
            await asyncio.gather(previous, return_exceptions=True)  # reloads apply in order
        old = self.relay
        try:
            new = None
            if cfg.relay is not None and cfg.relay.enabled:
                new = self._new_relay(cfg)
                await new.start(recover=False)
            self.relay = new
            self._sync_sla()
            log.info("relay reloaded: %s", "smarthosts " + ", ".join(h.name for h in cfg.relay.smarthosts)
                     if new is not None else "disabled")
        except Exception:
            log.exception("relay reload failed; the previous relay worker keeps running")
            return
        if old is not None:
            await old.close(grace=min(10.0, cfg.smtp.shutdown_grace))

    def _sync_sla(self) -> None:
        """Run the SLA escalation task exactly when a relay runs and a queue has a target."""
        wanted = self.relay is not None and bool(self.cfg.twoway) and any(
            q.first_response or q.resolution for q in self.cfg.twoway.queues)
        if wanted and self._sla_task is None:
            self._sla_task = asyncio.get_running_loop().create_task(self._sla(), name="sla")
        elif not wanted and self._sla_task is not None:
            self._sla_task.cancel()
            self._sla_task = None

    async def _sla(self, interval: float = 30.0) -> None:
        """Escalate tickets past their queue's first-response / resolution targets (relay configured);
        with several nodes on one database only the holder of the "sla" lease does (run once across nodes)."""
        import os
        import socket

        from relay.notify import Notifier

        from relay.sla import run_once
        owner = f"{socket.gethostname()}:{os.getpid()}"
        while True:
            try:
                lease = getattr(self.store, "lease", None)  # several nodes on one database: one escalates
                if lease is not None and not await lease("sla", owner, interval * 2 + 60):
                    await asyncio.sleep(interval)
                    continue
                notifier = Notifier(self.cfg.relay, hostname=self.cfg.smtp.hostname)  # the config of now
                n = await run_once(self.store, self.cfg, notifier)
                if n:
                    log.info("SLA: %d escalation(s) queued", n)
                    if self.relay is not None:
                        self.relay.wake()
            except Exception:
                log.exception("SLA escalation run failed")
            await asyncio.sleep(interval)

    async def _refresh_depth(self) -> None:
        while True:
            try:
                for state, n in (await self.store.spool_counts()).items():
                    self.metrics.spool_depth.labels(state=state).set(n)
                self.metrics.paused.set(1 if await self.store.control_get("pipeline_paused") else 0)
            except Exception:
                log.debug("spool depth refresh failed", exc_info=True)
            await asyncio.sleep(5)


def _relay_keys(cfg: Config) -> tuple[bytes, ...]:
    """The relay's DKIM private keys (not part of RelayConfig's equality): a key file rotated under
    the same name is a relay change too."""
    return tuple(k.private_key for k in cfg.relay.dkim) if cfg.relay is not None else ()


async def serve(cfg: Config, config_path: str | None) -> int:
    """Run until SIGTERM/SIGINT; SIGHUP reloads. Returns the exit code."""
    gw = Gateway(cfg)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, lambda: (_sd_notify("RELOADING=1"), gw.reload(config_path),
                                                    _sd_notify("READY=1")))
    try:
        await gw.start()
    except StoreUnavailable as exc:
        return await _failed_start(gw, EX_TEMPFAIL, f"the store is not available: {exc}")
    except OSError as exc:  # a listen address in use or not ours, a certificate file that went away
        return await _failed_start(gw, EX_FAIL, str(exc))
    except Exception as exc:
        log.debug("start failed", exc_info=True)
        return await _failed_start(gw, EX_FAIL, f"{type(exc).__name__}: {exc}")
    from gateway.runtime.eventloop import name as loop_name
    log.info("ready (event loop: %s)", loop_name())
    _sd_notify("READY=1")
    watchdog = loop.create_task(_watchdog(), name="watchdog")
    await stop.wait()
    watchdog.cancel()
    started = time.monotonic()
    _sd_notify("STOPPING=1")
    log.info("shutting down (grace %.0fs)", cfg.smtp.shutdown_grace)
    await gw.stop()
    log.info("shutdown took %.2fs", time.monotonic() - started)
    return 0


async def _failed_start(gw: Gateway, code: int, why: str) -> int:
    """One line saying why, everything already started taken down again, and the exit code.

    A failed start used to leave the process alive forever (not listening, not ready): the store's
    connection thread is not a daemon, so the interpreter waited for it at exit. Exiting with a code
    lets systemd restart it (75) or stop trying (78 comes from the config check)."""
    why = " ".join(why.split())[:500]  # one line, whatever the driver put in its message
    log.error("cannot start: %s; exiting with code %d%s", why, code,
              " (temporary: a restart tries again)" if code == EX_TEMPFAIL else "")
    _sd_notify(f"STATUS=cannot start: {why[:200]}")
    try:
        await asyncio.wait_for(gw.stop(grace=0), 15)
    except Exception:  # what could not be closed is left to process exit (cli.main exits hard)
        log.debug("cleanup after the failed start failed", exc_info=True)
    return code


def _tls_context_or_error(cfg: Config):  # noqa: ANN202
    """Load the TLS certificate now so a bad one refuses the reload instead of breaking sessions."""
    try:
        return _tls_context(cfg)
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
        raise ConfigErrors([ConfigError("smtp.tls_cert", f"cannot load certificate/key: {exc}", cfg.source)])


async def _watchdog() -> None:
    """WATCHDOG=1 at half systemd's interval, from the event loop: a stuck loop stops the pings."""
    import os
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return
    interval = int(usec) / 2_000_000
    while True:
        _sd_notify("WATCHDOG=1")
        await asyncio.sleep(interval)


def _sd_notify(state: str) -> None:
    """Tell systemd (Type=notify) about our state; a no-op outside systemd."""
    import os
    import socket
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(addr)
            sock.sendall(state.encode())
    except OSError:
        log.debug("sd_notify failed", exc_info=True)
