"""PostgreSQL only: what several nodes sharing one database need — exclusive claims, leases that a dead
node's work is taken over by, idempotency across nodes, one ticket number sequence, run-once leases,
concurrent migrations. Each ``PostgresStore`` here is one node (its own connection pool)."""
from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

import pytest

pytest.importorskip("asyncpg", reason="asyncpg is not installed (pip install asyncpg): PostgreSQL tests skipped")

from gateway.store.base import Delivery  # noqa: E402
from gateway.store.migrations import load_migrations as sqlite_migrations  # noqa: E402
from gateway.store.pg_migrations import load_migrations as pg_migrations  # noqa: E402
from gateway.store.postgres import PostgresStore  # noqa: E402

from .test_store_contract import T0, article, entry, ticket  # noqa: E402


@pytest.fixture
async def nodes(pg_url):
    opened: list[PostgresStore] = []

    async def make(n: int = 1, **kw) -> list[PostgresStore]:
        out = []
        for _ in range(n):
            s = PostgresStore(pg_url, pool_min=1, pool_max=kw.get("pool_max", 4),
                              claim_lease=kw.get("claim_lease", 60.0))
            await s.open()
            opened.append(s)
            out.append(s)
        return out

    yield make
    for s in opened:
        await s.close()


async def test_concurrent_open_migrates_once(pg_url):
    stores = [PostgresStore(pg_url, pool_max=2) for _ in range(4)]
    await asyncio.gather(*(s.open() for s in stores))
    try:
        versions = [v for v, _n, _s in pg_migrations()]
        for s in stores:
            assert await s.schema_versions() == versions
    finally:
        await asyncio.gather(*(s.close() for s in stores))


# SQLite storage details PostgreSQL does without, with the reason.
SQLITE_ONLY = {"spool_raw": "the message bytes out of the spool row (migration 0009); PostgreSQL stores a "
                            "large raw out of line (TOAST) and keeps it when other columns change",
               "ticket_search": "the FTS5 full-text index (migration 0015); PostgreSQL keeps a tsvector column "
                                "on tickets with a GIN index instead"}
# FTS5's own shadow tables of ticket_search
SQLITE_ONLY.update({f"ticket_search_{s}": "FTS5 shadow table" for s in ("data", "idx", "content", "docsize",
                                                                         "config")})


async def test_postgres_schema_has_every_sqlite_column(pg_url, tmp_path: Path):
    """Same tables and columns as SQLite after the migrations both have (PostgreSQL may have more)."""
    pg_versions = {v for v, _n, _sql in pg_migrations()}
    conn = sqlite3.connect(tmp_path / "schema.db")
    for version, sql in sqlite_migrations():
        if version in pg_versions:
            conn.executescript(sql)
    lite = {t: {r[1] for r in conn.execute(f"PRAGMA table_info({t})")}
            for (t,) in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    conn.close()
    s = PostgresStore(pg_url, pool_max=1)
    await s.open()
    try:
        rows = await s.pool.fetch("SELECT table_name, column_name FROM information_schema.columns"
                                  " WHERE table_schema = current_schema()")
    finally:
        await s.close()
    pg: dict[str, set[str]] = {}
    for r in rows:
        pg.setdefault(r[0], set()).add(r[1])
    for table, cols in lite.items():
        if table in SQLITE_ONLY:
            continue
        assert table in pg, f"table {table} missing in PostgreSQL"
        assert cols <= pg[table], f"{table}: columns missing in PostgreSQL: {sorted(cols - pg[table])}"


async def test_claims_from_many_nodes_are_exclusive(nodes):
    stores = await nodes(3)
    await stores[0].spool_insert([entry(f"s{i:03d}", received_at=T0 + i) for i in range(300)])

    async def worker(store: PostgresStore, owner: str) -> list[str]:
        got: list[str] = []
        while True:
            batch = await store.spool_claim(7, T0 + 1000, owner)
            if not batch:
                return got
            got += [e.id for e in batch]

    results = await asyncio.gather(*(worker(stores[i % 3], f"n{i}") for i in range(6)))
    claimed = [sid for r in results for sid in r]
    assert len(claimed) == len(set(claimed)) == 300


async def test_dead_nodes_claims_are_taken_over_after_the_lease(nodes):
    a, b = await nodes(2, claim_lease=1.0)
    await a.spool_insert([entry("s1"), entry("s2", received_at=T0 + 1)])
    assert len(await a.spool_claim(10, T0, "node-a:w0")) == 2
    assert await b.spool_claim(10, T0, "node-b:w0") == []     # a's lease is alive
    assert await b.spool_recover() == 0                      # start-up recovery leaves live leases alone
    await a.close()                                          # node a dies: no more heartbeats
    await asyncio.sleep(1.3)
    taken = await b.spool_claim(10, T0, "node-b:w0")
    assert [e.id for e in taken] == ["s1", "s2"]
    # the takeover counts as an interruption, not an attempt (the node died around the message); mail that
    # kills every node is still quarantined once that passes max_attempts (issue 25, item 7)
    assert all(e.attempts == 1 and e.interrupted == 1 for e in taken), [(e.attempts, e.interrupted) for e in taken]


async def test_heartbeat_keeps_a_live_nodes_claims(nodes):
    a, b = await nodes(2, claim_lease=0.6)
    await a.spool_insert([entry("s1")])
    assert len(await a.spool_claim(10, T0, "node-a:w0")) == 1
    await asyncio.sleep(1.5)  # well past the lease: renewed by a's heartbeat
    assert await b.spool_claim(10, T0, "node-b:w0") == []
    (r,) = await a.deliver([Delivery("s1", "suppress", reason="done")], T0)
    assert r.state == "suppressed"


async def test_late_retry_does_not_steal_a_taken_over_claim(nodes):
    a, b = await nodes(2, claim_lease=0.5)
    await a.spool_insert([entry("s1")])
    await a.spool_claim(1, T0, "node-a:w0")
    a.claim_max_hold = 0.0  # a is stuck: it stops renewing
    await asyncio.sleep(1.0)
    (e,) = await b.spool_claim(1, T0, "node-b:w0")
    await a.spool_retry("s1", "late error from a", T0)  # a wakes up: its claim is gone, nothing changes
    got = await b.spool_get("s1")
    assert got.state == "processing" and got.last_error == ""


async def test_same_message_id_on_two_nodes_at_once_is_one_ticket(nodes):
    """An upstream MTA retried after a timeout and reached the other MX: the same message was accepted
    twice; both nodes deliver it at the same moment. Repeated to give the race a chance."""
    a, b = await nodes(2)
    rounds = 40
    for i in range(rounds):
        mid = f"race-{i}@c.test"
        await a.spool_insert([entry(f"a{i}", mid, received_at=T0 + i)])
        await b.spool_insert([entry(f"b{i}", mid, received_at=T0 + i)])
        await a.spool_claim(1, T0 + i, "node-a:w0")
        await b.spool_claim(1, T0 + i, "node-b:w0")
        ra, rb = await asyncio.gather(a.deliver([ticket(f"a{i}", article(mid, subject=f"race {i}"))], T0 + i),
                                      b.deliver([ticket(f"b{i}", article(mid, subject=f"race {i}"))], T0 + i))
        states = sorted([ra[0].state, rb[0].state])
        assert states == ["suppressed", "ticket_created"], (i, ra, rb)
    tickets = await a.tickets_list()
    assert len(tickets) == rounds
    assert sorted(t["number"] for t in tickets) == sorted(f"HD-{1000 + i}" for i in range(rounds))


async def test_crossing_batches_on_two_nodes_do_not_lose_or_double(nodes):
    """Batches holding the same senders/tickets in opposite orders (deadlock-prone): all end once."""
    a, b = await nodes(2)
    await a.spool_insert([entry("o1", "o1@c.test"), entry("o2", "o2@c.test", sender="bob@customer.test")])
    await a.spool_claim(2, T0, "w")
    await a.deliver([ticket("o1", article("o1@c.test")),
                     ticket("o2", article("o2@c.test", sender="bob@customer.test"))], T0)
    from gateway.store.base import ThreadHints
    n = 30
    batch_a, batch_b = [], []
    for i in range(n):
        for prefix, batch in (("x", batch_a), ("y", batch_b)):
            sid = f"{prefix}{i}"
            sender = "alice@customer.test" if i % 2 == 0 else "bob@customer.test"
            ref = "o1@c.test" if i % 2 == 0 else "o2@c.test"
            await a.spool_insert([entry(sid, f"{sid}@c.test", received_at=T0 + 1, sender=sender)])
            batch.append(ticket(sid, article(f"{sid}@c.test", sender=sender), thread=ThreadHints(refs=(ref,))))
    await a.spool_claim(1000, T0 + 1, "w")
    ra, rb = await asyncio.gather(a.deliver(batch_a, T0 + 2), b.deliver(list(reversed(batch_b)), T0 + 2))
    assert all(r.state == "article_added" for r in ra + rb)
    assert len(await a.tickets_list()) == 2
    total = 0
    for t in await a.tickets_list():
        total += len((await a.ticket_get(t["number"]))["articles"])
    assert total == 2 + 2 * n


async def test_ticket_numbers_from_one_sequence_across_nodes(nodes):
    stores = await nodes(3)
    per = 20
    for k, s in enumerate(stores):
        await s.spool_insert([entry(f"n{k}-{i}", f"n{k}-{i}@c.test", received_at=T0 + i) for i in range(per)])
    await stores[0].spool_claim(1000, T0 + 100, "w")

    async def run(k: int) -> None:
        for i in range(per):
            await stores[k].deliver([ticket(f"n{k}-{i}", article(f"n{k}-{i}@c.test",
                                                                 sender=f"u{k}-{i}@customer.test"))], T0 + 100)

    await asyncio.gather(*(run(k) for k in range(3)))
    numbers = [t["number"] for t in await stores[0].tickets_list()]
    assert len(numbers) == len(set(numbers)) == 3 * per
    assert set(numbers) == {f"HD-{1000 + i}" for i in range(3 * per)}  # no rollbacks here: no gaps


async def test_run_once_lease(nodes):
    a, b = await nodes(2)
    assert await a.lease("retention", "node-a", 0.5)
    assert not await b.lease("retention", "node-b", 0.5)
    assert await a.lease("retention", "node-a", 0.5)          # renewal by the holder
    await asyncio.sleep(0.7)
    assert await b.lease("retention", "node-b", 60)           # expired: taken over
    assert not await a.lease("retention", "node-a", 60)
    assert await a.lease("sla", "node-a", 60)                 # another job, another lease
    assert not await a.lease_release("retention", "node-a")
    assert await b.lease_release("retention", "node-b")
    assert await a.lease("retention", "node-a", 60)


async def test_spool_insert_is_one_statement_and_durable_before_return(nodes):
    (a,) = await nodes(1)
    big = b"x" * (3 * 1024 * 1024)
    t0 = time.perf_counter()
    await a.spool_insert([entry(f"s{i}", raw=big if i == 0 else None, received_at=T0 + i) for i in range(50)])
    assert time.perf_counter() - t0 < 10
    b = PostgresStore(a.url, pool_max=1)  # another node sees it at once
    await b.open()
    try:
        assert (await b.spool_get("s0")).raw == big
        assert (await b.spool_counts())["queued"] == 50
    finally:
        await b.close()
