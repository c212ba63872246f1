"""``[[http.inbound]]``: which mailboxes take mail over ``POST /api/v1/inbound/{name}``, and how posts prove
who sent them (docs/api.md, "HTTP inbound"). Configuration only: the endpoint is gateway/http/inbound.py,
the parsing and checks gateway/ingress/http_inbound.py.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any

from gateway.config.errors import ConfigError
from gateway.config.secretfile import exposure
from gateway.config.tomltable import Table, expect_str
from gateway.config.units import parse_duration, parse_size

FORMATS = ("auto", "mime", "postmark", "mailgun", "sendgrid")
AUTH_KINDS = ("mailgun", "basic", "bearer")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]{0,127}")


@dataclass(frozen=True, slots=True)
class InboundConfig:
    """One ``[[http.inbound]]`` table. Secrets stay in their files (read when the endpoint starts)."""

    mailbox: str                      # the [[mailbox]] address the mail is for (the envelope recipient)
    name: str                         # the URL's {mailbox} segment (default: the address)
    format: str = "auto"
    auth: str = "bearer"
    signing_key_file: str = ""        # auth = "mailgun": the HTTP webhook signing key
    username: str = ""                # auth = "basic"
    password_file: str = ""           # auth = "basic"
    token_file: str = ""              # auth = "bearer"
    max_age: float = 300.0            # auth = "mailgun": timestamps older (or newer) than this are refused
    trusted_authserv_id: str = ""     # the provider's authserv-id whose dmarc=pass we accept (docs/auth.md)
    max_size: int = 0                 # the largest message; 0: [smtp] max_message_size


def parse_inbound(items: Any, mailbox_addresses: tuple[str, ...], errors: list[ConfigError],
                  file: str | None, prefix: str = "http.inbound") -> tuple[InboundConfig, ...]:
    """Validate the ``[[http.inbound]]`` array; every problem goes to ``errors`` naming its dotted key."""
    if items is None:
        return ()
    if not isinstance(items, list):
        errors.append(ConfigError(prefix, "expected an array of tables ([[http.inbound]])", file))
        return ()
    known = {a.lower(): a for a in mailbox_addresses}
    out: list[InboundConfig] = []
    names: dict[str, str] = {}
    for i, item in enumerate(items):
        t = Table(item, f"{prefix}[{i}]", errors, file)
        mailbox = t.get("mailbox", "", expect_str).strip()
        if not mailbox:
            t.error("mailbox", "required (the address of a [[mailbox]])")
        elif mailbox.lower() not in known:
            t.error("mailbox", f"{mailbox!r} is not the address of a [[mailbox]]")
        else:
            mailbox = known[mailbox.lower()]
        name = t.get("name", mailbox, expect_str)
        if name and not _NAME.fullmatch(name):
            t.error("name", f"{name!r}: letters, digits and ._@+- only (it is a URL path segment)")
        elif name.lower() in names:
            t.error("name", f"{name!r} is already used by {names[name.lower()]}")
        names[name.lower()] = t.prefix
        fmt = t.get("format", "auto", expect_str)
        if fmt not in FORMATS:
            t.error("format", f"{fmt!r}: expected one of {', '.join(FORMATS)}")
        auth = t.get("auth", "", expect_str)
        if auth not in AUTH_KINDS:
            t.error("auth", f"{auth!r}: expected one of {', '.join(AUTH_KINDS)} (every inbound post must be"
                            " authenticated)")
        cfg = InboundConfig(
            mailbox=mailbox, name=name, format=fmt, auth=auth,
            signing_key_file=t.get("signing_key_file", "", expect_str),
            username=t.get("username", "", expect_str),
            password_file=t.get("password_file", "", expect_str),
            token_file=t.get("token_file", "", expect_str),
            max_age=t.get("max_age", 300.0, parse_duration),
            trusted_authserv_id=t.get("trusted_authserv_id", "", expect_str).strip().lower(),
            max_size=t.get("max_size", 0, parse_size),
        )
        needed = {"mailgun": ("signing_key_file",), "basic": ("username", "password_file"),
                  "bearer": ("token_file",)}.get(auth, ())
        for key in needed:
            if not getattr(cfg, key):
                t.error(key, f"required with auth = {auth!r}")
        for key in ("signing_key_file", "password_file", "token_file"):
            path = getattr(cfg, key)
            if not path:
                continue
            if key not in needed:
                t.error(key, f"not used with auth = {auth!r}")
            elif not os.path.isfile(path):
                t.error(key, f"file not found: {path}")
            elif why := exposure(path):
                t.error(key, why)
        if cfg.username and auth != "basic":
            t.error("username", f"not used with auth = {auth!r}")
        if not 10 <= cfg.max_age <= 86400:
            t.error("max_age", "must be between 10s and 1d")
        if cfg.max_size < 0:
            t.error("max_size", "must be >= 0")
        t.finish()
        out.append(cfg)
    return tuple(out)


def read_secret(path: str) -> bytes:
    """A secret file's content without its trailing line break; refuses files others can read."""
    if why := exposure(path):
        raise ValueError(why)
    with open(path, "rb") as fh:
        data = fh.read(64 * 1024).rstrip(b"\r\n")
    if not data:
        raise ValueError(f"{path} is empty")
    return data
