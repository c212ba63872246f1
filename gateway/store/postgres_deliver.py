"""The one transaction that ends a message's life in the PostgreSQL store.

An async port of :mod:`gateway.store.sqlite_deliver` that makes the SAME decisions (idempotency by spool
id and Message-ID, threading and the participant rule, reopen or link, notes, suppress with a system
note, quarantine with its traceback, contact updates, history); keep the two in step.

What differs is what several nodes writing at once need (see :meth:`PostgresStore.deliver`):

* Before any decision the transaction takes transaction-level advisory locks on every idempotency key of
  its batch — ``spool:<id>``, ``mid:<Message-ID>``, ``contact:<address>`` — in one global order (sorted
  64-bit hashes), so two nodes handling the same Message-ID (an upstream MTA that retried after a timeout
  and reached the other MX) or the same spool entry (a lease taken over from a slow node) run one after
  the other, and the second one, in READ COMMITTED, sees the first one's committed ticket and ends
  ``suppressed: duplicate`` / ``already delivered``. The unique constraints (message_ids, articles.spool_id,
  contacts.email, blobs) stay the last line of defence.
* Rows that may be inserted by two nodes at once use ``INSERT … ON CONFLICT``.
* Ticket numbers come from the tickets' identity sequence (``nextval``), not from SQLite's rowid.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from typing import Any

import asyncpg

from gateway.store.base import (ARTICLE_ADDED, QUARANTINED, SUPPRESSED, TICKET_CREATED, ArticleDraft, Delivery,
                   DeliveryResult, ThreadHints)
from gateway.webhooks.outbox import ticket_updated
from gateway.store.crypto import Cipher
from gateway.store.search import index_text
from gateway.store.pg_sync import PgSyncConnection, run_sync

DAY = 86400.0
CLOSED_STATES = ("resolved", "closed")
SETTABLE = ("status", "priority", "assignee", "category", "queue")  # queue: by the HTTP API only


def lock_key(kind: str, value: str) -> int:
    """A signed 64-bit advisory-lock key for an idempotency key (collisions only serialise more)."""
    digest = hashlib.blake2b(f"ticketmx:{kind}:{value}".encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def delivery_lock_keys(deliveries: list[Delivery]) -> list[int]:
    """Every advisory lock the batch needs, in the one global order (ascending)."""
    keys: set[int] = set()
    for d in deliveries:
        keys.add(lock_key("spool", d.spool_id))
        if d.article is not None:
            if d.article.message_id:
                keys.add(lock_key("mid", d.article.message_id))
            keys.add(lock_key("contact", d.article.from_addr))
        for email, _name, _role in d.participants:
            keys.add(lock_key("contact", email))
        for email, _u, _why in d.contact_updates:
            keys.add(lock_key("contact", email))
    return sorted(keys)


async def take_locks(conn: asyncpg.Connection, keys: list[int]) -> None:
    """Transaction-level advisory locks, taken in array order (released at COMMIT/ROLLBACK)."""
    if keys:
        await conn.fetchval("SELECT count(pg_advisory_xact_lock(k)) FROM unnest($1::bigint[]) WITH ORDINALITY"
                            " AS u(k, n)", keys)


class PgDeliverTx:
    def __init__(self, conn: asyncpg.Connection, now: float, ticket_prefix: str, ticket_start: int,
                 cipher: Cipher | None = None, webhooks: tuple[Any, ...] = ()) -> None:
        self.conn = conn
        self.webhooks = webhooks  # [[webhook]]s: ticket.updated is queued by apply_updates
        self.cipher = cipher or Cipher()
        self.denied: tuple[int, str] | None = None
        self.now = now
        self.prefix = ticket_prefix
        self.start = ticket_start
        self._finished: list[tuple[Any, ...]] = []  # spool rows to end, written by flush() in one round trip

    async def run(self, d: Delivery) -> DeliveryResult:
        conn = self.conn
        # The spool entry, whether it already made an article, and whether its Message-ID is already on a
        # ticket — one round trip (nothing before idempotency check 2 below writes message_ids).
        mid = d.article.message_id if d.article is not None and d.kind in ("ticket", "note") else ""
        row = await conn.fetchrow("SELECT a.id, a.ticket_id, t.number, (SELECT MIN(id) FROM articles"
                                  " WHERE ticket_id=a.ticket_id) AS first, m.ticket_id AS seen_ticket,"
                                  " mt.number AS seen_number FROM spool s LEFT JOIN articles a ON a.spool_id=s.id"
                                  " LEFT JOIN tickets t ON t.id=a.ticket_id"
                                  " LEFT JOIN message_ids m ON m.message_id=$2 AND $2 <> ''"
                                  " LEFT JOIN tickets mt ON mt.id=m.ticket_id WHERE s.id=$1",
                                  d.spool_id, mid)
        if row is None:
            raise KeyError(f"spool entry {d.spool_id} does not exist")
        # Idempotency 1: this spool entry already made an article (replay, crash after commit, lease taken over).
        done = row if row[0] is not None else None
        if done is not None:
            state = TICKET_CREATED if done[0] == done[3] else ARTICLE_ADDED
            if d.kind == "suppress":  # a system note (bounce) was left last time: still suppressed
                state = SUPPRESSED
            return await self.finish(d, state, "already delivered" if state != SUPPRESSED else d.reason,
                                     done[1], done[0], done[2])
        for email, undeliverable, why in d.contact_updates:
            cid = await self.contact(email, "")
            await conn.execute("UPDATE contacts SET undeliverable=$1, undeliverable_reason=$2 WHERE id=$3",
                               int(undeliverable), why if undeliverable else "", cid)
        if d.kind == "suppress":
            if d.article is not None:  # a system note for the ticket this message is about (bounce)
                found = await self.thread(d.thread, await self.contact(d.article.from_addr, d.article.from_name))
                if found is not None:
                    article_id = await self.article(found[0], d.spool_id, d.article)
                    await self.history(found[0], "system", "system_note",
                                       {"reason": d.reason, "article_id": article_id})
                    return await self.finish(d, SUPPRESSED, d.reason, found[0], article_id, found[1])
            return await self.finish(d, SUPPRESSED, d.reason)
        if d.kind == "quarantine":
            return await self.finish(d, QUARANTINED, d.reason)
        if d.kind not in ("ticket", "note") or d.article is None:
            raise ValueError(f"bad delivery kind {d.kind!r}")
        art = d.article
        # Idempotency 2: the same Message-ID already reached this ticket system (on any node: the
        # mid:<Message-ID> advisory lock made a concurrent twin commit first, and we see its row now).
        if art.message_id and row["seen_ticket"] is not None:
            return await self.finish(d, SUPPRESSED,
                                     f"duplicate: Message-ID <{art.message_id}> already on {row['seen_number']}",
                                     row["seen_ticket"])
        contact_id = await self.contact(art.from_addr, art.from_name)
        found = await self.thread(d.thread, contact_id)
        if found is None and self.denied is not None and d.kind == "ticket":
            if d.thread.on_stranger == "quarantine":
                return await self.finish(d, QUARANTINED, f"{art.from_addr} is not a participant of the ticket it "
                                                          f"names ({self.denied[1]})")
        if d.kind == "note":
            if found is None:
                return await self.finish(d, SUPPRESSED, f"{d.reason} (answers no ticket we know)")
            ticket_id, number, _status, _closed = found
            article_id = await self.article(ticket_id, d.spool_id, art)
            await self.history(ticket_id, art.from_addr, "note_added", {"reason": d.reason, "article_id": article_id})
            return await self.finish(d, ARTICLE_ADDED, d.reason, ticket_id, article_id, number)
        reopened = False
        linked_to: int | None = self.denied[0] if found is None and self.denied is not None else None
        if found is not None:
            ticket_id, number, status, closed_at = found
            if status in CLOSED_STATES:
                queue = await conn.fetchval("SELECT queue FROM tickets WHERE id=$1", ticket_id)
                days = dict(d.thread.reopen_days_by_queue).get(queue, d.thread.reopen_days)
                within = closed_at is not None and self.now - closed_at <= days * DAY
                if d.thread.thanks_only and not d.thread.sender_is_agent:
                    await self.history(ticket_id, art.from_addr, "not_reopened",
                                       {"why": "thanks only", "status": status})
                elif d.thread.may_reopen and days > 0 and within:
                    await conn.execute("UPDATE tickets SET status='open', closed_at=NULL WHERE id=$1", ticket_id)
                    await self.history(ticket_id, art.from_addr, "reopened", {"by": "reply", "was": status})
                    reopened = True
                elif d.thread.may_reopen:
                    linked_to, found = ticket_id, None  # too late to reopen: a new ticket linked to the old
        if found is None:
            if d.thread.on_no_match == "drop":
                return await self.finish(d, SUPPRESSED, "replies only: no new tickets by email for this mailbox")
            if d.thread.on_no_match == "quarantine":
                return await self.finish(d, QUARANTINED, "replies only: no new tickets by email for this mailbox")
            ticket_id, number = await self.new_ticket(d, art, contact_id, linked_to)
            state = TICKET_CREATED
        else:
            ticket_id, number = found[0], found[1]
            queue = await conn.fetchval("SELECT queue FROM tickets WHERE id=$1", ticket_id)
            if queue in d.thread.internal_queues and art.visibility == "public":
                art = replace(art, visibility="internal")  # this queue takes no public updates by email
            await conn.execute("UPDATE tickets SET updated_at=$1, status=CASE WHEN status='pending' THEN 'open'"
                               " ELSE status END WHERE id=$2", self.now, ticket_id)
            if not d.thread.sender_is_agent:
                await self.participant(ticket_id, contact_id, "cc")  # a verified-token sender joins the thread
            elif art.visibility == "public":  # the first public agent answer meets the first-response SLA
                await conn.execute("UPDATE tickets SET first_response_at=COALESCE(first_response_at, $1)"
                                   " WHERE id=$2", self.now, ticket_id)
            state = ARTICLE_ADDED
        for email, name, role in d.participants:
            await self.participant(ticket_id, await self.contact(email, name), role)
        article_id = await self.article(ticket_id, d.spool_id, art)
        if state == ARTICLE_ADDED:
            await self.history(ticket_id, art.from_addr, "article_added",
                               {"article_id": article_id, "visibility": art.visibility})
        if d.updates:
            await self.apply_updates(ticket_id, art.from_addr, d.updates)
        for h in d.ticket_history:
            await self.history(ticket_id, h.get("actor", "system"), h.get("action", "note"), h.get("detail", {}))
        result = await self.finish(d, state, d.reason, ticket_id, article_id, number)
        # a new ticket's requester is this sender (contacts are keyed by the address as given)
        requester = art.from_addr if state == TICKET_CREATED else await self.requester(ticket_id)
        return DeliveryResult(result.spool_id, result.state, result.reason, ticket_id, article_id, number,
                              requester=requester, reopened=reopened)

    # -- pieces ----------------------------------------------------------------------------------
    async def contact(self, email: str, name: str) -> int:
        conn = self.conn
        row = await conn.fetchrow("SELECT id, name FROM contacts WHERE email=$1", email)
        if row is None:
            cid = await conn.fetchval("INSERT INTO contacts (email, name, created_at) VALUES ($1,$2,$3)"
                                      " ON CONFLICT (email) DO NOTHING RETURNING id", email, name, self.now)
            if cid is not None:
                return cid
            row = await conn.fetchrow("SELECT id, name FROM contacts WHERE email=$1", email)  # a node won the race
        if name and not row[1]:
            await conn.execute("UPDATE contacts SET name=$1 WHERE id=$2", name, row[0])
        return row[0]

    async def participant(self, ticket_id: int, contact_id: int, role: str) -> None:
        await self.conn.execute("INSERT INTO participants (ticket_id, contact_id, role) VALUES ($1,$2,$3)"
                                " ON CONFLICT DO NOTHING", ticket_id, contact_id, role)

    async def requester(self, ticket_id: int) -> str | None:
        return await self.conn.fetchval("SELECT c.email FROM tickets t JOIN contacts c ON c.id=t.requester_id"
                                        " WHERE t.id=$1", ticket_id)

    async def thread(self, h: ThreadHints, contact_id: int) -> tuple[int, str, str, float | None] | None:
        """(id, number, status, closed_at) of the ticket this message may join, or None.

        ``self.denied`` is set to (id, number) of a ticket the message named but may not join."""
        self.denied = None
        if not h.may_act:
            return None
        conn = self.conn

        async def allowed(ticket_id: int) -> bool:
            if h.sender_is_agent:
                return True
            return await conn.fetchval("SELECT 1 FROM participants WHERE ticket_id=$1 AND contact_id=$2",
                                       ticket_id, contact_id) is not None

        def tup(row: asyncpg.Record | None) -> tuple[int, str, str, float | None] | None:
            return None if row is None else (row[0], row[1], row[2], row[3])

        sql = "SELECT id, number, status, closed_at FROM tickets WHERE "
        candidates = [await conn.fetchrow(sql + "id=$1", tid) for tid in h.ticket_ids]
        for ref in h.refs:
            tid = await conn.fetchval("SELECT ticket_id FROM message_ids WHERE message_id=$1", ref)
            if tid is not None:
                candidates.append(await conn.fetchrow(sql + "id=$1", tid))
        for row in candidates:
            if row is not None and await allowed(row[0]):
                return tup(row)
            if row is not None and self.denied is None:
                self.denied = (row[0], row[1])
        if h.number:
            row = await conn.fetchrow(sql + "number=$1", h.number)
            if row is not None and (h.number_verified or await allowed(row[0])):
                return tup(row)
            if row is not None and self.denied is None:
                self.denied = (row[0], row[1])
        if h.subject_days > 0 and h.subject_key:
            row = await conn.fetchrow(sql + "requester_id=$1 AND subject_key = ANY($2::text[]) AND created_at>=$3"
                                      " ORDER BY id DESC LIMIT 1", contact_id,
                                      list(self.cipher.match_candidates(h.subject_key)),
                                      self.now - h.subject_days * DAY)
            if row is not None:
                return tup(row)
        return None

    async def new_ticket(self, d: Delivery, art: ArticleDraft, contact_id: int,
                         linked_to: int | None) -> tuple[int, str]:
        f = d.ticket_fields
        detail: dict[str, Any] = {"queue": d.queue, "mailbox": d.mailbox}
        if linked_to is not None:
            detail["linked_to"] = linked_to
        # The ticket (its number from the sequence), the requester as participant and the "created"
        # history row in one statement (one round trip).
        row = await self.conn.fetchrow(
            "WITH n AS (SELECT nextval(pg_get_serial_sequence('tickets', 'id')) AS v),"
            " t AS (INSERT INTO tickets (id, number, subject, requester_id, queue, mailbox, flags, priority,"
            " category, assignee, tags, fields, subject_key, linked_ticket_id, created_at, updated_at)"
            " SELECT n.v, $1::text || ($2::bigint + n.v - 1)::text, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12,"
            " $13, $14, $15, $15 FROM n RETURNING id, number),"
            " p AS (INSERT INTO participants (ticket_id, contact_id, role) SELECT id, $4, 'requester' FROM t"
            " ON CONFLICT DO NOTHING),"
            " h AS (INSERT INTO ticket_history (ticket_id, at, actor, action, detail)"
            " SELECT id, $15, $16, 'created', $17 FROM t)"
            " SELECT id, number FROM t",
            self.prefix, self.start, self.cipher.enc_text(art.subject), contact_id, d.queue, d.mailbox,
            json.dumps(list(dict.fromkeys(f.flags))), f.priority or "normal", f.category or "", f.assignee or "",
            json.dumps(list(dict.fromkeys(f.tags))), json.dumps(f.fields), self.cipher.match_key(d.thread.subject_key),
            linked_to, self.now, art.from_addr, json.dumps(detail, ensure_ascii=False))
        return row[0], row[1]

    async def article(self, ticket_id: int, spool_id: str, art: ArticleDraft) -> int:
        conn = self.conn
        # The article and its Message-ID (idempotency, threading) in one statement.
        article_id = await conn.fetchval(
            "WITH a AS (INSERT INTO articles (ticket_id, spool_id, message_id, from_addr, from_name, to_addrs,"
            " cc_addrs, rcpt_tos, subject, body_text, body_html, visibility, kind, new_text, created_at)"
            " VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14,$15) RETURNING id),"
            " m AS (INSERT INTO message_ids (message_id, ticket_id, article_id) SELECT $3, $1, id FROM a"
            " WHERE $3 <> '' ON CONFLICT DO NOTHING),"
            # the full-text index (gateway/store/search.py), in the same statement
            " s AS (UPDATE tickets SET search = strip(search || to_tsvector('simple', $16)) WHERE id=$1)"
            " SELECT id FROM a",
            ticket_id, spool_id, art.message_id, art.from_addr, art.from_name, json.dumps(list(art.to_addrs)),
            json.dumps(list(art.cc_addrs)), json.dumps(list(art.rcpt_tos)), self.cipher.enc_text(art.subject),
            self.cipher.enc_text(art.body_text), self.cipher.enc_text(art.body_html), art.visibility, art.kind,
            self.cipher.enc_text(art.new_text or art.body_text), self.now,
            index_text(self.cipher, art.subject) + " " + index_text(self.cipher, art.body_text))
        for att in art.attachments:
            if await conn.fetchval("SELECT 1 FROM blobs WHERE sha256=$1", att.sha256) is None:
                await conn.execute("INSERT INTO blobs (sha256, data) VALUES ($1,$2) ON CONFLICT DO NOTHING",
                                   att.sha256, self.cipher.enc_bytes(att.content))
            await conn.execute("INSERT INTO attachments (article_id, filename, content_type, size, sha256, inline,"
                               " content_id) VALUES ($1,$2,$3,$4,$5,$6,$7)",
                               article_id, self.cipher.enc_text(att.filename), att.content_type, len(att.content), att.sha256,
                               int(att.inline), att.content_id)
        for s in art.stripped:
            await conn.execute("INSERT INTO stripped_attachments (article_id, filename, content_type, size, sha256,"
                               " reason) VALUES ($1,$2,$3,$4,$5,$6)",
                               article_id, self.cipher.enc_text(s.filename), s.content_type, s.size, s.sha256, s.reason)
        return article_id

    async def apply_updates(self, ticket_id: int, actor: str, updates: dict[str, Any],
                            replace_tags: bool = False, previous: dict[str, Any] | None = None) -> None:
        """As :meth:`gateway.store.sqlite_deliver.DeliverTx.apply_updates`."""
        conn = self.conn
        old_status = await conn.fetchval("SELECT status FROM tickets WHERE id=$1", ticket_id)
        for key in SETTABLE:
            if key in updates:
                value = updates[key]  # TEXT columns: SQLite's affinity stores 5 as '5'; so do we
                await conn.execute(f"UPDATE tickets SET {key}=$1 WHERE id=$2",
                                   value if value is None or isinstance(value, str) else str(value), ticket_id)
        if updates.get("status") in CLOSED_STATES:
            await conn.execute("UPDATE tickets SET closed_at=$1 WHERE id=$2", self.now, ticket_id)
        elif "status" in updates:
            await conn.execute("UPDATE tickets SET closed_at=NULL WHERE id=$1", ticket_id)
        if updates.get("tags") or (replace_tags and "tags" in updates):
            current = await conn.fetchval("SELECT tags FROM tickets WHERE id=$1", ticket_id)
            tags = list(dict.fromkeys(([] if replace_tags else json.loads(current)) + list(updates["tags"])))
            await conn.execute("UPDATE tickets SET tags=$1 WHERE id=$2", json.dumps(tags), ticket_id)
        await self.history(ticket_id, actor, "command", {"applied": updates, "old_status": old_status})
        if self.webhooks:
            sync = PgSyncConnection(conn)
            sync.cipher, sync.webhooks = self.cipher, self.webhooks
            await run_sync(ticket_updated, sync, ticket_id, actor, updates,
                           previous if previous is not None else {"status": old_status}, self.now)

    async def history(self, ticket_id: int, actor: str, action: str, detail: dict[str, Any]) -> None:
        await self.conn.execute("INSERT INTO ticket_history (ticket_id, at, actor, action, detail)"
                                " VALUES ($1,$2,$3,$4,$5)", ticket_id, self.now, actor, action,
                                json.dumps(detail, ensure_ascii=False))

    async def finish(self, d: Delivery, state: str, reason: str, ticket_id: int | None = None,
                     article_id: int | None = None, number: str | None = None) -> DeliveryResult:
        """End the spool entry (written by :meth:`flush`, before COMMIT, with the rest of the batch's)."""
        self._finished.append((state, reason, ticket_id, article_id, self.now, json.dumps(list(d.history)),
                               state == QUARANTINED, d.traceback, d.spool_id))
        return DeliveryResult(d.spool_id, state, reason, ticket_id, article_id, number)

    async def flush(self) -> None:
        if self._finished:
            rows, self._finished = self._finished, []
            await self.conn.executemany(
                "UPDATE spool SET state=$1, reason=$2, ticket_id=$3, article_id=$4, finished_at=$5, history=$6,"
                " claimed_by='', claimed_until=0, released='', last_error=CASE WHEN $7 THEN $2 ELSE last_error END,"
                " traceback=CASE WHEN $8<>'' THEN $8 ELSE traceback END WHERE id=$9", rows)
