"""gateway/store/pg_sync.py: the sqlite3-shaped face the relay queue, the notification hook and the SLA
escalations use inside a PostgreSQL transaction."""
from __future__ import annotations

import pytest

from gateway.store.pg_sync import numbered_placeholders


def test_placeholders_are_numbered_outside_quotes() -> None:
    assert numbered_placeholders("SELECT a FROM t WHERE b=? AND c IN (?,?)") == \
        "SELECT a FROM t WHERE b=$1 AND c IN ($2,$3)"
    assert numbered_placeholders("SELECT '?', \"we?ird\" FROM t WHERE x=? AND y='it''s ?'") == \
        "SELECT '?', \"we?ird\" FROM t WHERE x=$1 AND y='it''s ?'"
    assert numbered_placeholders("SELECT 1") == "SELECT 1"


async def test_statements_rows_rowcount_and_whole_rollback(make_store, backend: str) -> None:
    """The same function gives the same answers on both backends, and an exception undoes all of it."""
    store = await make_store()

    def write(conn):  # noqa: ANN001
        rid = conn.execute("INSERT INTO relay_ack_log (sender, sent_at) VALUES (?, ?) RETURNING sent_at",
                           ("a@x.test", 1.5)).fetchone()[0]
        conn.executemany("INSERT INTO relay_ack_log (sender, sent_at) VALUES (?, ?)",
                         [("b@x.test", 2.0), ("b@x.test", 3.0)])
        n = conn.execute("UPDATE relay_ack_log SET sent_at=sent_at+1 WHERE sender=?", ("b@x.test",)).rowcount
        rows = [tuple(r) for r in conn.execute("SELECT sender, sent_at FROM relay_ack_log ORDER BY sent_at")]
        return rid, n, rows, conn.execute("SELECT count(*) FROM relay_ack_log WHERE sender='?'").fetchone()[0]

    assert await store.transaction(write) == (1.5, 2, [("a@x.test", 1.5), ("b@x.test", 3.0), ("b@x.test", 4.0)], 0)

    def fails(conn):  # noqa: ANN001
        conn.execute("INSERT INTO relay_ack_log (sender, sent_at) VALUES (?, ?)", ("c@x.test", 9.0))
        raise RuntimeError("the ticket write failed")
    with pytest.raises(RuntimeError):
        await store.transaction(fails)
    rows = await store.query("SELECT count(*) FROM relay_ack_log WHERE sender=?", ("c@x.test",))
    assert rows[0][0] == 0


async def test_run_sync_awaits_for_the_function_and_throws_its_errors_back_into_it() -> None:
    """No database: the mechanics of the greenlet hand-over, on the event loop's own thread."""
    import asyncio
    import threading

    from gateway.store.pg_sync import run_sync, wait

    async def value(x: int) -> int:
        await asyncio.sleep(0)
        return x * 2

    async def fail() -> None:
        raise LookupError("from the awaited call")

    loop_thread = threading.get_ident()

    def fn(a: int, b: int) -> tuple:
        got = [wait(value(a)), wait(value(b))]
        try:
            wait(fail())
        except LookupError as exc:
            got.append(str(exc))
        return tuple(got), threading.get_ident() == loop_thread

    assert await run_sync(fn, 1, 5) == ((2, 10, "from the awaited call"), True)

    def uncaught() -> None:
        wait(fail())
    with pytest.raises(LookupError):
        await run_sync(uncaught)
    with pytest.raises(RuntimeError, match="outside run_sync"):
        wait(value(1))
