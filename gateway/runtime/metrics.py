"""Prometheus metrics and the small HTTP endpoint that serves them.

Each gateway instance owns its own CollectorRegistry (no process globals), so
several gateways can run in one test process. Label values are bounded sets
(codes, reasons, states) — never addresses or subjects.
"""
from __future__ import annotations

import asyncio
import logging
import re
from typing import Any, Awaitable, Callable, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.samples import Sample
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

log = logging.getLogger(__name__)
# One INFO line per refused message or recipient (docs/smtp.md, "Rejections in the log").
reject_log = logging.getLogger("ticketmx.reject")
_ADDR_MAX = 256      # characters of one address in a rejection line (a MAIL/RCPT line is at most ~1000)
_RCPTS_SHOWN = 5     # recipients named in a rejection line; the rest are counted

disable_created_metrics()  # no *_created series: they double the series count for nothing we use

# One process's samples, picklable: [(family name, type, help, [(sample name, labels, value), ...]), ...]
Snapshot = list[tuple[str, str, str, list[tuple[str, dict[str, str], float]]]]
_CUMULATIVE = frozenset({"counter", "histogram", "summary"})  # kept when a process exits; gauges are not

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.sessions = Counter("ticketmx_smtp_sessions_total", "SMTP sessions opened.", registry=r)
        self.sessions_active = Gauge("ticketmx_smtp_sessions_active", "SMTP sessions open now.", registry=r)
        self.sessions_refused = Counter("ticketmx_smtp_sessions_refused_total",
                                        "SMTP sessions refused at connect (421).", ["reason"], registry=r)
        self.accepted = Counter("ticketmx_messages_accepted_total",
                                "Messages answered 250 after a durable spool commit.", registry=r)
        self.accepted_bytes = Counter("ticketmx_messages_accepted_bytes_total",
                                      "Bytes of messages accepted.", registry=r)
        self.rejected = Counter("ticketmx_messages_rejected_total",
                                "Messages or recipients refused (4xx/5xx), by SMTP code and reason.",
                                ["code", "reason"], registry=r)
        self.http_inbound = Counter("ticketmx_http_inbound_total",
                                    "POST /api/v1/inbound posts by format and outcome (accepted, duplicate,"
                                    " unauthorized, refused, deferred, too_large, unreadable, failed).",
                                    ["format", "outcome"], registry=r)
        self.accept_latency = Histogram("ticketmx_smtp_accept_duration_seconds",
                                        "End of DATA to the 250 reply (checks + spool commit).",
                                        buckets=LATENCY_BUCKETS, registry=r)
        self.spool_commit_batch = Histogram("ticketmx_spool_commit_batch_size", "Messages per spool commit.",
                                            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256), registry=r)
        self.spool_depth = Gauge("ticketmx_spool_messages", "Spool entries by state.", ["state"], registry=r)
        self.outcomes = Counter("ticketmx_pipeline_outcomes_total",
                                "Messages that reached a terminal state, by state.", ["state"], registry=r)
        self.acks_suppressed = Counter("ticketmx_relay_acknowledgements_suppressed_total",
                                       "Acknowledgements (new-ticket auto-replies) not sent, by reason"
                                       " (unauthenticated, rate_limited_ip, rate_limited_global, ...).",
                                       ["reason"], registry=r)
        self.acks = Counter("ticketmx_relay_acknowledgements_total",
                            "Acknowledgement decisions for new tickets: sent (queued), or the reason none was"
                            " sent. Counted by the pipeline once its transaction commits.", ["result"], registry=r)
        self.pipeline_errors = Counter("ticketmx_pipeline_errors_total",
                                       "Pipeline attempts that raised (retried or quarantined).", registry=r)
        self.consecutive_failures = Gauge("ticketmx_pipeline_consecutive_failures",
                                          "Messages that failed in a row (reset by a success).", registry=r)
        self.budget_exceeded = Counter("ticketmx_pipeline_budget_exceeded_total",
                                       "Messages quarantined for going over [pipeline] message_budget.", registry=r)
        self.paused = Gauge("ticketmx_pipeline_paused", "1 while processing is paused by repeated failures.",
                            registry=r)
        self.processing_latency = Histogram("ticketmx_pipeline_latency_seconds",
                                            "Receive time to terminal state.", buckets=LATENCY_BUCKETS,
                                            registry=r)
        self.smtp_processes = Gauge("ticketmx_smtp_processes",
                                    "SMTP processes listening (the main one plus [smtp] processes - 1).",
                                    registry=r)
        self.smtp_processes.set(1)
        # Other processes' samples to add at scrape time (gateway/smtp/group.py); None: this process only.
        self.remote: Callable[[], Awaitable[list[Snapshot]]] | None = None
        self.stage_duration = Histogram("ticketmx_pipeline_batch_duration_seconds",
                                        "Wall time of one pipeline batch (parse + stages + commit).",
                                        buckets=LATENCY_BUCKETS, registry=r)

    def watch_resolver(self, current: Callable[[], object]) -> None:
        """Export the DNS resolver's counters, read at scrape time from ``current()`` (no per-query cost)."""
        self.registry.register(_ResolverCollector(current))

    def reject(self, reply: Any, *, client: str, mail_from: str | None = None, rcpts: Sequence[str] = (),
               reason: str = "") -> None:
        """Count a refused message or recipient AND log it: one call, so no refusal is one without the
        other. ``reply`` is the :class:`gateway.smtp.replies.Reply` sent; ``reason`` overrides its bounded
        label. The line names the client, the envelope so far, the code, enhanced code and text; the
        log formatter escapes control bytes, and addresses are cut short, so a line stays one line."""
        label = reason or reply.reason or "other"
        self.rejected.labels(code=str(reply.code), reason=label).inc()
        if reject_log.isEnabledFor(logging.INFO):
            shown = [_cut(r) for r in rcpts[:_RCPTS_SHOWN]]
            more = f" (+{len(rcpts) - _RCPTS_SHOWN} more)" if len(rcpts) > _RCPTS_SHOWN else ""
            reject_log.info("rejected client=%s from=<%s> rcpt=<%s>%s code=%d enhanced=%s reason=%s: %s",
                            client or "?", "" if mail_from in (None, "<>") else _cut(mail_from or ""),
                            ">,<".join(shown), more, reply.code, reply.enhanced, label, reply.text)

    def render(self, others: list[Snapshot] = ()) -> bytes:  # type: ignore[assignment]
        if not others:
            return generate_latest(self.registry)
        return generate_latest(_Merged(merge(list(self.registry.collect()), others)))  # type: ignore[arg-type]

    async def render_all(self) -> bytes:
        """This process's metrics plus those of the other SMTP processes, as one exposition."""
        others = await self.remote() if self.remote is not None else []
        return self.render(others)


def _cut(addr: str) -> str:
    return addr if len(addr) <= _ADDR_MAX else addr[:_ADDR_MAX] + "..."


def snapshot(metrics: Metrics) -> Snapshot:
    """This process's samples in a form that pickles (for the main process to add up)."""
    return [(m.name, m.type, m.documentation, [(s.name, dict(s.labels), s.value) for s in m.samples])
            for m in metrics.registry.collect()]


def retire(kept: Snapshot, last: Snapshot) -> Snapshot:
    """Fold an exited process's cumulative samples into ``kept`` (its gauges die with it)."""
    families = [_family(name, typ, doc, samples) for name, typ, doc, samples in kept]
    merged = merge(families, [[f for f in last if f[1] in _CUMULATIVE]])
    return [(m.name, m.type, m.documentation, [(s.name, dict(s.labels), s.value) for s in m.samples])
            for m in merged]


def merge(families: list[Metric], others: list[Snapshot]) -> list[Metric]:
    """Add other processes' samples to ``families``: sum by family, sample name and labels."""
    index = {m.name: m for m in families}
    for snap in others:
        for name, typ, doc, samples in snap:
            fam = index.get(name)
            if fam is None:
                fam = index[name] = _family(name, typ, doc, [])
                families.append(fam)
            pos = {(s.name, tuple(sorted(s.labels.items()))): i for i, s in enumerate(fam.samples)}
            for sname, labels, value in samples:
                key = (sname, tuple(sorted(labels.items())))
                i = pos.get(key)
                if i is None:
                    pos[key] = len(fam.samples)
                    fam.samples.append(Sample(sname, dict(labels), value))
                else:
                    fam.samples[i] = fam.samples[i]._replace(value=fam.samples[i].value + value)
    return families


def _family(name: str, typ: str, doc: str, samples: list[tuple[str, dict[str, str], float]]) -> Metric:
    m = Metric(name, doc, typ)
    m.samples = [Sample(n, dict(labels), v) for n, labels, v in samples]
    return m


class _Merged:
    """What ``generate_latest`` needs of a registry: ``collect()``."""

    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Any:
        return iter(self.families)


class MetricsServer:
    """Minimal asyncio HTTP/1.0 server for /metrics, /healthz and /readyz (no threads).

    Bounded by construction, since anyone who can reach the port can talk to it:

    * a **deadline** per connection (``deadline`` seconds from accept to the last byte written):
      a client that sends nothing, sends slowly or does not read is aborted when it expires;
    * a **connection cap** (``max_connections``): over the cap, the oldest connection that has not
      sent its request is closed at once (or, when all are being answered, the new one is, in
      ``connection_made`` - before any buffer or task exists for it); tasks exist only for requests
      being answered, so they are bounded by the cap;
    * **line limits**: a request line or header line over ``MAX_LINE`` octets, a header section over
      ``MAX_HEAD`` octets or a malformed request line gets ``400 Bad Request`` and the connection is
      closed. Nothing a client sends can raise out of the protocol: no traceback in the log.

    It is a :class:`asyncio.Protocol` rather than ``start_server`` streams so that a refused
    connection costs no task and a slow one holds at most ``MAX_HEAD`` bytes.
    """

    MAX_LINE = 4096
    MAX_HEAD = 16384

    def __init__(self, metrics: Metrics, host: str, port: int, ready: Callable[[], bool], *,
                 deadline: float = 5.0, max_connections: int = 64) -> None:
        self.metrics, self.host, self.port, self.ready = metrics, host, port, ready
        self.deadline, self.max_connections = deadline, max_connections
        self._server: asyncio.AbstractServer | None = None
        self.active: dict[_HttpConn, None] = {}   # insertion order: oldest first
        self.refused = 0        # connections closed at once for the cap (tests)
        self.timed_out = 0      # connections aborted at the deadline (tests)
        self.bad_requests = 0   # 400s (tests)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _HttpConn(self), self.host, self.port)
        sock = self._server.sockets[0].getsockname()
        self.port = sock[1]
        log.info("metrics listening on http://%s:%d/metrics", self.host, self.port)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            for conn in list(self.active):
                conn.abort()
            await self._server.wait_closed()

    async def respond(self, path: str) -> tuple[str, str, bytes]:
        """(status, content type, body) for a GET of ``path``."""
        if path == "/metrics":
            return "200 OK", CONTENT_TYPE_LATEST, await self.metrics.render_all()
        if path == "/healthz":
            return "200 OK", "text/plain", b"ok\n"
        if path == "/readyz":
            ok = self.ready()
            return ("200 OK" if ok else "503 Service Unavailable"), "text/plain", b"ready\n" if ok else b"not ready\n"
        return "404 Not Found", "text/plain", b"not found\n"


_HEAD_END = re.compile(rb"\n\r?\n")


class _HttpConn(asyncio.Protocol):
    """One connection to the metrics endpoint: read a bounded request head, answer, close."""

    def __init__(self, server: MetricsServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.timer: asyncio.TimerHandle | None = None
        self.task: asyncio.Task[None] | None = None
        self.answered = False
        self.line_start = 0     # where the line being received starts in buf

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        srv = self.server
        if len(srv.active) >= srv.max_connections:
            # Full. The oldest connection that has not sent its request yet goes (a flood of idle
            # connections cannot lock a scraper out, which sends its request at once); when every
            # slot is answering a request, the newcomer goes. Either way: closed at once.
            srv.refused += 1
            victim = next((c for c in srv.active if not c.answered), None)
            if victim is None:
                self.answered = True
                transport.abort()  # no buffer, no task, no timer
                return
            srv.active.pop(victim, None)
            victim.answered = True
            victim.abort()
        srv.active[self] = None
        self.timer = asyncio.get_running_loop().call_later(srv.deadline, self._expired)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.active.pop(self, None)
        if self.timer is not None:
            self.timer.cancel()
        if self.task is not None and not self.task.done():
            self.task.cancel()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def _expired(self) -> None:
        self.server.timed_out += 1
        self.abort()

    def data_received(self, data: bytes) -> None:
        """Accumulate the request head; linear in what was received (a byte-at-a-time client too)."""
        if self.answered:
            return  # the request is read; anything after it is ignored
        old = len(self.buf)
        self.buf += data
        m = _HEAD_END.search(self.buf, max(0, old - 2))
        head_end = m.start() if m else len(self.buf)
        pos = self.buf.find(b"\n", old, head_end)
        while pos >= 0:
            if pos - self.line_start > MetricsServer.MAX_LINE:
                return self._bad("request or header line too long")
            self.line_start = pos + 1
            pos = self.buf.find(b"\n", pos + 1, head_end)
        if head_end - self.line_start > MetricsServer.MAX_LINE:
            return self._bad("request or header line too long")
        if head_end > MetricsServer.MAX_HEAD:
            return self._bad("request header section too large")
        if m is None:
            return
        first = bytes(self.buf[:self.buf.find(b"\n")]).rstrip(b"\r")
        parts = first.decode("latin-1").split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1.") or not parts[1].startswith("/"):
            return self._bad("malformed request line")
        self.answered = True
        if parts[0] not in ("GET", "HEAD"):
            self._send("405 Method Not Allowed", "text/plain", b"only GET\n")
            return
        self.task = asyncio.get_running_loop().create_task(self._answer(parts[1].split("?")[0], parts[0] == "HEAD"))

    async def _answer(self, path: str, head_only: bool) -> None:
        try:
            status, ctype, body = await self.server.respond(path)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # our bug, not the client's: say so once, without the request
            log.error("metrics: %s failed: %s: %s", path, type(exc).__name__, exc)
            status, ctype, body = "500 Internal Server Error", "text/plain", b"error\n"
        self._send(status, ctype, b"" if head_only else body, len(body))

    def _bad(self, why: str) -> None:
        self.answered = True
        self.server.bad_requests += 1
        log.debug("metrics: 400 to a client: %s", why)
        self._send("400 Bad Request", "text/plain", f"{why}\n".encode())

    def _send(self, status: str, ctype: str, body: bytes, length: int | None = None) -> None:
        t = self.transport
        if t is None or t.is_closing():
            return
        t.write(f"HTTP/1.0 {status}\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {len(body) if length is None else length}\r\n"
                f"Connection: close\r\n\r\n".encode() + body)
        t.close()  # flushes, then closes; the deadline timer aborts a client that never reads


class _ResolverCollector:
    def __init__(self, current: Callable[[], object]) -> None:
        self.current = current

    def collect(self):  # noqa: ANN201 - prometheus_client collector protocol
        stats = getattr(self.current(), "stats", None)
        if stats is None:
            return
        yield CounterMetricFamily("ticketmx_dns_queries", "DNS queries sent (cache misses).",
                                  value=stats.queries)
        yield CounterMetricFamily("ticketmx_dns_cache_hits", "DNS answers served from the cache.",
                                  value=stats.cache_hits)
        yield CounterMetricFamily("ticketmx_dns_errors", "DNS temporary errors (timeout, SERVFAIL, network).",
                                  value=stats.temp_errors)

    def describe(self):  # noqa: ANN201
        return []
