"""Prometheus metrics: the registry, and adding up the samples of several processes.

Each gateway instance owns its own CollectorRegistry (no process globals), so
several gateways can run in one test process. The ``[metrics] listen`` endpoint that serves them is
gateway/http/metrics_server.py (uvicorn). Label values are bounded sets
(codes, reasons, states) — never addresses or subjects.
"""
from __future__ import annotations

import logging
from typing import Any, Awaitable, Callable, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.samples import Sample
from prometheus_client.exposition import generate_latest

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
        # The web UI (gateway/ui/metrics.py): route = the route's path template or "other", never a raw path.
        self.ui_requests = Counter("ticketmx_ui_requests_total",
                                   "Web UI requests by route template (/ui/tickets/{number}; other: no route)"
                                   " and HTTP status.", ["route", "status"], registry=r)
        self.ui_request_duration = Histogram("ticketmx_ui_request_duration_seconds",
                                             "Web UI request time in the server, by route template.", ["route"],
                                             buckets=LATENCY_BUCKETS, registry=r)
        self.ui_signins = Counter("ticketmx_ui_signins_total",
                                  "Web UI sign-in attempts by result: ok, bad_password (a wrong password, an"
                                  " unknown address or a disabled account: one value), rate_limited, expired_form.",
                                  ["result"], registry=r)
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
