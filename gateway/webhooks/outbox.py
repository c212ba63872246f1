"""The webhook outbox (migration 0016_webhooks.sql): events queued with the change that causes them.

Life of one row (one event for one webhook)::

    enqueue (inside the transaction of the ticket change)         -> queued
    claim (lease: owner + lease_until, attempts += 1)              -> leased
    record: 2xx                                                    -> delivered
            timeout, connection error, 5xx, 408, 429               -> queued (next_attempt_at: backoff + jitter)
            the same once the webhook's lifetime is used up        -> dead
            any other 4xx, a 3xx (redirects are not followed)      -> dead at once
    retry ID | --dead                                              -> queued (attempts and lifetime reset)

Every function here is synchronous and takes a ``sqlite3.Connection``-shaped connection, so it runs
inside the caller's transaction on SQLite (``SqliteStore.transaction``) and on PostgreSQL
(``PgSyncConnection`` through ``run_sync``), like gateway/store/relay_queue.py. The webhooks configured reach these
functions on the connection (``conn.webhooks``, set by the store from ``[[webhook]]``, as the store's
cipher is): a change commits with its events or not at all, and nothing is queued for a webhook that
did not subscribe to the event. Payloads are encrypted with the store's key when ``[store]
encryption_key_file`` is set (they carry mail text).

Delivery is at least once: a worker killed after the receiver answered 2xx but before the result was
committed leaves the row ``leased``; it is claimed again once its lease expires (or at the next start,
:func:`release`). Receivers deduplicate by ``Ticketmx-Event-Id``.
"""
from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import Any, Callable

from gateway.webhooks import payload as P
from gateway.config.webhooks import (ARTICLE_ADDED, MESSAGE_QUARANTINED, NOTIFICATION_FAILED, TICKET_CREATED, TICKET_UPDATED,
                     WebhookConfig)

QUEUED, LEASED, DELIVERED, DEAD = "queued", "leased", "delivered", "dead"
STATES = (QUEUED, LEASED, DELIVERED, DEAD)


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _postgres(conn: Any) -> bool:
    return getattr(conn, "dialect", "sqlite") == "postgresql"


def _subscribers(conn: Any, event: str) -> list[WebhookConfig]:
    return [w for w in getattr(conn, "webhooks", ()) or () if event in w.events]


def _seal(conn: Any, text: str) -> str:
    cipher = getattr(conn, "cipher", None)
    return cipher.enc_text(text) if cipher is not None and cipher.enabled else text


def _open(cipher: Any, text: str) -> str:
    return cipher.dec_text(text) if cipher is not None else text


def rotate_outbox(conn: Any, cipher: Any) -> int:
    """Re-encrypt every payload with the cipher's first key (``ticketmx store rotate-key``)."""
    n = 0
    for rid, text in conn.execute("SELECT id, payload FROM webhook_outbox").fetchall():
        conn.execute("UPDATE webhook_outbox SET payload=? WHERE id=?", (cipher.rotate_text(text), rid))
        n += 1
    return n


def enqueue(conn: Any, event: str, body: Callable[[WebhookConfig, dict[str, Any]], dict[str, Any] | None],
            now: float, ticket_id: int | None = None, dedupe_key: str | None = None) -> list[int]:
    """Queue ``event`` for every webhook subscribed to it, inside the caller's transaction.

    ``body(webhook, envelope)`` returns the JSON object to send to that webhook (its format); the
    envelope (event, id, created) is shared: one event id for every webhook. With ``dedupe_key`` a
    webhook that already has a row with that key gets no second one (a replayed change); a webhook
    whose ``body`` is None gets none either (the event has no form in its format)."""
    subs = _subscribers(conn, event)
    if not subs:
        return []
    env = P.envelope(event, str(uuid.uuid4()), iso(now))
    ids = []
    for wh in subs:
        if dedupe_key is not None and conn.execute("SELECT 1 FROM webhook_outbox WHERE webhook=? AND dedupe_key=?",
                                                   (wh.name, dedupe_key)).fetchone() is not None:
            continue
        doc = body(wh, dict(env))
        if doc is None:
            continue
        text = json.dumps(doc, ensure_ascii=False, separators=(",", ":"))
        row = conn.execute(
            "INSERT INTO webhook_outbox (event_id, webhook, event, ticket_id, payload, dedupe_key, next_attempt_at,"
            " created_at, lifetime_from) VALUES (?,?,?,?,?,?,?,?,?) RETURNING id",
            (env["id"], wh.name, event, ticket_id, _seal(conn, text), dedupe_key, 0.0, now, now)).fetchone()
        ids.append(int(row[0]))
    return ids


def ticket_snapshot(conn: Any, ticket_id: int) -> dict[str, Any] | None:
    """The ticket as it is now in this transaction (the ``ticket`` object of a payload)."""
    r = conn.execute("SELECT t.id, t.number, t.subject, t.status, t.priority, t.queue, t.mailbox, t.assignee,"
                     " t.category, t.tags, t.created_at, t.updated_at, c.email, c.name FROM tickets t"
                     " JOIN contacts c ON c.id=t.requester_id WHERE t.id=?", (ticket_id,)).fetchone()
    if r is None:
        return None
    cipher = getattr(conn, "cipher", None)
    try:
        tags = json.loads(r[9] or "[]")
    except ValueError:
        tags = []
    return {"id": r[0], "number": r[1], "subject": _open(cipher, r[2] or ""), "status": r[3], "priority": r[4],
            "queue": r[5], "mailbox": r[6], "assignee": r[7] or None, "category": r[8] or None, "tags": tags,
            "requester": {"email": r[12], "name": r[13] or ""},
            "created_at": iso(r[10]) if r[10] is not None else None,
            "updated_at": iso(r[11]) if r[11] is not None else None}


# -- the events -----------------------------------------------------------------------------------

def on_delivered(conn: Any, d: Any, r: Any, now: float) -> None:
    """After the store applied one pipeline verdict (``d`` a Delivery, ``r`` its DeliveryResult), in
    the same transaction: ticket.created / article.added / message.quarantined. A replay that found
    the message already delivered queues nothing (its events were queued the first time)."""
    if not getattr(conn, "webhooks", ()):
        return
    if r.state == "quarantined":
        _quarantined(conn, d, r, now)
        return
    if r.state not in ("ticket_created", "article_added") or d.article is None or r.article_id is None:
        return
    if r.reason == "already delivered":
        return
    event = TICKET_CREATED if r.state == "ticket_created" else ARTICLE_ADDED
    art = d.article
    if _subscribers(conn, event):
        ticket = ticket_snapshot(conn, r.ticket_id) if r.ticket_id is not None else None

        def body(wh: WebhookConfig, env: dict[str, Any]) -> dict[str, Any]:
            if wh.format == "postmark":
                return P.postmark(art, d.headers, {**env, "ticket": ticket, "article_id": r.article_id})
            return {**env, "ticket": ticket, "article": P.article_json(art, r.article_id)}
        enqueue(conn, event, body, now, r.ticket_id, dedupe_key=f"article:{r.article_id}")
    if r.reopened and r.ticket_id is not None and _subscribers(conn, TICKET_UPDATED):  # a reply reopened it
        row = conn.execute("SELECT detail FROM ticket_history WHERE ticket_id=? AND action='reopened'"
                           " ORDER BY id DESC LIMIT 1", (r.ticket_id,)).fetchone()
        was = (json.loads(row[0]) if row else {}).get("was")
        ticket_updated(conn, r.ticket_id, art.from_addr, {"status": "open"}, {"status": was} if was else {}, now)


def article_added(conn: Any, ticket_id: int, article_id: int, art: Any, actor: str, now: float) -> list[int]:
    """article.added for an article written outside mail (the HTTP API's replies and notes), inside
    the transaction that stored it, after its mail hook ran: the visibility is read back, because the
    agent-conflict rule may have kept a reply as an internal note. The ``ticketmx`` body is the mail
    path's (ticket, article) plus ``actor``, the agent who wrote it. ``postmark`` webhooks get nothing:
    that format is the shape of a mail that came in, and this one did not (docs/webhooks.md)."""
    if not _subscribers(conn, ARTICLE_ADDED):
        return []
    row = conn.execute("SELECT visibility, kind FROM articles WHERE id=?", (article_id,)).fetchone()
    if row is not None and (row[0], row[1]) != (art.visibility, art.kind):
        art = replace(art, visibility=row[0], kind=row[1])
    ticket = ticket_snapshot(conn, ticket_id)
    article = P.article_json(art, article_id)

    def body(wh: WebhookConfig, env: dict[str, Any]) -> dict[str, Any] | None:
        if wh.format == "postmark":
            return None
        return {**env, "ticket": ticket, "article": article, "actor": actor}
    return enqueue(conn, ARTICLE_ADDED, body, now, ticket_id, dedupe_key=f"article:{article_id}")


def _quarantined(conn: Any, d: Any, r: Any, now: float) -> None:
    if not _subscribers(conn, MESSAGE_QUARANTINED):
        return
    row = conn.execute("SELECT mail_from, rcpt_tos, mailboxes, message_id, received_at FROM spool WHERE id=?",
                       (d.spool_id,)).fetchone()
    message: dict[str, Any] = {"spool_id": d.spool_id, "reason": r.reason or d.reason}
    if row is not None:
        message.update({"mail_from": row[0], "rcpt_tos": _json_list(row[1]), "mailboxes": _json_list(row[2]),
                        "message_id": row[3], "received_at": iso(row[4]) if row[4] is not None else None})
    if d.article is not None:
        message["from"] = {"email": d.article.from_addr, "name": d.article.from_name}
        message["subject"] = d.article.subject
    enqueue(conn, MESSAGE_QUARANTINED, lambda wh, env: {**env, "message": message}, now)


def _json_list(text: Any) -> list[Any]:
    try:
        v = json.loads(text or "[]")
    except (TypeError, ValueError):
        return []
    return v if isinstance(v, list) else []


def ticket_updated(conn: Any, ticket_id: int, actor: str, changes: dict[str, Any], previous: dict[str, Any],
                   now: float | None = None) -> list[int]:
    """ticket.updated: ``changes`` applied to the ticket by ``actor`` (a mail command, the API's PATCH),
    ``previous`` the values they replaced (what is known of them). Call it inside the transaction
    that made the change; the snapshot shows the ticket after it."""
    if not _subscribers(conn, TICKET_UPDATED) or not changes:
        return []
    now = time.time() if now is None else now
    ticket = ticket_snapshot(conn, ticket_id)
    body = {"ticket": ticket, "actor": actor, "changes": _jsonable(changes), "previous": _jsonable(previous)}
    return enqueue(conn, TICKET_UPDATED, lambda wh, env: {**env, **body}, now, ticket_id)


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    return {str(k): (list(v) if isinstance(v, (tuple, set)) else v) for k, v in d.items()}


def notification_failed(conn: Any, mail_id: int, error: str, now: float) -> list[int]:
    """notification.failed: relay notification ``mail_id`` was dead-lettered (5xx or lifetime)."""
    if not _subscribers(conn, NOTIFICATION_FAILED):
        return []
    row = conn.execute("SELECT id, ticket_id, event, mailbox, message_id, attempts FROM relay_queue WHERE id=?",
                       (mail_id,)).fetchone()
    if row is None:
        return []
    rcpts = [{"address": a, "state": s, "code": c, "reply": rp} for a, s, c, rp in conn.execute(
        "SELECT address, state, code, reply FROM relay_recipients WHERE notification_id=? ORDER BY address",
        (mail_id,)).fetchall()]
    ticket = ticket_snapshot(conn, row[1]) if row[1] is not None else None
    notification = {"id": row[0], "event": row[2], "mailbox": row[3], "message_id": row[4], "attempts": row[5],
                    "error": error[:500], "recipients": rcpts}
    return enqueue(conn, NOTIFICATION_FAILED, lambda wh, env: {**env, "ticket": ticket,
                                                               "notification": notification},
                   now, row[1], dedupe_key=f"relay:{mail_id}:{int(now)}")


# -- the worker's side ----------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Claimed:
    id: int
    event_id: str
    webhook: str
    event: str
    body: bytes
    attempts: int
    lifetime_from: float
    created_at: float


@dataclass(frozen=True, slots=True)
class Result:
    id: int
    owner: str
    state: str              # delivered | queued (retry) | dead
    status: int | None      # HTTP status, None when there was no answer
    error: str = ""
    next_attempt_at: float = 0.0


def claim(conn: Any, owner: str, webhook: str, limit: int, now: float, lease: float) -> list[Claimed]:
    """Up to ``limit`` due rows of ``webhook`` (and ones whose lease expired), leased to ``owner``.
    On PostgreSQL the candidate rows are locked SKIP LOCKED: nodes claiming at once take different rows."""
    rows = conn.execute(
        "UPDATE webhook_outbox SET state=?, attempts=attempts+1, lease_owner=?, lease_until=? WHERE id IN ("
        " SELECT id FROM webhook_outbox WHERE webhook=? AND ((state=? AND next_attempt_at<=?)"
        " OR (state=? AND lease_until<?)) ORDER BY next_attempt_at, id LIMIT ?"
        + (" FOR UPDATE SKIP LOCKED" if _postgres(conn) else "") + ")"
        " RETURNING id, event_id, webhook, event, payload, attempts, lifetime_from, created_at",
        (LEASED, owner, now + lease, webhook, QUEUED, now, LEASED, now, limit)).fetchall()
    cipher = getattr(conn, "cipher", None)
    return [Claimed(r[0], r[1], r[2], r[3], _open(cipher, r[4]).encode("utf-8"), r[5], r[6], r[7])
            for r in sorted(rows, key=lambda r: r[0])]


def record(conn: Any, results: list[Result], now: float) -> int:
    """Store attempts' outcomes. A 2xx counts whoever holds the lease (the event did arrive); a failure
    counts only for the lease's owner (after a takeover the new owner decides). Returns rows changed."""
    n = 0
    for r in results:
        if r.state == DELIVERED:
            n += conn.execute("UPDATE webhook_outbox SET state=?, last_status=?, last_error='', lease_owner='',"
                              " lease_until=0, delivered_at=?, finished_at=? WHERE id=? AND state=?",
                              (DELIVERED, r.status, now, now, r.id, LEASED)).rowcount
        elif r.state == DEAD:
            n += conn.execute("UPDATE webhook_outbox SET state=?, last_status=?, last_error=?, lease_owner='',"
                              " lease_until=0, finished_at=? WHERE id=? AND state=? AND lease_owner=?",
                              (DEAD, r.status, r.error[:500], now, r.id, LEASED, r.owner)).rowcount
        else:
            n += conn.execute("UPDATE webhook_outbox SET state=?, last_status=?, last_error=?, lease_owner='',"
                              " lease_until=0, next_attempt_at=? WHERE id=? AND state=? AND lease_owner=?",
                              (QUEUED, r.status, r.error[:500], r.next_attempt_at, r.id, LEASED, r.owner)).rowcount
    return n


def release(conn: Any, now: float, owner: str | None = None) -> int:
    """Put leased rows back as due now: ``owner``'s (a clean stop), or at start every one (SQLite:
    one node, nobody else can hold a lease) / every expired one (PostgreSQL: the others are other
    nodes' sends). Attempts are kept."""
    if owner is not None:
        return conn.execute("UPDATE webhook_outbox SET state=?, next_attempt_at=?, lease_owner='', lease_until=0"
                            " WHERE state=? AND lease_owner=?", (QUEUED, now, LEASED, owner)).rowcount
    if _postgres(conn):
        return conn.execute("UPDATE webhook_outbox SET state=?, next_attempt_at=?, lease_owner='', lease_until=0"
                            " WHERE state=? AND lease_until<?", (QUEUED, now, LEASED, now)).rowcount
    return conn.execute("UPDATE webhook_outbox SET state=?, next_attempt_at=?, lease_owner='', lease_until=0"
                        " WHERE state=?", (QUEUED, now, LEASED)).rowcount


def retry(conn: Any, row_id: int, now: float) -> bool:
    """A dead row queued again, due now, with a fresh lifetime."""
    return conn.execute("UPDATE webhook_outbox SET state=?, attempts=0, next_attempt_at=0, lifetime_from=?,"
                        " finished_at=NULL, last_error='' WHERE id=? AND state=?",
                        (QUEUED, now, row_id, DEAD)).rowcount == 1


def retry_dead(conn: Any, now: float, webhook: str | None = None) -> list[int]:
    sql, params = "SELECT id FROM webhook_outbox WHERE state=?", [DEAD]
    if webhook:
        sql += " AND webhook=?"
        params.append(webhook)
    ids = [int(r[0]) for r in conn.execute(sql + " ORDER BY id", tuple(params)).fetchall()]
    for i in ids:
        retry(conn, i, now)
    return ids


class WebhookOutbox:
    """The outbox over a store (SqliteStore / PostgresStore ``transaction`` and ``query``)."""

    def __init__(self, store: Any) -> None:
        self.store = store

    async def claim(self, owner: str, webhook: str, limit: int, now: float, lease: float) -> list[Claimed]:
        return await self.store.transaction(lambda c: claim(c, owner, webhook, limit, now, lease), durable=False)

    async def record(self, results: list[Result], now: float | None = None) -> int:
        now = time.time() if now is None else now
        return await self.store.transaction(lambda c: record(c, results, now))

    async def release(self, owner: str | None = None, now: float | None = None) -> int:
        now = time.time() if now is None else now
        return await self.store.transaction(lambda c: release(c, now, owner))

    async def retry(self, row_id: int, now: float | None = None) -> bool:
        now = time.time() if now is None else now
        return await self.store.transaction(lambda c: retry(c, row_id, now))

    async def retry_dead(self, webhook: str | None = None, now: float | None = None) -> list[int]:
        now = time.time() if now is None else now
        return await self.store.transaction(lambda c: retry_dead(c, now, webhook))

    async def counts(self) -> dict[str, dict[str, int]]:
        """webhook name -> state -> rows."""
        out: dict[str, dict[str, int]] = {}
        for r in await self.store.query("SELECT webhook, state, COUNT(*) FROM webhook_outbox GROUP BY webhook, state"):
            out.setdefault(r[0], {s: 0 for s in STATES})[r[1]] = int(r[2])
        return out

    async def state_counts(self) -> dict[str, int]:
        out = {s: 0 for s in STATES}
        for r in await self.store.query("SELECT state, COUNT(*) FROM webhook_outbox GROUP BY state"):
            out[r[0]] = int(r[1])
        return out

    async def oldest_age(self, now: float | None = None) -> float:
        now = time.time() if now is None else now
        rows = await self.store.query("SELECT MIN(created_at) FROM webhook_outbox WHERE state IN (?,?)",
                                      (QUEUED, LEASED))
        oldest = rows[0][0] if rows else None
        return max(0.0, now - oldest) if oldest is not None else 0.0

    async def get(self, row_id: int) -> dict[str, Any] | None:
        rows = await self.list(ids=(row_id,))
        return rows[0] if rows else None

    async def list(self, state: str | None = None, webhook: str | None = None, limit: int | None = None,
                   ids: tuple[int, ...] = ()) -> list[dict[str, Any]]:
        sql = ("SELECT id, event_id, webhook, event, ticket_id, state, attempts, next_attempt_at, last_status,"
               " last_error, created_at, delivered_at, finished_at FROM webhook_outbox")
        where: list[str] = []
        params: list[Any] = []
        for col, val in (("state", state), ("webhook", webhook)):
            if val:
                where.append(f"{col}=?")
                params.append(val)
        if ids:
            where.append(f"id IN ({','.join('?' * len(ids))})")
            params.extend(ids)
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY id"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)
        keys = ("id", "event_id", "webhook", "event", "ticket_id", "state", "attempts", "next_attempt_at",
                "last_status", "last_error", "created_at", "delivered_at", "finished_at")
        out = []
        for r in await self.store.query(sql, tuple(params)):
            d = dict(zip(keys, tuple(r)))
            for k in ("created_at", "delivered_at", "finished_at"):
                d[k] = iso(d[k]) if d[k] is not None else None
            d["next_attempt_at"] = iso(d["next_attempt_at"]) if d["state"] == QUEUED else None
            out.append(d)
        return out

    async def payload(self, row_id: int) -> bytes | None:
        rows = await self.store.query("SELECT payload FROM webhook_outbox WHERE id=?", (row_id,))
        return _open(getattr(self.store, "cipher", None), rows[0][0]).encode("utf-8") if rows else None


__all__ = ["WebhookOutbox", "Claimed", "Result", "enqueue", "on_delivered", "article_added", "ticket_updated", "notification_failed",
           "ticket_snapshot", "claim", "record", "release", "retry", "retry_dead", "STATES", "QUEUED", "LEASED",
           "DELIVERED", "DEAD"]
