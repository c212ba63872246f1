"""Prometheus metrics and the small HTTP endpoint that serves them.

Each gateway instance owns its own CollectorRegistry (no process globals), so
several gateways can run in one test process. Label values are bounded sets
(codes, reasons, states) — never addresses or subjects.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any, Awaitable, Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.samples import Sample
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

log = logging.getLogger(__name__)

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
        # Other processes' samples to add at scrape time (gateway/smtp_group.py); None: this process only.
        self.remote: Callable[[], Awaitable[list[Snapshot]]] | None = None
        self.stage_duration = Histogram("ticketmx_pipeline_batch_duration_seconds",
                                        "Wall time of one pipeline batch (parse + stages + commit).",
                                        buckets=LATENCY_BUCKETS, registry=r)

    def watch_resolver(self, current: Callable[[], object]) -> None:
        """Export the DNS resolver's counters, read at scrape time from ``current()`` (no per-query cost)."""
        self.registry.register(_ResolverCollector(current))

    def reject(self, code: int, reason: str) -> None:
        self.rejected.labels(code=str(code), reason=reason).inc()

    def render(self, others: list[Snapshot] = ()) -> bytes:  # type: ignore[assignment]
        if not others:
            return generate_latest(self.registry)
        return generate_latest(_Merged(merge(list(self.registry.collect()), others)))  # type: ignore[arg-type]

    async def render_all(self) -> bytes:
        """This process's metrics plus those of the other SMTP processes, as one exposition."""
        others = await self.remote() if self.remote is not None else []
        return self.render(others)


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
    """Minimal asyncio HTTP/1.0 server for /metrics, /healthz and /readyz (no threads)."""

    def __init__(self, metrics: Metrics, host: str, port: int, ready: Callable[[], bool]) -> None:
        self.metrics, self.host, self.port, self.ready = metrics, host, port, ready
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, self.host, self.port)
        sock = self._server.sockets[0].getsockname()
        self.port = sock[1]
        log.info("metrics listening on http://%s:%d/metrics", self.host, self.port)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readline(), 5)
            while (await asyncio.wait_for(reader.readline(), 5)) not in (b"\r\n", b"\n", b""):
                pass
            parts = request.decode("latin-1").split()
            path = parts[1].split("?")[0] if len(parts) >= 2 else ""
            if path == "/metrics":
                status, ctype, body = "200 OK", CONTENT_TYPE_LATEST, await self.metrics.render_all()
            elif path == "/healthz":
                status, ctype, body = "200 OK", "text/plain", b"ok\n"
            elif path == "/readyz":
                ok = self.ready()
                status = "200 OK" if ok else "503 Service Unavailable"
                ctype, body = "text/plain", b"ready\n" if ok else b"not ready\n"
            else:
                status, ctype, body = "404 Not Found", "text/plain", b"not found\n"
            writer.write(f"HTTP/1.0 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                         f"Connection: close\r\n\r\n".encode() + body)
            await writer.drain()
        except (asyncio.TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()


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
