"""SQLite store (aiosqlite, WAL, synchronous=FULL).

One write connection serialised by a lock (the single writer), one read
connection for queries. A write transaction runs as one synchronous function on
aiosqlite's connection thread, so a batch of N messages costs one thread hop and
one fsync, not one per statement.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import sqlite3
import stat
import time
from pathlib import Path
from typing import Any, AsyncIterator, Callable, TypeVar

import aiosqlite

from gateway.store import base
from gateway.store.base import (PROCESSING, QUARANTINED, QUEUED, SUPPRESSED, ArticleDraft, Delivery, DeliveryResult, SpoolEntry,
                   Store, SPOOL_CHUNK, TicketPage, TicketQuery, body_file_chunks, chunk_count)
from gateway.store.base import ingress_keys
from gateway.store.search import SEARCH_SHIFT, fts5_match, index_text, search_rowid
from gateway.store.migrations import load_migrations
from gateway.store.crypto import Cipher
from gateway.config.secretfile import ensure_mode
from gateway.store.render import article_dict, iso, spool_from_row, ticket_dict
from gateway.store.sqlite_deliver import STREAM_BLOB_MIN, DeliverTx, file_pieces, insert_streamed, memory_pieces
from gateway.store.crypto import BLOB_PREFIX
from gateway.webhooks.outbox import on_delivered as webhook_events
from gateway.webhooks.outbox import article_added as webhook_article
from gateway.webhooks.outbox import rotate_outbox

T = TypeVar("T")
SEARCH_BATCH = 256     # full-text index rows read per step of a search
SEARCH_SCAN = 20_000   # ... and per request at most (a bounded request; the page then ends early)


log = logging.getLogger(__name__)

# A spool row with its message bytes (kept in spool_raw since migration 0009; a purged entry has none).
_SPOOL_ROWS = "SELECT s.*, r.raw AS raw_stored FROM spool s LEFT JOIN spool_raw r ON r.spool_id = s.id"
# The oldest due queued entries, walked in order on the spool_queue index (migration 0010): no sort of
# the whole queue per claim, however long the backlog.
_CLAIM = ("UPDATE spool SET state=?, attempts=attempts+1, claimed_by=? WHERE id IN ("
          " SELECT id FROM spool WHERE state=? AND next_attempt_at<=? ORDER BY received_at, id LIMIT ?)"
          " RETURNING *")
_READ_PIECE = 256 * 1024  # a large message's body is read back in pieces of this (spool_body_chunks)
_BUSY_TIMEOUT = 10.0  # seconds a writer waits for the write lock before the transaction fails


def _begin_immediate(conn: sqlite3.Connection) -> None:
    """BEGIN IMMEDIATE, waiting for the write lock in steps of 0.1 to 2 ms.

    Several processes write one database (SMTP processes, pipeline workers). SQLite's own busy
    handler sleeps 1, 2, 5, 10, 15, 20, 25 ms... between tries, so a writer that finds the lock
    taken for a 1 ms commit often sleeps far longer than the commit lasted, and the SMTP client waits
    with it. Only BEGIN waits here: once it holds the lock the transaction needs no other."""
    conn.execute("PRAGMA busy_timeout=0")
    try:
        try:
            conn.execute("BEGIN IMMEDIATE")
            return
        except sqlite3.OperationalError as exc:
            if not _is_busy(exc):
                raise
        deadline = time.monotonic() + _BUSY_TIMEOUT
        delay = 0.0001
        while True:
            time.sleep(delay)
            delay = min(delay * 2, 0.002)
            try:
                conn.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc) or time.monotonic() > deadline:
                    raise
    finally:
        conn.execute(f"PRAGMA busy_timeout={int(_BUSY_TIMEOUT * 1000)}")


def _rollback(conn: sqlite3.Connection) -> None:
    """Roll back after a failed statement or COMMIT without hiding why it failed: after SQLITE_FULL or
    SQLITE_IOERR SQLite may already have rolled back, and the ROLLBACK's own "no transaction is active"
    (or a second I/O error) would otherwise replace the real "database or disk is full" in the log."""
    if not conn.in_transaction:
        return
    try:
        conn.execute("ROLLBACK")
    except sqlite3.Error as exc:
        log.warning("ROLLBACK after a failed transaction also failed: %s", exc)


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    return getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_BUSY or "locked" in str(exc)


DB_MODE = 0o600


class CipherConnection(sqlite3.Connection):
    """The writer connection, carrying the store's :class:`Cipher` (set per transaction), so code that
    runs inside a transaction with only the connection (gateway.store.relay_queue.enqueue, called from the
    notification hook) encrypts what it writes without every caller having to pass the key."""

    cipher: Cipher | None = None
    webhooks: tuple[Any, ...] = ()  # the store's [[webhook]]s, for the outbox (gateway/webhooks/outbox.py)


def private_db_files(path: Path) -> None:
    """Make the database file 0600 before SQLite opens it, whatever the umask.

    SQLite creates ``-wal`` and ``-shm`` with the mode of the database file (and fchmods them to
    it), so creating the database file ourselves with the right mode is what makes all three
    private. An existing database (or -wal/-shm/-journal) others can read - made by an older
    version or by hand - loses its "other" bits, with a warning.
    """
    ensure_mode(str(path), DB_MODE)
    for p in (str(path), f"{path}-wal", f"{path}-shm", f"{path}-journal"):
        try:
            mode = stat.S_IMODE(os.stat(p).st_mode)
        except FileNotFoundError:
            continue
        if mode & 0o007:
            try:
                os.chmod(p, mode & 0o770)
                log.warning("store: %s was accessible by others (mode %04o); now %04o", p, mode, mode & 0o770)
            except OSError as exc:
                log.warning("store: %s is accessible by others (mode %04o) and cannot be changed: %s",
                            p, mode, exc.strerror)


class SqliteStore(Store):
    def __init__(self, path: str | Path, ticket_prefix: str = "HD-", ticket_start: int = 1000,
                 cipher: Cipher | None = None) -> None:
        self.path = Path(path)
        self.cipher = cipher or Cipher()
        self.ticket_prefix = ticket_prefix
        self.ticket_start = ticket_start
        self._w: aiosqlite.Connection | None = None
        self._r: aiosqlite.Connection | None = None
        self._wlock = asyncio.Lock()
        self._checkpointer: asyncio.Task[None] | None = None
        # Called on the writer thread after each committed transaction with (fn's qualified name,
        # seconds waited for the write lock, seconds held): for benchmarks (bench/bench_claim.py).
        self.on_transaction: Callable[[str, float, float], None] | None = None

    # -- lifecycle -------------------------------------------------------------
    async def open(self) -> None:
        """Connect and migrate. On failure (locked past the busy timeout, disk full, read-only) the
        connections opened so far are closed again: their threads are not daemons, and one left
        behind kept the process from ever exiting after a failed start."""
        self.path.parent.mkdir(mode=0o750, parents=True, exist_ok=True)
        try:
            private_db_files(self.path)
            self._w = await aiosqlite.connect(self.path, isolation_level=None, factory=CipherConnection)
            await self._w.execute("PRAGMA journal_mode=WAL")
            await self._w.execute("PRAGMA synchronous=FULL")  # fsync the WAL at every commit
            await self._w.execute("PRAGMA busy_timeout=10000")
            await self._w.execute("PRAGMA foreign_keys=ON")
            await self.transaction(self._migrate)
            self._r = await aiosqlite.connect(self.path, isolation_level=None)
            self._r.row_factory = sqlite3.Row
            await self._r.execute("PRAGMA busy_timeout=10000")
        except BaseException:
            await self.close()
            raise

    async def defer_checkpoints(self, run_here: bool, interval: float = 0.2) -> None:
        """Keep WAL checkpoints out of this connection's commits.

        SQLite checkpoints automatically inside the commit that takes the WAL past 1,000 pages: that
        commit also copies the WAL into the database file and fsyncs it. When the commit is the SMTP
        spool writer's, every session waiting for its 250 waits for the copy too (p99 EOD->250 25-31
        -> 20-23 ms, docs/perf.md). With ``run_here`` a task of this process runs a PASSIVE checkpoint
        (it never blocks a writer) on the reader connection's thread every ``interval`` seconds; the
        gateway's main process does, and its extra SMTP processes leave it to that one."""
        assert self._w is not None
        await self._w.execute("PRAGMA wal_autocheckpoint=0")
        if run_here and self._checkpointer is None:
            self._checkpointer = asyncio.get_running_loop().create_task(self._checkpoints(interval),
                                                                        name="wal-checkpoints")

    async def _checkpoints(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                if self._r is not None:
                    await self._r.execute("PRAGMA wal_checkpoint(PASSIVE)")
            except sqlite3.Error as exc:  # a checkpoint that cannot run now runs at the next tick
                log.debug("WAL checkpoint skipped: %s", exc)

    async def close(self) -> None:
        if self._checkpointer is not None:
            self._checkpointer.cancel()
            try:
                await self._checkpointer
            except asyncio.CancelledError:
                pass
            self._checkpointer = None
        for conn in (self._r, self._w):
            if conn is not None:
                await conn.close()
        self._r = self._w = None

    async def transaction(self, fn: Callable[[sqlite3.Connection], T], durable: bool = True) -> T:
        """Run ``fn`` as one transaction on the writer thread (BEGIN IMMEDIATE … COMMIT).

        ``durable=False`` skips the fsync of this commit (synchronous=NORMAL): only for bookkeeping
        that a power loss may undo harmlessly (claims: recovery puts entries back in the queue). The
        next durable commit fsyncs the WAL, these frames included."""
        assert self._w is not None, "store not open"

        def tx() -> T:
            conn = self._w._conn  # the sqlite3 connection owned by aiosqlite's thread
            conn.cipher = self.cipher
            conn.webhooks = self.webhooks
            if not durable:
                conn.execute("PRAGMA synchronous=NORMAL")
            try:
                observe = self.on_transaction
                t0 = time.perf_counter() if observe is not None else 0.0
                _begin_immediate(conn)
                t1 = time.perf_counter() if observe is not None else 0.0
                try:
                    result = fn(conn)
                    conn.execute("COMMIT")
                except BaseException:
                    _rollback(conn)
                    raise
                if observe is not None:
                    observe(getattr(fn, "__qualname__", "?"), t1 - t0, time.perf_counter() - t1)
                return result
            finally:
                if not durable:
                    conn.execute("PRAGMA synchronous=FULL")

        async with self._wlock:
            return await self._w._execute(tx)

    async def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        assert self._r is not None, "store not open"
        return list(await self._r.execute_fetchall(sql, params))

    def _migrate(self, conn: sqlite3.Connection) -> None:
        """Apply every shipped migration not applied yet. Each applied version is recorded in
        ``schema_migrations`` (as on PostgreSQL), so a version merged later with a lower number than
        one already applied still runs; ``user_version`` keeps the highest, for tools that read it.
        A database from before the table existed has applied exactly 1..user_version."""
        current = conn.execute("PRAGMA user_version").fetchone()[0]
        shipped = load_migrations()
        conn.execute("CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY)")
        applied = {v for (v,) in conn.execute("SELECT version FROM schema_migrations")}
        if not applied and current:
            applied = {v for v, _ in shipped if v <= current}
            conn.executemany("INSERT INTO schema_migrations (version) VALUES (?)", [(v,) for v in sorted(applied)])
        for version, sql in shipped:
            if version in applied:
                continue
            for statement in sql.split(";\n"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute("INSERT INTO schema_migrations (version) VALUES (?)", (version,))
            if version > current:
                current = version
                conn.execute(f"PRAGMA user_version={version}")

    # -- spool -----------------------------------------------------------------
    async def spool_insert(self, entries: list[SpoolEntry]) -> None:
        enc = self.cipher.enc_bytes
        rows = [(e.id, e.received_at, e.mail_from, json.dumps(list(e.rcpt_tos)), json.dumps(list(e.mailboxes)),
                 e.peer_ip, e.helo, json.dumps(e.tls) if e.tls else None, e.message_id, e.size,
                 e.auth_header, json.dumps(e.auth) if e.auth is not None else None, json.dumps(list(e.flags)),
                 chunk_count(e))
                for e in entries]
        # Large values in plaintext are written through incremental blob I/O, not bound (SQLite copies
        # a bound blob twice, sqlite_deliver.insert_blob): a 1 MB message cost the SMTP process
        # +2 MB at its spool commit (issue 18 item 9). Encrypted ones are whole tokens anyway.
        stream = not self.cipher.enabled
        raws = [(e.id, enc(e.raw)) for e in entries if not (stream and len(e.raw) >= STREAM_BLOB_MIN)]

        def fn(conn: sqlite3.Connection) -> None:
            conn.executemany(
                "INSERT INTO spool (id, received_at, mail_from, rcpt_tos, mailboxes, peer_ip, helo, tls,"
                " message_id, size, raw, auth_header, auth, flags, chunks) VALUES (?,?,?,?,?,?,?,?,?,?,x'',?,?,?,?)",
                rows)
            # the bytes outside the row, so that state changes rewrite a small row (migration 0009)
            conn.executemany("INSERT INTO spool_raw (spool_id, raw) VALUES (?,?)", raws)
            for e in entries:
                if stream and len(e.raw) >= STREAM_BLOB_MIN:
                    insert_streamed(conn, "spool_raw", "raw", "INSERT INTO spool_raw (spool_id, raw) VALUES"
                                    " (?, zeroblob(?))", (e.id, len(e.raw)), memory_pieces(e.raw))
                if e.body is None:
                    continue
                # a large message: its body from the file, a piece in memory at a time
                if not stream:
                    conn.executemany("INSERT INTO spool_chunks (spool_id, seq, data) VALUES (?,?,?)",
                                     ((e.id, i, enc(c)) for i, c in enumerate(body_file_chunks(e))))
                    continue
                for seq, offset in enumerate(range(0, e.body_size, SPOOL_CHUNK)):
                    n = min(SPOOL_CHUNK, e.body_size - offset)
                    insert_streamed(conn, "spool_chunks", "data", "INSERT INTO spool_chunks (spool_id, seq,"
                                    " data) VALUES (?,?,zeroblob(?))", (e.id, seq, n), file_pieces(e.body, offset, n))
            keys, pulled, refused = ingress_keys(entries)
            if keys:  # a repeated HTTP post: the primary key refuses it, with the whole transaction
                conn.executemany("INSERT INTO inbound_keys (key, spool_id, created_at) VALUES (?,?,?)", keys)
            if pulled:  # a pulled message seen again: likewise (gateway/ingress/sources/manager.py)
                conn.executemany("INSERT INTO source_messages (source, key, spool_id, digest, created_at)"
                                 " VALUES (?,?,?,?,?)", pulled)
            if refused:
                conn.executemany("UPDATE spool SET state=?, reason=?, finished_at=? WHERE id=?", refused)
        await self.transaction(fn)

    async def inbound_lookup(self, key: str) -> str | None:
        rows = await self.query("SELECT spool_id FROM inbound_keys WHERE key=?", (key,))
        return rows[0][0] if rows else None

    async def spool_body_chunks(self, entry: SpoolEntry) -> AsyncIterator[bytes]:
        """The body in order, in pieces of at most _READ_PIECE bytes for plaintext chunks (read through
        incremental blob I/O on the reader's thread: a 1 MiB chunk fetched whole was held by the row,
        the page cache and the splitter's window at once), whole decrypted chunks otherwise."""
        assert self._r is not None, "store not open"
        reader = self._r

        def locate(seq: int) -> tuple[int, int] | None:
            row = reader._conn.execute("SELECT rowid, length(data) FROM spool_chunks WHERE spool_id=? AND seq=?",
                                       (entry.id, seq)).fetchone()
            return (row[0], row[1]) if row else None

        def read(rowid: int, offset: int, n: int) -> bytes:
            with reader._conn.blobopen("spool_chunks", "data", rowid, readonly=True) as blob:
                blob.seek(offset)
                return blob.read(n)

        for seq in range(entry.chunks):
            found = await reader._execute(locate, seq)
            if found is None:
                raise LookupError(f"spool {entry.id}: chunk {seq} of {entry.chunks} is missing")
            rowid, size = found
            piece = await reader._execute(read, rowid, 0, min(_READ_PIECE, size))
            if piece.startswith(BLOB_PREFIX):  # encrypted: one token, decrypted whole
                rows = await self.query("SELECT data FROM spool_chunks WHERE rowid=?", (rowid,))
                yield self.cipher.dec_bytes(bytes(rows[0][0]))
                continue
            yield piece
            del piece
            for offset in range(_READ_PIECE, size, _READ_PIECE):
                yield await reader._execute(read, rowid, offset, min(_READ_PIECE, size - offset))

    async def spool_recover(self, owner: str | None = None, refund: bool = False) -> int:
        back = ", attempts=MAX(attempts-1, 0)" if refund else ""

        def fn(conn: sqlite3.Connection) -> int:
            if owner is None:  # at start: an interruption, not a crash of the message's own worker
                return conn.execute("UPDATE spool SET state=?, claimed_by='', attempts=MAX(attempts-1, 0),"
                                    " interrupted=interrupted+1 WHERE state=?", (QUEUED, PROCESSING)).rowcount
            return conn.execute(f"UPDATE spool SET state=?, claimed_by=''{back} WHERE state=? AND claimed_by=?",
                                (QUEUED, PROCESSING, owner)).rowcount
        return await self.transaction(fn)

    async def spool_claim(self, limit: int, now: float, owner: str = "") -> list[SpoolEntry]:
        def fn(conn: sqlite3.Connection) -> list[sqlite3.Row]:
            conn.row_factory = sqlite3.Row
            try:
                return conn.execute(_CLAIM, (PROCESSING, owner, QUEUED, now, limit)).fetchall()
            finally:
                conn.row_factory = None
        # Only the UPDATE holds the write lock. The message bytes (never changed once spooled) are read
        # on the reader connection after the COMMIT, and the rows become entries (JSON, decryption) here:
        # the SMTP side's spool commit waits for less (bench/bench_claim.py, bench/bench_pipeline.py).
        rows = await self.transaction(fn, durable=False)
        if not rows:
            return []
        ids = tuple(r["id"] for r in rows)
        try:
            raws = {r[0]: r[1] for r in await self.query(
                f"SELECT spool_id, raw FROM spool_raw WHERE spool_id IN ({','.join('?' * len(ids))})", ids)}
            return sorted((spool_from_row(r, self.cipher, raws.get(r["id"])) for r in rows),
                          key=lambda e: (e.received_at, e.id))
        except BaseException:
            await self._unclaim(ids, owner)  # as if the claim had been rolled back
            raise

    async def _unclaim(self, ids: tuple[str, ...], owner: str) -> None:
        """Put claimed entries back in the queue, attempts as before the claim (a claim that failed
        after its COMMIT must not leave them ``processing`` until the worker restarts)."""
        try:
            await asyncio.shield(self.spool_release(ids, owner))
        except Exception:  # the worker's restart (spool_recover) puts them back then
            log.exception("could not put claimed spool entries back in the queue")

    async def spool_release(self, ids: tuple[str, ...] | list[str], owner: str, refund: bool = True) -> int:
        back = ", attempts=MAX(attempts-1, 0)" if refund else ""
        ids = tuple(ids)

        def fn(conn: sqlite3.Connection) -> int:
            n = 0
            for start in range(0, len(ids), 500):  # under SQLite's limit of bound parameters
                part = ids[start:start + 500]
                n += conn.execute(f"UPDATE spool SET state=?, claimed_by=''{back} WHERE state=? AND claimed_by=?"
                                  f" AND id IN ({','.join('?' * len(part))})", (QUEUED, PROCESSING, owner, *part)
                                  ).rowcount
            return n
        return await self.transaction(fn, durable=False)

    async def spool_retry(self, spool_id: str, error: str, next_attempt_at: float) -> None:
        def fn(conn: sqlite3.Connection) -> None:
            conn.execute("UPDATE spool SET state=?, last_error=?, next_attempt_at=? WHERE id=? AND state=?",
                         (QUEUED, error, next_attempt_at, spool_id, PROCESSING))
        await self.transaction(fn)

    async def spool_get(self, spool_id: str) -> SpoolEntry | None:
        rows = await self.query(_SPOOL_ROWS + " WHERE s.id=?", (spool_id,))
        return spool_from_row(rows[0], self.cipher, rows[0]["raw_stored"]) if rows else None

    async def spool_get_many(self, ids: list[str]) -> list[SpoolEntry]:
        """One query for a page of entries (``spool_find``, the HTTP API's lists), in the order of ``ids``."""
        by_id: dict[str, Any] = {}
        for start in range(0, len(ids), 500):  # well under SQLite's limit on bound parameters
            part = ids[start:start + 500]
            for r in await self.query(_SPOOL_ROWS + f" WHERE s.id IN ({','.join('?' * len(part))})", tuple(part)):
                by_id[r["id"]] = r
        return [spool_from_row(by_id[i], self.cipher, by_id[i]["raw_stored"]) for i in ids if i in by_id]

    async def spool_list(self, state: str | None = None, limit: int | None = None) -> list[SpoolEntry]:
        sql = _SPOOL_ROWS
        params: tuple[Any, ...] = ()
        if state:
            sql += " WHERE s.state=?"
            params = (state,)
        sql += " ORDER BY s.received_at, s.id"
        if limit is not None:
            sql += " LIMIT ?"
            params += (limit,)
        return [spool_from_row(r, self.cipher, r["raw_stored"]) for r in await self.query(sql, params)]

    async def spool_replay(self, spool_id: str, also: Callable[[Any], None] | None = None) -> bool:
        def fn(conn: sqlite3.Connection) -> bool:
            done = conn.execute(
                "UPDATE spool SET state=?, attempts=0, interrupted=0, next_attempt_at=0, reason='', finished_at=NULL"
                " WHERE id=? AND state NOT IN (?, ?)", (QUEUED, spool_id, QUEUED, PROCESSING)).rowcount == 1
            if done and also is not None:
                also(conn)
            return done
        return await self.transaction(fn)

    async def spool_replay_quarantined(self) -> list[str]:
        def fn(conn: sqlite3.Connection) -> list[str]:
            # not those whose raw message an operator deleted (`spool delete`): nothing left to process
            kept = "(chunks > 0 OR length(raw) > 0 OR id IN (SELECT spool_id FROM spool_raw))"
            ids = [r[0] for r in conn.execute(f"SELECT id FROM spool WHERE state=? AND {kept}", (QUARANTINED,))]
            conn.execute("UPDATE spool SET state=?, attempts=0, interrupted=0, next_attempt_at=0, reason='', finished_at=NULL"
                         f" WHERE state=? AND {kept}", (QUEUED, QUARANTINED))
            return ids
        return await self.transaction(fn)

    async def spool_release_held(self, spool_id: str, release: dict[str, Any], actor: str,
                                 detail: dict[str, Any], also: Callable[[Any], None] | None = None) -> bool:
        def fn(conn: sqlite3.Connection) -> bool:
            done = conn.execute(
                "UPDATE spool SET state=?, attempts=0, interrupted=0, next_attempt_at=0, reason='', finished_at=NULL,"
                " released=? WHERE id=? AND state=? AND (chunks > 0 OR length(raw) > 0"
                " OR id IN (SELECT spool_id FROM spool_raw))",
                (QUEUED, json.dumps(release), spool_id, QUARANTINED)).rowcount == 1
            if done:
                _audit(conn, spool_id, release["at"], actor, "released", detail)
                if also is not None:
                    also(conn)
            return done
        return await self.transaction(fn)

    async def spool_delete_raw(self, spool_id: str, actor: str, detail: dict[str, Any],
                               also: Callable[[Any], None] | None = None) -> bool:
        def fn(conn: sqlite3.Connection) -> bool:
            row = conn.execute("SELECT state, chunks, length(raw), (SELECT COUNT(*) FROM spool_raw WHERE spool_id=?)"
                               " FROM spool WHERE id=?", (spool_id, spool_id)).fetchone()
            if row is None or row[0] not in (QUARANTINED, SUPPRESSED) or not (row[1] or row[2] or row[3]):
                return False
            conn.execute("DELETE FROM spool_chunks WHERE spool_id=?", (spool_id,))
            conn.execute("DELETE FROM spool_raw WHERE spool_id=?", (spool_id,))
            conn.execute("UPDATE spool SET raw=x'', chunks=0, released='' WHERE id=?", (spool_id,))
            _audit(conn, spool_id, time.time(), actor, "deleted", detail)
            if also is not None:
                also(conn)
            return True
        return await self.transaction(fn)

    async def spool_audit(self, spool_id: str) -> list[dict[str, Any]]:
        return [{"at": iso(r["at"]), "actor": r["actor"], "action": r["action"], "detail": json.loads(r["detail"])}
                for r in await self.query("SELECT * FROM spool_audit WHERE spool_id=? ORDER BY id", (spool_id,))]

    async def spool_counts(self) -> dict[str, int]:
        counts = {s: 0 for s in base.ALL_STATES}
        for row in await self.query("SELECT state, COUNT(*) FROM spool GROUP BY state"):
            counts[row[0]] = row[1]
        return counts

    # -- delivery (the one transaction that ends a message's life) --------------
    async def deliver(self, deliveries: list[Delivery], now: float,
                      on_delivered: Any = None) -> list[DeliveryResult]:
        # The stage histories as JSON before the write lock is taken (the largest value each delivery
        # writes: about a fifth of the transaction's time, bench/bench_pipeline.py).
        histories = {d.spool_id: json.dumps(list(d.history)) for d in deliveries}

        def fn(conn: sqlite3.Connection) -> list[DeliveryResult]:
            tx = DeliverTx(conn, now, self.ticket_prefix, self.ticket_start, self.cipher, histories)
            results = []
            for d in deliveries:
                r = tx.run(d)
                if self.webhooks:  # events for the [[webhook]]s, committed with the change
                    webhook_events(conn, d, r, now)
                if on_delivered is not None:
                    on_delivered(conn, d, r)
                results.append(r)
            return results
        return await self.transaction(fn)

    # -- tickets ---------------------------------------------------------------
    _TICKET_SQL = ("SELECT t.*, c.email AS requester, c.name AS requester_name FROM tickets t"
                   " JOIN contacts c ON c.id=t.requester_id")

    async def tickets_list(self, limit: int | None = None, query: TicketQuery | None = None
                           ) -> list[dict[str, Any]]:
        q = query or TicketQuery(limit=limit)
        where, params = q.sql()
        return [ticket_dict(r, self.cipher) for r in await self.query(self._TICKET_SQL + where, params)]

    async def ticket_get(self, ref: str) -> dict[str, Any] | None:
        if ref.isdigit():
            rows = await self.query(self._TICKET_SQL + " WHERE t.id=?", (int(ref),))
        else:
            rows = await self.query(self._TICKET_SQL + " WHERE t.number=?", (ref,))
        if not rows:
            return None
        ticket = ticket_dict(rows[0], self.cipher)
        tid = ticket["id"]
        arts = await self.query("SELECT * FROM articles WHERE ticket_id=? ORDER BY id", (tid,))
        atts = await self.query("SELECT at.* FROM attachments at JOIN articles a ON a.id=at.article_id"
                                " WHERE a.ticket_id=? ORDER BY at.id", (tid,))
        stripped = await self.query("SELECT s.* FROM stripped_attachments s JOIN articles a ON a.id=s.article_id"
                                    " WHERE a.ticket_id=? ORDER BY s.id", (tid,))
        auth = await self.query("SELECT s.id, s.auth_header, s.auth FROM spool s JOIN articles a"
                                " ON a.spool_id=s.id WHERE a.ticket_id=?", (tid,))
        by_spool = {r["id"]: r for r in auth}
        ticket["articles"] = [article_dict(a, [x for x in atts if x["article_id"] == a["id"]],
                                           [x for x in stripped if x["article_id"] == a["id"]],
                                           by_spool.get(a["spool_id"]), self.cipher) for a in arts]
        ticket["participants"] = [
            {"email": r["email"], "name": r["name"], "role": r["role"], "undeliverable": bool(r["undeliverable"])}
            for r in await self.query("SELECT c.email, c.name, c.undeliverable, p.role FROM participants p"
                                      " JOIN contacts c ON c.id=p.contact_id WHERE p.ticket_id=?"
                                      " ORDER BY p.role DESC, c.email", (tid,))]
        ticket["history"] = [
            {"at": iso(r["at"]), "actor": r["actor"], "action": r["action"], "detail": json.loads(r["detail"])}
            for r in await self.query("SELECT * FROM ticket_history WHERE ticket_id=? ORDER BY id", (tid,))]
        return ticket

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """``fn(conn)`` on the reader connection's thread: several dependent reads, one thread hop."""
        assert self._r is not None, "store not open"
        reader = self._r
        return await reader._execute(lambda: fn(reader._conn))

    async def tickets_page(self, page: TicketPage) -> tuple[list[dict[str, Any]], int | None]:
        where, params = page.filters()
        if not page.text:
            sql = self._TICKET_SQL + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY t.id DESC LIMIT ?"
            rows = await self.query(sql, (*params, page.limit + 1))
            items = [ticket_dict(r, self.cipher) for r in rows[:page.limit]]
            return items, (items[-1]["id"] if len(rows) > page.limit else None)
        match = fts5_match(self.cipher, page.text)
        if match is None:
            return [], None

        def search(conn: sqlite3.Connection) -> tuple[list[Any], int | None]:
            # Matching articles newest ticket first (descending rowid, no sort), their tickets filtered a
            # batch at a time; at most SEARCH_SCAN index rows per request (then a short page and a cursor).
            hi = None if page.before is None else page.before << SEARCH_SHIFT
            items: list[Any] = []
            seen: set[int] = set()
            scanned, last = 0, None
            while True:
                rows = conn.execute("SELECT rowid FROM ticket_search WHERE ticket_search MATCH ?"
                                    + (" AND rowid < ?" if hi is not None else "") + " ORDER BY rowid DESC LIMIT ?",
                                    (match, *(() if hi is None else (hi,)), SEARCH_BATCH)).fetchall()
                scanned += len(rows)
                ids = []
                for (rowid,) in rows:
                    if rowid >> SEARCH_SHIFT not in seen:
                        seen.add(rowid >> SEARCH_SHIFT)
                        ids.append(rowid >> SEARCH_SHIFT)
                found = {}
                if ids:
                    cond = " AND ".join([f"t.id IN ({','.join('?' * len(ids))})", *where])
                    found = {r["id"]: r for r in conn.execute(self._TICKET_SQL + " WHERE " + cond, (*ids, *params))}
                for tid in ids:
                    last = tid
                    if tid in found:
                        items.append(found[tid])
                        if len(items) > page.limit:
                            return items[:page.limit], items[page.limit - 1]["id"]
                if len(rows) < SEARCH_BATCH:
                    return items, None
                if scanned >= SEARCH_SCAN:
                    return items, last
                hi = rows[-1][0]
        rows, nxt = await self._read(search)
        return [ticket_dict(r, self.cipher) for r in rows], nxt

    async def ticket_update(self, ticket_id: int, updates: dict[str, Any], actor: str, now: float,
                            hook: Any = None) -> dict[str, Any] | None:
        def fields(conn: sqlite3.Connection) -> dict[str, Any] | None:
            row = conn.execute("SELECT status, priority, assignee, queue, category, tags FROM tickets WHERE id=?",
                               (ticket_id,)).fetchone()
            if row is None:
                return None
            got = dict(zip(("status", "priority", "assignee", "queue", "category", "tags"), row))
            got["tags"] = json.loads(got["tags"])
            return {k: got[k] for k in updates if k in got}

        def fn(conn: sqlite3.Connection) -> dict[str, Any] | None:
            old = fields(conn)
            if old is None:
                return None
            DeliverTx(conn, now, self.ticket_prefix, self.ticket_start, self.cipher).apply_updates(
                ticket_id, actor, updates, replace_tags=True, previous=old)  # + ticket.updated
            conn.execute("UPDATE tickets SET updated_at=? WHERE id=?", (now, ticket_id))
            if hook is not None:
                hook(conn, ticket_id)
            return {"old": old, "new": fields(conn)}
        return await self.transaction(fn)

    async def ticket_add_article(self, ticket_id: int, article: ArticleDraft, actor: str, now: float,
                                 agent_reply: bool = False, hook: Any = None) -> int | None:
        def fn(conn: sqlite3.Connection) -> int | None:
            if conn.execute("SELECT 1 FROM tickets WHERE id=?", (ticket_id,)).fetchone() is None:
                return None
            tx = DeliverTx(conn, now, self.ticket_prefix, self.ticket_start, self.cipher)
            article_id = tx.article(ticket_id, None, article)
            conn.execute("UPDATE tickets SET updated_at=? WHERE id=?", (now, ticket_id))
            if agent_reply:  # the first public agent answer meets the first-response SLA (as by mail)
                conn.execute("UPDATE tickets SET first_response_at=COALESCE(first_response_at, ?) WHERE id=?",
                             (now, ticket_id))
            tx.history(ticket_id, actor, "article_added" if agent_reply else "note_added",
                       {"article_id": article_id, "visibility": article.visibility, "via": "api"})
            if hook is not None:
                hook(conn, ticket_id, article_id)
            webhook_article(conn, ticket_id, article_id, article, actor, now)  # after the hook: it may hold it
            return article_id
        return await self.transaction(fn)

    async def attachment_get(self, attachment_id: int) -> tuple[dict[str, Any], bytes] | None:
        rows = await self.query("SELECT x.id, x.filename, x.content_type, x.size, x.sha256, a.ticket_id, t.queue,"
                                " b.data FROM attachments x JOIN articles a ON a.id=x.article_id JOIN tickets t"
                                " ON t.id=a.ticket_id JOIN blobs b ON b.sha256=x.sha256 WHERE x.id=?",
                                (attachment_id,))
        if not rows:
            return None
        r = rows[0]
        meta = {"id": r["id"], "filename": self.cipher.dec_text(r["filename"]), "content_type": r["content_type"],
                "size": r["size"], "sha256": r["sha256"], "ticket_id": r["ticket_id"], "queue": r["queue"]}
        return meta, self.cipher.dec_bytes(bytes(r["data"]))

    async def contact_get(self, email: str) -> dict[str, Any] | None:
        rows = await self.query("SELECT * FROM contacts WHERE email=?", (email,))
        if not rows:
            return None
        r = rows[0]
        return {"email": r["email"], "name": r["name"], "undeliverable": bool(r["undeliverable"]),
                "undeliverable_reason": r["undeliverable_reason"]}

    async def control_get(self, key: str) -> str | None:
        rows = await self.query("SELECT value FROM control WHERE key=?", (key,))
        return rows[0][0] if rows else None

    async def control_set(self, key: str, value: str | None) -> None:
        import time as _time

        def fn(conn: sqlite3.Connection) -> None:
            if value is None:
                conn.execute("DELETE FROM control WHERE key=?", (key,))
            else:
                conn.execute("INSERT INTO control (key, value, updated_at) VALUES (?,?,?) ON CONFLICT(key)"
                             " DO UPDATE SET value=excluded.value, updated_at=excluded.updated_at",
                             (key, value, _time.time()))
        await self.transaction(fn)

    async def purge(self, now: float, raw_days: float, quarantine_days: float,
                    closed_ticket_days: float, relay_days: float = 0.0,
                    audit_days: float = 0.0) -> dict[str, int]:
        day = 86400.0

        def fn(conn: sqlite3.Connection) -> dict[str, int]:
            out = {"raw": 0, "quarantined": 0, "tickets": 0}
            if audit_days > 0:  # the who-did-what history: kept for as long as the operator's policy says
                out["audit"] = conn.execute("DELETE FROM audit_log WHERE at < ?", (now - audit_days * day,)).rowcount
            if relay_days > 0:  # the Message-IDs stay in message_ids: replies to old mail still thread
                done = "state IN ('sent','dead') AND finished_at < ?"
                conn.execute(f"DELETE FROM relay_recipients WHERE notification_id IN (SELECT id FROM relay_queue"
                             f" WHERE {done})", (now - relay_days * day,))
                out["relay"] = conn.execute(f"DELETE FROM relay_queue WHERE {done}",
                                            (now - relay_days * day,)).rowcount
                out["webhooks"] = conn.execute(  # finished webhook events, likewise
                    "DELETE FROM webhook_outbox WHERE state IN ('delivered','dead') AND finished_at < ?",
                    (now - relay_days * day,)).rowcount
            if raw_days > 0:
                done = ("state IN ('ticket_created','article_added','suppressed') AND finished_at < ?"
                        " AND (length(raw) > 0 OR chunks > 0 OR id IN (SELECT spool_id FROM spool_raw))")
                ids = [(r[0],) for r in conn.execute(f"SELECT id FROM spool WHERE {done}", (now - raw_days * day,))]
                conn.executemany("DELETE FROM spool_chunks WHERE spool_id=?", ids)
                conn.executemany("DELETE FROM spool_raw WHERE spool_id=?", ids)
                conn.executemany("UPDATE spool SET raw=x'', chunks=0 WHERE id=?", ids)
                out["raw"] = len(ids)
            if quarantine_days > 0:
                out["quarantined"] = conn.execute("DELETE FROM spool WHERE state='quarantined' AND received_at < ?",
                                                  (now - quarantine_days * day,)).rowcount
            if closed_ticket_days > 0:
                ids = [r[0] for r in conn.execute("SELECT id FROM tickets WHERE status='closed' AND closed_at < ?",
                                                  (now - closed_ticket_days * day,))]
                for tid in ids:
                    conn.execute("DELETE FROM ticket_search WHERE rowid >= ? AND rowid < ?",
                                 (tid << SEARCH_SHIFT, (tid + 1) << SEARCH_SHIFT))
                    arts = "(SELECT id FROM articles WHERE ticket_id=?)"
                    conn.execute(f"DELETE FROM attachments WHERE article_id IN {arts}", (tid,))
                    conn.execute(f"DELETE FROM stripped_attachments WHERE article_id IN {arts}", (tid,))
                    for table in ("message_ids", "participants", "ticket_history", "articles"):
                        conn.execute(f"DELETE FROM {table} WHERE ticket_id=?", (tid,))
                    conn.execute("UPDATE tickets SET linked_ticket_id=NULL WHERE linked_ticket_id=?", (tid,))
                    for table in ("spool_chunks", "spool_raw"):
                        conn.execute(f"DELETE FROM {table} WHERE spool_id IN (SELECT id FROM spool WHERE ticket_id=?)",
                                     (tid,))
                    conn.execute("UPDATE spool SET ticket_id=NULL, article_id=NULL, raw=x'', chunks=0"
                                 " WHERE ticket_id=?", (tid,))
                    conn.execute("DELETE FROM tickets WHERE id=?", (tid,))
                out["tickets"] = len(ids)
                if ids:
                    conn.execute("DELETE FROM blobs WHERE sha256 NOT IN (SELECT sha256 FROM attachments)")
            return out
        return await self.transaction(fn)

    async def blob_get(self, sha256: str) -> bytes | None:
        rows = await self.query("SELECT data FROM blobs WHERE sha256=?", (sha256,))
        return self.cipher.dec_bytes(bytes(rows[0][0])) if rows else None

    async def rotate_key(self) -> dict[str, int]:
        """Re-encrypt every stored value with the first key (encrypts plaintext rows too)."""
        c = self.cipher

        def fn(conn: sqlite3.Connection) -> dict[str, int]:
            out = {"spool": 0, "articles": 0, "blobs": 0}
            for sid, raw in conn.execute("SELECT spool_id, raw FROM spool_raw").fetchall():
                conn.execute("UPDATE spool_raw SET raw=? WHERE spool_id=?", (c.rotate_bytes(bytes(raw)), sid))
            out["spool"] = conn.execute("SELECT COUNT(*) FROM spool").fetchone()[0]  # every entry, as before
            for sid, seq, data in conn.execute("SELECT spool_id, seq, data FROM spool_chunks").fetchall():
                conn.execute("UPDATE spool_chunks SET data=? WHERE spool_id=? AND seq=?",
                             (c.rotate_bytes(bytes(data)), sid, seq))
            for aid, t, h, n, subj in conn.execute(
                    "SELECT id, body_text, body_html, new_text, subject FROM articles").fetchall():
                conn.execute("UPDATE articles SET body_text=?, body_html=?, new_text=?, subject=? WHERE id=?",
                             (c.rotate_text(t), c.rotate_text(h), c.rotate_text(n), c.rotate_text(subj), aid))
                out["articles"] += 1
            # the full-text index again: hashed words under the new first key (plaintext rows too)
            conn.execute("DELETE FROM ticket_search")
            for tid, subj, body, n in conn.execute(
                    "SELECT ticket_id, subject, body_text, row_number() OVER (PARTITION BY ticket_id ORDER BY id)"
                    " FROM articles").fetchall():
                conn.execute("INSERT INTO ticket_search (rowid, subject, body) VALUES (?,?,?)",
                             (search_rowid(tid, n), index_text(c, c.dec_text(subj)), index_text(c, c.dec_text(body))))
            for tid, subj, skey in conn.execute("SELECT id, subject, subject_key FROM tickets").fetchall():
                conn.execute("UPDATE tickets SET subject=?, subject_key=? WHERE id=?",
                             (c.rotate_text(subj), c.rotate_match_key(skey), tid))
            for table in ("attachments", "stripped_attachments"):
                for xid, name in conn.execute(f"SELECT id, filename FROM {table}").fetchall():
                    conn.execute(f"UPDATE {table} SET filename=? WHERE id=?", (c.rotate_text(name), xid))
            from gateway.store.relay_queue import rotate_queue
            rotate_queue(conn, c)
            rotate_outbox(conn, c)
            for sha, data in conn.execute("SELECT sha256, data FROM blobs").fetchall():
                conn.execute("UPDATE blobs SET data=? WHERE sha256=?", (c.rotate_bytes(bytes(data)), sha))
                out["blobs"] += 1
            return out
        return await self.transaction(fn)


def _audit(conn: Any, spool_id: str, at: float, actor: str, action: str, detail: dict[str, Any]) -> None:
    conn.execute("INSERT INTO spool_audit (spool_id, at, actor, action, detail) VALUES (?,?,?,?,?)",
                 (spool_id, at, actor, action, json.dumps(detail, ensure_ascii=False)))


__all__ = ["SqliteStore", "iso"]
