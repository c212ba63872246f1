"""A claim takes the oldest due queued entries in order by walking an index (migration 0010), so its
cost does not grow with the backlog; deferred entries are skipped until they are due."""
from __future__ import annotations

import asyncio
import sqlite3

from gateway.store.base import SpoolEntry
from gateway.store.sqlite import _CLAIM, SqliteStore

from .sqlite_schema import database_at_version

T0 = 1_700_000_000.0


def _entry(sid: str, at: float) -> SpoolEntry:
    return SpoolEntry(id=sid, received_at=at, mail_from="a@example.org", rcpt_tos=("s@example.test",),
                      mailboxes=("s@example.test",), peer_ip="192.0.2.1", helo="h", tls=None, message_id="",
                      raw=b"From: a@example.org\r\n\r\nx\r\n")


def test_the_claim_walks_the_queue_index_without_sorting(tmp_path) -> None:
    async def go() -> None:
        store = SqliteStore(tmp_path / "s.db")
        await store.open()
        await store.close()
    asyncio.run(go())
    conn = sqlite3.connect(tmp_path / "s.db")
    plan = " | ".join(r[3] for r in conn.execute("EXPLAIN QUERY PLAN " + _CLAIM,
                                                 ("processing", "w", "queued", T0, 16)))
    conn.close()
    assert "spool_queue" in plan and "TEMP B-TREE" not in plan, plan


def test_oldest_due_first_and_deferred_entries_wait(tmp_path) -> None:
    async def go() -> None:
        store = SqliteStore(tmp_path / "s.db")
        await store.open()
        await store.spool_insert([_entry(f"e{i:03d}", T0 + i) for i in range(40)])
        conn = sqlite3.connect(tmp_path / "s.db")
        conn.execute("UPDATE spool SET next_attempt_at=? WHERE id IN ('e000', 'e005')", (T0 + 3600,))
        conn.commit()
        conn.close()
        first = await store.spool_claim(10, T0 + 100, owner="t")
        assert [e.id for e in first] == [f"e{i:03d}" for i in range(1, 12) if i != 5]
        rest = await store.spool_claim(100, T0 + 100, owner="t")
        assert [e.id for e in rest] == [f"e{i:03d}" for i in range(12, 40)]
        assert await store.spool_claim(10, T0 + 100, owner="t") == []
        due = await store.spool_claim(10, T0 + 3600, owner="t")
        assert [e.id for e in due] == ["e000", "e005"]
        await store.close()
    asyncio.run(go())


def test_an_older_database_gets_the_new_index(tmp_path) -> None:
    db = tmp_path / "old.db"
    conn = database_at_version(db, 9)
    conn.commit()
    conn.close()

    async def go() -> None:
        store = SqliteStore(db)
        await store.open()
        await store.spool_insert([_entry("a", T0), _entry("b", T0 - 1)])
        assert [e.id for e in await store.spool_claim(10, T0 + 1, owner="t")] == ["b", "a"]
        await store.close()
    asyncio.run(go())
    conn = sqlite3.connect(db)
    names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='index' AND tbl_name='spool'")}
    assert "spool_queue" in names and "spool_state" not in names, names
    conn.close()


def test_claimed_entries_are_whole_and_the_observer_sees_the_claim(tmp_path) -> None:
    """The rows become entries after the claim's COMMIT (outside the write lock): they still carry
    everything the SMTP side stored, and ``on_transaction`` reports the claim with its lock times."""
    async def go() -> None:
        store = SqliteStore(tmp_path / "s.db")
        await store.open()
        entry = _entry("e000", T0)
        await store.spool_insert([SpoolEntry(**{**{f: getattr(entry, f) for f in (
            "id", "received_at", "mail_from", "rcpt_tos", "mailboxes", "peer_ip", "helo", "tls", "message_id",
            "raw")}, "auth": {"dmarc": {"result": "pass"}}, "auth_header": "mx; spf=pass", "flags": ("x",)})])
        seen: list[tuple[str, float, float]] = []
        store.on_transaction = lambda name, waited, held: seen.append((name, waited, held))
        (got,) = await store.spool_claim(16, T0 + 1, owner="t")
        assert got.raw == entry.raw and got.auth == {"dmarc": {"result": "pass"}} and got.flags == ("x",)
        assert got.state == "processing" and got.attempts == 1 and got.rcpt_tos == ("s@example.test",)
        assert len(seen) == 1 and "spool_claim" in seen[0][0] and seen[0][1] >= 0 and seen[0][2] > 0
        await store.close()
    asyncio.run(go())


def test_a_claim_that_fails_after_its_commit_puts_the_entries_back(tmp_path) -> None:
    """The message bytes are read after the claim's COMMIT: when that read fails, the entries go back
    to the queue as they were (not left ``processing`` until the worker restarts)."""
    async def go() -> None:
        store = SqliteStore(tmp_path / "s.db")
        await store.open()
        await store.spool_insert([_entry(f"e{i:03d}", T0 + i) for i in range(3)])
        real_query = store.query

        async def failing(sql: str, params: tuple = ()) -> list:
            if "spool_raw" in sql:
                raise sqlite3.OperationalError("disk I/O error")
            return await real_query(sql, params)
        store.query = failing  # type: ignore[method-assign]
        try:
            await store.spool_claim(16, T0 + 10, owner="t")
        except sqlite3.OperationalError:
            pass
        else:
            raise AssertionError("the failed read must reach the worker")
        store.query = real_query  # type: ignore[method-assign]
        back = await store.spool_list()
        assert [(e.id, e.state, e.attempts) for e in back] == [(f"e{i:03d}", "queued", 0) for i in range(3)]
        got = await store.spool_claim(16, T0 + 10, owner="t")
        assert [(e.id, e.attempts) for e in got] == [(f"e{i:03d}", 1) for i in range(3)]
        await store.close()
    asyncio.run(go())
