#!/usr/bin/env python3
"""Webhook benchmark: outbox -> signed POST -> local receiver, events delivered per second.

Usage:  python bench/bench_webhooks.py [-n 5000] [--in-flight 32] [--store postgresql://USER:PASS@HOST:PORT/DB]

N ticket.updated events (about 1 KB of JSON each: a ticket snapshot) are queued in the outbox of a fresh
SQLite database (WAL, synchronous=FULL, as in production) or, with ``--store``, of a fresh database on
that PostgreSQL server (created and dropped; the role needs CREATEDB: ``scripts/pg-start`` prints such a
URL). Then one WebhookWorker (the one ``ticketmx serve`` runs) delivers them - claim with leases, sign
(HMAC-SHA256), POST with httpx over keep-alive connections, group-committed results - to a receiver in
a child process (asyncio streams, HTTP/1.1 keep-alive) that verifies every signature and answers 200.

Printed: enqueue rate (one transaction per event, as inside a ticket change), delivery rate (first
claim to last result committed), latency from queued to delivered (p50/p99) and what the receiver
counted. Nothing here is a test: it prints figures and the command line that produced them.
"""
from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gateway.store.sqlite import SqliteStore  # noqa: E402
from gateway.webhooks import outbox  # noqa: E402
from gateway.config.webhooks import WebhookConfig  # noqa: E402
from gateway.webhooks.worker import WebhookWorker  # noqa: E402

SECRET = "bench-secret-0123456789abcdef0123456789"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def receiver(port: int, counter: "multiprocessing.sharedctypes.Synchronized", bad: "multiprocessing.sharedctypes.Synchronized") -> None:
    """A minimal HTTP/1.1 receiver verifying each Ticketmx-Signature (the docs' method)."""
    import hashlib
    import hmac

    key = SECRET.encode()

    async def conn(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                if not await reader.readline():
                    return
                length, sig = 0, ""
                while True:
                    h = await reader.readline()
                    if h in (b"\r\n", b""):
                        break
                    name, _, value = h.partition(b":")
                    name = name.strip().lower()
                    if name == b"content-length":
                        length = int(value)
                    elif name == b"ticketmx-signature":
                        sig = value.strip().decode()
                body = await reader.readexactly(length)
                fields = dict(p.split("=", 1) for p in sig.split(","))
                ok = hmac.compare_digest(hmac.new(key, fields["t"].encode() + b"." + body, hashlib.sha256).hexdigest(),
                                         fields.get("v1", ""))
                with (counter if ok else bad).get_lock():
                    (counter if ok else bad).value += 1
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n" if ok else
                             b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n")
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def main() -> None:
        server = await asyncio.start_server(conn, "127.0.0.1", port, backlog=1024)
        async with server:
            await server.serve_forever()

    try:
        import uvloop
        uvloop.run(main())
    except ImportError:
        asyncio.run(main())


async def open_store(server: str | None, tmp: str):  # noqa: ANN201
    if not server:
        store = SqliteStore(Path(tmp) / "bench.db")
        url = None
    else:
        from gateway.store.postgres import PostgresStore
        from tests.pg_support import fresh_database
        url = await fresh_database(server)
        store = PostgresStore(url, pool_min=1, pool_max=8)
    await store.open()
    return store, url


async def run(args: argparse.Namespace) -> None:
    port = free_port()
    counter, bad = multiprocessing.Value("l", 0), multiprocessing.Value("l", 0)
    proc = multiprocessing.Process(target=receiver, args=(port, counter, bad), daemon=True)
    proc.start()
    tmp = tempfile.mkdtemp(prefix="bench-webhooks-")
    wh = WebhookConfig("bench", f"http://127.0.0.1:{port}/hook", ("ticket.updated",), SECRET,
                       max_in_flight=args.in_flight, timeout=10.0)
    store, url = await open_store(args.store or None, tmp)
    try:
        store.webhooks = (wh,)
        # a ticket for the snapshot in every payload
        await store.transaction(lambda c: (
            c.execute("INSERT INTO contacts (email, name, created_at) VALUES ('alice@customer.test', 'Alice', 0)"),
            c.execute("INSERT INTO tickets (number, subject, requester_id, queue, mailbox, created_at, updated_at)"
                      " VALUES ('HD-1000', 'Printer on fire, the second time this week', 1, 'IT',"
                      " 'support@example.test', 0, 0)")))
        n = args.n
        t0 = time.perf_counter()
        for i in range(min(n, 500)):  # enqueue as a ticket change does: one transaction (fsync) each
            await store.transaction(lambda c: outbox.ticket_updated(
                c, 1, "agent@example.test", {"status": "open", "note": "x" * 600}, {"status": "new"}))
        enq = min(n, 500) / (time.perf_counter() - t0)
        rest = n - min(n, 500)
        if rest:
            await store.transaction(lambda c: [outbox.ticket_updated(
                c, 1, "agent@example.test", {"status": "open", "note": "x" * 600}, {"status": "new"})
                for _ in range(rest)])
        size = len((await outbox.WebhookOutbox(store).payload(1)) or b"")
        worker = WebhookWorker((wh,), store)
        t0, c0 = time.perf_counter(), time.process_time()
        await worker.start()
        await worker.drain(timeout=600)
        dt, cpu = time.perf_counter() - t0, time.process_time() - c0
        await worker.close()
        rows = await store.query("SELECT delivered_at - created_at FROM webhook_outbox WHERE state='delivered'"
                                 " ORDER BY 1")
        lat = [r[0] for r in rows]
        delivered = len(lat)
        p50 = lat[len(lat) // 2] if lat else 0
        p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))] if lat else 0
        shown = " --store postgresql://…" if args.store else ""
        from gateway.runtime.eventloop import name
        print(f"# python bench/bench_webhooks.py -n {n} --in-flight {args.in_flight} --loop {args.loop}{shown}"
              f"   (loop: {name()})")
        print(f"# store: {'PostgreSQL' if args.store else 'SQLite'}; {os.cpu_count()} CPUs; Python "
              f"{sys.version.split()[0]}; payload {size} bytes")
        print(f"enqueue:  {enq:.0f} events/s (one transaction each)")
        print(f"deliver:  {delivered} of {n} events in {dt:.2f}s = {delivered / dt:.0f} events/s"
              f" (receiver verified {counter.value}, rejected {bad.value})")
        print(f"cpu:      the gateway side used {cpu:.2f} CPU-s = {delivered / cpu:.0f} events per CPU-second"
              f" (load average now {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs: other work shares them)")
        print(f"latency:  queued -> delivered p50 {p50:.2f}s p99 {p99:.2f}s (all queued before the worker started)")
    finally:
        await store.close()
        if url:
            from tests.pg_support import drop_database
            await drop_database(args.store, url)
        proc.terminate()
        proc.join()
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-n", type=int, default=5000)
    p.add_argument("--in-flight", type=int, default=32, help="[[webhook]] max_in_flight")
    p.add_argument("--store", default="", help="postgresql://… server URL (default: SQLite)")
    p.add_argument("--loop", choices=("auto", "asyncio", "uvloop"), default="auto",
                   help="event loop, as [smtp] event_loop (auto: uvloop when installed, as ticketmx serve)")
    args = p.parse_args()
    from gateway.runtime.eventloop import run as run_on
    run_on(run(args), args.loop)


if __name__ == "__main__":
    main()
