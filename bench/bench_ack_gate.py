#!/usr/bin/env python3
"""What the acknowledgement gate (issue 18: DMARC-only, per-IP and global limits) costs per ack.

Usage:  python bench/bench_ack_gate.py [-n 1000] [--store postgresql://USER:PASS@HOST:PORT/DB]

``acknowledge()`` in one transaction per message, as inside the ticket transaction, on a fresh SQLite
database (WAL, synchronous=FULL) or a fresh PostgreSQL database; distinct senders and client IPs so no
limit is hit (the decision is still made, and counted), with:

1. ``per-recipient only``: ``ack_limits_per_ip = []``, ``ack_limits_global = []``;
2. ``all three limits``: the per-IP and global counters counted and written too.

Prints wall and CPU time per acknowledgement (CPU: this process; PostgreSQL's own work is not in it).
Nothing here is a test.
"""
from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gateway.store.sqlite import SqliteStore  # noqa: E402
from gateway.config.relay import parse_relay_config  # noqa: E402
from relay.notify import MailboxInfo, Notifier, TicketInfo, acknowledge  # noqa: E402

MB = MailboxInfo("support@example.test", "IT Support")
PASS = {"dmarc": {"result": "pass"}, "from": {"domains": ["customer.test"]}, "decision": {"suspicious": False}}
HOST = {"name": "h", "host": "127.0.0.1", "port": 25, "tls": "none"}


async def run(label: str, n: int, relay: dict, store_url: str | None, tmp: str, round_: int) -> None:
    notifier = Notifier(parse_relay_config({"from": "help@example.test", "smarthost": [HOST], **relay}))
    if store_url:
        from gateway.store.postgres import PostgresStore
        from tests.pg_support import drop_database, fresh_database
        url = await fresh_database(store_url)
        store = PostgresStore(url, pool_min=1, pool_max=2)
    else:
        store = SqliteStore(Path(tmp) / f"{label.replace(' ', '_')}-{round_}.db")
    await store.open()
    queued = 0
    try:
        w0, c0 = time.perf_counter(), time.process_time()
        for i in range(n):
            d, _ = await store.transaction(lambda c, i=i: acknowledge(
                c, notifier, ticket=TicketInfo(None, f"HD-{i}", "Printer on fire"), mailbox=MB,
                sender=f"user{i}@customer.test", headers=[], mail_from=f"user{i}@customer.test", key=str(i),
                auth=PASS, client_ip=f"10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}"))
            queued += bool(d)
        wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    finally:
        await store.close()
        if store_url:
            await drop_database(store_url, url)
    print(f"{label:<20} {n} acks ({queued} queued): {wall / n * 1e3:.3f} ms wall, {cpu / n * 1e3:.3f} ms CPU each")


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-n", type=int, default=1000)
    p.add_argument("--store", default="", help="postgresql://… server URL (default: SQLite files)")
    args = p.parse_args()
    shown = " --store postgresql://…" if args.store else ""
    print(f"# python bench/bench_ack_gate.py -n {args.n}{shown}")
    big = ["1000000/1h"]
    with tempfile.TemporaryDirectory(prefix="bench-ack-") as tmp:
        for round_ in range(2):  # alternate, so a warming disk or cache favours neither
            await run("per-recipient only", args.n, {"ack_limits": big, "ack_limits_per_ip": [],
                                                     "ack_limits_global": []}, args.store or None, tmp, round_)
            await run("all three limits", args.n, {"ack_limits": big, "ack_limits_per_ip": big,
                                                   "ack_limits_global": big}, args.store or None, tmp, round_)


if __name__ == "__main__":
    asyncio.run(main())
