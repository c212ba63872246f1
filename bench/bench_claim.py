#!/usr/bin/env python3
"""Cost of one pipeline claim (16 entries) against the depth of the queue, SQLite store.

    python bench/bench_claim.py                      # depths 100, 2,000, 20,000
    python bench/bench_claim.py --old-index          # the index before migration 0010, for comparison

Fills a fresh store (real migrations) with N queued entries plus 5 N finished ones, then times
``spool_claim(16)`` until 50 claims are done: process CPU per claim (the SQLite thread does the work)
and wall time, and how long the claim transaction held the store's write lock (what the SMTP side's
spool commit may wait for). Rows carry what the service stores for a DKIM-signed 4.7 KB message (the
auth result as JSON, the bytes in ``spool_raw``). ``--old-index`` puts back the (state, next_attempt_at) index that made every claim sort
the whole queue. Nothing here is a test: it prints figures and the command that produced them.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import shlex
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from gateway.store.sqlite import SqliteStore  # noqa: E402
from ingest import AUTH_HEADER, AUTH_RESULT  # noqa: E402

T0 = 1_700_000_000.0


RAW = b"X" * 4700


def fill(db: Path, queued: int, old_index: bool) -> None:
    conn = sqlite3.connect(db)
    rows = []
    for i in range(queued * 6):
        state = "queued" if i % 6 == 0 else "ticket_created"
        rows.append((f"{i:026x}", T0 + i * 0.001, "a@customer.test", '["help@support.test"]',
                     '["help@support.test"]', "127.0.0.1", "client.customer.test", f"<m{i}@customer.test>",
                     len(RAW), b"", AUTH_HEADER, json.dumps(AUTH_RESULT), "[]", state, 0.0))
    conn.executemany("INSERT INTO spool (id, received_at, mail_from, rcpt_tos, mailboxes, peer_ip, helo,"
                     " message_id, size, raw, auth_header, auth, flags, state, next_attempt_at)"
                     " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)", rows)
    conn.executemany("INSERT INTO spool_raw (spool_id, raw) VALUES (?,?)",
                     ((r[0], RAW) for r in rows if r[13] == "queued"))
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
    cpu, wall, held = [], [], []
    store.on_transaction = lambda _name, _waited, h: held.append(h)
    for _ in range(min(claims, queued // 16)):
        c0, w0 = time.process_time(), time.perf_counter()
        got = await store.spool_claim(16, T0 + 10**9, owner="bench")
        cpu.append(time.process_time() - c0)
        wall.append(time.perf_counter() - w0)
        assert len(got) == 16 and got[0].auth and len(got[0].raw) == len(RAW)
    await store.close()
    return statistics.median(cpu), statistics.median(wall), statistics.median(held)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--depths", default="100,2000,20000", help="queued entries, comma list")
    ap.add_argument("--old-index", action="store_true", help="the (state, next_attempt_at) index of before v10")
    a = ap.parse_args()
    cmd = " ".join(shlex.quote(x) for x in ["python", "bench/bench_claim.py"] + sys.argv[1:])
    print(f"# claim of 16 entries, median of up to 50, {'old index' if a.old_index else 'current schema'}  # {cmd}")
    for depth in (int(x) for x in a.depths.split(",")):
        cpu, wall, held = asyncio.run(measure(depth, a.old_index))
        print(f"  {depth:>7,} queued: {cpu * 1e6:8.0f} µs CPU, {wall * 1e6:8.0f} µs wall per claim,"
              f" write lock held {held * 1e6:6.0f} µs")


if __name__ == "__main__":
    main()
