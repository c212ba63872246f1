"""Config of the HTTP server (``[http]``): where it listens, the public URL, and its limits.

Kept apart from gateway/config/load.py like twoway_config.py: the HTTP package (FastAPI, uvicorn) is
never imported to read a config, and gateway/config/load.py only calls :func:`parse_http`.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any, Callable
from urllib.parse import urlsplit

from gateway.config.units import parse_rate
from gateway.runtime.ratelimit import Rate
from gateway.config.tomltable import Table, expect_str
from gateway.config.units import parse_duration, parse_size


@dataclass(frozen=True, slots=True)
class HttpConfig:
    listen: tuple[str, int] | None = None      # None: no HTTP server (the default; opt-in)
    public_url: str = ""                       # links in mails (ticket links, List-Unsubscribe)
    max_body_size: int = 25 * 1024 * 1024      # request bodies over this: 413, counted while reading
    header_timeout: float = 10.0               # connect (or the previous response) to the end of the headers
    request_timeout: float = 60.0              # end of the headers to the start of the response
    keepalive_timeout: float = 5.0             # an idle kept-alive connection is closed after this
    max_connections: int = 256                 # open connections; over it: 503 and close at once
    rate_per_token: Rate | None = Rate(600, 60.0)  # requests per API token; over it: 429 + Retry-After
    trusted_proxies: tuple[Any, ...] = ()      # CIDRs whose X-Forwarded-For names the client (audit log)
    shutdown_grace: float = 10.0               # requests in flight at stop get this long to finish
    processes: int = 1                         # HTTP server processes beside the SMTP one; 0 = in the SMTP process
    # who may read /metrics on this port (the UI's port may face agents on the internet): loopback and
    # private networks unless set; ["0.0.0.0/0", "::/0"] for anyone, [] for no one
    metrics_allow: tuple[Any, ...] = tuple(ipaddress.ip_network(n) for n in (
        "127.0.0.0/8", "::1/128", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7"))

    @property
    def enabled(self) -> bool:
        return self.listen is not None


def _public_url(v: Any) -> str:
    s = expect_str(v).strip().rstrip("/")
    if not s:
        return ""
    parts = urlsplit(s)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
        raise ValueError(f"{s!r} is not an http(s) URL (e.g. \"https://helpdesk.example.com\")")
    return s


def _count(lo: int, hi: int) -> Any:
    def conv(v: Any) -> int:
        if isinstance(v, bool) or not isinstance(v, int):
            raise TypeError(f"expected an integer, got {type(v).__name__}")
        if not lo <= v <= hi:
            raise ValueError(f"must be between {lo} and {hi}")
        return v
    return conv


def _networks(v: Any) -> tuple[Any, ...]:
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise TypeError("expected a list of strings (CIDRs)")
    return tuple(ipaddress.ip_network(x, strict=False) for x in v)


def parse_http(t: Table, hostport: Callable[[str], tuple[str, int]]) -> HttpConfig:
    """Read ``[http]`` from its table; bad values are reported on ``t`` with their dotted key.
    ``hostport``: gateway.config.load's "host:port" parser (passed in: this module never imports it)."""
    d = HttpConfig()

    def listen(v: Any) -> tuple[str, int] | None:
        s = expect_str(v).strip()
        return hostport(s) if s else None

    cfg = HttpConfig(
        listen=t.get("listen", d.listen, listen),
        public_url=t.get("public_url", d.public_url, _public_url),
        max_body_size=t.get("max_body_size", d.max_body_size, parse_size),
        header_timeout=t.get("header_timeout", d.header_timeout, parse_duration),
        request_timeout=t.get("request_timeout", d.request_timeout, parse_duration),
        keepalive_timeout=t.get("keepalive_timeout", d.keepalive_timeout, parse_duration),
        max_connections=t.get("max_connections", d.max_connections, _count(1, 100_000)),
        rate_per_token=t.get("rate_per_token", d.rate_per_token, parse_rate),
        trusted_proxies=t.get("trusted_proxies", d.trusted_proxies, _networks),
        shutdown_grace=t.get("shutdown_grace", d.shutdown_grace, parse_duration),
        processes=t.get("processes", d.processes, _count(0, 16)),
        metrics_allow=t.get("metrics_allow", d.metrics_allow, _networks),
    )
    if cfg.max_body_size < 1024:
        t.error("max_body_size", "must be at least 1KiB")
    for name in ("header_timeout", "request_timeout", "keepalive_timeout"):
        if not 0.1 <= getattr(cfg, name) <= 3600:
            t.error(name, "must be between 100ms and 1h")
    if cfg.shutdown_grace > 600:
        t.error("shutdown_grace", "must be at most 10m")
    t.finish()
    return cfg
