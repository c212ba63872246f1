"""A synchronous, ``sqlite3``-shaped face on one asyncpg connection inside its transaction.

The relay queue, the acknowledgement counter, the notification hook and the SLA escalations are
synchronous functions taking a ``sqlite3.Connection``, so that they run *inside* the transaction of
the ticket change that causes them (``SqliteStore.transaction(fn)``). :class:`PgSyncConnection` lets
the same functions run inside a PostgreSQL transaction: the function runs on a worker thread, and
each ``execute`` hands its statement to the event loop (which owns the asyncpg connection and is free
meanwhile: it is awaiting that thread) and blocks until the result is back.

What it accepts is deliberately narrow, the common ground the callers are written in:

* ``?`` placeholders (turned into ``$1``, ``$2`` …; a ``?`` inside a quoted literal is left alone);
* statements that return rows (``SELECT``, ``WITH``, anything with ``RETURNING``) give a cursor with
  ``fetchone`` / ``fetchall`` / iteration over asyncpg records (indexable by position and by name);
  others give ``rowcount``; there is no ``lastrowid`` (write ``RETURNING id``);
* ``dialect == "postgresql"`` for the few places where the SQL must differ (claims take row locks with
  ``FOR UPDATE SKIP LOCKED``; PostgreSQL has no ``rowid``).

An error aborts the PostgreSQL transaction (unlike SQLite, where a failed statement leaves the others):
callers do not rely on catching one and carrying on; the whole transaction is retried or fails.
"""
from __future__ import annotations

import asyncio
import re
from typing import Any, Iterable, Iterator

import asyncpg

__all__ = ["PgSyncConnection", "numbered_placeholders"]

_TOKENS = re.compile(r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"|\?")
_ROWS = re.compile(r"^\s*(?:SELECT|WITH|VALUES)\b|\bRETURNING\b", re.IGNORECASE)
_STATUS_COUNT = re.compile(r"(\d+)\s*$")


def numbered_placeholders(sql: str) -> str:
    """``?`` → ``$1``, ``$2`` … outside quoted literals and identifiers."""
    n = 0

    def sub(m: re.Match[str]) -> str:
        nonlocal n
        if m.group(0) != "?":
            return m.group(0)
        n += 1
        return f"${n}"
    return _TOKENS.sub(sub, sql)


class _Cursor:
    def __init__(self, rows: list[asyncpg.Record] | None, rowcount: int) -> None:
        self._rows = rows or []
        self.rowcount = rowcount

    def fetchone(self) -> asyncpg.Record | None:
        return self._rows.pop(0) if self._rows else None

    def fetchall(self) -> list[asyncpg.Record]:
        rows, self._rows = self._rows, []
        return rows

    def __iter__(self) -> Iterator[asyncpg.Record]:
        return iter(self.fetchall())

    @property
    def lastrowid(self) -> int:
        raise NotImplementedError("no lastrowid on PostgreSQL: use INSERT ... RETURNING id")


class PgSyncConnection:
    """``execute`` / ``executemany`` for code running on a thread other than ``loop``'s."""

    dialect = "postgresql"

    def __init__(self, conn: asyncpg.Connection, loop: asyncio.AbstractEventLoop, timeout: float = 60.0) -> None:
        self._conn = conn
        self._loop = loop
        self._timeout = timeout
        self._sql: dict[str, str] = {}

    def _run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(self._timeout)

    def _convert(self, sql: str) -> str:
        out = self._sql.get(sql)
        if out is None:
            out = self._sql[sql] = numbered_placeholders(sql)
        return out

    def execute(self, sql: str, params: Iterable[Any] = ()) -> _Cursor:
        pg = self._convert(sql)
        args = tuple(params)
        if _ROWS.search(pg):
            rows = self._run(self._conn.fetch(pg, *args))
            return _Cursor(rows, len(rows))
        status = self._run(self._conn.execute(pg, *args))
        m = _STATUS_COUNT.search(status or "")
        return _Cursor(None, int(m.group(1)) if m else -1)

    def executemany(self, sql: str, seq: Iterable[Iterable[Any]]) -> _Cursor:
        args = [tuple(p) for p in seq]
        if args:
            self._run(self._conn.executemany(self._convert(sql), args))
        return _Cursor(None, -1)
