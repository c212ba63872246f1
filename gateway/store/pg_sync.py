"""A synchronous, ``sqlite3``-shaped face on one asyncpg connection inside its transaction.

The relay queue, the acknowledgement counter, the notification hook and the SLA escalations are
synchronous functions taking a ``sqlite3.Connection``, so that they run *inside* the transaction of
the ticket change that causes them (``SqliteStore.transaction(fn)``). :func:`run_sync` runs the same
functions inside a PostgreSQL transaction: the function runs in a greenlet on the event loop's own
thread, and each ``execute`` of its :class:`PgSyncConnection` switches back to the coroutine that
started it, which awaits the asyncpg call and switches in again with the result. No thread, no
blocking of the loop while PostgreSQL answers (the greenlet package is what SQLAlchemy's asyncio
support stands on). A statement costs the asyncpg round trip plus a few µs; the first version handed
each statement from a worker thread to the loop, and that handover doubled the round trip (459 against
221 µs for ``SELECT 1`` on this machine).

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

import re
from typing import Any, Awaitable, Callable, Iterable, Iterator, TypeVar

import asyncpg
import greenlet

__all__ = ["PgSyncConnection", "numbered_placeholders", "run_sync"]

T = TypeVar("T")


class _Await:
    """What the function's greenlet hands its driver: an awaitable to await on its behalf."""

    __slots__ = ("awaitable",)

    def __init__(self, awaitable: Awaitable[Any]) -> None:
        self.awaitable = awaitable


async def run_sync(fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` in a greenlet on this thread; every :func:`wait` inside it is awaited here."""
    child = greenlet.greenlet(fn)
    step = child.switch(*args)
    while not child.dead:
        if not isinstance(step, _Await):
            raise RuntimeError("a synchronous store function switched out without a statement")
        try:
            value = await step.awaitable
        except BaseException as exc:  # noqa: BLE001 - raised inside fn, where the statement was made
            step = child.throw(exc)
        else:
            step = child.switch(value)
    return step


def wait(awaitable: Awaitable[T]) -> T:
    """From synchronous code run by :func:`run_sync`: the awaitable's result."""
    current = greenlet.getcurrent()
    if current.parent is None:
        close = getattr(awaitable, "close", None)
        if close is not None:
            close()  # a coroutine that will never run: no "never awaited" warning on top
        raise RuntimeError("PgSyncConnection used outside run_sync()")
    return current.parent.switch(_Await(awaitable))

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
    """``execute`` / ``executemany`` for synchronous code running under :func:`run_sync`."""

    dialect = "postgresql"
    cipher: Any = None  # the store's gateway.store.crypto.Cipher, for code that gets only the connection
    webhooks: tuple[Any, ...] = ()  # the store's [[webhook]]s, for the outbox (gateway/webhooks/outbox.py)

    def __init__(self, conn: asyncpg.Connection) -> None:
        self._conn = conn
        self._sql: dict[str, str] = {}

    def _convert(self, sql: str) -> str:
        out = self._sql.get(sql)
        if out is None:
            out = self._sql[sql] = numbered_placeholders(sql)
        return out

    def execute(self, sql: str, params: Iterable[Any] = ()) -> _Cursor:
        pg = self._convert(sql)
        args = tuple(params)
        if _ROWS.search(pg):
            rows = wait(self._conn.fetch(pg, *args))
            return _Cursor(rows, len(rows))
        status = wait(self._conn.execute(pg, *args))
        m = _STATUS_COUNT.search(status or "")
        return _Cursor(None, int(m.group(1)) if m else -1)

    def executemany(self, sql: str, seq: Iterable[Iterable[Any]]) -> _Cursor:
        args = [tuple(p) for p in seq]
        if args:
            wait(self._conn.executemany(self._convert(sql), args))
        return _Cursor(None, -1)
