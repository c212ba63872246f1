"""Failed sign-ins per account and per client address, counted in the store (table ``signin_failures``).

A sliding window in process memory would count per HTTP process: with ``[http] processes = 4``, or
three nodes on one PostgreSQL store, a guesser would get four or three times the budget by landing on
each in turn. In the store every process and node sees one count. Only failures are written (a
sign-in that succeeds writes its session anyway), and each failure deletes the rows older than the
longest window, so the table holds at most the failures of one window.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

from gateway.runtime.ratelimit import Rate

ACCOUNT, IP = "account", "ip"


@dataclass(frozen=True)
class Refusal:
    what: str            # "this account" / "your address": said to the person
    retry_after: float   # seconds until one more try is allowed


async def _failures(store: Any, kind: str, key: str, since: float) -> list[float]:
    rows = await store.query("SELECT at FROM signin_failures WHERE kind=? AND key=? AND at>? ORDER BY at",
                             (kind, key, since))
    return [float(r[0]) for r in rows]


async def check(store: Any, per_account: Rate | None, per_ip: Rate | None, email: str, client: str,
                now: float | None = None) -> Refusal | None:
    """None when both windows still allow a try; else which one is full and for how long."""
    now = time.time() if now is None else now
    for rate, kind, key, what in ((per_account, ACCOUNT, email, "this account"), (per_ip, IP, client, "your address")):
        if rate is None:
            continue
        recent = await _failures(store, kind, key, now - rate.window)
        if len(recent) >= rate.count:
            # the oldest failure that keeps the window full leaves it at oldest + window
            return Refusal(what, max(1.0, recent[-rate.count] + rate.window - now))
    return None


async def hit(store: Any, per_account: Rate | None, per_ip: Rate | None, email: str, client: str,
              now: float | None = None) -> None:
    """Record one failed sign-in for the account and the address (each only if its limit is on)."""
    now = time.time() if now is None else now
    windows = [r.window for r in (per_account, per_ip) if r is not None]
    if not windows:
        return
    oldest = now - max(windows)

    def fn(conn: Any) -> None:
        conn.execute("DELETE FROM signin_failures WHERE at<?", (oldest,))
        if per_account is not None:
            conn.execute("INSERT INTO signin_failures (kind, key, at) VALUES (?,?,?)", (ACCOUNT, email, now))
        if per_ip is not None:
            conn.execute("INSERT INTO signin_failures (kind, key, at) VALUES (?,?,?)", (IP, client, now))
    await store.transaction(fn, durable=False)


def minutes(seconds: float) -> int:
    return max(1, math.ceil(seconds / 60))


__all__ = ["Refusal", "check", "hit", "minutes"]
