"""The durable outbound queue, in the gateway's own database (migration 0006_relay.sql; the same
functions run on PostgreSQL through :mod:`gateway.store.pg_sync`, with row locks where nodes meet).

Life of a notification::

    enqueue (inside the transaction of the ticket change)      -> queued
    claim (lease: owner + lease_until, attempts += 1)           -> sending
    record: every recipient sent                                -> sent
            some recipient got a temporary failure              -> deferred (next_attempt_at from the interval list)
            lifetime used up / a recipient got 5xx, none left   -> dead (visible, counted, replayable)
    retry ID | --dead                                           -> queued (dead/deferred recipients only)
    sent, then a DSN reports a permanent failure for a recipient -> bounced (relay/reports.py)

Delivery is at-least-once: a worker killed after the smarthost accepted DATA but before its
result was committed leaves the row ``sending``; once the lease has expired (or at the next
start, :meth:`RelayQueue.recover`) it is sent again. Nothing is ever lost; a duplicate is
possible only in that window.

:func:`enqueue` is synchronous and takes a ``sqlite3.Connection`` so that it runs *inside* the
caller's transaction (``SqliteStore.transaction(fn)``): the ticket and its acknowledgement
commit together or not at all. A ``dedupe_key`` (e.g. ``ack:<spool id>``) makes it idempotent:
replaying the message that caused it never queues a second notification.
"""
from __future__ import annotations

import json
import re
import sqlite3
import time
from dataclasses import dataclass, field
from typing import Any

from gateway.webhooks.outbox import notification_failed

from gateway.config.schedule import next_attempt

QUEUED, SENDING, DEFERRED, SENT, DEAD, BOUNCED = "queued", "sending", "deferred", "sent", "dead", "bounced"
STATES = (QUEUED, SENDING, DEFERRED, SENT, DEAD, BOUNCED)
LIVE = (QUEUED, SENDING, DEFERRED)

_ADDR = re.compile(r"^[^@\s<>\x00-\x1f\x7f,;]+@[^@\s<>\x00-\x1f\x7f,;]+$")


@dataclass(frozen=True, slots=True)
class Notification:
    """One outbound mail, rendered (see :mod:`relay.notify`), ready to queue."""

    event: str
    mail_from: str                      # envelope sender ('' = null sender)
    recipients: tuple[str, ...]         # To/Cc recipients (envelope)
    message: bytes                      # RFC 5322, CRLF line ends, unsigned
    message_id: str                     # without angle brackets
    ticket_id: int | None = None
    mailbox: str = ""
    bcc: tuple[str, ...] = ()           # envelope-only recipients (group notifications)
    dedupe_key: str | None = None
    coalesce_key: str | None = None
    not_before: float = 0.0             # optional delay (epoch seconds)
    render: dict[str, Any] | None = None  # lazy: rendered by the worker at send time (then message is b"")
    article_id: int | None = None       # the customer article it answers (recorded with its Message-ID)


@dataclass(frozen=True, slots=True)
class OutboundMail:
    """A claimed notification: what a worker needs to deliver it."""

    id: int
    event: str
    ticket_id: int | None
    mailbox: str
    mail_from: str
    message: bytes
    message_id: str
    attempts: int
    created_at: float
    lifetime_from: float
    pending: tuple[str, ...]            # recipients not yet sent nor dead
    render: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class RcptOutcome:
    address: str
    status: str                         # sent | temp | perm
    code: int | None = None
    reply: str = ""
    host: str = ""
    message_fault: bool = False         # perm because of the message itself (over-long line, syntax):
    #                                     the notification is dead, the contact is not undeliverable


@dataclass(slots=True)
class AttemptOutcome:
    """What one delivery attempt of one notification did (all smarthosts tried in order)."""

    mail_id: int
    rcpts: list[RcptOutcome] = field(default_factory=list)
    error: str = ""                     # summary of the temporary failure, if any
    host: str = ""                      # last smarthost that answered or was tried
    owner: str = ""


def _seal(conn: Any, message: bytes, render: str | None) -> tuple[bytes, str | None]:
    """``message`` and ``render`` as stored: encrypted with the store's key when ``[store]
    encryption_key_file`` is set (the connection carries the store's cipher; see
    gateway.store.sqlite.CipherConnection). Both hold what the customer is told: agent reply text,
    subjects, addresses."""
    cipher = getattr(conn, "cipher", None)
    if cipher is None or not cipher.enabled:
        return message, render
    return cipher.enc_bytes(message), cipher.enc_text(render) if render else render


def _open(cipher: Any, message: bytes, render: str | None) -> tuple[bytes, str | None]:
    """The reverse of :func:`_seal`; rows written before encryption was enabled read as they are."""
    if cipher is None:
        return message, render
    return cipher.dec_bytes(message), cipher.dec_text(render) if render else render


def rotate_queue(conn: Any, cipher: Any) -> int:
    """Re-encrypt every queued message and render spec with the cipher's first key (``ticketmx store
    rotate-key``); plaintext rows get encrypted. Returns how many rows were rewritten."""
    n = 0
    for mid, message, render in conn.execute("SELECT id, message, render FROM relay_queue").fetchall():
        conn.execute("UPDATE relay_queue SET message=?, render=? WHERE id=?",
                     (cipher.rotate_bytes(bytes(message)), cipher.rotate_text(render) if render else render, mid))
        n += 1
    return n


def _check_addr(addr: str) -> str:
    if not isinstance(addr, str) or not _ADDR.match(addr) or len(addr) > 320:
        raise ValueError(f"invalid recipient address {addr!r}")
    return addr


def enqueue(conn: sqlite3.Connection, n: Notification, now: float | None = None) -> int:
    """Queue ``n`` inside the caller's transaction; returns the notification id.

    Idempotent per ``dedupe_key`` (the existing id is returned). With a ``coalesce_key``, a row
    with that key that no worker has touched yet is replaced (several status changes within the
    coalesce window make one mail). The Message-ID is recorded in ``message_ids`` for the
    ticket, so a customer's reply to this mail threads onto it.
    """
    now = time.time() if now is None else now
    rcpts = [_check_addr(a) for a in n.recipients]
    bcc = [_check_addr(a) for a in n.bcc if a not in rcpts]
    if not rcpts and not bcc:
        raise ValueError("a notification needs at least one recipient")
    if n.mail_from:
        _check_addr(n.mail_from)
    if not n.message_id or any(c in n.message_id for c in "\r\n<> "):
        raise ValueError("invalid Message-ID")
    if n.dedupe_key:
        row = conn.execute("SELECT id FROM relay_queue WHERE dedupe_key=?", (n.dedupe_key,)).fetchone()
        if row is not None:
            return int(row[0])
    if not n.message and n.render is None:
        raise ValueError("a notification needs a message or a render spec")
    render = json.dumps(n.render, separators=(",", ":")) if n.render is not None else None
    message, render = _seal(conn, n.message, render)
    mail_id: int | None = None
    if n.coalesce_key:
        row = conn.execute("SELECT id FROM relay_queue WHERE coalesce_key=? AND state=? AND attempts=0"
                           " ORDER BY id DESC LIMIT 1", (n.coalesce_key, QUEUED)).fetchone()
        if row is not None:
            mail_id = int(row[0])
            conn.execute("UPDATE relay_queue SET message=?, render=?, message_id=?, mail_from=?, event=?"
                         " WHERE id=?", (message, render, n.message_id, n.mail_from, n.event, mail_id))
            conn.execute("DELETE FROM relay_recipients WHERE notification_id=?", (mail_id,))
    if mail_id is None:
        mail_id = int(conn.execute(
            "INSERT INTO relay_queue (ticket_id, event, mailbox, mail_from, message, render, message_id, dedupe_key,"
            " coalesce_key, next_attempt_at, created_at, lifetime_from) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)"
            " RETURNING id",
            (n.ticket_id, n.event, n.mailbox, n.mail_from, message, render, n.message_id, n.dedupe_key,
             n.coalesce_key, float(max(n.not_before, 0.0)), now, now)).fetchone()[0])
    conn.executemany("INSERT INTO relay_recipients (notification_id, address, kind, updated_at)"
                     " VALUES (?,?,?,?) ON CONFLICT DO NOTHING", [(mail_id, a, "to", now) for a in rcpts] +
                     [(mail_id, a, "bcc", now) for a in bcc])
    if n.ticket_id is not None:  # only onto a ticket that exists (none for tests and system mail)
        conn.execute("INSERT INTO message_ids (message_id, ticket_id, article_id) SELECT ?, id, CAST(? AS BIGINT)"
                     " FROM tickets WHERE id=? ON CONFLICT DO NOTHING", (n.message_id, n.article_id, n.ticket_id))
    assert mail_id is not None
    return mail_id


# -- synchronous operations (each runs inside one write transaction) ---------------------------

def _postgres(conn_or_store: Any) -> bool:
    """The PostgreSQL face (gateway.store.pg_sync, PostgresStore): several nodes share the queue."""
    return getattr(conn_or_store, "dialect", "sqlite") == "postgresql"


def _rcpt_order(conn_or_store: Any) -> str:
    """Recipients in the order they were queued: SQLite's rowid, PostgreSQL's ``seq`` (v11)."""
    return "seq" if _postgres(conn_or_store) else "rowid"


def claim(conn: sqlite3.Connection, owner: str, limit: int, now: float, lease: float) -> list[OutboundMail]:
    """Take up to ``limit`` due notifications (and ones whose lease expired) for ``owner``.

    On PostgreSQL the rows are locked with SKIP LOCKED, so nodes claiming at the same moment take
    different rows (a plain ``id IN (SELECT …)`` would let both update the same ones)."""
    rows = conn.execute(
        "UPDATE relay_queue SET state=?, attempts=attempts+1, lease_owner=?, lease_until=? WHERE id IN ("
        " SELECT id FROM relay_queue WHERE (state IN (?,?) AND next_attempt_at<=?) OR (state=? AND lease_until<?)"
        " ORDER BY next_attempt_at, id LIMIT ?" + (" FOR UPDATE SKIP LOCKED" if _postgres(conn) else "") + ")"
        " RETURNING id, event, ticket_id, mailbox, mail_from, message, message_id, attempts, created_at,"
        " lifetime_from, render",
        (SENDING, owner, now + lease, QUEUED, DEFERRED, now, SENDING, now, limit)).fetchall()
    out = []
    cipher = getattr(conn, "cipher", None)
    for r in sorted(rows, key=lambda r: r[0]):
        pending = tuple(a for (a,) in conn.execute(
            "SELECT address FROM relay_recipients WHERE notification_id=? AND state IN (?,?) ORDER BY "
            + _rcpt_order(conn), (r[0], QUEUED, DEFERRED)))
        message, render = _open(cipher, bytes(r[5]), r[10])
        out.append(OutboundMail(id=r[0], event=r[1], ticket_id=r[2], mailbox=r[3], mail_from=r[4],
                                message=message, message_id=r[6], attempts=r[7], created_at=r[8],
                                lifetime_from=r[9], pending=pending, render=json.loads(render) if render else None))
    return out


def record(conn: sqlite3.Connection, outcome: AttemptOutcome, now: float, intervals: tuple[float, ...],
           max_lifetime: float) -> str:
    """Store one attempt's per-recipient results; returns the notification's new state."""
    mid = outcome.mail_id
    for r in outcome.rcpts:
        state = {"sent": SENT, "perm": DEAD, "temp": DEFERRED}[r.status]
        changed = conn.execute("UPDATE relay_recipients SET state=?, code=?, reply=?, host=?, updated_at=?"
                               " WHERE notification_id=? AND address=? AND state NOT IN (?,?)",
                               (state, r.code, r.reply[:500], r.host, now, mid, r.address, SENT, DEAD)).rowcount
        if r.status == "perm" and not r.message_fault and changed:
            delivery_failed(conn, mid, r.address, f"{r.code} {r.reply}", now, source="smtp")
    row = conn.execute("SELECT state, lease_owner, attempts, lifetime_from, sent_at FROM relay_queue WHERE id=?"
                       + (" FOR UPDATE" if _postgres(conn) else ""), (mid,)).fetchone()  # vs. a takeover
    if row is None:
        return DEAD
    state, lease_owner, attempts, lifetime_from, sent_at = row
    if state != SENDING or (outcome.owner and lease_owner != outcome.owner):
        return state  # our lease expired and someone else owns it now: they decide its state
    counts = dict(conn.execute("SELECT state, COUNT(*) FROM relay_recipients WHERE notification_id=?"
                               " GROUP BY state", (mid,)).fetchall())
    pending = counts.get(QUEUED, 0) + counts.get(DEFERRED, 0)
    any_sent_now = any(r.status == "sent" for r in outcome.rcpts)
    new_sent_at = sent_at if sent_at is not None else (now if any_sent_now else None)
    if pending:
        nxt = next_attempt(intervals, attempts, lifetime_from, now, max_lifetime)
        if nxt is not None:
            conn.execute("UPDATE relay_queue SET state=?, next_attempt_at=?, last_error=?, last_host=?,"
                         " lease_owner='', lease_until=0, sent_at=? WHERE id=?",
                         (DEFERRED, nxt, outcome.error[:500], outcome.host, new_sent_at, mid))
            return DEFERRED
        reason = f"expired after {attempts} attempts: {outcome.error}"[:500]
        conn.execute("UPDATE relay_recipients SET state=?, reply=?, updated_at=? WHERE notification_id=?"
                     " AND state IN (?,?)", (DEAD, reason, now, mid, QUEUED, DEFERRED))
        conn.execute("UPDATE relay_queue SET state=?, last_error=?, last_host=?, lease_owner='', lease_until=0,"
                     " sent_at=?, finished_at=? WHERE id=?", (DEAD, reason, outcome.host, new_sent_at, now, mid))
        notification_failed(conn, mid, reason, now)  # [[webhook]]s: in this transaction
        return DEAD
    final = DEAD if counts.get(DEAD, 0) else SENT
    error = outcome.error
    if final == DEAD and not error:
        dead = [r for r in outcome.rcpts if r.status == "perm"]
        error = f"{dead[0].code} {dead[0].reply}" if dead else "recipient refused"
    conn.execute("UPDATE relay_queue SET state=?, last_error=?, last_host=?, lease_owner='', lease_until=0,"
                 " sent_at=?, finished_at=? WHERE id=?",
                 (final, error[:500] if final == DEAD else "", outcome.host, new_sent_at, now, mid))
    if final == DEAD:
        notification_failed(conn, mid, error, now)  # [[webhook]]s: in this transaction
    return final


def delivery_failed(conn: sqlite3.Connection, mail_id: int, address: str, detail: str, now: float, *,
                    source: str, bounced: bool = False) -> bool:
    """The one path for "notification ``mail_id`` could not reach ``address``", whoever says so:
    the smarthost's 5xx at send time (``source="smtp"``) or a DSN that came back later
    (``source="dsn"``, ``bounced=True``). The contact is marked undeliverable, the ticket's history
    says "delivery to x failed: 5.1.1 …", and for a DSN the recipient and - once nothing of it is
    still on its way - the notification show ``bounced`` in ``ticketmx relay queue``.

    Only a recipient of that notification is ever marked (a report naming anyone else is not about
    our mail). Returns False when there was nothing to record (not a recipient, already recorded)."""
    row = conn.execute("SELECT ticket_id, event, state FROM relay_queue WHERE id=?", (mail_id,)).fetchone()
    if row is None:
        return False
    ticket_id, event, state = row
    detail = " ".join(detail.split())[:300] or "permanent failure"
    if bounced:
        changed = conn.execute("UPDATE relay_recipients SET state=?, reply=?, updated_at=? WHERE notification_id=?"
                               " AND lower(address)=? AND state<>?",
                               (BOUNCED, detail, now, mail_id, address.lower(), BOUNCED)).rowcount
        if not changed:
            return False
        if state not in LIVE:
            conn.execute("UPDATE relay_queue SET state=?, last_error=?, finished_at=COALESCE(finished_at, ?)"
                         " WHERE id=?", (BOUNCED, f"bounced: {address}: {detail}"[:500], now, mail_id))
    mark_undeliverable(conn, address, detail, now)
    if ticket_id is not None:
        conn.execute("INSERT INTO ticket_history (ticket_id, at, actor, action, detail) SELECT id, ?, 'system',"
                     " 'delivery_failed', ? FROM tickets WHERE id=?",
                     (now, json.dumps({"text": f"delivery to {address} failed: {detail}", "recipient": address,
                                       "notification_id": mail_id, "event": event, "source": source}), ticket_id))
    return True


def mark_undeliverable(conn: sqlite3.Connection, address: str, reason: str, now: float) -> None:
    conn.execute("INSERT INTO relay_contacts (email, undeliverable, reason, updated_at) VALUES (?,1,?,?)"
                 " ON CONFLICT(email) DO UPDATE SET undeliverable=1, reason=excluded.reason,"
                 " updated_at=excluded.updated_at", (address.lower(), reason, now))
    try:  # and on the contact itself, where the schema has it (store v4), so agents see it
        conn.execute("UPDATE contacts SET undeliverable=1, undeliverable_reason=? WHERE email=?",
                     (f"relay: {reason}"[:300], address.lower()))
    except sqlite3.OperationalError:
        pass


def release(conn: sqlite3.Connection, now: float, owner: str | None = None) -> int:
    """Put ``sending`` rows (of ``owner``, or all at start) back as due now; attempts are kept.

    "All" on PostgreSQL means those whose lease has run out: the others are other nodes' sends."""
    if owner is None:
        if _postgres(conn):
            return conn.execute("UPDATE relay_queue SET state=?, next_attempt_at=?, lease_owner='', lease_until=0"
                                " WHERE state=? AND lease_until<?", (DEFERRED, now, SENDING, now)).rowcount
        return conn.execute("UPDATE relay_queue SET state=?, next_attempt_at=?, lease_owner='', lease_until=0"
                            " WHERE state=?", (DEFERRED, now, SENDING)).rowcount
    return conn.execute("UPDATE relay_queue SET state=?, next_attempt_at=?, lease_owner='', lease_until=0"
                        " WHERE state=? AND lease_owner=?", (DEFERRED, now, SENDING, owner)).rowcount


def renew(conn: sqlite3.Connection, owner: str, ids: list[int], until: float) -> int:
    """Extend ``owner``'s leases on ``ids`` (rows it is still sending) to ``until``; returns how many
    it still held (a row taken over after the lease ran out is not taken back)."""
    if not ids:
        return 0
    return conn.execute(f"UPDATE relay_queue SET lease_until=? WHERE state=? AND lease_owner=? AND id IN"
                        f" ({','.join('?' * len(ids))})", (until, SENDING, owner, *ids)).rowcount


def retry(conn: sqlite3.Connection, mail_id: int, now: float) -> bool:
    """Queue a dead or deferred notification again (its dead/deferred recipients), due now."""
    row = conn.execute("SELECT state FROM relay_queue WHERE id=?", (mail_id,)).fetchone()
    if row is None or row[0] not in (DEAD, DEFERRED, QUEUED):
        return False
    addrs = [a for (a,) in conn.execute("SELECT address FROM relay_recipients WHERE notification_id=? AND"
                                        " state IN (?,?)", (mail_id, DEAD, DEFERRED))]
    conn.execute("UPDATE relay_recipients SET state=?, updated_at=? WHERE notification_id=? AND state IN (?,?)",
                 (QUEUED, now, mail_id, DEAD, DEFERRED))
    for a in addrs:  # the operator says try again: the contact is no longer known-undeliverable
        conn.execute("UPDATE relay_contacts SET undeliverable=0, updated_at=? WHERE email=?", (now, a.lower()))
        try:
            conn.execute("UPDATE contacts SET undeliverable=0, undeliverable_reason='' WHERE email=? AND"
                         " undeliverable_reason LIKE 'relay:%'", (a.lower(),))
        except sqlite3.OperationalError:
            pass
    conn.execute("UPDATE relay_queue SET state=?, next_attempt_at=0, attempts=0, lifetime_from=?, last_error='',"
                 " finished_at=NULL, lease_owner='', lease_until=0 WHERE id=?", (QUEUED, now, mail_id))
    return True


def retry_dead(conn: sqlite3.Connection, now: float) -> list[int]:
    ids = [i for (i,) in conn.execute("SELECT id FROM relay_queue WHERE state=? ORDER BY id", (DEAD,))]
    for i in ids:
        retry(conn, i, now)
    return ids


# -- the async face, over a SqliteStore ---------------------------------------------------------

class RelayQueue:
    """Queue operations over :class:`gateway.store.sqlite.SqliteStore` (writes on its writer thread)."""

    def __init__(self, store: Any) -> None:
        self.store = store

    async def enqueue(self, n: Notification, now: float | None = None) -> int:
        return await self.store.transaction(lambda conn: enqueue(conn, n, now))

    async def claim(self, owner: str, limit: int, now: float, lease: float) -> list[OutboundMail]:
        return await self.store.transaction(lambda conn: claim(conn, owner, limit, now, lease))

    async def record(self, outcomes: list[AttemptOutcome], now: float, intervals: tuple[float, ...],
                     max_lifetime: float) -> list[str]:
        """Record several attempts in one transaction (one fsync for a batch)."""
        return await self.store.transaction(
            lambda conn: [record(conn, o, now, intervals, max_lifetime) for o in outcomes])

    async def release(self, owner: str | None = None, now: float | None = None) -> int:
        now = time.time() if now is None else now
        return await self.store.transaction(lambda conn: release(conn, now, owner))

    async def renew(self, owner: str, ids: list[int], until: float) -> int:
        return await self.store.transaction(lambda conn: renew(conn, owner, ids, until), durable=False)

    async def retry(self, mail_id: int, now: float | None = None) -> bool:
        now = time.time() if now is None else now
        return await self.store.transaction(lambda conn: retry(conn, mail_id, now))

    async def retry_dead(self, now: float | None = None) -> list[int]:
        now = time.time() if now is None else now
        return await self.store.transaction(lambda conn: retry_dead(conn, now))

    async def get(self, mail_id: int) -> dict[str, Any] | None:
        rows = await self.list(ids=(mail_id,))
        return rows[0] if rows else None

    async def message(self, mail_id: int) -> bytes | None:
        """The stored (unsigned) message, decrypted; b"" for a notification rendered at send time."""
        rows = await self.store.query("SELECT message FROM relay_queue WHERE id=?", (mail_id,))
        return _open(getattr(self.store, "cipher", None), bytes(rows[0][0]), None)[0] if rows else None

    async def render_spec(self, mail_id: int) -> dict[str, Any] | None:
        """The render spec of a lazily rendered notification, decrypted (None for a rendered one)."""
        rows = await self.store.query("SELECT render FROM relay_queue WHERE id=?", (mail_id,))
        render = _open(getattr(self.store, "cipher", None), b"", rows[0][0])[1] if rows else None
        return json.loads(render) if render else None

    async def list(self, state: str | None = None, limit: int | None = None,
                   ids: tuple[int, ...] = ()) -> list[dict[str, Any]]:
        sql = ("SELECT id, ticket_id, event, mailbox, mail_from, message_id, state, attempts, next_attempt_at,"
               " lease_owner, lease_until, last_error, last_host, created_at, sent_at, finished_at,"
               " length(message) AS size FROM relay_queue")
        where, params = [], []
        if state:
            where.append("state=?")
            params.append(state)
        if ids:
            where.append(f"id IN ({','.join('?' * len(ids))})")
            params.extend(ids)
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY id"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)
        rows = await self.store.query(sql, tuple(params))
        if not rows:
            return []
        qmarks = ",".join("?" * len(rows))
        rcpts: dict[int, list[dict[str, Any]]] = {}
        for r in await self.store.query(
                f"SELECT notification_id, address, kind, state, code, reply, host FROM relay_recipients"
                f" WHERE notification_id IN ({qmarks}) ORDER BY {_rcpt_order(self.store)}", tuple(r[0] for r in rows)):
            rcpts.setdefault(r[0], []).append({"address": r[1], "kind": r[2], "state": r[3], "code": r[4],
                                               "reply": r[5], "host": r[6]})
        out = []
        for r in rows:
            d = {k: r[k] for k in r.keys()}
            d["recipients"] = rcpts.get(r["id"], [])
            out.append(d)
        return out

    async def counts(self) -> dict[str, int]:
        counts = {s: 0 for s in STATES}
        for row in await self.store.query("SELECT state, COUNT(*) FROM relay_queue GROUP BY state"):
            counts[row[0]] = row[1]
        return counts

    async def oldest_age(self, now: float | None = None) -> float:
        """Age of the oldest notification not yet finished (0 when none)."""
        now = time.time() if now is None else now
        rows = await self.store.query(
            f"SELECT MIN(created_at) FROM relay_queue WHERE state IN ({','.join('?' * len(LIVE))})", LIVE)
        oldest = rows[0][0] if rows else None
        return max(0.0, now - oldest) if oldest is not None else 0.0

    async def next_due(self) -> float | None:
        rows = await self.store.query(
            "SELECT MIN(CASE WHEN state=? THEN lease_until ELSE next_attempt_at END) FROM relay_queue"
            " WHERE state IN (?,?,?)", (SENDING, QUEUED, DEFERRED, SENDING))
        return rows[0][0] if rows and rows[0][0] is not None else None


def queue_row_json(d: dict[str, Any]) -> dict[str, Any]:
    """The stable JSON shape of one queue entry (``ticketmx relay queue --json``)."""
    from gateway.store.render import iso
    return {
        "id": d["id"], "ticket_id": d["ticket_id"], "event": d["event"], "mailbox": d["mailbox"],
        "mail_from": d["mail_from"], "message_id": d["message_id"], "state": d["state"],
        "attempts": d["attempts"], "size": d["size"],
        "next_attempt_at": iso(max(d["next_attempt_at"], d["created_at"])) if d["state"] in (QUEUED, DEFERRED) else None,
        "lease_owner": d["lease_owner"] or None, "last_error": d["last_error"], "last_host": d["last_host"],
        "created_at": iso(d["created_at"]), "sent_at": iso(d["sent_at"]) if d["sent_at"] else None,
        "finished_at": iso(d["finished_at"]) if d["finished_at"] else None,
        "recipients": d["recipients"],
    }


__all__ = ["Notification", "OutboundMail", "RcptOutcome", "AttemptOutcome", "RelayQueue", "enqueue", "claim",
           "record", "release", "renew", "retry", "retry_dead", "mark_undeliverable", "delivery_failed",
           "queue_row_json", "STATES", "BOUNCED"]
