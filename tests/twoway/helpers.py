"""Builders for ParsedMessage values in unit tests."""
from __future__ import annotations

from typing import Any

from gateway.pipeline.parse.model import Attachment, ParsedMessage


def parsed(subject: str = "Printer on fire", from_addr: str = "alice@customer.test", from_name: str = "Alice",
           to: tuple[str, ...] = ("support@example.test",), cc: tuple[str, ...] = (), body: str = "It is on fire.",
           html: str = "", headers: tuple[tuple[str, str], ...] = (), attachments: tuple[Attachment, ...] = (),
           **kw: Any) -> ParsedMessage:
    base: dict[str, Any] = dict(
        subject=subject, from_name=from_name, from_addr=from_addr, from_count=1, to=to, cc=cc, reply_to=(),
        message_id="m1@customer.test", in_reply_to=(), references=(), date="", body_text=body, body_html=html,
        attachments=attachments,
        headers=(("From", f"{from_name} <{from_addr}>"), ("To", ", ".join(to)), ("Subject", subject), *headers))
    base.update(kw)
    return ParsedMessage(**base)
