"""`ticketmx spool find` on a large SQLite spool: wall and CPU time of each kind of search.

    python bench/bench_spool_find.py [ENTRIES]   (default 100000; builds a throwaway database in a temp dir)

The scan reads light columns a page at a time down the primary key (spool ids are time-ordered, so
``--since`` bounds it) and reads only the matches whole (gateway/store/base.py: Store.spool_find).
"""
from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from pathlib import Path

from gateway.store.base import SpoolEntry, SpoolQuery
from gateway.store.sqlite import SqliteStore


async def main(n: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        store = SqliteStore(Path(tmp) / "find.db")
        await store.open()
        start = time.time() - n * 0.01
        batch: list[SpoolEntry] = []
        for i in range(n):
            at = start + i * 0.01
            sender = f"user{i % 5000}@customer.test"
            batch.append(SpoolEntry(
                id=f"{int(at * 1000):011x}{i:08x}", received_at=at, mail_from=sender,
                rcpt_tos=("support@example.test",), mailboxes=("support@example.test",), peer_ip="192.0.2.1",
                helo="mx.customer.test", tls=None, message_id=f"m{i}@customer.test",
                raw=b"From: x\r\n\r\n" + b"y" * 2000, auth={"from": {"addresses": [sender]}}))
            if len(batch) == 5000:
                await store.spool_insert(batch)
                batch = []
        if batch:
            await store.spool_insert(batch)
        now = time.time()
        for label, q in (("--message-id (whole spool)", SpoolQuery(message_id=f"m{n // 2}@customer.test")),
                         ("--message-id --since 10m", SpoolQuery(message_id=f"m{n - 10}@customer.test",
                                                                 since=now - 600)),
                         ("--from (whole spool)", SpoolQuery(mail_from="user42@customer.test")),
                         ("--rcpt --since 1m (limit 50)", SpoolQuery(rcpt="support@example.test", since=now - 60))):
            cpu, wall = time.process_time(), time.perf_counter()
            found = await store.spool_find(q)
            print(f"{n} entries, {label}: {len(found)} found, wall {time.perf_counter() - wall:.3f} s, "
                  f"CPU {time.process_time() - cpu:.3f} s")
        await store.close()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 100_000))
