"""The webhook delivery worker: claim -> sign -> POST -> record (the relay worker's design).

One task claims due rows per webhook (a lease per row, committed before the POST) while at most
``max_in_flight`` POSTs run per webhook; results are recorded by a group-committing recorder (one
transaction for every result that finished meanwhile). Each POST is bounded by the webhook's
``timeout`` (connect to last byte), and a row's lease is ``timeout`` + LEASE_MARGIN, so a live
worker never loses a lease it is using; a dead worker's rows are claimable again once their
leases run out, and at start (SQLite: every leased row; PostgreSQL: the expired ones).

Outcomes: 2xx delivered; 408, 429, 5xx, timeouts and connection errors retried with exponential
backoff and jitter (``Retry-After`` honoured up to ``backoff_max``) until ``lifetime``, then dead;
any other status (4xx, and 3xx: redirects are not followed) dead at once - the receiver said this
request will never be accepted, and retrying it for days would only hide that.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import secrets
import socket
import ssl
import sys
import time
from typing import Any, Callable

import httpx
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from gateway.config.webhooks import WebhookConfig
from gateway.webhooks.outbox import DEAD, DELIVERED, QUEUED, STATES, Claimed, Result, WebhookOutbox
from gateway.webhooks.sign import EVENT_HEADER, EVENT_ID_HEADER, HEADER, sign

log = logging.getLogger(__name__)

LEASE_MARGIN = 30.0
POLL = 0.25          # idle re-check (events queued by pipeline worker processes wake nobody here)
BATCH = 200          # rows claimed per webhook per round
USER_AGENT = "ticketmx-webhooks/1"
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class WebhookMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.deliveries = Counter("ticketmx_webhook_deliveries_total",
                                  "Webhook delivery attempts by webhook and outcome: delivered (2xx), retried"
                                  " (timeout, connection error, 408, 429, 5xx), dead (other 4xx/3xx, or the"
                                  " lifetime used up).", ["webhook", "outcome"], registry=r)
        self.queue = Gauge("ticketmx_webhook_queue", "Webhook outbox rows by state.", ["state"], registry=r)
        self.oldest = Gauge("ticketmx_webhook_oldest_age_seconds",
                            "Age of the oldest webhook event not yet delivered nor dead.", registry=r)
        self.latency = Histogram("ticketmx_webhook_delivery_duration_seconds",
                                 "One webhook POST, from connect to the receiver's answer.", ["webhook"],
                                 buckets=BUCKETS, registry=r)


def _claim_at(wh: WebhookConfig) -> int:
    """Free slots worth a claim (a claim is a transaction: a few rows at a time, not one by one)."""
    return max(1, wh.max_in_flight // 4)


def _no_failing_sniffio_import() -> None:
    """httpcore runs ``import sniffio`` on every request; without that package (anyio 4 no longer
    needs it) each one is a failed import searching sys.path - 15% of a delivery's CPU here
    (bench/bench_webhooks.py). Recording the absence once answers the same ImportError at once;
    httpcore then assumes asyncio, which is what runs."""
    try:
        import sniffio  # noqa: F401
    except ImportError:
        sys.modules.setdefault("sniffio", None)  # type: ignore[assignment]


def _tls(wh: WebhookConfig) -> ssl.SSLContext | bool:
    if not wh.url.startswith("https://"):
        return True
    if not wh.verify_cert:
        return False
    return ssl.create_default_context(cafile=wh.ca_file or None)


def make_client(wh: WebhookConfig) -> httpx.AsyncClient:
    """One HTTP client (connection pool) per webhook: its TLS settings, its concurrency."""
    _no_failing_sniffio_import()
    return httpx.AsyncClient(verify=_tls(wh), timeout=httpx.Timeout(wh.timeout), follow_redirects=False,
                             limits=httpx.Limits(max_connections=wh.max_in_flight,
                                                 max_keepalive_connections=wh.max_in_flight),
                             headers={"User-Agent": USER_AGENT})


def request_headers(wh: WebhookConfig, event: str, event_id: str, body: bytes) -> dict[str, str]:
    return {"Content-Type": "application/json", HEADER: sign(wh.secret, body), EVENT_ID_HEADER: event_id,
            EVENT_HEADER: event}


async def post(client: httpx.AsyncClient, wh: WebhookConfig, event: str, event_id: str,
               body: bytes) -> tuple[int | None, str, float | None]:
    """One signed POST: (status or None, error text, Retry-After seconds or None)."""
    try:
        async with asyncio.timeout(wh.timeout):  # the whole request, not per phase as httpx's own timeouts
            resp = await client.post(wh.url, content=body, headers=request_headers(wh, event, event_id, body))
    except (asyncio.TimeoutError, httpx.TimeoutException):
        return None, f"timeout after {wh.timeout:g}s", None
    except httpx.HTTPError as exc:
        return None, f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}", None
    status = resp.status_code
    after = None
    if status in (429, 503):
        try:
            after = float(resp.headers.get("Retry-After", ""))
        except ValueError:
            after = None
    text = "" if 200 <= status < 300 else f"HTTP {status}: {' '.join(resp.text.split())[:200]}"
    if 300 <= status < 400:
        text = f"HTTP {status}: redirect to {resp.headers.get('Location', '?')[:200]} not followed (fix the url)"
    return status, text, after


def decide(wh: WebhookConfig, c: Claimed, owner: str, status: int | None, error: str, retry_after: float | None,
           now: float, rand: Callable[[], float] = random.random) -> Result:
    """The row's next state after one attempt."""
    if status is not None and 200 <= status < 300:
        return Result(c.id, owner, DELIVERED, status)
    if status is not None and not (status >= 500 or status in (408, 429)):
        return Result(c.id, owner, DEAD, status, f"{error} (not retried)")
    expires = c.lifetime_from + wh.lifetime
    if now >= expires:
        return Result(c.id, owner, DEAD, status, f"lifetime used up after {c.attempts} attempts: {error}")
    delay = min(wh.backoff_max, wh.backoff_initial * wh.backoff_factor ** max(0, c.attempts - 1))
    delay *= 0.5 + rand() / 2  # jitter: receivers coming back are not hit by every row at once
    if retry_after is not None:
        delay = max(delay, min(retry_after, wh.backoff_max))
    return Result(c.id, owner, QUEUED, status, error, min(now + delay, expires))


class WebhookWorker:
    def __init__(self, webhooks: tuple[WebhookConfig, ...], store: Any, registry: CollectorRegistry | None = None,
                 *, metrics: WebhookMetrics | None = None, owner: str | None = None,
                 clock: Callable[[], float] = time.time, housekeeping_interval: float = 5.0) -> None:
        self.webhooks = {w.name: w for w in webhooks}
        self.outbox = WebhookOutbox(store)
        self.metrics = metrics if metrics is not None else (WebhookMetrics(registry) if registry is not None else None)
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        self.clock = clock
        self.housekeeping_interval = housekeeping_interval
        self.clients: dict[str, httpx.AsyncClient] = {}
        self._inflight: dict[str, set[asyncio.Task[None]]] = {n: set() for n in self.webhooks}
        self._wake = asyncio.Event()
        self._stopping = False
        self._tasks: list[asyncio.Task[None]] = []
        self._pending: list[tuple[Result, asyncio.Future[int]]] = []
        self._rec_wake = asyncio.Event()
        self.delivered = 0

    async def start(self, recover: bool = True) -> None:
        if recover:
            n = await self.outbox.release(None, self.clock())
            if n:
                log.warning("webhooks: %d events were being sent when the last run stopped; sending again", n)
        self.clients = {n: make_client(w) for n, w in self.webhooks.items()}
        loop = asyncio.get_running_loop()
        self._rec_task = loop.create_task(self._recorder(), name="webhook-recorder")
        self._run_task = loop.create_task(self._run(), name="webhook-worker")
        self._hk_task = loop.create_task(self._housekeeping(), name="webhook-housekeeping")

    def wake(self) -> None:
        self._wake.set()

    async def close(self, grace: float = 10.0) -> None:
        """Stop claiming; POSTs in flight finish within ``grace`` (recorded); the rest is released."""
        self._stopping = True
        self._wake.set()
        await asyncio.gather(self._run_task, return_exceptions=True)
        inflight = {t for s in self._inflight.values() for t in s}
        if inflight:
            _done, pending = await asyncio.wait(inflight, timeout=grace)
            for t in pending:
                t.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        self._rec_wake.set()
        await asyncio.gather(self._rec_task, return_exceptions=True)
        self._hk_task.cancel()
        await asyncio.gather(self._hk_task, return_exceptions=True)
        try:
            await self.outbox.release(self.owner, self.clock())
        except Exception:
            log.exception("webhooks: could not release claims at stop (their leases will expire)")
        for c in self.clients.values():
            await c.aclose()

    async def _run(self) -> None:
        while not self._stopping:
            try:
                claimed = await self.run_once()
            except Exception:
                log.exception("webhooks: claim failed; retrying after the poll interval")
                claimed = 0
            if claimed or self._stopping:
                continue
            woken = asyncio.ensure_future(self._wake.wait())
            waiters: set[asyncio.Future[Any]] = {woken}
            for name, wh in self.webhooks.items():
                if wh.max_in_flight - len(self._inflight[name]) < _claim_at(wh):
                    waiters |= set(self._inflight[name])  # slots freed
            await asyncio.wait(waiters, timeout=POLL, return_when=asyncio.FIRST_COMPLETED)
            if not woken.done():
                woken.cancel()
            self._wake.clear()

    async def run_once(self) -> int:
        """Claim what is due for every webhook with a free slot and start sending it."""
        total = 0
        loop = asyncio.get_running_loop()
        for name, wh in self.webhooks.items():
            free = wh.max_in_flight - len(self._inflight[name])
            if free < _claim_at(wh):  # claim in batches: one transaction for several rows
                continue
            rows = await self.outbox.claim(self.owner, name, min(free, BATCH), self.clock(),
                                           wh.timeout + LEASE_MARGIN)
            for c in rows:
                task = loop.create_task(self._deliver(wh, c), name=f"webhook-{c.id}")
                self._inflight[name].add(task)
                task.add_done_callback(self._inflight[name].discard)
            total += len(rows)
        return total

    async def _deliver(self, wh: WebhookConfig, c: Claimed) -> None:
        started = time.perf_counter()
        try:
            status, error, after = await post(self.clients[wh.name], wh, c.event, c.event_id, c.body)
        except Exception as exc:  # a bug: never lose the row, try again on schedule
            log.exception("webhooks: POST of event %s raised", c.event_id)
            status, error, after = None, f"internal error: {type(exc).__name__}", None
        result = decide(wh, c, self.owner, status, error, after, self.clock())
        if self.metrics is not None:
            self.metrics.latency.labels(webhook=wh.name).observe(time.perf_counter() - started)
        try:
            await self._record(result)
        except Exception:
            log.exception("webhooks: could not record event %s (sent again after its lease)", c.event_id)
            return
        self.delivered += 1
        outcome = {DELIVERED: "delivered", DEAD: "dead"}.get(result.state, "retried")
        if self.metrics is not None:
            self.metrics.deliveries.labels(webhook=wh.name, outcome=outcome).inc()
        if result.state != DELIVERED:
            log.log(logging.WARNING if result.state == DEAD else logging.INFO,
                    "webhook %s: %s %s (row %d, attempt %d) -> %s: %s", wh.name, c.event, c.event_id, c.id,
                    c.attempts, outcome, result.error)

    async def _record(self, result: Result) -> int:
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._pending.append((result, fut))
        self._rec_wake.set()
        return await fut

    async def _recorder(self) -> None:
        while True:
            await self._rec_wake.wait()
            self._rec_wake.clear()
            batch, self._pending = self._pending, []
            if batch:
                try:
                    n = await self.outbox.record([r for r, _ in batch], self.clock())
                except Exception as exc:
                    for _, fut in batch:
                        if not fut.done():
                            fut.set_exception(exc)
                else:
                    for _, fut in batch:
                        if not fut.done():
                            fut.set_result(n)
            if self._stopping and not self._pending and not any(self._inflight.values()):
                return

    async def _housekeeping(self) -> None:
        while True:
            try:
                await self.refresh_metrics()
            except Exception:
                log.debug("webhook housekeeping failed", exc_info=True)
            await asyncio.sleep(self.housekeeping_interval)

    async def refresh_metrics(self) -> None:
        if self.metrics is None:
            return
        for state, n in (await self.outbox.state_counts()).items():
            self.metrics.queue.labels(state=state).set(n)
        self.metrics.oldest.set(await self.outbox.oldest_age(self.clock()))

    async def drain(self, timeout: float = 30.0) -> None:
        """Tests/bench: until nothing is queued-and-due, leased or in flight."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            rows = await self.outbox.store.query(
                "SELECT COUNT(*) FROM webhook_outbox WHERE state=? OR (state=? AND next_attempt_at<=?)",
                ("leased", QUEUED, self.clock()))
            if not rows[0][0] and not any(self._inflight.values()):
                return
            self._wake.set()
            await asyncio.sleep(0.05)
        raise TimeoutError("webhook outbox not drained")


async def send_test(wh: WebhookConfig, out: Callable[[str], Any] = print) -> int:
    """``ticketmx webhook test NAME``: one signed ``test`` event now, not through the outbox."""
    import uuid

    from gateway.webhooks.outbox import iso
    from gateway.webhooks.payload import test_payload
    event_id = str(uuid.uuid4())
    body = json.dumps(test_payload(wh.format, event_id, iso(time.time()), wh.name),
                      separators=(",", ":")).encode("utf-8")
    out(f"POST {wh.url} (event test, {EVENT_ID_HEADER}: {event_id}, {len(body)} bytes)")
    async with make_client(wh) as client:
        started = time.perf_counter()
        status, error, _ = await post(client, wh, "test", event_id, body)
    took = (time.perf_counter() - started) * 1000
    if status is not None and 200 <= status < 300:
        out(f"delivered: HTTP {status} in {took:.0f} ms")
        return 0
    out(f"not delivered: {error or f'HTTP {status}'} ({took:.0f} ms)")
    return 1


__all__ = ["WebhookWorker", "WebhookMetrics", "send_test", "decide", "post", "make_client", "STATES"]
