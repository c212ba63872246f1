"""SQLite store (aiosqlite, WAL, synchronous=FULL).

One write connection serialised by a lock (the single writer), one read
connection for queries. A write transaction runs as one synchronous function on
aiosqlite's connection thread, so a batch of N messages costs one thread hop and
one fsync, not one per statement.
"""
from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path
from typing import Any, Callable, TypeVar

import aiosqlite

from . import base
from .base import (ARTICLE_ADDED, PROCESSING, QUARANTINED, QUEUED, SUPPRESSED, TICKET_CREATED,
                   Delivery, DeliveryResult, SpoolEntry, Store)
from .migrations import load_migrations
from .render import iso, spool_from_row, ticket_dict, article_dict

T = TypeVar("T")


class SqliteStore(Store):
    def __init__(self, path: str | Path, ticket_prefix: str = "HD-", ticket_start: int = 1000) -> None:
        self.path = Path(path)
        self.ticket_prefix = ticket_prefix
        self.ticket_start = ticket_start
        self._w: aiosqlite.Connection | None = None
        self._r: aiosqlite.Connection | None = None
        self._wlock = asyncio.Lock()

    # -- lifecycle -------------------------------------------------------------
    async def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._w = await aiosqlite.connect(self.path, isolation_level=None)
        await self._w.execute("PRAGMA journal_mode=WAL")
        await self._w.execute("PRAGMA synchronous=FULL")  # fsync the WAL at every commit
        await self._w.execute("PRAGMA busy_timeout=10000")
        await self._w.execute("PRAGMA foreign_keys=ON")
        await self.transaction(self._migrate)
        self._r = await aiosqlite.connect(self.path, isolation_level=None)
        self._r.row_factory = sqlite3.Row
        await self._r.execute("PRAGMA busy_timeout=10000")

    async def close(self) -> None:
        for conn in (self._r, self._w):
            if conn is not None:
                await conn.close()
        self._r = self._w = None

    async def transaction(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` as one transaction on the writer thread (BEGIN IMMEDIATE … COMMIT)."""
        assert self._w is not None, "store not open"

        def tx() -> T:
            conn = self._w._conn  # the sqlite3 connection owned by aiosqlite's thread
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = fn(conn)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            return result

        async with self._wlock:
            return await self._w._execute(tx)

    async def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        assert self._r is not None, "store not open"
        return list(await self._r.execute_fetchall(sql, params))

    def _migrate(self, conn: sqlite3.Connection) -> None:
        current = conn.execute("PRAGMA user_version").fetchone()[0]
        for version, sql in load_migrations():
            if version > current:
                for statement in sql.split(";\n"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute(f"PRAGMA user_version={version}")

    # -- spool -----------------------------------------------------------------
    async def spool_insert(self, entries: list[SpoolEntry]) -> None:
        rows = [(e.id, e.received_at, e.mail_from, json.dumps(list(e.rcpt_tos)), json.dumps(list(e.mailboxes)),
                 e.peer_ip, e.helo, json.dumps(e.tls) if e.tls else None, e.message_id, len(e.raw), e.raw,
                 e.auth_header, json.dumps(e.auth) if e.auth is not None else None, json.dumps(list(e.flags)))
                for e in entries]

        def fn(conn: sqlite3.Connection) -> None:
            conn.executemany(
                "INSERT INTO spool (id, received_at, mail_from, rcpt_tos, mailboxes, peer_ip, helo, tls,"
                " message_id, size, raw, auth_header, auth, flags) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)", rows)
        await self.transaction(fn)

    async def spool_recover(self, owner: str | None = None) -> int:
        def fn(conn: sqlite3.Connection) -> int:
            if owner is None:
                return conn.execute("UPDATE spool SET state=?, claimed_by='' WHERE state=?",
                                    (QUEUED, PROCESSING)).rowcount
            return conn.execute("UPDATE spool SET state=?, claimed_by='' WHERE state=? AND claimed_by=?",
                                (QUEUED, PROCESSING, owner)).rowcount
        return await self.transaction(fn)

    async def spool_claim(self, limit: int, now: float, owner: str = "") -> list[SpoolEntry]:
        def fn(conn: sqlite3.Connection) -> list[SpoolEntry]:
            conn.row_factory = sqlite3.Row
            try:
                rows = conn.execute(
                    "UPDATE spool SET state=?, attempts=attempts+1, claimed_by=? WHERE id IN ("
                    " SELECT id FROM spool WHERE state=? AND next_attempt_at<=?"
                    " ORDER BY received_at, id LIMIT ?) RETURNING *",
                    (PROCESSING, owner, QUEUED, now, limit)).fetchall()
            finally:
                conn.row_factory = None
            return sorted((spool_from_row(r) for r in rows), key=lambda e: (e.received_at, e.id))
        return await self.transaction(fn)

    async def spool_retry(self, spool_id: str, error: str, next_attempt_at: float) -> None:
        def fn(conn: sqlite3.Connection) -> None:
            conn.execute("UPDATE spool SET state=?, last_error=?, next_attempt_at=? WHERE id=? AND state=?",
                         (QUEUED, error, next_attempt_at, spool_id, PROCESSING))
        await self.transaction(fn)

    async def spool_get(self, spool_id: str) -> SpoolEntry | None:
        rows = await self.query("SELECT * FROM spool WHERE id=?", (spool_id,))
        return spool_from_row(rows[0]) if rows else None

    async def spool_list(self, state: str | None = None, limit: int | None = None) -> list[SpoolEntry]:
        sql = "SELECT * FROM spool"
        params: tuple[Any, ...] = ()
        if state:
            sql += " WHERE state=?"
            params = (state,)
        sql += " ORDER BY received_at, id"
        if limit is not None:
            sql += " LIMIT ?"
            params += (limit,)
        return [spool_from_row(r) for r in await self.query(sql, params)]

    async def spool_replay(self, spool_id: str) -> bool:
        def fn(conn: sqlite3.Connection) -> bool:
            return conn.execute(
                "UPDATE spool SET state=?, attempts=0, next_attempt_at=0, reason='', finished_at=NULL"
                " WHERE id=? AND state NOT IN (?, ?)", (QUEUED, spool_id, QUEUED, PROCESSING)).rowcount == 1
        return await self.transaction(fn)

    async def spool_replay_quarantined(self) -> list[str]:
        def fn(conn: sqlite3.Connection) -> list[str]:
            ids = [r[0] for r in conn.execute("SELECT id FROM spool WHERE state=?", (QUARANTINED,))]
            conn.execute("UPDATE spool SET state=?, attempts=0, next_attempt_at=0, reason='', finished_at=NULL"
                         " WHERE state=?", (QUEUED, QUARANTINED))
            return ids
        return await self.transaction(fn)

    async def spool_counts(self) -> dict[str, int]:
        counts = {s: 0 for s in base.ALL_STATES}
        for row in await self.query("SELECT state, COUNT(*) FROM spool GROUP BY state"):
            counts[row[0]] = row[1]
        return counts

    # -- delivery (the one transaction that ends a message's life) --------------
    async def deliver(self, deliveries: list[Delivery], now: float) -> list[DeliveryResult]:
        return await self.transaction(lambda conn: [self._deliver_one(conn, d, now) for d in deliveries])

    def _deliver_one(self, conn: sqlite3.Connection, d: Delivery, now: float) -> DeliveryResult:
        row = conn.execute("SELECT state FROM spool WHERE id=?", (d.spool_id,)).fetchone()
        if row is None:
            raise KeyError(f"spool entry {d.spool_id} does not exist")
        # Idempotency 1: this spool entry already made an article (replay, crash after commit).
        done = conn.execute("SELECT a.id, a.ticket_id, t.number, (SELECT MIN(id) FROM articles"
                            " WHERE ticket_id=a.ticket_id) FROM articles a JOIN tickets t ON t.id=a.ticket_id"
                            " WHERE a.spool_id=?", (d.spool_id,)).fetchone()
        if done is not None:
            state = TICKET_CREATED if done[0] == done[3] else ARTICLE_ADDED
            return self._finish(conn, d, now, state, "already delivered", done[1], done[0], done[2])
        if d.kind == "suppress":
            return self._finish(conn, d, now, SUPPRESSED, d.reason)
        if d.kind == "quarantine":
            return self._finish(conn, d, now, QUARANTINED, d.reason)
        if d.kind != "ticket" or d.article is None:
            raise ValueError(f"bad delivery kind {d.kind!r}")
        art = d.article
        # Idempotency 2: the same Message-ID already reached this ticket system.
        if art.message_id:
            seen = conn.execute("SELECT m.ticket_id, t.number FROM message_ids m JOIN tickets t"
                                " ON t.id=m.ticket_id WHERE m.message_id=?", (art.message_id,)).fetchone()
            if seen is not None:
                return self._finish(conn, d, now, SUPPRESSED,
                                    f"duplicate: Message-ID <{art.message_id}> already on {seen[1]}", seen[0])
        contact_id = self._contact(conn, art.from_addr, art.from_name, now)
        ticket = self._thread(conn, d.thread_refs, contact_id)
        if ticket is not None:
            ticket_id, number = ticket
            conn.execute("UPDATE tickets SET updated_at=? WHERE id=?", (now, ticket_id))
            state = ARTICLE_ADDED
        else:
            ticket_id = conn.execute(
                "INSERT INTO tickets (subject, requester_id, queue, mailbox, flags, created_at, updated_at)"
                " VALUES (?,?,?,?,?,?,?)",
                (art.subject, contact_id, d.queue, d.mailbox, json.dumps(list(d.ticket_flags)), now, now)).lastrowid
            number = f"{self.ticket_prefix}{self.ticket_start + ticket_id - 1}"
            conn.execute("UPDATE tickets SET number=? WHERE id=?", (number, ticket_id))
            conn.execute("INSERT INTO participants (ticket_id, contact_id, role) VALUES (?,?,?)",
                         (ticket_id, contact_id, "requester"))
            state = TICKET_CREATED
        article_id = conn.execute(
            "INSERT INTO articles (ticket_id, spool_id, message_id, from_addr, from_name, to_addrs, cc_addrs,"
            " rcpt_tos, subject, body_text, body_html, created_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
            (ticket_id, d.spool_id, art.message_id, art.from_addr, art.from_name, json.dumps(list(art.to_addrs)),
             json.dumps(list(art.cc_addrs)), json.dumps(list(art.rcpt_tos)), art.subject, art.body_text,
             art.body_html, now)).lastrowid
        for att in art.attachments:
            conn.execute("INSERT OR IGNORE INTO blobs (sha256, data) VALUES (?,?)", (att.sha256, att.content))
            conn.execute("INSERT INTO attachments (article_id, filename, content_type, size, sha256, inline,"
                         " content_id) VALUES (?,?,?,?,?,?,?)",
                         (article_id, att.filename, att.content_type, len(att.content), att.sha256,
                          int(att.inline), att.content_id))
        if art.message_id:
            conn.execute("INSERT INTO message_ids (message_id, ticket_id, article_id) VALUES (?,?,?)",
                         (art.message_id, ticket_id, article_id))
        return self._finish(conn, d, now, state, d.reason, ticket_id, article_id, number)

    @staticmethod
    def _contact(conn: sqlite3.Connection, email: str, name: str, now: float) -> int:
        row = conn.execute("SELECT id FROM contacts WHERE email=?", (email,)).fetchone()
        if row is not None:
            return row[0]
        return conn.execute("INSERT INTO contacts (email, name, created_at) VALUES (?,?,?)",
                            (email, name, now)).lastrowid

    @staticmethod
    def _thread(conn: sqlite3.Connection, refs: tuple[str, ...], contact_id: int) -> tuple[int, str] | None:
        """The ticket a reply belongs to: a referenced Message-ID of a ticket the sender participates in."""
        for ref in refs:
            row = conn.execute(
                "SELECT t.id, t.number FROM message_ids m JOIN tickets t ON t.id=m.ticket_id"
                " JOIN participants p ON p.ticket_id=t.id AND p.contact_id=? WHERE m.message_id=?",
                (contact_id, ref)).fetchone()
            if row is not None:
                return row[0], row[1]
        return None

    @staticmethod
    def _finish(conn: sqlite3.Connection, d: Delivery, now: float, state: str, reason: str,
                ticket_id: int | None = None, article_id: int | None = None,
                number: str | None = None) -> DeliveryResult:
        conn.execute("UPDATE spool SET state=?, reason=?, ticket_id=?, article_id=?, finished_at=?, history=?,"
                     " last_error=CASE WHEN ? THEN ? ELSE last_error END WHERE id=?",
                     (state, reason, ticket_id, article_id, now, json.dumps(list(d.history)),
                      state == QUARANTINED, reason, d.spool_id))
        return DeliveryResult(d.spool_id, state, reason, ticket_id, article_id, number)

    # -- tickets ---------------------------------------------------------------
    _TICKET_SQL = ("SELECT t.*, c.email AS requester, c.name AS requester_name FROM tickets t"
                   " JOIN contacts c ON c.id=t.requester_id")

    async def tickets_list(self, limit: int | None = None) -> list[dict[str, Any]]:
        sql = self._TICKET_SQL + " ORDER BY t.id"
        params: tuple[Any, ...] = ()
        if limit is not None:
            sql += " LIMIT ?"
            params = (limit,)
        return [ticket_dict(r) for r in await self.query(sql, params)]

    async def ticket_get(self, ref: str) -> dict[str, Any] | None:
        if ref.isdigit():
            rows = await self.query(self._TICKET_SQL + " WHERE t.id=?", (int(ref),))
        else:
            rows = await self.query(self._TICKET_SQL + " WHERE t.number=?", (ref,))
        if not rows:
            return None
        ticket = ticket_dict(rows[0])
        arts = await self.query("SELECT * FROM articles WHERE ticket_id=? ORDER BY id", (ticket["id"],))
        atts = await self.query("SELECT at.* FROM attachments at JOIN articles a ON a.id=at.article_id"
                                " WHERE a.ticket_id=? ORDER BY at.id", (ticket["id"],))
        auth = await self.query("SELECT s.id, s.auth_header, s.auth FROM spool s JOIN articles a"
                                " ON a.spool_id=s.id WHERE a.ticket_id=?", (ticket["id"],))
        by_spool = {r["id"]: r for r in auth}
        ticket["articles"] = [article_dict(a, [x for x in atts if x["article_id"] == a["id"]],
                                           by_spool.get(a["spool_id"])) for a in arts]
        return ticket

    async def blob_get(self, sha256: str) -> bytes | None:
        rows = await self.query("SELECT data FROM blobs WHERE sha256=?", (sha256,))
        return bytes(rows[0][0]) if rows else None


__all__ = ["SqliteStore", "iso"]
