"""The one transaction that ends a message's life in the SQLite store.

Everything that must be decided atomically lives here: idempotency (spool id,
Message-ID), threading (which ticket, and may this sender act on it), reopen
or link, the ticket/article/attachment rows, contact updates and history.
"""
from __future__ import annotations

import json
import sqlite3
from dataclasses import replace
from typing import IO, Any, Iterable, Iterator

from gateway.webhooks.outbox import ticket_updated
from gateway.store.crypto import Cipher
from gateway.store.search import index_text, search_rowid
from gateway.store.base import (ARTICLE_ADDED, QUARANTINED, SUPPRESSED, TICKET_CREATED, ArticleDraft, Delivery,
                   DeliveryResult, ThreadHints)

DAY = 86400.0
CLOSED_STATES = ("resolved", "closed")
SETTABLE = ("status", "priority", "assignee", "category", "queue")  # queue: by the HTTP API only


STREAM_BLOB_MIN = 256 * 1024  # blobs from this size are written in pieces
_BLOB_PIECE = 1024 * 1024


def insert_blob(conn: sqlite3.Connection, sha256: str, data: bytes) -> None:
    """``INSERT INTO blobs``, a large blob written through SQLite's incremental blob I/O.

    Why: bound as a parameter, SQLite copies the value (``SQLITE_TRANSIENT``) and then copies it
    again into the row record, and Python's statement cache keeps the bound copy alive until the
    statement is reused -- a 15 MB attachment cost the pipeline worker +31 MB at the delivery
    commit (2x its size, issue 18 item 9). A ``zeroblob`` row filled piece by piece costs a page
    cache's worth, whatever the size."""
    if len(data) < STREAM_BLOB_MIN:
        conn.execute("INSERT INTO blobs (sha256, data) VALUES (?,?)", (sha256, data))
        return
    insert_streamed(conn, "blobs", "data", "INSERT INTO blobs (sha256, data) VALUES (?, zeroblob(?))",
                    (sha256, len(data)), memory_pieces(data))


def insert_streamed(conn: sqlite3.Connection, table: str, column: str, sql: str, params: tuple[Any, ...],
                    pieces: Iterable[bytes | memoryview]) -> None:
    """Run ``sql`` (an INSERT whose ``column`` is ``zeroblob(n)``), then fill that blob with
    ``pieces`` (n bytes in all): no bound copy of a large value (see :func:`insert_blob`)."""
    rowid = conn.execute(sql, params).lastrowid
    with conn.blobopen(table, column, rowid) as blob:
        for piece in pieces:
            blob.write(piece)


def memory_pieces(data: bytes) -> Iterator[memoryview]:
    """``data`` as views of _BLOB_PIECE bytes (no copies)."""
    with memoryview(data) as view:
        for start in range(0, len(data), _BLOB_PIECE):
            with view[start:start + _BLOB_PIECE] as piece:
                yield piece


def file_pieces(f: IO[bytes], offset: int, size: int, piece: int = 256 * 1024) -> Iterator[memoryview]:
    """``size`` bytes of ``f`` from ``offset``, read into one reused buffer of ``piece`` bytes; an
    early end is an error (the file was truncated under us: never spool a shortened message)."""
    f.seek(offset)
    buf = bytearray(min(piece, size))
    with memoryview(buf) as view:
        while size > 0:
            n = f.readinto(view[:min(len(buf), size)])
            if not n:
                raise OSError(f"body file ended {size} bytes early")
            size -= n
            with view[:n] as part:
                yield part


class DeliverTx:
    def __init__(self, conn: sqlite3.Connection, now: float, ticket_prefix: str, ticket_start: int,
                 cipher: Cipher | None = None, histories: dict[str, str] | None = None) -> None:
        self.conn = conn
        self.histories = histories or {}  # spool id -> its stage history as JSON, encoded before the lock
        self.cipher = cipher or Cipher()
        self.denied: tuple[int, str] | None = None
        self.now = now
        self.prefix = ticket_prefix
        self.start = ticket_start

    def run(self, d: Delivery) -> DeliveryResult:
        conn = self.conn
        if conn.execute("SELECT 1 FROM spool WHERE id=?", (d.spool_id,)).fetchone() is None:
            raise KeyError(f"spool entry {d.spool_id} does not exist")
        # Idempotency 1: this spool entry already made an article (replay, crash after commit).
        done = conn.execute("SELECT a.id, a.ticket_id, t.number, (SELECT MIN(id) FROM articles"
                            " WHERE ticket_id=a.ticket_id) FROM articles a JOIN tickets t ON t.id=a.ticket_id"
                            " WHERE a.spool_id=?", (d.spool_id,)).fetchone()
        if done is not None:
            state = TICKET_CREATED if done[0] == done[3] else ARTICLE_ADDED
            if d.kind == "suppress":  # a system note (bounce) was left last time: still suppressed
                state = SUPPRESSED
            return self.finish(d, state, "already delivered" if state != SUPPRESSED else d.reason,
                               done[1], done[0], done[2])
        for email, undeliverable, why in d.contact_updates:
            cid = self.contact(email, "")
            conn.execute("UPDATE contacts SET undeliverable=?, undeliverable_reason=? WHERE id=?",
                         (int(undeliverable), why if undeliverable else "", cid))
        if d.kind == "suppress":
            if d.article is not None:  # a system note for the ticket this message is about (bounce)
                found = self.thread(d.thread, self.contact(d.article.from_addr, d.article.from_name))
                if found is not None:
                    article_id = self.article(found[0], d.spool_id, d.article)
                    self.history(found[0], "system", "system_note", {"reason": d.reason, "article_id": article_id})
                    return self.finish(d, SUPPRESSED, d.reason, found[0], article_id, found[1])
            return self.finish(d, SUPPRESSED, d.reason)
        if d.kind == "quarantine":
            return self.finish(d, QUARANTINED, d.reason)
        if d.kind not in ("ticket", "note") or d.article is None:
            raise ValueError(f"bad delivery kind {d.kind!r}")
        art = d.article
        # Idempotency 2: the same Message-ID already reached this ticket system.
        if art.message_id:
            seen = conn.execute("SELECT m.ticket_id, t.number FROM message_ids m JOIN tickets t"
                                " ON t.id=m.ticket_id WHERE m.message_id=?", (art.message_id,)).fetchone()
            if seen is not None:
                return self.finish(d, SUPPRESSED, f"duplicate: Message-ID <{art.message_id}> already on {seen[1]}",
                                   seen[0])
        contact_id = self.contact(art.from_addr, art.from_name)
        found = self.thread(d.thread, contact_id)
        if found is None and self.denied is not None and d.kind == "ticket":
            if d.thread.on_stranger == "quarantine":
                return self.finish(d, QUARANTINED, f"{art.from_addr} is not a participant of the ticket it names "
                                                   f"({self.denied[1]})")
        if d.kind == "note":
            if found is None:
                return self.finish(d, SUPPRESSED, f"{d.reason} (answers no ticket we know)")
            ticket_id, number, _status, _closed = found
            article_id = self.article(ticket_id, d.spool_id, art)
            self.history(ticket_id, art.from_addr, "note_added", {"reason": d.reason, "article_id": article_id})
            return self.finish(d, ARTICLE_ADDED, d.reason, ticket_id, article_id, number)
        reopened = False
        linked_to: int | None = self.denied[0] if found is None and self.denied is not None else None
        if found is not None:
            ticket_id, number, status, closed_at = found
            if status in CLOSED_STATES:
                queue = conn.execute("SELECT queue FROM tickets WHERE id=?", (ticket_id,)).fetchone()[0]
                days = dict(d.thread.reopen_days_by_queue).get(queue, d.thread.reopen_days)
                within = closed_at is not None and self.now - closed_at <= days * DAY
                if d.thread.thanks_only and not d.thread.sender_is_agent:
                    self.history(ticket_id, art.from_addr, "not_reopened", {"why": "thanks only", "status": status})
                elif d.thread.may_reopen and days > 0 and within:
                    conn.execute("UPDATE tickets SET status='open', closed_at=NULL WHERE id=?", (ticket_id,))
                    self.history(ticket_id, art.from_addr, "reopened", {"by": "reply", "was": status})
                    reopened = True
                elif d.thread.may_reopen:
                    linked_to, found = ticket_id, None  # too late to reopen: a new ticket linked to the old
        if found is None:
            if d.thread.on_no_match == "drop":
                return self.finish(d, SUPPRESSED, "replies only: no new tickets by email for this mailbox")
            if d.thread.on_no_match == "quarantine":
                return self.finish(d, QUARANTINED, "replies only: no new tickets by email for this mailbox")
            ticket_id, number = self.new_ticket(d, art, contact_id, linked_to)
            state = TICKET_CREATED
        else:
            ticket_id, number = found[0], found[1]
            queue = conn.execute("SELECT queue FROM tickets WHERE id=?", (ticket_id,)).fetchone()[0]
            if queue in d.thread.internal_queues and art.visibility == "public":
                art = replace(art, visibility="internal")  # this queue takes no public updates by email
            conn.execute("UPDATE tickets SET updated_at=?, status=CASE WHEN status='pending' THEN 'open'"
                         " ELSE status END WHERE id=?", (self.now, ticket_id))
            if not d.thread.sender_is_agent:
                self.participant(ticket_id, contact_id, "cc")  # a verified-token sender joins the thread
            elif art.visibility == "public":  # the first public agent answer meets the first-response SLA
                conn.execute("UPDATE tickets SET first_response_at=COALESCE(first_response_at, ?) WHERE id=?",
                             (self.now, ticket_id))
            state = ARTICLE_ADDED
        for email, name, role in d.participants:
            self.participant(ticket_id, self.contact(email, name), role)
        article_id = self.article(ticket_id, d.spool_id, art)
        if state == ARTICLE_ADDED:
            self.history(ticket_id, art.from_addr, "article_added",
                         {"article_id": article_id, "visibility": art.visibility})
        if d.updates:
            self.apply_updates(ticket_id, art.from_addr, d.updates)
        for h in d.ticket_history:
            self.history(ticket_id, h.get("actor", "system"), h.get("action", "note"), h.get("detail", {}))
        result = self.finish(d, state, d.reason, ticket_id, article_id, number)
        # a new ticket's requester is the contact looked up (or added) by art.from_addr just above
        requester = art.from_addr if state == TICKET_CREATED else self.requester(ticket_id)
        return DeliveryResult(result.spool_id, result.state, result.reason, ticket_id, article_id, number,
                              requester=requester, reopened=reopened)

    # -- pieces ----------------------------------------------------------------------------------
    def contact(self, email: str, name: str) -> int:
        row = self.conn.execute("SELECT id, name FROM contacts WHERE email=?", (email,)).fetchone()
        if row is not None:
            if name and not row[1]:
                self.conn.execute("UPDATE contacts SET name=? WHERE id=?", (name, row[0]))
            return row[0]
        return self.conn.execute("INSERT INTO contacts (email, name, created_at) VALUES (?,?,?)",
                                 (email, name, self.now)).lastrowid

    def participant(self, ticket_id: int, contact_id: int, role: str) -> None:
        self.conn.execute("INSERT OR IGNORE INTO participants (ticket_id, contact_id, role) VALUES (?,?,?)",
                          (ticket_id, contact_id, role))

    def requester(self, ticket_id: int) -> str | None:
        row = self.conn.execute("SELECT c.email FROM tickets t JOIN contacts c ON c.id=t.requester_id"
                                " WHERE t.id=?", (ticket_id,)).fetchone()
        return row[0] if row else None

    def thread(self, h: ThreadHints, contact_id: int) -> tuple[int, str, str, float | None] | None:
        """(id, number, status, closed_at) of the ticket this message may join, or None.

        ``self.denied`` is set to (id, number) of a ticket the message named but may not join."""
        self.denied: tuple[int, str] | None = None
        if not h.may_act:
            return None
        conn = self.conn

        def allowed(ticket_id: int) -> bool:
            if h.sender_is_agent:
                return True
            return conn.execute("SELECT 1 FROM participants WHERE ticket_id=? AND contact_id=?",
                                (ticket_id, contact_id)).fetchone() is not None

        sql = "SELECT id, number, status, closed_at FROM tickets WHERE "
        candidates = [conn.execute(sql + "id=?", (tid,)).fetchone() for tid in h.ticket_ids]
        for ref in h.refs:
            row = conn.execute("SELECT ticket_id FROM message_ids WHERE message_id=?", (ref,)).fetchone()
            if row is not None:
                candidates.append(conn.execute(sql + "id=?", (row[0],)).fetchone())
        for row in candidates:
            if row is not None and allowed(row[0]):
                return row
            if row is not None and self.denied is None:
                self.denied = (row[0], row[1])
        if h.number:
            row = conn.execute(sql + "number=?", (h.number,)).fetchone()
            if row is not None and (h.number_verified or allowed(row[0])):
                return row
            if row is not None and self.denied is None:
                self.denied = (row[0], row[1])
        if h.subject_days > 0 and h.subject_key:
            keys = self.cipher.match_candidates(h.subject_key)  # hashed when encryption is on
            row = conn.execute(sql + f"requester_id=? AND subject_key IN ({','.join('?' * len(keys))})"
                               " AND created_at>=? ORDER BY id DESC",
                               (contact_id, *keys, self.now - h.subject_days * DAY)).fetchone()
            if row is not None:
                return row
        return None

    def new_ticket(self, d: Delivery, art: ArticleDraft, contact_id: int, linked_to: int | None) -> tuple[int, str]:
        f = d.ticket_fields
        ticket_id = self.conn.execute(
            "INSERT INTO tickets (subject, requester_id, queue, mailbox, flags, priority, category, assignee,"
            " tags, fields, subject_key, linked_ticket_id, created_at, updated_at)"
            " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (self.cipher.enc_text(art.subject), contact_id, d.queue, d.mailbox,
             json.dumps(list(dict.fromkeys(f.flags))),
             f.priority or "normal", f.category or "", f.assignee or "", json.dumps(list(dict.fromkeys(f.tags))),
             json.dumps(f.fields), self.cipher.match_key(d.thread.subject_key), linked_to, self.now,
             self.now)).lastrowid
        number = f"{self.prefix}{self.start + ticket_id - 1}"
        self.conn.execute("UPDATE tickets SET number=? WHERE id=?", (number, ticket_id))
        self.participant(ticket_id, contact_id, "requester")
        detail: dict[str, Any] = {"queue": d.queue, "mailbox": d.mailbox}
        if linked_to is not None:
            detail["linked_to"] = linked_to
        self.history(ticket_id, art.from_addr, "created", detail)
        return ticket_id, number

    def article(self, ticket_id: int, spool_id: str, art: ArticleDraft) -> int:
        conn = self.conn
        article_id = conn.execute(
            "INSERT INTO articles (ticket_id, spool_id, message_id, from_addr, from_name, to_addrs, cc_addrs,"
            " rcpt_tos, subject, body_text, body_html, visibility, kind, new_text, created_at)"
            " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (ticket_id, spool_id, art.message_id, art.from_addr, art.from_name, json.dumps(list(art.to_addrs)),
             json.dumps(list(art.cc_addrs)), json.dumps(list(art.rcpt_tos)), self.cipher.enc_text(art.subject),
             self.cipher.enc_text(art.body_text), self.cipher.enc_text(art.body_html), art.visibility, art.kind,
             self.cipher.enc_text(art.new_text or art.body_text), self.now)).lastrowid
        for att in art.attachments:
            if conn.execute("SELECT 1 FROM blobs WHERE sha256=?", (att.sha256,)).fetchone() is None:
                insert_blob(conn, att.sha256, self.cipher.enc_bytes(att.content))
            conn.execute("INSERT INTO attachments (article_id, filename, content_type, size, sha256, inline,"
                         " content_id) VALUES (?,?,?,?,?,?,?)",
                         (article_id, self.cipher.enc_text(att.filename), att.content_type, len(att.content), att.sha256,
                          int(att.inline), att.content_id))
        for s in art.stripped:
            conn.execute("INSERT INTO stripped_attachments (article_id, filename, content_type, size, sha256,"
                         " reason) VALUES (?,?,?,?,?,?)",
                         (article_id, self.cipher.enc_text(s.filename), s.content_type, s.size, s.sha256, s.reason))
        if art.message_id:
            conn.execute("INSERT OR IGNORE INTO message_ids (message_id, ticket_id, article_id) VALUES (?,?,?)",
                         (art.message_id, ticket_id, article_id))
        self.index(ticket_id, art)
        return article_id

    def index(self, ticket_id: int, art: ArticleDraft) -> None:
        """The article in the full-text index, in this transaction (gateway/store/search.py)."""
        n = self.conn.execute("SELECT COUNT(*) FROM articles WHERE ticket_id=?", (ticket_id,)).fetchone()[0]
        self.conn.execute("INSERT INTO ticket_search (rowid, subject, body) VALUES (?,?,?)",
                          (search_rowid(ticket_id, n), index_text(self.cipher, art.subject),
                           index_text(self.cipher, art.body_text)))

    def apply_updates(self, ticket_id: int, actor: str, updates: dict[str, Any], replace_tags: bool = False,
                      previous: dict[str, Any] | None = None) -> None:
        """Ticket fields from an agent's mail commands, or from the HTTP API (``replace_tags``: ``tags``
        is the whole new list rather than tags to add), and the "command" history line. ``previous``:
        the old values of the fields, when the caller read them (the API), for ticket.updated."""
        old_status = self.conn.execute("SELECT status FROM tickets WHERE id=?", (ticket_id,)).fetchone()[0]
        for key in SETTABLE:
            if key in updates:
                self.conn.execute(f"UPDATE tickets SET {key}=? WHERE id=?", (updates[key], ticket_id))
        if updates.get("status") in CLOSED_STATES:
            self.conn.execute("UPDATE tickets SET closed_at=? WHERE id=?", (self.now, ticket_id))
        elif "status" in updates:
            self.conn.execute("UPDATE tickets SET closed_at=NULL WHERE id=?", (ticket_id,))
        if updates.get("tags") or (replace_tags and "tags" in updates):
            row = self.conn.execute("SELECT tags FROM tickets WHERE id=?", (ticket_id,)).fetchone()
            tags = list(dict.fromkeys(([] if replace_tags else json.loads(row[0])) + list(updates["tags"])))
            self.conn.execute("UPDATE tickets SET tags=? WHERE id=?", (json.dumps(tags), ticket_id))
        self.history(ticket_id, actor, "command", {"applied": updates, "old_status": old_status})
        ticket_updated(self.conn, ticket_id, actor, updates, previous if previous is not None
                       else {"status": old_status}, self.now)  # [[webhook]]s

    def history(self, ticket_id: int, actor: str, action: str, detail: dict[str, Any]) -> None:
        self.conn.execute("INSERT INTO ticket_history (ticket_id, at, actor, action, detail) VALUES (?,?,?,?,?)",
                          (ticket_id, self.now, actor, action, json.dumps(detail, ensure_ascii=False)))

    def finish(self, d: Delivery, state: str, reason: str, ticket_id: int | None = None,
               article_id: int | None = None, number: str | None = None) -> DeliveryResult:
        self.conn.execute(
            "UPDATE spool SET state=?, reason=?, ticket_id=?, article_id=?, finished_at=?, history=?,"
            " claimed_by='', released='', last_error=CASE WHEN ? THEN ? ELSE last_error END,"
            " traceback=CASE WHEN ?<>'' THEN ? ELSE traceback END WHERE id=?",
            (state, reason, ticket_id, article_id, self.now,
             self.histories.get(d.spool_id) or json.dumps(list(d.history)),
             state == QUARANTINED, reason, d.traceback, d.traceback, d.spool_id))
        return DeliveryResult(d.spool_id, state, reason, ticket_id, article_id, number)
