"""Reports about our mails: delivery status notifications (RFC 3464) and read receipts (RFC 8098).

The pipeline's ``bounce`` stage recognises them (gateway/pipeline/stages/bounces.py) and the worker hands
them over as ``Delivery.report``; the notification hook applies them here, inside the transaction
that ends the report's spool entry, so a replayed report records nothing twice.

A report counts only when it names one of our notifications (the Message-ID of a ``relay_queue``
row: random, and MAC-signed for mail about a ticket, so not guessable from outside) - a DSN about
anyone else's mail marks nobody undeliverable - and a DSN's failed recipient must be a recipient
of that notification.
"""
from __future__ import annotations

import json
import sqlite3
from datetime import datetime, timezone
from typing import Any, Mapping

from gateway.store.relay_queue import delivery_failed

__all__ = ["apply_report", "mdn_text"]


def _notification(conn: sqlite3.Connection, message_id: str | None) -> tuple[int, int | None, str] | None:
    if not message_id:
        return None
    row = conn.execute("SELECT id, ticket_id, event FROM relay_queue WHERE message_id=?",
                       (message_id.strip().strip("<>"),)).fetchone()
    return (int(row[0]), row[1], row[2]) if row else None


def _once(conn: sqlite3.Connection, ticket_id: int, action: str, spool_id: str) -> bool:
    """True when this spool entry has not yet left a ``action`` entry on the ticket (replays)."""
    return conn.execute("SELECT 1 FROM ticket_history WHERE ticket_id=? AND action=? AND detail LIKE ?",
                        (ticket_id, action, f'%"spool_id": {json.dumps(spool_id)}%')).fetchone() is None


def _history(conn: sqlite3.Connection, ticket_id: int, now: float, action: str, detail: dict[str, Any]) -> None:
    conn.execute("INSERT INTO ticket_history (ticket_id, at, actor, action, detail) VALUES (?, ?, 'system', ?, ?)",
                 (ticket_id, now, action, json.dumps(detail)))


def mdn_text(reader: str, disposition: str, at: float) -> str:
    """"read by x at t" (``displayed``), else "<disposition> by x at t" (deleted, …)."""
    when = datetime.fromtimestamp(at, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    verb = "read" if disposition in ("", "displayed") else disposition
    return f"{verb} by {reader} at {when}"


def apply_report(conn: sqlite3.Connection, report: Mapping[str, Any], spool_id: str, now: float) -> int | None:
    """Record ``report`` (``{"type": "dsn", ...bounce data}`` or ``{"type": "mdn", ...}``) on the
    notification it is about; returns that notification's ticket id, or None when it names none of ours."""
    found = _notification(conn, report.get("original_message_id"))
    if found is None:
        return None
    mail_id, ticket_id, event = found
    if report.get("type") == "mdn":
        if ticket_id is not None and _once(conn, ticket_id, "read_receipt", spool_id):
            reader = str(report.get("reader") or "unknown")
            disposition = str(report.get("disposition") or "displayed")
            at = float(report.get("at") or now)
            _history(conn, ticket_id, now, "read_receipt", {
                "text": mdn_text(reader, disposition, at), "reader": reader, "disposition": disposition,
                "at": at, "notification_id": mail_id, "event": event, "spool_id": spool_id})
        return ticket_id
    details = {str(d.get("recipient", "")).lower(): d for d in report.get("details", []) if isinstance(d, dict)}
    for addr in report.get("permanent", []):
        d = details.get(str(addr).lower(), {})
        text = " ".join(str(d.get(k, "")) for k in ("status", "diagnostic")).strip()
        delivery_failed(conn, mail_id, str(addr), text or "permanent failure", now, source="dsn", bounced=True)
    delayed = [str(a) for a in report.get("temporary", [])]
    if delayed and ticket_id is not None and _once(conn, ticket_id, "delivery_delayed", spool_id):
        _history(conn, ticket_id, now, "delivery_delayed", {
            "text": "delivery to " + ", ".join(delayed) + " delayed: " + " ".join(
                str(details.get(a.lower(), {}).get("status", "")) for a in delayed).strip(),
            "recipients": delayed, "notification_id": mail_id, "event": event, "spool_id": spool_id})
    return ticket_id
