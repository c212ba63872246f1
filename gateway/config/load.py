"""The one TOML config file, loaded into typed, frozen objects.

Every unknown key and bad value is reported with its dotted key and the file,
all of them at once, so an operator fixes a config in one round.
"""
from __future__ import annotations

import ipaddress
import os
import re
import socket
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from gateway.config.errors import ConfigError, ConfigErrors
from gateway.config.units import parse_rate
from gateway.runtime.ratelimit import Rate
from gateway.config.units import parse_duration, parse_size
from gateway.config.secretfile import exposure, read_fernet_keys
from gateway.config.tomltable import Table, expect_str
from gateway.config.http import HttpConfig, parse_http
from gateway.config.ui import UiConfig, parse_ui

ENV_CONFIG = "TICKETMX_CONFIG"


def parse_hostport(value: str, default_port: int | None = None) -> tuple[str, int]:
    """``"127.0.0.1:2525"`` / ``"[::1]:25"`` -> (host, port)."""
    if not isinstance(value, str) or not value:
        raise ValueError("expected \"host:port\"")
    if value.startswith("["):
        host, sep, rest = value[1:].partition("]")
        if not sep:
            raise ValueError(f"invalid address {value!r}")
        port_s = rest[1:] if rest.startswith(":") else ""
    elif value.count(":") == 1:
        host, _, port_s = value.partition(":")
    elif value.count(":") > 1:  # bare IPv6 without port
        host, port_s = value, ""
    else:
        host, port_s = value, ""
    if not port_s:
        if default_port is None:
            raise ValueError(f"{value!r} has no port (use \"host:port\")")
        return host, default_port
    if not port_s.isdigit() or not 0 <= int(port_s) < 65536:
        raise ValueError(f"invalid port in {value!r}")
    return host, int(port_s)


@dataclass(frozen=True, slots=True)
class SmtpConfig:
    listen: tuple[tuple[str, int], ...] = (("127.0.0.1", 2525),)
    hostname: str = "mx.example.test"
    max_message_size: int = 25 * 1024 * 1024
    tls_cert: str | None = None
    tls_key: str | None = None
    max_recipients: int = 100
    idle_timeout: float = 300.0
    max_sessions: int = 1000
    max_sessions_per_ip: int = 100
    max_received_headers: int = 30
    loop_marker: str = "X-Ticketmx-Loop"
    shutdown_grace: float = 30.0
    proxy_protocol: bool = False          # expect a PROXY v1/v2 header (a TCP load balancer in front)
    trusted_proxies: tuple[Any, ...] = () # CIDRs allowed to send PROXY headers (anyone else: closed)
    proxy_timeout: float = 5.0
    rate_per_ip: Rate | None = None       # accepted messages per client IP, e.g. "100/1m"
    rate_per_sender: Rate | None = None   # accepted messages per MAIL FROM address, e.g. "20/10m"
    event_loop: str = "auto"              # "auto" (uvloop when importable), "uvloop" or "asyncio"
    spill_threshold: int = 1024 * 1024    # DATA larger than this streams to a temporary file (bytes)
    spill_dir: str | None = None          # where those files live (unlinked at once); default: the system's
    processes: int = 1                    # SMTP processes sharing the listen addresses (SO_REUSEPORT)
    # Slots that cannot be held forever (docs/smtp.md, "Time limits and slots"):
    data_min_rate: int = 1024             # DATA must average at least this many bytes/s (after the grace)
    data_rate_grace: float = 30.0         # ... counted from this long after DATA starts
    transaction_timeout: float = 1800.0   # MAIL FROM to the reply after DATA
    session_timeout: float = 3600.0       # connect to close
    junk_command_limit: int = 100         # NOOP/RSET/VRFY/HELP/EXPN/repeated EHLO before each counts as an error
    hard_error_limit: int = 20            # 4xx/5xx replies without a message accepted: then 421 4.7.0 and close
    reserved_sessions: int = 100          # of max_sessions, kept for addresses holding few sessions ("10%")
    reserved_sessions_per_ip: int = 2     # an address may take a reserved slot only up to this many sessions
    max_header_size: int = 1024 * 1024    # a header section longer than this: 552 5.6.0


@dataclass(frozen=True, slots=True)
class StoreConfig:
    url: str = "sqlite:state/ticketmx.db"
    ticket_prefix: str = "HD-"
    ticket_start: int = 1000
    encryption_key_file: str | None = None   # Fernet keys, one per line (first encrypts): encryption at rest
    pool_min: int = 1                        # PostgreSQL: connections each process keeps open
    pool_max: int = 10                       # PostgreSQL: connections each process may open
    claim_lease: float = 60.0                # PostgreSQL: a dead node's claims are taken over after this

    @property
    def is_postgres(self) -> bool:
        return self.url.startswith(("postgresql://", "postgres://"))


@dataclass(frozen=True, slots=True)
class MailboxConfig:
    address: str
    aliases: tuple[str, ...] = ()
    queue: str = "default"
    auth: dict[str, Any] = field(default_factory=dict)  # raw per-mailbox auth overrides (validated by gateway.auth)
    pipeline: dict[str, Any] = field(default_factory=dict)  # raw per-mailbox stage policy overrides
    # Who gets the "we got your message" mail (once a smarthost is configured): "authenticated" (only a
    # From that passed DMARC: no backscatter to forged addresses), "always" (any From) or "never".
    acknowledge: str = "authenticated"
    language: str | None = None  # notification templates' language for this mailbox (default [relay] language)
    name: str = ""             # display name used in notifications' From/Reply-To
    template: Any = None       # gateway.pipeline.stages.template.TicketTemplate (fields, attach_original)

    def addresses(self) -> tuple[str, ...]:
        return (self.address, *self.aliases)


@dataclass(frozen=True, slots=True)
class DnsConfig:
    nameservers: tuple[tuple[str, int], ...] = ()
    timeout: float = 2.0


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    listen: tuple[str, int] | None = ("127.0.0.1", 9101)


def _auto_processes() -> int:
    """``[pipeline] processes = "auto"``: one pipeline worker per CPU, 1 to 4 (the SMTP process
    uses a core of its own under load; more than 4 writers only queue for SQLite's write lock)."""
    return max(1, min(4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))


@dataclass(frozen=True, slots=True)
class PipelineConfig:
    processes: int = field(default_factory=_auto_processes)  # "auto" resolved at load
    batch_size: int = 16
    max_attempts: int = 3
    retry_delay: float = 5.0
    poll_interval: float = 1.0
    batch_wait: float = 0.02        # after a wake-up or a short batch, wait this long for more mail to batch
    stages: tuple[str, ...] = ()    # stage order by name; () = the recommended order
    pause_after_failures: int = 0   # this many consecutive failing messages pause processing (0 = never)
    admin_address: str = ""         # told by mail when processing pauses (needs a smarthost)
    message_budget: float = 5.0     # busy time one message may cost a worker; over it: quarantined


@dataclass(frozen=True, slots=True)
class RetentionConfig:
    raw_days: float = 30.0             # raw mail of processed messages (the tickets stay)
    quarantine_days: float = 90.0      # quarantined messages
    closed_ticket_days: float = 0.0    # closed tickets with their articles (0 = keep forever)
    relay_days: float = 30.0           # finished outbound notifications (sent / dead) in the relay queue
    audit_days: float = 0.0            # the audit history (audit_log); 0 = keep forever
    interval: float = 3600.0           # how often the purge runs


@dataclass(frozen=True, slots=True)
class LogConfig:
    level: str = "INFO"
    json: bool = False
    headers_level: str = "DEBUG"   # level at which each accepted message's raw header section is logged


@dataclass(frozen=True, slots=True)
class Config:
    smtp: SmtpConfig = SmtpConfig()
    store: StoreConfig = StoreConfig()
    mailboxes: tuple[MailboxConfig, ...] = ()
    dns: DnsConfig = DnsConfig()
    metrics: MetricsConfig = MetricsConfig()
    pipeline: PipelineConfig = PipelineConfig()
    log: LogConfig = LogConfig()
    retention: RetentionConfig = RetentionConfig()
    auth: dict[str, Any] = field(default_factory=dict)  # raw [auth] table (validated by gateway.auth)
    policy: Any = None          # gateway.config.pipeline.PipelinePolicy: the stage policies of [pipeline]
    mailbox_policies: dict[str, Any] = field(default_factory=dict)  # mailbox address -> PipelinePolicy
    twoway: Any = None          # gateway.config.twoway.TwoWayConfig: threading, agents, queues, commands, ...
    relay: Any = None           # gateway.config.relay.RelayConfig: outbound notifications (None-like when no smarthost)
    webhooks: tuple[Any, ...] = ()  # gateway.config.webhooks.WebhookConfig per [[webhook]]
    http: HttpConfig = HttpConfig()  # the HTTP API server ([http]; off unless listen is set)
    ui: UiConfig = UiConfig()  # the web UI under /ui/ on the HTTP server ([ui], docs/ui.md)
    http_inbound: tuple[Any, ...] = ()  # gateway.config.inbound.InboundConfig of each [[http.inbound]]
    sources: tuple[Any, ...] = ()  # gateway.config.sources.SourceConfig of each [[source]] (pulled mailboxes)
    source: str | None = None  # the file it came from

    def sqlite_path(self) -> Path:
        """Filesystem path of the SQLite database named by ``store.url``."""
        return sqlite_path_from_url(self.store.url)


def sqlite_path_from_url(url: str) -> Path:
    """``sqlite:///abs/path.db`` (absolute) or ``sqlite:relative/path.db`` (relative to the working dir)."""
    if url.startswith("sqlite:///"):
        return Path("/" + url[len("sqlite:///"):].lstrip("/"))
    if url.startswith("sqlite:") and not url.startswith("sqlite://"):
        return Path(url[len("sqlite:"):])
    raise ValueError(f"not a sqlite URL: {url!r}")


def _nonempty_str(v: Any) -> str:
    s = expect_str(v)
    if not s.strip():
        raise ValueError("must not be empty")
    return s


_HEADER_NAME = re.compile(r"[A-Za-z][A-Za-z0-9-]*")


def _header_name(v: Any) -> str:
    """A header field name we write on every mail (``[smtp] loop_marker``): letters, digits and
    hyphens (RFC 5322 allows more, but a space or colon would make a broken or different header)."""
    s = _nonempty_str(v).strip()
    if not _HEADER_NAME.fullmatch(s):
        raise ValueError(f"{s!r} is not a header field name (letters, digits and '-', e.g. \"X-Ticketmx-Loop\")")
    return s


def _bool(v: Any) -> bool:
    if not isinstance(v, bool):
        raise TypeError(f"expected true or false, got {type(v).__name__}")
    return v


ACK_POLICIES = ("authenticated", "always", "never")


def _ack_policy(v: Any) -> str:
    """``[[mailbox]] acknowledge``. The old booleans still load: ``false`` is "never", and ``true``
    (which meant "on") is the safe "authenticated" rather than the backscatter-prone "always"."""
    if isinstance(v, bool):
        return "authenticated" if v else "never"
    s = expect_str(v).strip().lower()
    if s not in ACK_POLICIES:
        raise ValueError("expected one of " + ", ".join(f'"{p}"' for p in ACK_POLICIES))
    return s


def _int_range(lo: int, hi: int | None = None) -> Callable[[Any], int]:
    def conv(v: Any) -> int:
        if isinstance(v, bool) or not isinstance(v, int):
            raise TypeError(f"expected an integer, got {type(v).__name__}")
        if v < lo or (hi is not None and v > hi):
            raise ValueError(f"must be between {lo} and {hi}" if hi is not None else f"must be >= {lo}")
        return v
    return conv


def _number_range(lo: float, hi: float) -> Callable[[Any], float]:
    def conv(v: Any) -> float:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise TypeError(f"expected a number, got {type(v).__name__}")
        if not lo <= v <= hi:
            raise ValueError(f"must be between {lo} and {hi}")
        return float(v)
    return conv


def _str_list(v: Any) -> tuple[str, ...]:
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise TypeError("expected a list of strings")
    return tuple(v)


def _listen_list(v: Any) -> tuple[tuple[str, int], ...]:
    items = _str_list(v)
    if not items:
        raise ValueError("at least one \"host:port\" is required")
    return tuple(parse_hostport(x) for x in items)


def _networks(v: Any) -> tuple[Any, ...]:
    return tuple(ipaddress.ip_network(x, strict=False) for x in _str_list(v))


def _nameservers(v: Any) -> tuple[tuple[str, int], ...]:
    out = []
    for item in _str_list(v):
        host, port = parse_hostport(item, default_port=53)
        ipaddress.ip_address(host)  # nameservers must be IPs: no DNS to find DNS
        out.append((host, port))
    return tuple(out)


def _metrics_listen(v: Any) -> tuple[str, int] | None:
    s = expect_str(v)
    return parse_hostport(s) if s else None


def _mail_address(v: Any) -> str:
    s = _nonempty_str(v).strip()
    local, at, domain = s.rpartition("@")
    if not at or not local or not domain or "." not in domain or any(c.isspace() for c in s):
        raise ValueError(f"{s!r} is not an email address")
    return s.lower()


def _store_url(v: Any) -> str:
    s = _nonempty_str(v)
    if s.startswith("sqlite:"):
        sqlite_path_from_url(s)
        return s
    if s.startswith(("postgresql://", "postgres://")):
        from urllib.parse import urlsplit
        parts = urlsplit(s)  # host may be a list (h1:5432,h2:5432) for PostgreSQL's own failover
        if not parts.netloc.rpartition("@")[2] or not parts.path.strip("/"):
            raise ValueError("expected postgresql://user[:password]@host[:port]/database")
        return s
    raise ValueError("expected sqlite:///absolute/path.db, sqlite:relative/path.db or "
                     "postgresql://user@host:port/database")


def _log_level(v: Any) -> str:
    s = expect_str(v).upper()
    if s not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
        raise ValueError("expected one of debug, info, warning, error, critical")
    return s


def _processes(v: Any) -> int:
    if isinstance(v, str):
        if v.strip().lower() == "auto":
            return _auto_processes()
        raise ValueError('expected an integer from 0 to 64 or "auto"')
    return _int_range(0, 64)(v)


def _smtp_processes(v: Any) -> int:
    """``[smtp] processes``: an integer from 1 to 64, or "auto" (one per CPU, at most 4)."""
    if isinstance(v, str):
        if v.strip().lower() == "auto":
            return _auto_processes()
        raise ValueError('expected an integer from 1 to 64 or "auto"')
    n = _int_range(1, 64)(v)
    if n > 1 and not hasattr(socket, "SO_REUSEPORT"):
        raise ValueError("more than 1 needs SO_REUSEPORT, which this system does not have")
    return n


def _event_loop(v: Any) -> str:
    s = expect_str(v).lower()
    if s not in {"auto", "uvloop", "asyncio"}:
        raise ValueError("expected \"auto\", \"uvloop\" or \"asyncio\"")
    if s == "uvloop":
        import importlib.util
        if importlib.util.find_spec("uvloop") is None:
            raise ValueError("uvloop is not installed (pip install uvloop, or use \"auto\")")
    return s


def _rate_bytes(v: Any) -> int:
    """``[smtp] data_min_rate``: bytes per second as a size (``"1KiB"``, ``2048``; ``"1KiB/s"`` too); 0 = off."""
    if isinstance(v, str) and v.strip().lower().endswith("/s"):
        v = v.strip()[:-2]
    return parse_size(v)


def _count_or_share(v: Any) -> int | float:
    """A count (``100``) or a share of a total (``"10%"``, returned as 0.1)."""
    if isinstance(v, str) and v.strip().endswith("%"):
        try:
            share = float(v.strip()[:-1])
        except ValueError:
            raise ValueError(f"invalid share {v!r} (use e.g. \"10%\" or a count)") from None
        if not 0 <= share < 100:
            raise ValueError("a share must be from 0% to under 100%")
        return share / 100
    return _int_range(0)(v)


def _path_or_none(v: Any) -> str | None:
    s = expect_str(v)
    return s or None


def build_config(data: dict[str, Any], file: str | None = None) -> Config:
    """Validate a parsed TOML document into a Config, raising ConfigErrors listing every problem."""
    errors: list[ConfigError] = []
    root = Table(data, "", errors, file)

    t = root.sub("smtp")
    d = SmtpConfig()
    smtp = SmtpConfig(
        listen=t.get("listen", d.listen, _listen_list),
        hostname=t.get("hostname", d.hostname, _nonempty_str),
        max_message_size=t.get("max_message_size", d.max_message_size, parse_size),
        tls_cert=t.get("tls_cert", None, _path_or_none),
        tls_key=t.get("tls_key", None, _path_or_none),
        max_recipients=t.get("max_recipients", d.max_recipients, _int_range(1, 10000)),
        idle_timeout=t.get("idle_timeout", d.idle_timeout, parse_duration),
        max_sessions=t.get("max_sessions", d.max_sessions, _int_range(1)),
        max_sessions_per_ip=t.get("max_sessions_per_ip", d.max_sessions_per_ip, _int_range(1)),
        max_received_headers=t.get("max_received_headers", d.max_received_headers, _int_range(1, 1000)),
        loop_marker=t.get("loop_marker", d.loop_marker, _header_name),
        shutdown_grace=t.get("shutdown_grace", d.shutdown_grace, parse_duration),
        proxy_protocol=t.get("proxy_protocol", False, _bool),
        trusted_proxies=t.get("trusted_proxies", (), _networks),
        proxy_timeout=t.get("proxy_timeout", 5.0, parse_duration),
        rate_per_ip=t.get("rate_per_ip", None, parse_rate),
        rate_per_sender=t.get("rate_per_sender", None, parse_rate),
        event_loop=t.get("event_loop", d.event_loop, _event_loop),
        spill_threshold=t.get("spill_threshold", d.spill_threshold, parse_size),
        spill_dir=t.get("spill_dir", None, _path_or_none),
        processes=t.get("processes", d.processes, _smtp_processes),
        data_min_rate=t.get("data_min_rate", d.data_min_rate, _rate_bytes),
        data_rate_grace=t.get("data_rate_grace", d.data_rate_grace, parse_duration),
        transaction_timeout=t.get("transaction_timeout", d.transaction_timeout, parse_duration),
        session_timeout=t.get("session_timeout", d.session_timeout, parse_duration),
        junk_command_limit=t.get("junk_command_limit", d.junk_command_limit, _int_range(0)),
        hard_error_limit=t.get("hard_error_limit", d.hard_error_limit, _int_range(1)),
        reserved_sessions_per_ip=t.get("reserved_sessions_per_ip", d.reserved_sessions_per_ip, _int_range(1)),
        max_header_size=t.get("max_header_size", d.max_header_size, parse_size),
    )
    reserved = t.get("reserved_sessions", 0.1, _count_or_share)  # default: 10% of max_sessions
    smtp = replace(smtp, reserved_sessions=reserved if isinstance(reserved, int)
                    else int(smtp.max_sessions * reserved))
    if smtp.reserved_sessions >= smtp.max_sessions:
        t.error("reserved_sessions", f"must be less than max_sessions ({smtp.max_sessions})")
    if smtp.max_header_size < 16 * 1024:
        t.error("max_header_size", "must be at least 16 KiB")
    for name in ("transaction_timeout", "session_timeout"):
        if getattr(smtp, name) <= 0:
            t.error(name, "must be > 0")
    if smtp.spill_threshold < 64 * 1024:
        t.error("spill_threshold", "must be at least 64 KiB")
    if smtp.spill_dir and not os.path.isdir(smtp.spill_dir):
        t.error("spill_dir", f"not a directory: {smtp.spill_dir}")
    if bool(smtp.tls_cert) != bool(smtp.tls_key):
        t.error("tls_key" if smtp.tls_cert else "tls_cert", "tls_cert and tls_key must be set together")
    for name in ("tls_cert", "tls_key"):
        path = getattr(smtp, name)
        if path and not os.path.isfile(path):
            t.error(name, f"file not found: {path}")
    if smtp.tls_key and (why := exposure(smtp.tls_key)):
        t.error("tls_key", why)
    if smtp.proxy_protocol and not smtp.trusted_proxies:
        t.error("trusted_proxies", "required with proxy_protocol = true (the load balancers' addresses)")
    if smtp.proxy_protocol and smtp.proxy_timeout < 3:
        t.error("proxy_timeout", "must be at least 3s")
    if smtp.max_message_size <= 0:
        t.error("max_message_size", "must be > 0")
    if smtp.idle_timeout <= 0:
        t.error("idle_timeout", "must be > 0")
    t.finish()

    t = root.sub("store")
    d2 = StoreConfig()
    store = StoreConfig(
        url=t.get("url", d2.url, _store_url),
        ticket_prefix=t.get("ticket_prefix", d2.ticket_prefix, expect_str),
        ticket_start=t.get("ticket_start", d2.ticket_start, _int_range(1)),
        encryption_key_file=t.get("encryption_key_file", None, _path_or_none),
        pool_min=t.get("pool_min", d2.pool_min, _int_range(0, 1000)),
        pool_max=t.get("pool_max", d2.pool_max, _int_range(1, 1000)),
        claim_lease=t.get("claim_lease", d2.claim_lease, parse_duration),
    )
    if store.pool_min > store.pool_max:
        t.error("pool_min", "must be <= pool_max")
    if store.claim_lease < 1:
        t.error("claim_lease", "must be >= 1s")
    if store.encryption_key_file and (why := exposure(store.encryption_key_file)):
        t.error("encryption_key_file", why)
    elif store.encryption_key_file:
        try:
            read_fernet_keys(store.encryption_key_file)
        except (OSError, ValueError) as exc:
            t.error("encryption_key_file", f"unusable key file: {exc}")
    t.finish()

    mailboxes: list[MailboxConfig] = []
    raw_mb = data.get("mailbox", [])
    root.used.add("mailbox")
    seen: dict[str, str] = {}
    if not isinstance(raw_mb, list):
        root.error("mailbox", "expected an array of tables ([[mailbox]])")
        raw_mb = []
    for i, item in enumerate(raw_mb):
        mt = Table(item, f"mailbox[{i}]", errors, file)
        if "address" not in mt.data:
            mt.error("address", "required")
        mb = MailboxConfig(
            address=mt.get("address", "", _mail_address),
            aliases=mt.get("aliases", (), lambda v: tuple(_mail_address(x) for x in _str_list(v))),
            queue=mt.get("queue", "default", _nonempty_str),
            auth=mt.get("auth", {}, _dict),
            pipeline=mt.get("pipeline", {}, _dict),
            acknowledge=mt.get("acknowledge", "authenticated", _ack_policy),
            language=mt.get("language", None, _path_or_none),
            name=mt.get("name", "", expect_str),
            template=mt.get("template", None, lambda v, _p=mt.prefix: _template(v, f"{_p}.template")),
        )
        for j, addr in enumerate(mb.addresses()):
            if not addr:
                continue
            if "+" in addr.partition("@")[0]:
                mt.error("address" if j == 0 else "aliases", f"{addr!r}: '+' is reserved for subaddress tags")
            if addr in seen:
                mt.error("address" if j == 0 else "aliases", f"{addr!r} is already used by {seen[addr]}")
            seen[addr] = mt.prefix
        mt.finish()
        mailboxes.append(mb)

    from gateway.config.inbound import parse_inbound
    http_table = data.get("http")
    http_inbound = parse_inbound(http_table.get("inbound") if isinstance(http_table, dict) else None,
                                 tuple(mb.address for mb in mailboxes), errors, file)

    from gateway.config.sources import parse_sources
    root.used.add("source")
    sources = parse_sources(data.get("source"), tuple(mb.address for mb in mailboxes), errors, file)

    t = root.sub("dns")
    dns = DnsConfig(
        nameservers=t.get("nameservers", (), _nameservers),
        timeout=t.get("timeout", 2.0, parse_duration),
    )
    if dns.timeout <= 0:
        t.error("timeout", "must be > 0")
    t.finish()

    t = root.sub("metrics")
    metrics = MetricsConfig(listen=t.get("listen", MetricsConfig().listen, _metrics_listen))
    t.finish()

    t = root.sub("http")
    t.used.add("inbound")  # [[http.inbound]]: gateway/config/inbound.py, above
    http = parse_http(t, parse_hostport)
    ui = parse_ui(root.sub("ui"))

    t = root.sub("pipeline")
    d3 = PipelineConfig()
    pipeline = PipelineConfig(
        processes=t.get("processes", d3.processes, _processes),
        batch_size=t.get("batch_size", d3.batch_size, _int_range(1, 10000)),
        max_attempts=t.get("max_attempts", d3.max_attempts, _int_range(1, 100)),
        retry_delay=t.get("retry_delay", d3.retry_delay, parse_duration),
        poll_interval=t.get("poll_interval", d3.poll_interval, parse_duration),
        batch_wait=t.get("batch_wait", d3.batch_wait, parse_duration),
        pause_after_failures=t.get("pause_after_failures", d3.pause_after_failures, _int_range(0)),
        admin_address=t.get("admin_address", "", lambda v: _mail_address(v) if v else ""),
        stages=t.get("stages", d3.stages, _stage_list),
        message_budget=t.get("message_budget", d3.message_budget, parse_duration),
    )
    if not 0.1 <= pipeline.message_budget <= 3600:
        t.error("message_budget", "must be between 100ms and 1h (the time one message may keep a worker busy)")
    if not 0 <= pipeline.batch_wait <= 1:
        t.error("batch_wait", "must be between 0 and 1s (it delays every ticket by up to this much)")
    own_keys = set(t.used)
    t.used.update(t.data)  # the stage sub-tables are validated by the pipeline policy parser below
    t.finish()
    policy, mailbox_policies = _pipeline_policies(t.data, own_keys, mailboxes, errors, file)

    t = root.sub("retention")
    d4 = RetentionConfig()
    days = _number_range(0, 36500)
    retention = RetentionConfig(
        raw_days=t.get("raw_days", d4.raw_days, days),
        quarantine_days=t.get("quarantine_days", d4.quarantine_days, days),
        closed_ticket_days=t.get("closed_ticket_days", d4.closed_ticket_days, days),
        relay_days=t.get("relay_days", d4.relay_days, days),
        audit_days=t.get("audit_days", d4.audit_days, days),
        interval=t.get("interval", d4.interval, parse_duration),
    )
    if retention.interval <= 0:
        t.error("interval", "must be > 0")
    t.finish()

    t = root.sub("log")
    log = LogConfig(level=t.get("level", "INFO", _log_level), json=t.get("json", False, _bool),
                    headers_level=t.get("headers_level", "DEBUG", _log_level))
    t.finish()

    auth = root.get("auth", {}, _dict)

    relay_table = root.get("relay", {}, _dict)
    relay_cfg = None
    try:
        from dataclasses import replace as _replace

        from gateway.config.relay import RelayConfigError, parse_relay_config
        try:
            relay_cfg = parse_relay_config(relay_table, "relay")
            relay_cfg = _replace(relay_cfg, hostname=relay_cfg.hostname or smtp.hostname,
                                 loop_marker=smtp.loop_marker)
        except RelayConfigError as exc:
            errors.extend(ConfigError(e.key, e.message, file) for e in (exc.errors or [exc]))
    except ImportError:  # relay package not installed
        pass

    from gateway.config.twoway import TWOWAY_TABLES, TwoWayConfig, parse_twoway
    root.used.update(TWOWAY_TABLES)
    try:
        twoway = parse_twoway({k: data[k] for k in TWOWAY_TABLES if k in data})
    except ConfigError as exc:
        errors.append(ConfigError(exc.key, exc.message, file))
        twoway = TwoWayConfig()

    from gateway.config.webhooks import parse_webhooks
    root.used.add("webhook")
    webhooks = parse_webhooks(data.get("webhook"), errors, file)

    root.finish()
    cfg = Config(smtp=smtp, store=store, mailboxes=tuple(mailboxes), dns=dns, metrics=metrics,
                 pipeline=pipeline, log=log, retention=retention, auth=auth, policy=policy,
                 mailbox_policies=mailbox_policies, twoway=twoway, relay=relay_cfg, webhooks=webhooks,
                 http=http, ui=ui, source=file,
                 http_inbound=http_inbound, sources=sources)
    errors.extend(_validate_auth(cfg, file))
    if errors:
        raise ConfigErrors(errors)
    return cfg


def _template(v: Any, prefix: str) -> Any:
    from gateway.config.template import parse_template
    try:
        return parse_template(v, prefix)
    except ConfigError as exc:
        raise ValueError(f"{exc.key}: {exc.message}") from None


def _stage_list(v: Any) -> tuple[str, ...]:
    from gateway.config.pipeline import known_stage_names
    names = _str_list(v)
    if not names:
        return ()  # the recommended order
    unknown = [n for n in names if n not in known_stage_names()]
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown} (known: {', '.join(sorted(known_stage_names()))})")
    if "ticket" not in names:
        raise ValueError("the \"ticket\" stage must be in the list (it is what makes tickets)")
    return names


def _pipeline_policies(table: dict[str, Any], own_keys: set[str], mailboxes: list[MailboxConfig],
                       errors: list[ConfigError], file: str | None) -> tuple[Any, dict[str, Any]]:
    """The stage policies of [pipeline] and of every mailbox's ``pipeline`` sub-table."""
    from gateway.config.pipeline import PipelinePolicy, parse_pipeline_policy
    try:
        policy = parse_pipeline_policy(table, "pipeline", other_keys=own_keys)
    except ConfigError as exc:
        errors.append(ConfigError(exc.key, exc.message, file))
        return PipelinePolicy(), {}
    per: dict[str, Any] = {}
    for i, mb in enumerate(mailboxes):
        if mb.pipeline:
            try:
                per[mb.address] = parse_pipeline_policy(mb.pipeline, f"mailbox[{i}].pipeline", policy)
            except ConfigError as exc:
                errors.append(ConfigError(exc.key, exc.message, file))
    return policy, per


def _dict(v: Any) -> dict[str, Any]:
    if not isinstance(v, dict):
        raise TypeError("expected a table")
    return v


def _validate_auth(cfg: Config, file: str | None) -> list[ConfigError]:
    """Validate [auth] and per-mailbox auth overrides with the auth package's own parser."""
    try:
        from gateway.config.auth import parse_auth_policy
    except ImportError:  # auth package not present in this build
        return []
    errors: list[ConfigError] = []
    try:
        base = parse_auth_policy(cfg.auth, "auth")
    except ConfigError as exc:
        errors.append(ConfigError(exc.key, exc.message, file))
        return errors
    for i, mb in enumerate(cfg.mailboxes):
        if mb.auth:
            try:
                parse_auth_policy(mb.auth, f"mailbox[{i}].auth", base)
            except ConfigError as exc:
                errors.append(ConfigError(exc.key, exc.message, file))
    return errors


def load_config(path: str | os.PathLike[str] | None = None) -> Config:
    """Load the config named by ``path``, else $TICKETMX_CONFIG, else the embedded defaults."""
    if path is None:
        path = os.environ.get(ENV_CONFIG) or None
    if path is None:
        return build_config({}, None)
    file = str(path)
    try:
        with open(file, "rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigErrors([ConfigError("(file)", "config file not found", file)]) from None
    except OSError as exc:
        raise ConfigErrors([ConfigError("(file)", f"cannot read: {exc.strerror}", file)]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigErrors([ConfigError("(syntax)", f"invalid TOML: {exc}", file)]) from None
    return build_config(data, file)
