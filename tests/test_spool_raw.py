"""SQLite keeps a spool entry's bytes in ``spool_raw`` (migration 0009), so a state change rewrites a
small row instead of every overflow page of the message: the bytes are stored once, read back by
claim/get/list, purged with the entry, and moved there from older databases."""
from __future__ import annotations

import asyncio
import sqlite3
import time

from gateway.store.base import Delivery, SpoolEntry
from gateway.store.sqlite import SqliteStore

from .sqlite_schema import database_at_version

RAW = b"From: a@example.org\r\nSubject: x\r\n\r\n" + b"body line\r\n" * 6000  # 66 KB: overflow pages


def _entry(sid: str, raw: bytes = RAW) -> SpoolEntry:
    return SpoolEntry(id=sid, received_at=time.time(), mail_from="a@example.org", rcpt_tos=("s@example.test",),
                      mailboxes=("s@example.test",), peer_ip="192.0.2.1", helo="h", tls=None, message_id="",
                      raw=raw)


def test_bytes_live_outside_the_row_and_come_back(tmp_path) -> None:
    async def go() -> None:
        store = SqliteStore(tmp_path / "s.db")
        await store.open()
        await store.spool_insert([_entry("s1"), _entry("s2", b"From: b@example.org\r\n\r\nshort\r\n")])
        [claimed, other] = await store.spool_claim(10, time.time() + 1, owner="t")
        assert claimed.raw == RAW and other.raw.endswith(b"short\r\n")
        assert (await store.spool_get("s1")).raw == RAW
        assert [e.raw for e in await store.spool_list()] == [RAW, other.raw]
        await store.deliver([Delivery("s1", "suppress", reason="test"), Delivery("s2", "quarantine", reason="q")],
                            time.time())
        assert (await store.spool_get("s1")).raw == RAW  # finishing keeps the bytes
        conn = sqlite3.connect(tmp_path / "s.db")
        assert conn.execute("SELECT COUNT(*) FROM spool WHERE length(raw) > 0").fetchone()[0] == 0
        assert conn.execute("SELECT COUNT(*) FROM spool_raw").fetchone()[0] == 2
        conn.close()
        out = await store.purge(time.time() + 10 * 86400, raw_days=1, quarantine_days=1, closed_ticket_days=0)
        assert out["raw"] == 1 and out["quarantined"] == 1
        assert (await store.spool_get("s1")).raw == b"" and await store.spool_get("s2") is None
        conn = sqlite3.connect(tmp_path / "s.db")
        assert conn.execute("SELECT COUNT(*) FROM spool_raw").fetchone()[0] == 0  # purged and cascaded
        conn.close()
        await store.close()
    asyncio.run(go())


def test_an_older_database_moves_its_bytes(tmp_path) -> None:
    db = tmp_path / "old.db"
    conn = database_at_version(db, 8)
    conn.execute("INSERT INTO spool (id, received_at, mail_from, rcpt_tos, mailboxes, peer_ip, helo, message_id,"
                 " size, raw) VALUES ('old1', 1.0, 'a@example.org', '[]', '[]', '192.0.2.1', 'h', '', ?, ?)",
                 (len(RAW), RAW))
    conn.commit()
    conn.close()

    async def go() -> None:
        store = SqliteStore(db)
        await store.open()
        assert (await store.spool_get("old1")).raw == RAW
        [e] = await store.spool_claim(10, time.time(), owner="t")
        assert e.id == "old1" and e.raw == RAW
        await store.close()
    asyncio.run(go())
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA user_version").fetchone()[0] >= 9
    assert conn.execute("SELECT length(raw) FROM spool").fetchone()[0] == 0
    assert conn.execute("SELECT raw FROM spool_raw WHERE spool_id='old1'").fetchone()[0] == RAW
    conn.close()


def test_checkpoints_leave_the_commits_and_run_in_the_background(tmp_path) -> None:
    """defer_checkpoints: the writer's commits no longer copy the WAL into the database (with
    ``run_here=False`` the data stays in the WAL however large it grows), and the background task
    of ``run_here=True`` does copy it."""
    async def fill(db, run_here: bool) -> int:
        store = SqliteStore(db)
        await store.open()
        await store.defer_checkpoints(run_here=run_here, interval=0.05)
        base = db.stat().st_size
        for i in range(20):  # ~1,300 WAL pages: past SQLite's automatic threshold of 1,000
            await store.spool_insert([_entry(f"{db.stem}-{i}-{k}") for k in range(4)])
        await asyncio.sleep(0.5)
        grown = db.stat().st_size - base
        await store.close()
        return grown
    assert asyncio.run(fill(tmp_path / "deferred.db", run_here=False)) < 1 << 20  # nothing copied
    assert asyncio.run(fill(tmp_path / "background.db", run_here=True)) > 4 << 20  # copied by the task
