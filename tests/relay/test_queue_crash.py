"""Queue leases and recovery; a kill -9 of a sending process loses nothing."""
from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from gateway.store.sqlite import SqliteStore
from gateway.store.relay_queue import AttemptOutcome, RcptOutcome, RelayQueue, claim, record

from .conftest import host, relay_table, wait_for
from .helpers import enqueue_many, note, start_worker

ROOT = Path(__file__).resolve().parents[2]


async def test_lease_expiry_lets_another_worker_take_over(store):
    q = RelayQueue(store)
    (mid,) = await enqueue_many(store, [note()])
    now = time.time()
    (a,) = await q.claim("A", 10, now, lease=0.1)
    assert a.id == mid and a.attempts == 1 and a.pending == ("alice@customer.test",)
    assert await q.claim("B", 10, now + 0.05, lease=10) == []          # leased to A
    (b,) = await q.claim("B", 10, now + 0.2, lease=10)                  # A's lease expired
    assert b.attempts == 2
    # A comes back late: its recipient result is kept, but B owns the row's state
    state = await q.record([AttemptOutcome(mid, [RcptOutcome("alice@customer.test", "temp", 451, "later")],
                                           "later", "x", owner="A")], now + 0.3, (1.0,), 100.0)
    assert state == ["sending"]
    state = await q.record([AttemptOutcome(mid, [RcptOutcome("alice@customer.test", "sent", 250, "ok", "x")],
                                           "", "x", owner="B")], now + 0.4, (1.0,), 100.0)
    assert state == ["sent"]


async def test_recover_and_release(store):
    q = RelayQueue(store)
    ids = await enqueue_many(store, [note(), note()])
    now = time.time()
    await q.claim("A", 1, now, 600)
    await q.claim("B", 1, now, 600)
    assert (await q.counts())["sending"] == 2
    assert await q.release("A", now) == 1
    if getattr(store, "dialect", "sqlite") == "postgresql":
        assert await q.release(None, now) == 0          # B's lease is live: another node is sending it
        assert await q.release(None, now + 601) == 1    # ...until it has run out
    else:
        assert await q.release(None, now) == 1          # one node: nobody else can be sending
    rows = await q.list()
    assert [r["state"] for r in rows] == ["deferred", "deferred"] and [r["id"] for r in rows] == ids


async def test_claim_only_pending_recipients(store):
    (mid,) = await enqueue_many(store, [note(to=["a@x.test", "b@x.test"])])
    now = time.time()

    def step(conn):
        (m,) = claim(conn, "A", 1, now, 60)
        record(conn, AttemptOutcome(mid, [RcptOutcome("a@x.test", "sent", 250, "ok", "h"),
                                          RcptOutcome("b@x.test", "temp", 451, "later", "h")], "later", "h", "A"),
               now, (0.0001,), 100.0)
        (m2,) = claim(conn, "A", 1, now + 1, 60)
        return m2.pending
    assert await store.transaction(step) == ("b@x.test",)


async def test_kill_9_while_sending_loses_nothing(tmp_path, sinks):
    s = sinks()
    orig = s.handler.handle_DATA

    async def slow(server, session, envelope):
        await asyncio.sleep(0.003)
        return await orig(server, session, envelope)
    s.handler.handle_DATA = slow
    db = tmp_path / "crash.db"
    store = SqliteStore(db)
    await store.open()
    n = 150
    await enqueue_many(store, [note(to=f"k{i}@x.test") for i in range(n)])
    conf = tmp_path / "relay.toml"
    conf.write_text(f"""
[relay]
from = "help@example.test"
hostname = "mx.example.test"
retry = "50ms"
poll_interval = "20ms"
concurrency = 4
[[relay.smarthost]]
name = "sink"
host = "127.0.0.1"
port = {s.port}
tls = "none"
concurrency = 4
""")
    proc = subprocess.Popen([sys.executable, "-m", "relay.worker", "--db", str(db), "--config", str(conf)],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        await wait_for(lambda: len(s.messages) >= 30, timeout=30)
        os.kill(proc.pid, signal.SIGKILL)                 # mid-run: deliveries and commits in flight
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    at_kill = len(s.messages)
    counts = await RelayQueue(store).counts()
    assert counts["sent"] < n                             # it really died mid-queue
    # a new worker on the same database finishes the job
    w = await start_worker(store, relay_table(host("sink", s.port, concurrency=4)))
    try:
        await wait_for(lambda: _all_sent(store, n), timeout=30)
    finally:
        await w.close()
        await store.close()
    got = s.handler.recipients()
    assert set(got) == {f"k{i}@x.test" for i in range(n)}    # nothing lost
    dupes = len(got) - n
    # at-least-once: only what was in flight at the kill (sent, result not yet committed) goes twice
    assert 0 <= dupes <= 4, (dupes, at_kill)


async def _all_sent(store, n):
    return (await RelayQueue(store).counts())["sent"] == n


async def test_a_slow_send_keeps_its_lease_and_is_not_taken_over(store, sinks):
    """The lease (0.4 s here) is renewed while the attempt lasts (1.2 s at the smarthost): another
    worker (another node) finds nothing to claim, and the notification goes out once."""
    p = sinks()
    p.handler.data_reply = lambda env: time.sleep(1.2)  # the sink's own thread: only the sink waits
    w = await start_worker(store, relay_table(host("primary", p.port, timeout="5s"), lease="400ms"))
    q = RelayQueue(store)
    try:
        (mid,) = await enqueue_many(store, [note()])
        w.wake()
        await wait_for(lambda: w._sending)  # claimed and being sent
        for _ in range(4):  # well past the lease, several times over
            await asyncio.sleep(0.25)
            assert await q.claim("other-node", 10, time.time(), lease=60) == []
        await wait_for(lambda: len(p.messages) == 1, timeout=5)
        await w.drain()
    finally:
        await w.close()
    (row,) = await q.list()
    assert row["id"] == mid and row["state"] == "sent" and row["attempts"] == 1
    assert len(p.messages) == 1
