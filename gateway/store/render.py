"""Row -> model / JSON-contract conversion shared by store backends.

The dict shapes produced here ARE the CLI's JSON contract (docs/cli.md):
change them only by adding keys.
"""
from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any, Mapping

from gateway.store.base import SpoolEntry
from gateway.store.crypto import Cipher

PLAIN = Cipher()


def iso(ts: float | None) -> str | None:
    """Epoch seconds -> RFC 3339 UTC with milliseconds (``2026-11-22T10:00:00.123Z``)."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _json(value: Any, default: Any) -> Any:
    if value is None or value == "":
        return default
    return json.loads(value)


def spool_from_row(r: Mapping[str, Any], cipher: Cipher = PLAIN, raw_stored: bytes | None = None) -> SpoolEntry:
    """``raw_stored``: the stored message bytes when they are kept outside the row (SQLite's
    ``spool_raw``); otherwise the row's ``raw`` column."""
    raw = cipher.dec_bytes(bytes(r["raw"] if raw_stored is None else raw_stored))
    return SpoolEntry(
        id=r["id"], received_at=r["received_at"], mail_from=r["mail_from"],
        rcpt_tos=tuple(_json(r["rcpt_tos"], [])), mailboxes=tuple(_json(r["mailboxes"], [])),
        peer_ip=r["peer_ip"], helo=r["helo"], tls=_json(r["tls"], None), message_id=r["message_id"],
        raw=raw, auth_header=r["auth_header"], auth=_json(r["auth"], None),
        flags=tuple(_json(r["flags"], [])), state=r["state"], reason=r["reason"], attempts=r["attempts"],
        last_error=r["last_error"], history=tuple(_json(r["history"], [])), ticket_id=r["ticket_id"],
        article_id=r["article_id"], finished_at=r["finished_at"], traceback=r["traceback"],
        interrupted=r["interrupted"], released=_released(r), **_chunking(r, len(raw)))


def _released(r: Mapping[str, Any]) -> dict[str, Any] | None:
    """A pending operator release (migration 0013; absent in rows read before it)."""
    try:
        value = r["released"]
    except (KeyError, IndexError):
        return None
    return _json(value, None)


def _chunking(r: Mapping[str, Any], raw_len: int) -> dict[str, int]:
    """A chunked entry's raw is only its head: the rest of ``size`` is in its chunk rows."""
    try:
        chunks = r["chunks"] or 0
    except (KeyError, IndexError):
        chunks = 0
    if not chunks:
        return {}
    return {"chunks": chunks, "body_size": max(0, r["size"] - raw_len)}


def spool_dict(e: SpoolEntry, ticket_number: str | None = None) -> dict[str, Any]:
    """The ``spool list/show --json`` object (without the raw message)."""
    return {
        "id": e.id, "state": e.state, "reason": e.reason,
        "received_at": iso(e.received_at), "finished_at": iso(e.finished_at),
        "mail_from": e.mail_from, "rcpt_tos": list(e.rcpt_tos), "mailboxes": list(e.mailboxes),
        "message_id": e.message_id, "peer_ip": e.peer_ip, "helo": e.helo, "tls": e.tls,
        "size": e.size, "chunks": e.chunks, "attempts": e.attempts, "interrupted": e.interrupted,
        "last_error": e.last_error, "flags": list(e.flags),
        "ticket_id": e.ticket_id, "ticket_number": ticket_number, "article_id": e.article_id,
        "authentication_results": e.auth_header, "auth": e.auth, "history": list(e.history),
        "decisions": [{"stage": h.get("stage"), "verdict": h.get("action"), "reason": h.get("reason", "")}
                      for h in e.history],
        "traceback": e.traceback,
    }


def ticket_dict(r: Mapping[str, Any], cipher: Cipher = PLAIN) -> dict[str, Any]:
    return {
        "id": r["id"], "number": r["number"], "subject": cipher.dec_text(r["subject"]), "requester": r["requester"],
        "requester_name": r["requester_name"], "queue": r["queue"], "mailbox": r["mailbox"],
        "status": r["status"], "flags": _json(r["flags"], []), "priority": r["priority"],
        "category": r["category"], "assignee": r["assignee"], "tags": _json(r["tags"], []),
        "fields": _json(r["fields"], {}), "linked_ticket_id": r["linked_ticket_id"],
        "created_at": iso(r["created_at"]), "updated_at": iso(r["updated_at"]), "closed_at": iso(r["closed_at"]),
    }


def article_dict(a: Mapping[str, Any], atts: list[Mapping[str, Any]], stripped: list[Mapping[str, Any]],
                 spool: Mapping[str, Any] | None, cipher: Cipher = PLAIN) -> dict[str, Any]:
    return {
        "id": a["id"], "spool_id": a["spool_id"], "message_id": a["message_id"],
        "from": a["from_addr"], "from_name": a["from_name"], "to": _json(a["to_addrs"], []),
        "cc": _json(a["cc_addrs"], []), "rcpt_tos": _json(a["rcpt_tos"], []),
        "subject": cipher.dec_text(a["subject"]),
        "body_text": cipher.dec_text(a["body_text"]), "body_html": cipher.dec_text(a["body_html"]),
        "new_text": cipher.dec_text(a["new_text"]),
        "visibility": a["visibility"], "kind": a["kind"], "created_at": iso(a["created_at"]),
        "attachments": [{"id": x["id"], "filename": cipher.dec_text(x["filename"]), "content_type": x["content_type"],
                         "size": x["size"],
                         "sha256": x["sha256"], "inline": bool(x["inline"]), "content_id": x["content_id"]}
                        for x in atts],
        "stripped_attachments": [{"filename": cipher.dec_text(x["filename"]), "content_type": x["content_type"],
                                  "size": x["size"],
                                  "sha256": x["sha256"], "reason": x["reason"]} for x in stripped],
        "authentication_results": spool["auth_header"] if spool is not None else None,
        "auth": _json(spool["auth"], None) if spool is not None else None,
    }
