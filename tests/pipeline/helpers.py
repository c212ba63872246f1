"""Builders for pipeline stage tests: real ParsedMessage / SpoolEntry / Context objects, no mocks."""
from __future__ import annotations

import asyncio
import time
from typing import Any

from gateway.config.load import Config, MailboxConfig, SmtpConfig
from gateway.pipeline.parse.mime import parse_message
from gateway.pipeline.stages.core import Context, Inbound, Verdict
from gateway.config.recipients import RecipientMap
from gateway.store.base import SpoolEntry

MAILBOXES = (
    MailboxConfig(address="support@example.test", aliases=("help@example.test",), queue="IT"),
    MailboxConfig(address="billing@example.test", queue="Billing"),
)
HOSTNAME = "mx.example.test"


def message(headers: list[tuple[str, str]] | dict[str, str] | None = None, body: str = "Hello,\r\nplease help.\r\n",
            *, sender: str = "Alice Example <alice@example.org>", to: str = "support@example.test",
            subject: str = "Printer broken", message_id: str = "<m1@example.org>") -> bytes:
    """A plain text message; ``headers`` are added after the standard ones."""
    items = list(headers.items()) if isinstance(headers, dict) else list(headers or [])
    base = [("From", sender), ("To", to), ("Subject", subject), ("Date", "Mon, 1 Jan 2024 10:00:00 +0000"),
            ("Message-ID", message_id), ("MIME-Version", "1.0"),
            ("Content-Type", "text/plain; charset=utf-8")]
    names = {k.lower() for k, _ in items}
    base = [(k, v) for k, v in base if k.lower() not in names]
    lines = [f"{k}: {v}" for k, v in base + items if v is not None]
    return ("\r\n".join(lines) + "\r\n\r\n" + body).encode("utf-8")


def entry(raw: bytes, *, mail_from: str = "alice@example.org", rcpt: tuple[str, ...] = ("support@example.test",),
          peer_ip: str = "192.0.2.10", helo: str = "mail.example.org", flags: tuple[str, ...] = (),
          auth: dict[str, Any] | None = None, mailboxes: tuple[str, ...] | None = None) -> SpoolEntry:
    return SpoolEntry(id="sp-1", received_at=time.time(), mail_from=mail_from, rcpt_tos=rcpt,
                      mailboxes=mailboxes if mailboxes is not None else rcpt, peer_ip=peer_ip, helo=helo, tls=None,
                      message_id="", raw=raw, auth=auth, flags=flags)


def inbound(raw: bytes, **kw: Any) -> Inbound:
    return Inbound(entry(raw, **kw), parse_message(raw))


def context(mailboxes: tuple[MailboxConfig, ...] = MAILBOXES) -> Context:
    cfg = Config(smtp=SmtpConfig(hostname=HOSTNAME), mailboxes=mailboxes)
    return Context(cfg=cfg, recipients=RecipientMap(mailboxes))


def run(stage: Any, msg: Inbound, ctx: Context | None = None) -> Verdict:
    return asyncio.run(stage.run(msg, ctx or context()))
