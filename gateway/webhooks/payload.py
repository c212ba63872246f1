"""The JSON bodies of webhook requests: ``ticketmx`` (ours, every event) and ``postmark``.

``ticketmx``: ``{"event", "id", "created", ...}`` plus, by event, ``ticket`` (a snapshot after the
change), ``article``, ``changes``/``previous``/``actor`` (ticket.updated), ``message`` (quarantined) or
``notification`` (notification.failed). Attachments are listed (name, type, size, sha256), never
inlined: fetch them through the API.

``postmark``: Postmark's inbound webhook JSON (``From``, ``FromFull``, ``ToFull``, ``TextBody``,
``Headers``, ``Attachments`` …) for ticket.created / article.added, so tools that already take
Postmark's inbound posts take ours. An attachment's ``Content`` (base64) is included when it is at
most INLINE_MAX bytes and the payload's inlined total stays within INLINE_TOTAL; otherwise
``Content`` is "" (``ContentLength`` still says its size). Our own data rides in ``Ticketmx``.

Everything here is pure (dicts in, dicts out): the outbox builds bodies inside the transaction.
"""
from __future__ import annotations

import base64
from typing import Any

INLINE_MAX = 256 * 1024
INLINE_TOTAL = 1024 * 1024
# Headers Postmark gives as top-level fields rather than in Headers[].
_TOP_LEVEL = {"from", "to", "cc", "subject", "date", "reply-to"}


def envelope(event: str, event_id: str, created: str) -> dict[str, Any]:
    return {"event": event, "id": event_id, "created": created}


def article_json(art: Any, article_id: int | None) -> dict[str, Any]:
    """An :class:`gateway.store.base.ArticleDraft` as the ``article`` object of a ticketmx payload."""
    return {
        "id": article_id, "message_id": art.message_id,
        "from": {"email": art.from_addr, "name": art.from_name},
        "to": list(art.to_addrs), "cc": list(art.cc_addrs), "subject": art.subject,
        "visibility": art.visibility, "kind": art.kind, "text": art.body_text,
        "stripped_text": art.new_text or art.body_text,
        "attachments": [{"filename": a.filename, "content_type": a.content_type, "size": len(a.content),
                         "sha256": a.sha256, "inline": a.inline} for a in art.attachments],
    }


def _hash(addr: str) -> str:
    local = addr.partition("@")[0]
    return local.partition("+")[2]


def _full(addrs: Any) -> list[dict[str, str]]:
    return [{"Email": a, "Name": "", "MailboxHash": _hash(a)} for a in addrs]


def postmark(art: Any, headers: Any, extra: dict[str, Any]) -> dict[str, Any]:
    """Postmark's inbound JSON for one inbound mail (``art`` an ArticleDraft, ``headers`` its
    (name, value) pairs); ``extra`` (event, id, ticket number …) is added as ``Ticketmx``."""
    first: dict[str, str] = {}
    for name, value in headers or ():
        first.setdefault(str(name).lower(), str(value))
    rcpt = art.rcpt_tos[0] if art.rcpt_tos else (art.to_addrs[0] if art.to_addrs else "")
    inlined = 0
    attachments = []
    for a in art.attachments:
        content = ""
        if len(a.content) <= INLINE_MAX and inlined + len(a.content) <= INLINE_TOTAL:
            content = base64.b64encode(a.content).decode("ascii")
            inlined += len(a.content)
        attachments.append({"Name": a.filename, "Content": content, "ContentType": a.content_type,
                            "ContentLength": len(a.content), "ContentID": a.content_id})
    return {
        "FromName": art.from_name, "MessageStream": "inbound", "From": art.from_addr,
        "FromFull": {"Email": art.from_addr, "Name": art.from_name, "MailboxHash": ""},
        "To": ", ".join(art.to_addrs), "ToFull": _full(art.to_addrs),
        "Cc": ", ".join(art.cc_addrs), "CcFull": _full(art.cc_addrs), "Bcc": "", "BccFull": [],
        "OriginalRecipient": rcpt, "Subject": art.subject, "MessageID": art.message_id,
        "ReplyTo": first.get("reply-to", ""), "MailboxHash": _hash(rcpt), "Date": first.get("date", ""),
        "TextBody": art.body_text, "HtmlBody": art.body_html, "StrippedTextReply": art.new_text or "",
        "Tag": "",
        "Headers": [{"Name": str(n), "Value": str(v)} for n, v in headers or () if str(n).lower() not in _TOP_LEVEL],
        "Attachments": attachments,
        "Ticketmx": extra,
    }


def test_payload(fmt: str, event_id: str, created: str, webhook: str) -> dict[str, Any]:
    """What ``ticketmx webhook test`` sends: event ``test``, in the webhook's format."""
    body = {**envelope("test", event_id, created), "webhook": webhook}
    if fmt != "postmark":
        return body
    from types import SimpleNamespace
    art = SimpleNamespace(from_addr="test@example.invalid", from_name="ticketmx test", to_addrs=("support@example.invalid",),
                          cc_addrs=(), rcpt_tos=("support@example.invalid",), subject="ticketmx webhook test",
                          message_id=f"{event_id}@ticketmx.invalid", body_text="A test event from ticketmx.\n",
                          body_html="", new_text="A test event from ticketmx.", attachments=())
    return postmark(art, (("Date", created),), body)
