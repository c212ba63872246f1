"""PostgreSQL store (asyncpg): several gateway nodes sharing one database.

Same contract and the same JSON shapes as :class:`gateway.store.sqlite.SqliteStore` (both render rows
with :mod:`gateway.store.render`); what several nodes need on top:

* **Spool claims** are ``SELECT … FOR UPDATE SKIP LOCKED`` in one ``UPDATE … RETURNING``: any node's
  workers process any node's accepted mail, and two workers never claim the same entry. A claim is a
  **lease**: ``claimed_until`` (the database's clock) is renewed by a heartbeat of this store while the
  process lives; an entry whose lease ran out (its node died or hung) is claimable again by any node,
  with ``interrupted + 1`` (not another attempt: its node stopped or died around it), so a message that
  kills every node that touches it is still quarantined once that passes ``max_attempts``. ``spool_recover(owner)`` releases one owner's claims (a worker process that died);
  ``spool_recover(None)`` — called at start — releases only EXPIRED leases: the other nodes' live claims
  are theirs.
* **Idempotency across nodes** (the same Message-ID reaching two nodes, a lease taken over from a slow
  node): :mod:`gateway.store.postgres_deliver` serialises deliveries sharing a key with transaction-level
  advisory locks, then decides exactly as SQLite does. Deadlocks and serialisation failures between
  batches of different nodes are retried (the transaction is a pure function of the database state).
* **Ticket numbers** come from a sequence (the tickets' identity column).
* **Run-once jobs** (retention, SLA): :meth:`lease` — a row per job in ``leases``, taken when free or
  expired, renewed by its holder.
* **Durability**: a commit returns after PostgreSQL flushed its WAL (``synchronous_commit`` on, the
  default; with synchronous standbys, after they have it too), so "no 250 before the commit" holds.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import socket
import time
import uuid
from typing import Any, AsyncIterator, Awaitable, Callable, TypeVar

import asyncpg

from gateway.store import base
from gateway.store.base import (PROCESSING, QUARANTINED, QUEUED, SUPPRESSED, ArticleDraft, Delivery, DeliveryResult, SpoolEntry,
                   Store, TicketPage, TicketQuery, body_file_chunks, chunk_count)
from gateway.store.base import ingress_keys
from gateway.store.search import index_text, pg_tsquery
from gateway.store.crypto import Cipher
from gateway.store.pg_migrations import load_migrations
from gateway.store.pg_sync import PgSyncConnection, numbered_placeholders, run_sync
from gateway.store.postgres_deliver import PgDeliverTx, delivery_lock_keys, take_locks
from gateway.store.render import article_dict, iso, spool_from_row, ticket_dict
from gateway.webhooks.outbox import on_delivered as webhook_events
from gateway.webhooks.outbox import article_added as webhook_article
from gateway.webhooks.outbox import rotate_outbox

log = logging.getLogger(__name__)

MIGRATION_LOCK = 0x7469636B65746D78  # "ticketmx": one node migrates at a time
DB_NOW = "extract(epoch FROM clock_timestamp())::float8"
T = TypeVar("T")
RETRYABLE = (asyncpg.DeadlockDetectedError, asyncpg.SerializationError, asyncpg.UniqueViolationError)


class PostgresStore(Store):
    dialect = "postgresql"  # for code that must say a few things differently (gateway/store/relay_queue.py)

    def __init__(self, url: str, ticket_prefix: str = "HD-", ticket_start: int = 1000,
                 cipher: Cipher | None = None, pool_min: int = 1, pool_max: int = 10,
                 claim_lease: float = 60.0, claim_max_hold: float = 900.0) -> None:
        self.url = url
        self.cipher = cipher or Cipher()
        self.ticket_prefix = ticket_prefix
        self.ticket_start = ticket_start
        self.pool_min = pool_min
        self.pool_max = max(pool_max, pool_min, 1)
        self.claim_lease = float(claim_lease)
        self.claim_max_hold = float(claim_max_hold)  # stop renewing a claim held this long (a stuck batch)
        # Claims made with an empty owner (the in-process worker) need a name unique across nodes.
        self.node_owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._pool: asyncpg.Pool | None = None
        self._claimed: dict[str, tuple[str, float]] = {}  # spool id -> (owner, monotonic claim time)
        self._heartbeat: asyncio.Task[None] | None = None

    # -- lifecycle -------------------------------------------------------------
    async def open(self) -> None:
        self._pool = await asyncpg.create_pool(
            self.url, min_size=min(self.pool_min, self.pool_max), max_size=self.pool_max,
            server_settings={"application_name": "ticketmx", "jit": "off"})
        try:
            async with self._pool.acquire() as conn:
                await self._migrate(conn)
        except BaseException:
            await self._pool.close()
            self._pool = None
            raise
        self._heartbeat = asyncio.get_running_loop().create_task(self._renew_claims(), name="pg-claim-heartbeat")

    async def close(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            try:
                await self._heartbeat
            except (asyncio.CancelledError, Exception):
                pass
            self._heartbeat = None
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    @property
    def pool(self) -> asyncpg.Pool:
        assert self._pool is not None, "store not open"
        return self._pool

    # -- the synchronous face (relay queue, notifications, SLA: gateway/store/relay_queue.py) ---------------------
    async def run_sync(self, conn: asyncpg.Connection, fn: Callable[..., T], *args: Any) -> T:
        """``fn(sync_conn, *args)``, its statements on ``conn`` (in the caller's transaction) through
        :class:`PgSyncConnection` (:mod:`gateway.store.pg_sync`)."""
        sync = PgSyncConnection(conn)
        sync.cipher = self.cipher  # what runs inside encrypts with the store's key (see gateway.store.relay_queue)
        sync.webhooks = self.webhooks
        return await run_sync(fn, sync, *args)

    async def transaction(self, fn: Callable[[Any], T], durable: bool = True) -> T:
        """``fn(conn)`` as one transaction, ``conn`` shaped like ``sqlite3.Connection`` (see
        :mod:`gateway.store.pg_sync`); the SqliteStore method of the same name, for the code written
        against it. Rolled back whole and run again on a deadlock or a lost race (up to 5 times).
        ``durable`` is accepted for the same signature: every PostgreSQL commit is durable."""
        return await self._retrying("transaction", lambda conn: self.run_sync(conn, fn))

    async def _retrying(self, what: str, body: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        """``body(conn)`` in one transaction; rolled back whole and run again (up to 5 times) when it
        meets a deadlock, a serialisation failure or a unique violation: two nodes' batches crossed
        (row locks on the same tickets) or raced on a key, and deciding again on the new state is safe."""
        attempt = 0
        while True:
            attempt += 1
            try:
                async with self.pool.acquire() as conn:
                    async with conn.transaction():
                        return await body(conn)
            except RETRYABLE as exc:
                if attempt >= 5:
                    raise
                log.info("%s: %s, retrying (attempt %d)", what, type(exc).__name__, attempt + 1)
                await asyncio.sleep(random.uniform(0.005, 0.05) * attempt)

    async def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[asyncpg.Record]:
        """A read with ``?`` placeholders (as SqliteStore.query): records indexable by position and name."""
        return list(await self.pool.fetch(numbered_placeholders(sql), *params))

    async def _migrate(self, conn: asyncpg.Connection) -> None:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)  # nodes starting together
            await conn.execute("CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY,"
                               " name TEXT NOT NULL, applied_at DOUBLE PRECISION NOT NULL)")
            applied = {r[0] for r in await conn.fetch("SELECT version FROM schema_migrations")}
            for version, name, sql in load_migrations():
                if version not in applied:
                    await conn.execute(sql)
                    await conn.execute(f"INSERT INTO schema_migrations (version, name, applied_at)"
                                       f" VALUES ($1, $2, {DB_NOW})", version, name)
                    log.info("store: applied PostgreSQL migration %s", name)

    async def schema_versions(self) -> list[int]:
        return [r[0] for r in await self.pool.fetch("SELECT version FROM schema_migrations ORDER BY version")]

    async def _renew_claims(self) -> None:
        """Heartbeat: keep the leases of the entries this process is working on.

        A claim held longer than ``claim_max_hold`` (a batch stuck, or claims orphaned by an error
        between claim and outcome) is no longer renewed: its lease runs out and any node retries it."""
        interval = max(0.2, self.claim_lease / 4)
        while True:
            await asyncio.sleep(interval)
            horizon = time.monotonic() - self.claim_max_hold
            live = {k: o for k, (o, at) in self._claimed.items() if at >= horizon}
            if not live:
                continue
            ids = list(live)
            owners = sorted(set(live.values()))
            try:
                await self.pool.execute(f"UPDATE spool SET claimed_until={DB_NOW} + $1 WHERE id = ANY($2::text[])"
                                        " AND state=$3 AND claimed_by = ANY($4::text[])",
                                        self.claim_lease, ids, PROCESSING, owners)
            except Exception:
                log.warning("could not renew spool claim leases", exc_info=True)

    # -- spool -----------------------------------------------------------------
    async def spool_insert(self, entries: list[SpoolEntry]) -> None:
        if not entries:
            return
        enc = self.cipher.enc_bytes
        rows = [(e.id, e.received_at, e.mail_from, json.dumps(list(e.rcpt_tos)), json.dumps(list(e.mailboxes)),
                 e.peer_ip, e.helo, json.dumps(e.tls) if e.tls else None, e.message_id, e.size,
                 enc(e.raw), e.auth_header, json.dumps(e.auth) if e.auth is not None else None,
                 json.dumps(list(e.flags)), chunk_count(e)) for e in entries]
        cols = list(zip(*rows))
        async with self.pool.acquire() as conn:
            async with conn.transaction():
                # One statement, one round trip for the group's rows, one commit (= one WAL flush).
                await conn.execute(
                    "INSERT INTO spool (id, received_at, mail_from, rcpt_tos, mailboxes, peer_ip, helo, tls,"
                    " message_id, size, raw, auth_header, auth, flags, chunks) SELECT * FROM unnest($1::text[],"
                    " $2::float8[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[],"
                    " $9::text[], $10::bigint[], $11::bytea[], $12::text[], $13::text[], $14::text[],"
                    " $15::int[])", *[list(c) for c in cols])
                for e in entries:
                    if e.body is not None:  # a large message: its body from the file, one chunk at a time
                        for i, chunk in enumerate(body_file_chunks(e)):
                            await conn.execute("INSERT INTO spool_chunks (spool_id, seq, data) VALUES ($1, $2, $3)",
                                               e.id, i, enc(chunk))
                keys, pulled, refused = ingress_keys(entries)
                if keys:  # a repeated HTTP post: the primary key refuses it, with the whole transaction
                    await conn.executemany("INSERT INTO inbound_keys (key, spool_id, created_at) VALUES ($1, $2, $3)",
                                           keys)
                if pulled:  # a pulled message seen again: likewise (gateway/ingress/sources/manager.py)
                    await conn.executemany("INSERT INTO source_messages (source, key, spool_id, digest, created_at)"
                                           " VALUES ($1, $2, $3, $4, $5)", pulled)
                if refused:
                    await conn.executemany("UPDATE spool SET state=$1, reason=$2, finished_at=$3 WHERE id=$4", refused)

    async def inbound_lookup(self, key: str) -> str | None:
        return await self.pool.fetchval("SELECT spool_id FROM inbound_keys WHERE key=$1", key)

    async def spool_body_chunks(self, entry: SpoolEntry) -> AsyncIterator[bytes]:
        for seq in range(entry.chunks):
            data = await self.pool.fetchval("SELECT data FROM spool_chunks WHERE spool_id=$1 AND seq=$2",
                                            entry.id, seq)
            if data is None:
                raise LookupError(f"spool {entry.id}: chunk {seq} of {entry.chunks} is missing")
            yield self.cipher.dec_bytes(bytes(data))

    async def spool_recover(self, owner: str | None = None, refund: bool = False) -> int:
        back = ", attempts=GREATEST(attempts-1, 0)" if refund else ""
        if owner is None:
            # At start: never touch live claims of the other nodes — only leases that ran out.
            # An interruption (the node holding it stopped or died), not a crash of its own worker.
            sql = ("UPDATE spool SET state=$1, claimed_by='', claimed_until=0, attempts=GREATEST(attempts-1, 0),"
                   f" interrupted=interrupted+1 WHERE state=$2 AND claimed_until < {DB_NOW}")
            status = await self.pool.execute(sql, QUEUED, PROCESSING)
        else:
            status = await self.pool.execute(f"UPDATE spool SET state=$1, claimed_by='', claimed_until=0{back}"
                                             " WHERE state=$2 AND claimed_by=$3", QUEUED, PROCESSING, owner)
            for sid in [k for k, (o, _at) in self._claimed.items() if o == owner]:
                del self._claimed[sid]
        return _count(status)

    async def spool_release(self, ids: tuple[str, ...] | list[str], owner: str, refund: bool = True) -> int:
        owner = owner or self.node_owner
        back = ", attempts=GREATEST(attempts-1, 0)" if refund else ""
        status = await self.pool.execute(f"UPDATE spool SET state=$1, claimed_by='', claimed_until=0{back}"
                                         " WHERE state=$2 AND claimed_by=$3 AND id = ANY($4::text[])",
                                         QUEUED, PROCESSING, owner, list(ids))
        for sid in ids:
            self._claimed.pop(sid, None)
        return _count(status)

    async def spool_claim(self, limit: int, now: float, owner: str = "") -> list[SpoolEntry]:
        owner = owner or self.node_owner
        rows = await self.pool.fetch(
            "WITH c AS (SELECT id FROM spool WHERE state IN ('queued', 'processing')"
            f" AND ((state='queued' AND next_attempt_at<=$1) OR (state='processing' AND claimed_until < {DB_NOW}))"
            " ORDER BY received_at, id LIMIT $2 FOR UPDATE SKIP LOCKED)"
            # A lease taken over (its node stopped or died) is an interruption, not another attempt.
            " UPDATE spool s SET state='processing',"
            " attempts=s.attempts + CASE WHEN s.state='processing' THEN 0 ELSE 1 END,"
            " interrupted=s.interrupted + CASE WHEN s.state='processing' THEN 1 ELSE 0 END, claimed_by=$3,"
            f" claimed_until={DB_NOW} + $4 FROM c WHERE s.id=c.id RETURNING s.*",
            now, limit, owner, self.claim_lease)
        entries = sorted((spool_from_row(r, self.cipher) for r in rows), key=lambda e: (e.received_at, e.id))
        at = time.monotonic()
        for e in entries:
            self._claimed[e.id] = (owner, at)
        return entries

    async def spool_retry(self, spool_id: str, error: str, next_attempt_at: float) -> None:
        claim = self._claimed.pop(spool_id, None)
        if claim is None:
            await self.pool.execute("UPDATE spool SET state=$1, last_error=$2, next_attempt_at=$3, claimed_by='',"
                                    " claimed_until=0 WHERE id=$4 AND state=$5",
                                    QUEUED, error, next_attempt_at, spool_id, PROCESSING)
        else:  # only while the claim is still ours (not taken over after our lease ran out)
            await self.pool.execute("UPDATE spool SET state=$1, last_error=$2, next_attempt_at=$3, claimed_by='',"
                                    " claimed_until=0 WHERE id=$4 AND state=$5 AND claimed_by=$6",
                                    QUEUED, error, next_attempt_at, spool_id, PROCESSING, claim[0])

    async def spool_get(self, spool_id: str) -> SpoolEntry | None:
        row = await self.pool.fetchrow("SELECT * FROM spool WHERE id=$1", spool_id)
        return spool_from_row(row, self.cipher) if row is not None else None

    async def spool_get_many(self, ids: list[str]) -> list[SpoolEntry]:
        """One query for a page of entries (``spool_find``, the HTTP API's lists), in the order of ``ids``."""
        if not ids:
            return []
        by_id = {r["id"]: r for r in await self.pool.fetch("SELECT * FROM spool WHERE id = ANY($1::text[])",
                                                          list(ids))}
        return [spool_from_row(by_id[i], self.cipher) for i in ids if i in by_id]

    async def spool_list(self, state: str | None = None, limit: int | None = None) -> list[SpoolEntry]:
        sql = "SELECT * FROM spool"
        params: list[Any] = []
        if state:
            params.append(state)
            sql += " WHERE state=$1"
        sql += " ORDER BY received_at, id"
        if limit is not None:
            params.append(limit)
            sql += f" LIMIT ${len(params)}"
        return [spool_from_row(r, self.cipher) for r in await self.pool.fetch(sql, *params)]

    async def spool_replay(self, spool_id: str, also: Callable[[Any], None] | None = None) -> bool:
        async with self.pool.acquire() as conn:
            async with conn.transaction():
                done = _count(await conn.execute(
                    "UPDATE spool SET state=$1, attempts=0, interrupted=0, next_attempt_at=0, reason='',"
                    " finished_at=NULL WHERE id=$2 AND state NOT IN ($3, $4)", QUEUED, spool_id, QUEUED,
                    PROCESSING)) == 1
                if done and also is not None:
                    await self.run_sync(conn, also)
                return done

    async def spool_replay_quarantined(self) -> list[str]:
        rows = await self.pool.fetch(
            "UPDATE spool SET state=$1, attempts=0, interrupted=0, next_attempt_at=0, reason='', finished_at=NULL"
            " WHERE state=$2 AND (chunks > 0 OR octet_length(raw) > 0)"  # not those whose raw was deleted
            " RETURNING id, received_at", QUEUED, QUARANTINED)
        return [r["id"] for r in sorted(rows, key=lambda r: (r["received_at"], r["id"]))]

    async def spool_release_held(self, spool_id: str, release: dict[str, Any], actor: str,
                                 detail: dict[str, Any], also: Callable[[Any], None] | None = None) -> bool:
        async with self.pool.acquire() as conn:
            async with conn.transaction():
                done = _count(await conn.execute(
                    "UPDATE spool SET state=$1, attempts=0, interrupted=0, next_attempt_at=0, reason='',"
                    " finished_at=NULL, released=$2 WHERE id=$3 AND state=$4 AND (chunks > 0 OR octet_length(raw) > 0)",
                    QUEUED, json.dumps(release), spool_id, QUARANTINED)) == 1
                if done:
                    await _audit(conn, spool_id, release["at"], actor, "released", detail)
                    if also is not None:
                        await self.run_sync(conn, also)
                return done

    async def spool_delete_raw(self, spool_id: str, actor: str, detail: dict[str, Any],
                               also: Callable[[Any], None] | None = None) -> bool:
        async with self.pool.acquire() as conn:
            async with conn.transaction():
                row = await conn.fetchrow("SELECT state, chunks, octet_length(raw) AS n FROM spool WHERE id=$1"
                                          " FOR UPDATE", spool_id)
                if row is None or row["state"] not in (QUARANTINED, SUPPRESSED) or not (row["chunks"] or row["n"]):
                    return False
                await conn.execute("DELETE FROM spool_chunks WHERE spool_id=$1", spool_id)
                await conn.execute("UPDATE spool SET raw=''::bytea, chunks=0, released='' WHERE id=$1", spool_id)
                await _audit(conn, spool_id, time.time(), actor, "deleted", detail)
                if also is not None:
                    await self.run_sync(conn, also)
                return True

    async def spool_audit(self, spool_id: str) -> list[dict[str, Any]]:
        return [{"at": iso(r["at"]), "actor": r["actor"], "action": r["action"], "detail": json.loads(r["detail"])}
                for r in await self.pool.fetch("SELECT * FROM spool_audit WHERE spool_id=$1 ORDER BY id", spool_id)]

    async def spool_counts(self) -> dict[str, int]:
        counts = {s: 0 for s in base.ALL_STATES}
        for row in await self.pool.fetch("SELECT state, COUNT(*) FROM spool GROUP BY state"):
            counts[row[0]] = row[1]
        return counts

    # -- delivery (the one transaction that ends a message's life) --------------
    async def deliver(self, deliveries: list[Delivery], now: float,
                      on_delivered: Any = None) -> list[DeliveryResult]:
        """One transaction for the batch (see the module doc); ``on_delivered`` as in :class:`Store`.

        The hook runs inside the transaction: ``hook.postgres`` — ``async (asyncpg_conn, d, r)`` — when
        it has one, else the synchronous hook written for sqlite3 (``hook(conn, d, r)``: the
        notification hook, queuing acknowledgements) through :meth:`run_sync`, so a notification
        commits with its ticket change or not at all, as on SQLite."""
        hook = None
        if on_delivered is not None:
            hook = getattr(on_delivered, "postgres", None)
            if hook is None:  # a synchronous hook written for sqlite3 (NotifyHook): through the bridge
                async def hook(conn: asyncpg.Connection, d: Delivery, r: DeliveryResult) -> None:
                    await self.run_sync(conn, on_delivered, d, r)
        keys = delivery_lock_keys(deliveries)

        async def body(conn: asyncpg.Connection) -> list[DeliveryResult]:
            await take_locks(conn, keys)
            tx = PgDeliverTx(conn, now, self.ticket_prefix, self.ticket_start, self.cipher, self.webhooks)
            results = []
            for d in deliveries:
                r = await tx.run(d)
                if self.webhooks:  # events for the [[webhook]]s, committed with the change
                    await tx.flush()  # a quarantine event reads the spool row
                    await self.run_sync(conn, webhook_events, d, r, now)
                if hook is not None:
                    await tx.flush()  # the hook sees the spool entry ended
                    await hook(conn, d, r)
                results.append(r)
            await tx.flush()
            return results
        results = await self._retrying("deliver", body)
        for d in deliveries:
            self._claimed.pop(d.spool_id, None)
        return results

    # -- tickets ---------------------------------------------------------------
    # every column but the full-text vector (large, and only for the WHERE of a search)
    _TICKET_SQL = ("SELECT t.id, t.number, t.subject, t.queue, t.mailbox, t.status, t.flags, t.priority, t.category,"
                   " t.assignee, t.tags, t.fields, t.linked_ticket_id, t.created_at, t.updated_at, t.closed_at,"
                   " t.requester_id, t.subject_key, t.first_response_at,"
                   " c.email AS requester, c.name AS requester_name FROM tickets t"
                   " JOIN contacts c ON c.id=t.requester_id")

    async def tickets_list(self, limit: int | None = None, query: TicketQuery | None = None
                           ) -> list[dict[str, Any]]:
        q = query or TicketQuery(limit=limit)
        where, params = q.sql()
        return [ticket_dict(r, self.cipher) for r in await self.query(self._TICKET_SQL + where, params)]

    async def ticket_get(self, ref: str) -> dict[str, Any] | None:
        async with self.pool.acquire() as conn:
            # One snapshot for the ticket and all its parts (other nodes keep writing meanwhile).
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                if ref.isdigit():
                    if int(ref) >= 2**63:
                        return None
                    row = await conn.fetchrow(self._TICKET_SQL + " WHERE t.id=$1", int(ref))
                else:
                    row = await conn.fetchrow(self._TICKET_SQL + " WHERE t.number=$1", ref)
                if row is None:
                    return None
                ticket = ticket_dict(row, self.cipher)
                tid = ticket["id"]
                arts = await conn.fetch("SELECT * FROM articles WHERE ticket_id=$1 ORDER BY id", tid)
                atts = await conn.fetch("SELECT at.* FROM attachments at JOIN articles a ON a.id=at.article_id"
                                        " WHERE a.ticket_id=$1 ORDER BY at.id", tid)
                stripped = await conn.fetch("SELECT s.* FROM stripped_attachments s JOIN articles a"
                                            " ON a.id=s.article_id WHERE a.ticket_id=$1 ORDER BY s.id", tid)
                auth = await conn.fetch("SELECT s.id, s.auth_header, s.auth FROM spool s JOIN articles a"
                                        " ON a.spool_id=s.id WHERE a.ticket_id=$1", tid)
                parts = await conn.fetch("SELECT c.email, c.name, c.undeliverable, p.role FROM participants p"
                                         " JOIN contacts c ON c.id=p.contact_id WHERE p.ticket_id=$1"
                                         ' ORDER BY p.role COLLATE "C" DESC, c.email COLLATE "C"', tid)
                hist = await conn.fetch("SELECT * FROM ticket_history WHERE ticket_id=$1 ORDER BY id", tid)
        by_spool = {r["id"]: r for r in auth}
        ticket["articles"] = [article_dict(a, [x for x in atts if x["article_id"] == a["id"]],
                                           [x for x in stripped if x["article_id"] == a["id"]],
                                           by_spool.get(a["spool_id"]), self.cipher) for a in arts]
        ticket["participants"] = [
            {"email": r["email"], "name": r["name"], "role": r["role"], "undeliverable": bool(r["undeliverable"])}
            for r in parts]
        ticket["history"] = [
            {"at": iso(r["at"]), "actor": r["actor"], "action": r["action"], "detail": json.loads(r["detail"])}
            for r in hist]
        return ticket

    async def tickets_page(self, page: TicketPage) -> tuple[list[dict[str, Any]], int | None]:
        where, params = page.filters()
        if page.text:
            tsq = pg_tsquery(self.cipher, page.text)
            if tsq is None:
                return [], None
            where.append(f"t.search @@ {tsq[0]}('simple', ?)")
            params.append(tsq[1])
        sql = self._TICKET_SQL + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY t.id DESC LIMIT ?"
        if page.text:
            # Planned for this query's words: asyncpg's prepared statement would switch to a generic plan
            # after five runs, and a plan that cannot know how rare the words are walks the primary key
            # (tens of ms for a rare word) where the GIN index answers in one.
            async with self.pool.acquire() as conn:
                async with conn.transaction(readonly=True):
                    await conn.execute("SET LOCAL plan_cache_mode = force_custom_plan")
                    rows = await conn.fetch(numbered_placeholders(sql), *params, page.limit + 1)
        else:
            rows = await self.query(sql, (*params, page.limit + 1))
        items = [ticket_dict(r, self.cipher) for r in rows[:page.limit]]
        return items, (items[-1]["id"] if len(rows) > page.limit else None)

    async def ticket_update(self, ticket_id: int, updates: dict[str, Any], actor: str, now: float,
                            hook: Any = None) -> dict[str, Any] | None:
        async def fields(conn: asyncpg.Connection) -> dict[str, Any] | None:
            row = await conn.fetchrow("SELECT status, priority, assignee, queue, category, tags FROM tickets"
                                      " WHERE id=$1", ticket_id)
            if row is None:
                return None
            got = dict(row)
            got["tags"] = json.loads(got["tags"])
            return {k: got[k] for k in updates if k in got}

        async def body(conn: asyncpg.Connection) -> dict[str, Any] | None:
            if await conn.fetchval("SELECT 1 FROM tickets WHERE id=$1 FOR UPDATE", ticket_id) is None:
                return None  # (the row lock: two nodes' changes of one ticket one after the other)
            old = await fields(conn)
            tx = PgDeliverTx(conn, now, self.ticket_prefix, self.ticket_start, self.cipher, self.webhooks)
            await tx.apply_updates(ticket_id, actor, updates, replace_tags=True, previous=old)  # + ticket.updated
            await conn.execute("UPDATE tickets SET updated_at=$1 WHERE id=$2", now, ticket_id)
            if hook is not None:
                await self.run_sync(conn, hook, ticket_id)
            return {"old": old, "new": await fields(conn)}
        return await self._retrying("ticket_update", body)

    async def ticket_add_article(self, ticket_id: int, article: ArticleDraft, actor: str, now: float,
                                 agent_reply: bool = False, hook: Any = None) -> int | None:
        async def body(conn: asyncpg.Connection) -> int | None:
            if await conn.fetchval("SELECT 1 FROM tickets WHERE id=$1 FOR UPDATE", ticket_id) is None:
                return None
            tx = PgDeliverTx(conn, now, self.ticket_prefix, self.ticket_start, self.cipher)
            article_id = await tx.article(ticket_id, None, article)
            await conn.execute("UPDATE tickets SET updated_at=$1, first_response_at=CASE WHEN $3"
                               " THEN COALESCE(first_response_at, $1) ELSE first_response_at END WHERE id=$2",
                               now, ticket_id, agent_reply)
            await tx.history(ticket_id, actor, "article_added" if agent_reply else "note_added",
                             {"article_id": article_id, "visibility": article.visibility, "via": "api"})
            if hook is not None:
                await self.run_sync(conn, hook, ticket_id, article_id)
            if self.webhooks:  # after the hook: it may hold the reply as a note
                await self.run_sync(conn, webhook_article, ticket_id, article_id, article, actor, now)
            return article_id
        return await self._retrying("ticket_add_article", body)

    async def attachment_get(self, attachment_id: int) -> tuple[dict[str, Any], bytes] | None:
        if attachment_id >= 2**63:
            return None
        r = await self.pool.fetchrow("SELECT x.id, x.filename, x.content_type, x.size, x.sha256, a.ticket_id,"
                                     " t.queue, b.data FROM attachments x JOIN articles a ON a.id=x.article_id"
                                     " JOIN tickets t ON t.id=a.ticket_id JOIN blobs b ON b.sha256=x.sha256"
                                     " WHERE x.id=$1", attachment_id)
        if r is None:
            return None
        meta = {"id": r["id"], "filename": self.cipher.dec_text(r["filename"]), "content_type": r["content_type"],
                "size": r["size"], "sha256": r["sha256"], "ticket_id": r["ticket_id"], "queue": r["queue"]}
        return meta, self.cipher.dec_bytes(bytes(r["data"]))

    async def contact_get(self, email: str) -> dict[str, Any] | None:
        r = await self.pool.fetchrow("SELECT * FROM contacts WHERE email=$1", email)
        if r is None:
            return None
        return {"email": r["email"], "name": r["name"], "undeliverable": bool(r["undeliverable"]),
                "undeliverable_reason": r["undeliverable_reason"]}

    async def control_get(self, key: str) -> str | None:
        return await self.pool.fetchval("SELECT value FROM control WHERE key=$1", key)

    async def control_set(self, key: str, value: str | None) -> None:
        if value is None:
            await self.pool.execute("DELETE FROM control WHERE key=$1", key)
        else:
            await self.pool.execute("INSERT INTO control (key, value, updated_at) VALUES ($1,$2,$3)"
                                    " ON CONFLICT (key) DO UPDATE SET value=excluded.value,"
                                    " updated_at=excluded.updated_at", key, value, time.time())

    # -- run once across nodes ---------------------------------------------------
    async def lease(self, name: str, owner: str, ttl: float) -> bool:
        """Take (or renew) the job ``name`` for ``owner`` for ``ttl`` seconds; False while another owner
        holds an unexpired lease. A holder that keeps calling before ``ttl`` runs out keeps the job."""
        got = await self.pool.fetchval(
            f"INSERT INTO leases (name, owner, acquired_at, expires_at) VALUES ($1, $2, {DB_NOW}, {DB_NOW} + $3)"
            " ON CONFLICT (name) DO UPDATE SET owner=excluded.owner, expires_at=excluded.expires_at,"
            " acquired_at=CASE WHEN leases.owner=excluded.owner THEN leases.acquired_at ELSE excluded.acquired_at END"
            f" WHERE leases.owner=excluded.owner OR leases.expires_at < {DB_NOW} RETURNING owner",
            name, owner, float(ttl))
        return got is not None

    async def lease_release(self, name: str, owner: str) -> bool:
        """Give the job up now (clean shutdown) so another node need not wait for the lease to run out."""
        return _count(await self.pool.execute("DELETE FROM leases WHERE name=$1 AND owner=$2", name, owner)) == 1

    # -- retention, keys ---------------------------------------------------------
    async def purge(self, now: float, raw_days: float, quarantine_days: float,
                    closed_ticket_days: float, relay_days: float = 0.0,
                    audit_days: float = 0.0) -> dict[str, int]:
        day = 86400.0
        out = {"raw": 0, "quarantined": 0, "tickets": 0}
        async with self.pool.acquire() as conn:
            async with conn.transaction():
                if audit_days > 0:  # the who-did-what history: kept for as long as the operator's policy says
                    out["audit"] = _count(await conn.execute("DELETE FROM audit_log WHERE at < $1",
                                                             now - audit_days * day))
                if relay_days > 0:  # the Message-IDs stay in message_ids: replies to old mail still thread
                    done = "state IN ('sent','dead') AND finished_at < $1"
                    await conn.execute(f"DELETE FROM relay_recipients WHERE notification_id IN (SELECT id FROM"
                                       f" relay_queue WHERE {done})", now - relay_days * day)
                    out["relay"] = _count(await conn.execute(f"DELETE FROM relay_queue WHERE {done}",
                                                             now - relay_days * day))
                    out["webhooks"] = _count(await conn.execute(  # finished webhook events, likewise
                        "DELETE FROM webhook_outbox WHERE state IN ('delivered','dead') AND finished_at < $1",
                        now - relay_days * day))
                if raw_days > 0:
                    done = ("state IN ('ticket_created','article_added','suppressed') AND finished_at < $1"
                            " AND (octet_length(raw) > 0 OR chunks > 0)")
                    await conn.execute(f"DELETE FROM spool_chunks WHERE spool_id IN (SELECT id FROM spool WHERE"
                                       f" {done})", now - raw_days * day)
                    out["raw"] = _count(await conn.execute(f"UPDATE spool SET raw=''::bytea, chunks=0 WHERE {done}",
                                                           now - raw_days * day))
                if quarantine_days > 0:
                    out["quarantined"] = _count(await conn.execute(
                        "DELETE FROM spool WHERE state='quarantined' AND received_at < $1",
                        now - quarantine_days * day))
                if closed_ticket_days > 0:
                    ids = [r[0] for r in await conn.fetch(
                        "SELECT id FROM tickets WHERE status='closed' AND closed_at < $1 ORDER BY id FOR UPDATE",
                        now - closed_ticket_days * day)]
                    if ids:
                        arts = "(SELECT id FROM articles WHERE ticket_id = ANY($1::bigint[]))"
                        await conn.execute(f"DELETE FROM attachments WHERE article_id IN {arts}", ids)
                        await conn.execute(f"DELETE FROM stripped_attachments WHERE article_id IN {arts}", ids)
                        for table in ("message_ids", "participants", "ticket_history", "articles"):
                            await conn.execute(f"DELETE FROM {table} WHERE ticket_id = ANY($1::bigint[])", ids)
                        await conn.execute("UPDATE tickets SET linked_ticket_id=NULL"
                                           " WHERE linked_ticket_id = ANY($1::bigint[])", ids)
                        await conn.execute("DELETE FROM spool_chunks WHERE spool_id IN (SELECT id FROM spool"
                                           " WHERE ticket_id = ANY($1::bigint[]))", ids)
                        await conn.execute("UPDATE spool SET ticket_id=NULL, article_id=NULL, raw=''::bytea,"
                                           " chunks=0 WHERE ticket_id = ANY($1::bigint[])", ids)
                        await conn.execute("DELETE FROM tickets WHERE id = ANY($1::bigint[])", ids)
                        await conn.execute("DELETE FROM blobs b WHERE NOT EXISTS"
                                           " (SELECT 1 FROM attachments a WHERE a.sha256=b.sha256)")
                    out["tickets"] = len(ids)
        return out

    async def blob_get(self, sha256: str) -> bytes | None:
        data = await self.pool.fetchval("SELECT data FROM blobs WHERE sha256=$1", sha256)
        return self.cipher.dec_bytes(bytes(data)) if data is not None else None

    async def rotate_key(self) -> dict[str, int]:
        """Re-encrypt every stored value with the first key (encrypts plaintext rows too), in one transaction."""
        c = self.cipher
        out = {"spool": 0, "articles": 0, "blobs": 0}
        async with self.pool.acquire() as conn:
            async with conn.transaction():
                async for r in conn.cursor("SELECT id, raw FROM spool ORDER BY id FOR UPDATE", prefetch=200):
                    await conn.execute("UPDATE spool SET raw=$1 WHERE id=$2", c.rotate_bytes(bytes(r[1])), r[0])
                    out["spool"] += 1
                async for r in conn.cursor("SELECT spool_id, seq, data FROM spool_chunks ORDER BY spool_id, seq"
                                           " FOR UPDATE", prefetch=4):
                    await conn.execute("UPDATE spool_chunks SET data=$1 WHERE spool_id=$2 AND seq=$3",
                                       c.rotate_bytes(bytes(r[2])), r[0], r[1])
                # the full-text index again: hashed words under the new first key (plaintext rows too)
                await conn.execute("UPDATE tickets SET search=''::tsvector WHERE search <> ''::tsvector")
                async for r in conn.cursor("SELECT id, body_text, body_html, new_text, subject, ticket_id FROM articles"
                                           " ORDER BY id FOR UPDATE", prefetch=200):
                    await conn.execute("UPDATE articles SET body_text=$1, body_html=$2, new_text=$3, subject=$4"
                                       " WHERE id=$5", c.rotate_text(r[1]), c.rotate_text(r[2]), c.rotate_text(r[3]),
                                       c.rotate_text(r[4]), r[0])
                    await conn.execute("UPDATE tickets SET search = strip(search || to_tsvector('simple', $1))"
                                       " WHERE id=$2", index_text(c, c.dec_text(r[4])) + " " +
                                       index_text(c, c.dec_text(r[1])), r[5])
                    out["articles"] += 1
                async for r in conn.cursor("SELECT id, subject, subject_key FROM tickets ORDER BY id FOR UPDATE",
                                           prefetch=500):
                    await conn.execute("UPDATE tickets SET subject=$1, subject_key=$2 WHERE id=$3",
                                       c.rotate_text(r[1]), c.rotate_match_key(r[2]), r[0])
                for table in ("attachments", "stripped_attachments"):
                    for r in await conn.fetch(f"SELECT id, filename FROM {table} ORDER BY id FOR UPDATE"):
                        await conn.execute(f"UPDATE {table} SET filename=$1 WHERE id=$2", c.rotate_text(r[1]), r[0])
                from gateway.store.relay_queue import rotate_queue
                await self.run_sync(conn, lambda sync: rotate_queue(sync, c))
                await self.run_sync(conn, lambda sync: rotate_outbox(sync, c))
                async for r in conn.cursor("SELECT sha256, data FROM blobs ORDER BY sha256 FOR UPDATE",
                                           prefetch=50):
                    await conn.execute("UPDATE blobs SET data=$1 WHERE sha256=$2", c.rotate_bytes(bytes(r[1])), r[0])
                    out["blobs"] += 1
        return out


def _count(status: str) -> int:
    """Rows affected, from asyncpg's command tag (``UPDATE 3``, ``DELETE 0``, ``INSERT 0 1``)."""
    try:
        return int(status.rsplit(" ", 1)[1])
    except (IndexError, ValueError):
        return 0


def is_postgres_url(url: str) -> bool:
    return url.startswith(("postgresql://", "postgres://"))


def redact_url(url: str) -> str:
    """The URL without its password, for logs (``postgresql://ticketmx:***@db:5432/ticketmx``)."""
    from urllib.parse import urlsplit, urlunsplit
    if not is_postgres_url(url):
        return url
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


__all__ = ["PostgresStore", "is_postgres_url", "redact_url"]


async def _audit(conn: asyncpg.Connection, spool_id: str, at: float, actor: str, action: str,
                 detail: dict[str, Any]) -> None:
    await conn.execute("INSERT INTO spool_audit (spool_id, at, actor, action, detail) VALUES ($1,$2,$3,$4,$5)",
                       spool_id, at, actor, action, json.dumps(detail, ensure_ascii=False))
