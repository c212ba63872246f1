#!/usr/bin/env python3
"""Cost of one pipeline claim (16 entries) against the depth of the queue, SQLite store.

    python bench/bench_claim.py                      # depths 100, 2,000, 20,000
    python bench/bench_claim.py --old-index          # the index before migration 0010, for comparison

Fills a fresh store (real migrations) with N queued entries plus 5 N finished ones, then times
``spool_claim(16)`` until 50 claims are done: process CPU per claim (the SQLite thread does the work)
and wall time. ``--old-index`` puts back the (state, next_attempt_at) index that made every claim sort
the whole queue. Nothing here is a test: it prints figures and the command that produced them.
"""
from __future__ import annotations

import argparse
import asyncio
import shlex
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gateway.store.sqlite import SqliteStore  # noqa: E402

T0 = 1_700_000_000.0


def fill(db: Path, queued: int, old_index: bool) -> None:
    conn = sqlite3.connect(db)
    rows = []
    for i in range(queued * 6):
        state = "queued" if i % 6 == 0 else "ticket_created"
        rows.append((f"{i:026x}", T0 + i * 0.001, "a@example.org", "[]", "[]", "192.0.2.1", "h", "", 10, b"",
                     state, 0.0))
    conn.executemany("INSERT INTO spool (id, received_at, mail_from, rcpt_tos, mailboxes, peer_ip, helo,"
                     " message_id, size, raw, state, next_attempt_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)", rows)
    if old_index:
        conn.execute("DROP INDEX IF EXISTS spool_queue")
        conn.execute("CREATE INDEX spool_state ON spool(state, next_attempt_at)")
    conn.commit()
    conn.close()


async def measure(queued: int, old_index: bool, claims: int = 50) -> tuple[float, float]:
    db = Path(tempfile.mkdtemp(prefix="bench-claim-")) / "c.db"
    store = SqliteStore(db)
    await store.open()   # migrations
    await store.close()
    fill(db, queued, old_index)
    store = SqliteStore(db)
    await store.open()
    cpu, wall = [], []
    for _ in range(min(claims, queued // 16)):
        c0, w0 = time.process_time(), time.perf_counter()
        got = await store.spool_claim(16, T0 + 10**9, owner="bench")
        cpu.append(time.process_time() - c0)
        wall.append(time.perf_counter() - w0)
        assert len(got) == 16
    await store.close()
    return statistics.median(cpu), statistics.median(wall)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--depths", default="100,2000,20000", help="queued entries, comma list")
    ap.add_argument("--old-index", action="store_true", help="the (state, next_attempt_at) index of before v10")
    a = ap.parse_args()
    cmd = " ".join(shlex.quote(x) for x in ["python", "bench/bench_claim.py"] + sys.argv[1:])
    print(f"# claim of 16 entries, median of up to 50, {'old index' if a.old_index else 'current schema'}  # {cmd}")
    for depth in (int(x) for x in a.depths.split(",")):
        cpu, wall = asyncio.run(measure(depth, a.old_index))
        print(f"  {depth:>7,} queued: {cpu * 1e6:8.0f} µs CPU, {wall * 1e6:8.0f} µs wall per claim")


if __name__ == "__main__":
    main()
