"""The relay delivery worker: claim -> sign -> send through the smarthosts -> record.

One asyncio task claims due notifications (a lease per row, committed before sending) while at
most ``[relay] concurrency`` deliveries run; every delivery is one attempt across the ordered
smarthosts (:class:`relay.client.SmarthostPool`). Results are recorded by a group-committing
recorder (one transaction, one fsync, for all results that finished meanwhile).

When no smarthost is usable (all in cool-off or in a skip window) nothing is claimed - the
attempt counters of queued mail are not burnt - and the worker sleeps until the first host is
usable again.

Crash safety: a row is ``sending`` only under a lease, which the worker renews while it is sending
that row. At start the worker puts every ``sending`` row back (single-node SQLite: nobody else can be
sending; on PostgreSQL only rows whose lease ran out); a row whose lease expired is claimable again
anyway. Hence at-least-once: a crash between the smarthost's 250 to DATA and the commit of
that result sends that mail again on restart.

Metrics (on the ``CollectorRegistry`` passed in; see docs/relay.md): sent / deferred / failed by
host and reason, dead letters, queue depth by state, oldest age, circuit state per host.

``python -m relay.worker --db PATH --config FILE`` runs a worker alone on a database (used by the
crash test; also handy to drain a queue by hand).
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import os
import secrets
import socket
import time
from email.utils import format_datetime, make_msgid
from datetime import datetime, timezone
from typing import Any, Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from relay.client import CIRCUIT_VALUE, CLOSED, HostFailure, Smarthost, SmarthostPool, overlong_line
from gateway.config.relay import RelayConfig
from relay.dkim import DkimSigner
from relay.notify import Notifier, purge_ack_log
from gateway.store.relay_queue import DEAD, DEFERRED, SENT, AttemptOutcome, OutboundMail, RelayQueue

log = logging.getLogger(__name__)

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class RelayMetrics:
    """The relay's Prometheus metrics; also the SmarthostPool observer."""

    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.sent = Counter("ticketmx_relay_sent_total", "Recipients accepted by a smarthost (250 to DATA).",
                            ["host"], registry=r)
        self.failed = Counter("ticketmx_relay_failed_total",
                              "Failures by smarthost and reason: host failures (connect, timeout, tls, greeting,"
                              " auth, oauth, mail_from, closing, disconnected, protocol) and refused recipients"
                              " (rcpt_4xx, rcpt_5xx, data_4xx, data_5xx).", ["host", "reason"], registry=r)
        self.deferred = Counter("ticketmx_relay_deferred_total",
                                "Delivery attempts that ended in a temporary failure and were rescheduled.",
                                ["reason"], registry=r)
        self.dead = Counter("ticketmx_relay_dead_total", "Notifications dead-lettered (5xx or lifetime expired).",
                            ["reason"], registry=r)
        self.queue = Gauge("ticketmx_relay_queue_messages", "Outbound notifications by state.", ["state"],
                           registry=r)
        self.oldest = Gauge("ticketmx_relay_queue_oldest_age_seconds",
                            "Age of the oldest notification not yet sent or dead.", registry=r)
        self.circuit_state = Gauge("ticketmx_relay_circuit_state",
                                   "Smarthost circuit breaker: 0 closed, 1 half-open (next delivery probes),"
                                   " 2 open (cooling off).", ["host"], registry=r)
        self.attempt = Histogram("ticketmx_relay_attempt_duration_seconds",
                                 "One delivery attempt across the smarthosts (sign + send).", buckets=BUCKETS,
                                 registry=r)
        # ticketmx_relay_acknowledgements_total lives in gateway.runtime.metrics.Metrics: the pipeline decides
        # acknowledgements (in its worker processes), not the relay worker.

    # Observer
    def host_failure(self, host: str, reason: str) -> None:
        self.failed.labels(host=host, reason=reason).inc()

    def rcpt_result(self, host: str, status: str, reason: str) -> None:
        if status == "sent":
            self.sent.labels(host=host).inc()
        else:
            self.failed.labels(host=host, reason=reason).inc()

    def circuit(self, host: str, state: str) -> None:
        self.circuit_state.labels(host=host).set(CIRCUIT_VALUE[state])


class RelayWorker:
    def __init__(self, cfg: RelayConfig, store: Any, registry: CollectorRegistry | None = None, *,
                 hostname: str | None = None, owner: str | None = None, pool: SmarthostPool | None = None,
                 signer: DkimSigner | None = None, clock: Callable[[], float] = time.time,
                 notifier: Notifier | None = None, housekeeping_interval: float = 5.0,
                 metrics: RelayMetrics | None = None) -> None:
        """``metrics``: an existing RelayMetrics (a worker replacing another on reload: Prometheus
        metrics are registered once per registry); otherwise new ones in ``registry``, if given."""
        self.cfg = cfg
        self.queue = RelayQueue(store)
        self.metrics = metrics if metrics is not None else (RelayMetrics(registry) if registry is not None else None)
        self.clock = clock
        self.pool = pool or SmarthostPool(cfg, hostname=hostname, observer=self.metrics, clock=clock)
        self.signer = signer if signer is not None else (DkimSigner(cfg.dkim) if cfg.dkim else None)
        self.hostname = hostname
        self.notifier = notifier
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        self.housekeeping_interval = housekeeping_interval
        self._wake = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self._hk_task: asyncio.Task[None] | None = None
        self._rec_task: asyncio.Task[None] | None = None
        self._inflight: set[asyncio.Task[None]] = set()
        self._sending: set[int] = set()  # ids claimed and not yet recorded: their leases are renewed
        self._renew_task: asyncio.Task[None] | None = None
        self._pending: list[tuple[AttemptOutcome, asyncio.Future[str]]] = []
        self._rec_wake = asyncio.Event()
        self.delivered = 0  # attempts recorded (tests, bench)

    # -- lifecycle ---------------------------------------------------------------------------------
    async def start(self, recover: bool = True) -> None:
        if recover:
            n = await self.queue.release(None, self.clock())
            if n:
                log.warning("relay: %d notifications were being sent when the last run stopped; sending again", n)
        loop = asyncio.get_running_loop()
        self._rec_task = loop.create_task(self._recorder(), name="relay-recorder")
        self._task = loop.create_task(self._run(), name="relay-worker")
        self._hk_task = loop.create_task(self._housekeeping(), name="relay-housekeeping")
        self._renew_task = loop.create_task(self._renew_leases(), name="relay-lease-renewal")

    def wake(self) -> None:
        """A notification was queued: look now rather than at the next poll."""
        self._wake.set()

    async def close(self, grace: float = 10.0) -> None:
        """Stop claiming, let deliveries in flight finish within ``grace``, release what is left."""
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
        if self._inflight:
            done, pending = await asyncio.wait(set(self._inflight), timeout=grace)
            for t in pending:
                t.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        if self._rec_task is not None:
            self._rec_wake.set()
            await asyncio.gather(self._rec_task, return_exceptions=True)
        for task in (self._hk_task, self._renew_task):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        try:
            await self.queue.release(self.owner, self.clock())
        except Exception:
            log.exception("relay: could not release claims at stop (their leases will expire)")
        await self.pool.close()

    # -- the loop ----------------------------------------------------------------------------------
    async def _run(self) -> None:
        while not self._stopping:
            try:
                claimed = await self.run_once()
            except Exception:
                log.exception("relay: claim failed; retrying after the poll interval")
                claimed = 0
            if claimed or self._stopping:
                continue
            await self._idle_wait()

    async def _idle_wait(self) -> None:
        timeout = self.cfg.poll_interval
        now = self.clock()
        if not self.pool.available(now):
            at = self.pool.next_available_at(now)
            if at is not None:
                timeout = min(max(at - now, 0.001), max(timeout, 60.0))
        waiters: set[asyncio.Future[Any]] = {asyncio.ensure_future(self._wake.wait())}
        if len(self._inflight) >= self.cfg.concurrency:
            waiters |= set(self._inflight)  # a free slot
        done, pending = await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        for f in waiters:
            if not f.done() and f not in self._inflight:
                f.cancel()
        self._wake.clear()

    async def run_once(self) -> int:
        """Claim what is due and start delivering it; returns how many were claimed."""
        free = self.cfg.concurrency - len(self._inflight)
        if free <= 0 or not self.pool.available():
            return 0
        now = self.clock()
        mails = await self.queue.claim(self.owner, min(free, self.cfg.batch_size), now, self.cfg.lease)
        loop = asyncio.get_running_loop()
        for m in mails:
            self._sending.add(m.id)
            task = loop.create_task(self._deliver(m), name=f"relay-{m.id}")
            self._inflight.add(task)
            task.add_done_callback(self._inflight.discard)
        return len(mails)

    async def drain(self, timeout: float = 30.0) -> None:
        """Tests/bench: wait until nothing is queued-and-due nor in flight."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            counts = await self.queue.counts()
            due = await self.queue.next_due()
            if not self._inflight and not counts["sending"] and (due is None or due > self.clock()):
                return
            self._wake.set()
            await asyncio.sleep(0.01)
        raise TimeoutError("relay queue not drained")

    async def _deliver(self, m: OutboundMail) -> None:
        try:
            await self._attempt(m)
        finally:
            self._sending.discard(m.id)

    async def _attempt(self, m: OutboundMail) -> None:
        started = time.perf_counter()
        try:
            if m.pending:
                message = m.message
                if m.render is not None or self.signer:
                    message = await asyncio.to_thread(self._prepare, m)
                result = await self.pool.deliver(m.mail_from, list(m.pending), message)
                outcome = AttemptOutcome(m.id, result.rcpts, result.error, result.host, self.owner)
            else:
                outcome = AttemptOutcome(m.id, [], "", "", self.owner)
        except Exception as exc:  # a bug or a bad key: never lose the row, try again on schedule
            log.exception("relay: delivery of notification %d raised", m.id)
            outcome = AttemptOutcome(m.id, [], f"internal error: {type(exc).__name__}", "", self.owner)
            from gateway.store.relay_queue import RcptOutcome
            outcome.rcpts = [RcptOutcome(a, "temp", None, outcome.error) for a in m.pending]
        try:
            state = await self._record(outcome)
        except Exception:
            log.exception("relay: could not record the result of notification %d (resent after its lease)", m.id)
            return
        self.delivered += 1
        if self.metrics is not None:
            self.metrics.attempt.observe(time.perf_counter() - started)
            if state == DEFERRED:
                self.metrics.deferred.labels(reason=_deferral_reason(outcome)).inc()
            elif state == DEAD:
                expired = any(r.status == "temp" for r in outcome.rcpts)
                self.metrics.dead.labels(reason="expired" if expired else "rejected").inc()
        level = logging.INFO if state == SENT else logging.WARNING
        log.log(level, "relay: notification %d (%s) -> %s%s", m.id, m.event, state,
                f": {outcome.error}" if outcome.error and state != SENT else "")

    def _prepare(self, m: OutboundMail) -> bytes:
        """Render (lazy notifications) and DKIM-sign, in a thread: CPU work stays off the event loop."""
        message = m.message
        if m.render is not None:
            if self.notifier is None:
                self.notifier = Notifier(self.cfg, hostname=self.hostname)
            message = self.notifier.render_message(m.render)
        if self.signer:
            message = self.signer.sign(message)
        return message

    async def _record(self, outcome: AttemptOutcome) -> str:
        fut: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._pending.append((outcome, fut))
        self._rec_wake.set()
        return await fut

    async def _recorder(self) -> None:
        while True:
            await self._rec_wake.wait()
            self._rec_wake.clear()
            batch, self._pending = self._pending, []
            if not batch:
                if self._stopping and not self._inflight:
                    return
                continue
            try:
                states = await self.queue.record([o for o, _ in batch], self.clock(), self.cfg.retry,
                                                 self.cfg.max_lifetime)
            except Exception as exc:
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(exc)
            else:
                for (_, fut), state in zip(batch, states):
                    if not fut.done():
                        fut.set_result(state)
            if self._stopping and not self._inflight and not self._pending:
                return

    async def _renew_leases(self) -> None:
        """Keep the leases of the notifications being sent (every quarter of ``[relay] lease``).

        A lease is what lets another worker (another node, on PostgreSQL) take a row over when its
        sender died; renewing it while the sender lives means a slow attempt (smarthosts answering
        at the edge of their timeouts, one after the other) is never taken over and sent twice, whatever
        the lease's length."""
        interval = max(0.05, self.cfg.lease / 4)
        while True:
            await asyncio.sleep(interval)
            ids = sorted(self._sending)
            if not ids:
                continue
            try:
                await self.queue.renew(self.owner, ids, self.clock() + self.cfg.lease)
            except Exception:
                log.warning("relay: could not renew the leases of %d notifications being sent", len(ids),
                            exc_info=True)

    async def _housekeeping(self) -> None:
        while True:
            try:
                await self.refresh_metrics()
                self.pool.reap()
                horizon = self.cfg.ack_horizon
                await self.queue.store.transaction(lambda conn: purge_ack_log(conn, self.clock() - horizon))
            except Exception:
                log.debug("relay housekeeping failed", exc_info=True)
            await asyncio.sleep(self.housekeeping_interval)

    async def refresh_metrics(self) -> None:
        if self.metrics is None:
            return
        for state, n in (await self.queue.counts()).items():
            self.metrics.queue.labels(state=state).set(n)
        self.metrics.oldest.set(await self.queue.oldest_age(self.clock()))
        now = self.clock()
        for h in self.pool.hosts:
            self.metrics.circuit(h.name, h.circuit_state(now))


def _deferral_reason(outcome: AttemptOutcome) -> str:
    e = outcome.error
    if "no smarthost available" in e:
        return "no_host_available"
    if outcome.rcpts and all(r.status != "temp" or r.code for r in outcome.rcpts):
        return "rcpt_4xx"
    if "internal error" in e:
        return "internal_error"
    return "all_hosts_failed"


# -- relay test ------------------------------------------------------------------------------------

def sample_message(cfg: RelayConfig, to: str, hostname: str) -> tuple[bytes, str]:
    """The mail ``ticketmx relay test`` sends: (bytes, Message-ID without brackets)."""
    from relay.notify import _addr, _safe, compose
    _addr(to, "--to")
    mid = make_msgid("relaytest", domain=hostname)
    headers = [("From", cfg.from_addr or f"ticketmx <postmaster@{hostname}>"), ("To", to),
               ("Subject", _safe(f"ticketmx relay test from {hostname}", "Subject")),
               ("Date", format_datetime(datetime.now(timezone.utc))), ("Message-ID", mid),
               ("Auto-Submitted", "auto-generated"), ("X-Auto-Response-Suppress", "All"),
               (cfg.loop_marker, hostname)]
    text = (f"This is a test message sent by \"ticketmx relay test\" on {hostname}.\n"
            "If you can read it, outbound mail through the configured smarthost works.\n")
    return compose(headers, text), mid.strip("<>")


async def relay_test(cfg: RelayConfig, to: str, host: str | None = None, out: Callable[[str], Any] = print,
                     hostname: str | None = None) -> int:
    """Send a sample mail, printing every step with the server's replies. 0 = delivered, 1 = not."""
    name = hostname or cfg.hostname or socket.getfqdn()
    if not cfg.smarthosts:
        out("no smarthost configured ([[relay.smarthost]])")
        return 1
    hosts = [h for h in cfg.smarthosts if host is None or h.name == host]
    if not hosts:
        out(f"no smarthost named {host!r} (configured: {', '.join(h.name for h in cfg.smarthosts)})")
        return 1
    try:
        message, mid = sample_message(cfg, to, name)
    except ValueError as exc:
        out(f"cannot send: {exc}")
        return 1
    if cfg.dkim:
        signed = DkimSigner(cfg.dkim).sign(message)
        if signed is not message:
            out(f"dkim: signed ({signed.split(b';', 1)[0].decode(errors='replace')[:60]}...)")
        message = signed
    mail_from = cfg.mail_from or f"postmaster@{name}"
    why = overlong_line(message)
    if why is not None:
        out(f"cannot send: {why}")
        return 1
    for h in hosts:
        sh = Smarthost(h, name)
        out(f"== smarthost {h.name} ({h.host}:{h.port}, tls={h.tls}, auth={h.auth})")
        try:
            results = await sh.send(mail_from, [to], message,
                                    trace=lambda step, text: out(f"{step:>9}: {text}"), reuse=False)
        except HostFailure as exc:
            out(f"   failed: {exc.text}")
            continue
        finally:
            await sh.close()
        r = results[0]
        if r.status == "sent":
            out(f"   delivered to {h.name}: Message-ID <{mid}>")
            return 0
        out(f"   recipient refused ({'permanent' if r.status == 'perm' else 'temporary'}): {r.code} {r.reply}")
        if r.status == "perm":
            return 1
    out("   not delivered")
    return 1


# -- standalone runner -----------------------------------------------------------------------------

async def run_standalone(db: str, cfg: RelayConfig, stop: asyncio.Event | None = None) -> None:
    from gateway.store.sqlite import SqliteStore
    store = SqliteStore(db)
    await store.open()
    worker = RelayWorker(cfg, store)
    await worker.start()
    try:
        await (stop or asyncio.Event()).wait()
    finally:
        await worker.close()
        await store.close()


def main(argv: list[str] | None = None) -> int:
    import signal
    import tomllib

    from gateway.config.relay import parse_relay_config
    p = argparse.ArgumentParser(prog="python -m relay.worker", description="Run a relay worker on a database.")
    p.add_argument("--db", required=True, help="SQLite database path")
    p.add_argument("--config", required=True, help="TOML file with a [relay] table")
    args = p.parse_args(argv)
    with open(args.config, "rb") as fh:
        cfg = parse_relay_config(tomllib.load(fh).get("relay", {}))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await run_standalone(args.db, cfg, stop)

    asyncio.run(run())
    return 0


__all__ = ["RelayWorker", "RelayMetrics", "relay_test", "sample_message", "run_standalone", "CLOSED"]

if __name__ == "__main__":
    raise SystemExit(main())
