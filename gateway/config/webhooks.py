"""``[[webhook]]``: where events are POSTed, which ones, signed with which secret, retried how long.

A leaf: it imports only the config helpers (gateway.config.tomltable, gateway.config.units, gateway.config.secretfile), so
gateway/config/load.py can call it without importing the worker or the HTTP client.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from gateway.config.errors import ConfigError
from gateway.config.secretfile import exposure
from gateway.config.tomltable import Table, expect_str
from gateway.config.units import parse_duration

TICKET_CREATED = "ticket.created"
ARTICLE_ADDED = "article.added"
TICKET_UPDATED = "ticket.updated"
MESSAGE_QUARANTINED = "message.quarantined"
NOTIFICATION_FAILED = "notification.failed"
EVENTS = (TICKET_CREATED, ARTICLE_ADDED, TICKET_UPDATED, MESSAGE_QUARANTINED, NOTIFICATION_FAILED)
FORMATS = ("ticketmx", "postmark")
POSTMARK_EVENTS = (TICKET_CREATED, ARTICLE_ADDED)  # the only events that are an inbound mail
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
MIN_SECRET = 16


@dataclass(frozen=True, slots=True)
class WebhookConfig:
    """One ``[[webhook]]`` table. ``secret`` is the file's content (never logged nor stored)."""

    name: str
    url: str
    events: tuple[str, ...]
    secret: str = field(repr=False)
    secret_file: str = ""
    format: str = "ticketmx"
    timeout: float = 10.0               # one POST, connect to last byte
    lifetime: float = 3 * 86400.0       # retried this long after the event, then dead
    backoff_initial: float = 10.0       # wait after the first failure ...
    backoff_max: float = 3600.0         # ... doubling (backoff_factor) up to this, with jitter
    backoff_factor: float = 2.0
    verify_cert: bool = True
    ca_file: str = ""
    max_in_flight: int = 16             # concurrent POSTs to this webhook

    def wants(self, event: str) -> bool:
        return event in self.events


def _bool(v: Any) -> bool:
    if not isinstance(v, bool):
        raise TypeError("expected true or false")
    return v


def _duration(lo: float, hi: float) -> Any:
    def conv(v: Any) -> float:
        s = parse_duration(v)
        if not lo <= s <= hi:
            raise ValueError(f"must be between {lo:g}s and {hi:g}s")
        return s
    return conv


def _url(v: Any) -> str:
    s = expect_str(v).strip()
    parts = urlsplit(s)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"expected an http:// or https:// URL, got {s!r}")
    if parts.username or parts.password:
        raise ValueError("credentials in the URL would be logged: authenticate by the signature instead")
    return s


def _events(v: Any) -> tuple[str, ...]:
    if not isinstance(v, list) or not v or not all(isinstance(x, str) for x in v):
        raise ValueError(f"expected a non-empty list of event names ({', '.join(EVENTS)})")
    bad = [x for x in v if x not in EVENTS]
    if bad:
        raise ValueError(f"unknown event {bad[0]!r} (known: {', '.join(EVENTS)})")
    return tuple(dict.fromkeys(v))


def read_secret(path: str) -> str:
    """The secret in ``path`` (stripped); ValueError naming the file when unusable."""
    why = exposure(path)
    if why:
        raise ValueError(why)
    try:
        with open(path, encoding="utf-8") as fh:
            secret = fh.read().strip()
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror}") from None
    if len(secret) < MIN_SECRET:
        raise ValueError(f"{path}: the secret must be at least {MIN_SECRET} characters"
                         " (e.g. openssl rand -hex 32)")
    return secret


def parse_webhooks(raw: Any, errors: list[ConfigError], file: str | None) -> tuple[WebhookConfig, ...]:
    """Every ``[[webhook]]`` table, problems appended to ``errors`` (each naming its dotted key)."""
    if raw is None:
        return ()
    if not isinstance(raw, list):
        errors.append(ConfigError("webhook", "expected an array of tables ([[webhook]])", file))
        return ()
    out: list[WebhookConfig] = []
    names: set[str] = set()
    for i, item in enumerate(raw):
        t = Table(item, f"webhook[{i}]", errors, file)
        for key in ("name", "url", "events", "secret_file"):
            if key not in t.data:
                t.error(key, "required")
        d = WebhookConfig("", "", (), "")
        name = t.get("name", "", expect_str)
        if name and not _NAME.match(name):
            t.error("name", f"{name!r}: use letters, digits, '.', '_' or '-' (at most 64)")
        elif name in names:
            t.error("name", f"{name!r} is already used by another [[webhook]]")
        names.add(name)
        secret_file = t.get("secret_file", "", expect_str)
        secret = ""
        if secret_file:
            try:
                secret = read_secret(secret_file)
            except ValueError as exc:
                t.error("secret_file", str(exc))
        wh = WebhookConfig(
            name=name, url=t.get("url", "", _url), events=t.get("events", (), _events), secret=secret,
            secret_file=secret_file, format=t.get("format", d.format, expect_str),
            timeout=t.get("timeout", d.timeout, _duration(0.1, 300)),
            lifetime=t.get("lifetime", d.lifetime, _duration(1, 30 * 86400)),
            backoff_initial=t.get("backoff_initial", d.backoff_initial, _duration(0.01, 86400)),
            backoff_max=t.get("backoff_max", d.backoff_max, _duration(0.01, 86400)),
            backoff_factor=t.get("backoff_factor", d.backoff_factor, _factor),
            verify_cert=t.get("verify_cert", True, _bool), ca_file=t.get("ca_file", "", expect_str),
            max_in_flight=t.get("max_in_flight", d.max_in_flight, _in_flight),
        )
        if wh.format not in FORMATS:
            t.error("format", f"{wh.format!r}: expected one of {', '.join(FORMATS)}")
        elif wh.format == "postmark":
            other = [e for e in wh.events if e not in POSTMARK_EVENTS]
            if other:
                t.error("events", f"{other[0]!r} has no Postmark shape: format = \"postmark\" takes only "
                                  f"{' and '.join(POSTMARK_EVENTS)} (add a second [[webhook]] with format ="
                                  " \"ticketmx\" for the others)")
        if wh.backoff_max < wh.backoff_initial:
            t.error("backoff_max", "must be >= backoff_initial")
        if wh.ca_file:
            import os
            if not os.path.isfile(wh.ca_file):
                t.error("ca_file", f"file not found: {wh.ca_file}")
            if not wh.url.startswith("https://"):
                t.error("ca_file", "only meaningful with an https:// url")
        t.finish()
        out.append(wh)
    return tuple(out)


def _factor(v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 1.0 <= v <= 10.0:
        raise ValueError("expected a number between 1 and 10")
    return float(v)


def _in_flight(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 1000:
        raise ValueError("expected an integer between 1 and 1000")
    return v


__all__ = ["WebhookConfig", "parse_webhooks", "read_secret", "EVENTS", "FORMATS", "TICKET_CREATED",
           "ARTICLE_ADDED", "TICKET_UPDATED", "MESSAGE_QUARANTINED", "NOTIFICATION_FAILED"]
