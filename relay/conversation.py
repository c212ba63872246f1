"""Where a mail about a ticket sits in the customer's conversation: In-Reply-To and References.

Every mail we send about a ticket threads on the customer's own thread, so their mail client shows
one conversation: the acknowledgement answers their first message, an agent's reply answers the
customer message the agent answered, status and other automatic mails answer the ticket's last
customer message. The functions here read the ticket inside the caller's transaction (SQLite or the
PostgreSQL bridge) and never write.

How our own mails are tied to the customer message they answer: :func:`gateway.store.relay_queue.enqueue` records a
notification's Message-ID in ``message_ids`` with the ``article_id`` of that customer message, so an
agent replying to one of our notifications (or to the customer's message itself) resolves to it.
"""
from __future__ import annotations

import base64
import re
import sqlite3
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass

__all__ = ["Thread", "conversation", "header_ids", "thread_keys_sync", "CUSTOMER_EVENTS"]

# Notifications the customer receives: their Message-IDs belong in the customer's References chain.
CUSTOMER_EVENTS = ("ack", "reply", "status", "stripped")
MAX_REFERENCES = 20
_ID = re.compile(r"<([^<>\s]+)>")


@dataclass(frozen=True, slots=True)
class Thread:
    in_reply_to: str | None          # without angle brackets
    references: tuple[str, ...]      # oldest first, ending with in_reply_to
    article_id: int | None           # the customer article answered (recorded with our Message-ID)


def header_ids(headers: Iterable[tuple[str, str]], *names: str) -> list[str]:
    """The message ids in the named header fields (in order, once each), without angle brackets."""
    want = {n.lower() for n in names}
    out: list[str] = []
    for name, value in headers:
        if name.strip().lower() in want:
            out += _ID.findall(str(value))
    return list(dict.fromkeys(out))


def _customer_articles(conn: sqlite3.Connection, ticket_id: int, agents: Collection[str]
                       ) -> list[tuple[int, str, float]]:
    """(article id, Message-ID, created_at) of the ticket's public mails written by the requester or
    a cc participant (not by an agent), oldest first."""
    rows = conn.execute(
        "SELECT a.id, a.message_id, a.created_at, a.from_addr FROM articles a WHERE a.ticket_id=?"
        " AND a.visibility='public' AND a.kind='email' AND a.message_id<>'' AND EXISTS (SELECT 1 FROM"
        " participants p JOIN contacts c ON c.id=p.contact_id WHERE p.ticket_id=a.ticket_id AND"
        " c.email=a.from_addr AND p.role IN ('requester','cc')) ORDER BY a.id", (ticket_id,)).fetchall()
    agents = {a.lower() for a in agents}
    return [(r[0], r[1], r[2]) for r in rows if str(r[3]).lower() not in agents]


def conversation(conn: sqlite3.Connection, ticket_id: int, *, agents: Collection[str] = (),
                 named: Sequence[str] = ()) -> Thread:
    """The threading headers for a customer-facing mail about ``ticket_id``.

    ``named`` are the ids the mail being answered names (an agent's In-Reply-To first, then its
    References newest first): the first that is a customer message of this ticket, or one of our
    notifications about one, is what the mail answers; otherwise the ticket's last customer message.
    References is the customer-visible chain up to it: the customer's messages and our mails to them,
    oldest first, at most :data:`MAX_REFERENCES` (the first kept, as RFC 5322 3.6.4 suggests).
    """
    customer = _customer_articles(conn, ticket_id, agents)
    if not customer:
        return Thread(None, (), None)
    by_id = {a[0]: a for a in customer}
    answered = None
    for mid in named:
        row = conn.execute("SELECT article_id FROM message_ids WHERE message_id=? AND ticket_id=?",
                           (mid, ticket_id)).fetchone()
        if row is not None and row[0] in by_id:
            answered = by_id[row[0]]
            break
    if answered is None:
        answered = customer[-1]
    chain = [(a[2], a[0], a[1]) for a in customer if a[0] <= answered[0]]
    ours = conn.execute(f"SELECT created_at, message_id FROM relay_queue WHERE ticket_id=? AND event IN"
                        f" ({','.join('?' * len(CUSTOMER_EVENTS))}) AND created_at<=? ORDER BY id",
                        (ticket_id, *CUSTOMER_EVENTS, answered[2])).fetchall()
    chain += [(r[0], 0, r[1]) for r in ours]
    refs = [mid for _t, _i, mid in sorted(chain) if mid != answered[1]]
    refs = list(dict.fromkeys(refs)) + [answered[1]]
    if len(refs) > MAX_REFERENCES:
        refs = refs[:1] + refs[-(MAX_REFERENCES - 1):]
    return Thread(answered[1], tuple(refs), answered[0])


def thread_keys_sync(conn: sqlite3.Connection, configured: Sequence[bytes] = ()) -> tuple[bytes, ...]:
    """The threading MAC keys (``[threading] keys``, else the random key kept in the store's
    ``control`` table, see :func:`gateway.pipeline.stages.twoway.ensure_thread_key`), read inside a
    transaction; () when there is none yet."""
    if configured:
        return tuple(configured)
    row = conn.execute("SELECT value FROM control WHERE key='threading_key'").fetchone()
    return (base64.b64decode(row[0]),) if row and row[0] else ()
