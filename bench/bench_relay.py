#!/usr/bin/env python3
"""Relay benchmark: render + enqueue cost, and queue -> smarthost delivery throughput.

Usage:  python bench/bench_relay.py [-n 2000] [--concurrency 16] [--host-concurrency 4] [--dkim rsa|ed25519|none]
                                   [--store postgresql://USER:PASS@HOST:PORT/DB]

The smarthost is postfix's ``smtp-sink`` (C; it discards, so the figures are the relay's cost) when it is
installed, else an aiosmtpd sink in a child process. Runs, each on a fresh SQLite database (WAL,
synchronous=FULL, as in production) or, with ``--store postgresql://…``, on a fresh database of that
server (created and dropped per run; the role needs CREATEDB; ``scripts/pg-start`` prints such a URL):

1. render: an acknowledgement rendered from the shipped templates (Jinja2 + email), per message;
2. enqueue: render + ``enqueue`` + the ack counter in one transaction each (as inside the ticket
   transaction: one fsync per ticket);
3. deliver: N queued (lazy) acknowledgements sent by one RelayWorker (claim, render, sign, SMTP,
   group-committed record);
4. failover: the same with a dead primary listed first (connection refused), circuit breaker on.

Nothing here is a test: it prints figures and the command line that produced them.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gateway.store.sqlite import SqliteStore  # noqa: E402
from gateway.config.relay import parse_relay_config  # noqa: E402
from relay.dkim import keygen  # noqa: E402
from relay.notify import MailboxInfo, Notifier, TicketInfo, acknowledge  # noqa: E402
from gateway.store.relay_queue import RelayQueue  # noqa: E402
from relay.worker import RelayWorker  # noqa: E402
from bench.ingest import free_port, wait_port  # noqa: E402  (one copy of the port helpers)

MB = MailboxInfo("support@example.test", "IT Support")
# the SMTP-time result of a From that passed DMARC: only such a From is acknowledged by default
DMARC_PASS = {"dmarc": {"result": "pass"}, "from": {"domains": ["customer.test"]}, "decision": {"suspicious": False}}


AIOSMTPD_SINK = """
import asyncio, sys
from aiosmtpd.controller import Controller
class H:
    async def handle_DATA(self, server, session, envelope):
        return "250 2.0.0 ok"
c = Controller(H(), hostname="127.0.0.1", port=int(sys.argv[1])); c.start()
import signal; signal.sigwait({signal.SIGTERM, signal.SIGINT})
"""


def start_sink(port: int) -> tuple[subprocess.Popen, str]:
    sink = shutil.which("smtp-sink") or ("/usr/sbin/smtp-sink" if os.path.exists("/usr/sbin/smtp-sink") else None)
    if sink:
        # -c: count, -u: run as (needed when root), backlog 256
        args = [sink, "-u", "nobody", f"127.0.0.1:{port}", "256"] if os.geteuid() == 0 else \
            [sink, f"127.0.0.1:{port}", "256"]
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        name = "postfix smtp-sink"
    else:
        proc = subprocess.Popen([sys.executable, "-c", AIOSMTPD_SINK, str(port)], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        name = "aiosmtpd sink (child process)"
    wait_port(port)
    return proc, name


def relay_cfg(ports: list[int], args: argparse.Namespace, key: str | None) -> dict:
    hosts = [{"name": f"h{i}", "host": "127.0.0.1", "port": p, "tls": "none", "concurrency": args.host_concurrency,
              "max_tries": 1, "cooloff": "60s", "timeout": "10s"} for i, p in enumerate(ports)]
    t = {"from": "Helpdesk <help@example.test>", "hostname": "mx.example.test", "concurrency": args.concurrency,
         "poll_interval": "50ms", "smarthost": hosts, "ack_limits": ["1000000/1h"],
         "ack_limits_per_ip": ["1000000/1h"], "ack_limits_global": ["1000000/1h"]}
    if key:
        t["dkim"] = [{"domain": "example.test", "selector": "bench", "key_file": key}]
    return t


async def bench_render_enqueue(n: int, tmp: str, table: dict, stores: "BenchStore") -> None:
    cfg = parse_relay_config(table)
    notifier = Notifier(cfg)
    t0 = time.perf_counter()
    for i in range(n):
        notifier.acknowledgement(ticket=TicketInfo(None, f"HD-{i}", "Printer on fire", queue="IT"), mailbox=MB,
                                 to=f"user{i}@customer.test", inbound_message_id=f"m{i}@customer.test", key=str(i))
    dt = time.perf_counter() - t0
    print(f"render:   {n} acknowledgements in {dt:.2f}s = {dt / n * 1e6:.0f} us each")
    store = await stores.open("enqueue")
    t0 = time.perf_counter()
    for i in range(n):
        await store.transaction(lambda c, i=i: acknowledge(
            c, notifier, ticket=TicketInfo(None, f"HD-{i}", "Printer on fire"), mailbox=MB,
            sender=f"user{i % 50}@customer.test", headers=[], mail_from=f"user{i % 50}@customer.test",
            key=str(i), auth=DMARC_PASS, client_ip=f"192.0.2.{i % 200}"))
    dt = time.perf_counter() - t0
    print(f"enqueue:  {n} acks, one transaction (fsync) each: {n / dt:.0f}/s ({dt / n * 1e3:.2f} ms each:"
          " rate check + lazy insert + commit; rendering happens in the worker)")
    await store.close()


class BenchStore:
    """A fresh store per run: SQLite in the temp dir, or a new database on ``--store``'s server."""

    def __init__(self, server: str | None, tmp: str) -> None:
        self.server, self.tmp = server, tmp
        self._dbs: list[str] = []

    async def open(self, label: str):  # noqa: ANN201 - SqliteStore | PostgresStore
        if not self.server:
            store = SqliteStore(Path(self.tmp) / f"{label}.db")
        else:
            from gateway.store.postgres import PostgresStore
            from tests.pg_support import fresh_database
            url = await fresh_database(self.server)
            self._dbs.append(url)
            store = PostgresStore(url, pool_min=1, pool_max=8)
        await store.open()
        return store

    async def drop_all(self) -> None:
        from tests.pg_support import drop_database
        for url in self._dbs:
            await drop_database(self.server, url)


async def bench_deliver(label: str, n: int, tmp: str, table: dict, stores: "BenchStore") -> None:
    cfg = parse_relay_config(table)
    notifier = Notifier(cfg)
    store = await stores.open(label)
    q = RelayQueue(store)

    def fill(conn):
        from gateway.store.relay_queue import enqueue
        for i in range(n):
            enqueue(conn, notifier.acknowledgement(ticket=TicketInfo(None, f"HD-{i}", "Printer on fire"),
                                                   mailbox=MB, to=f"user{i}@customer.test", key=f"{label}{i}",
                                                   lazy=True))
    await store.transaction(fill)
    w = RelayWorker(cfg, store)
    t0 = time.perf_counter()
    await w.start()
    while (await q.counts())["sent"] < n:
        await asyncio.sleep(0.02)
    dt = time.perf_counter() - t0
    counts = await q.counts()
    await w.close()
    await store.close()
    print(f"{label + ':':<9} {n} notifications in {dt:.2f}s = {n / dt:.0f} msgs/s (sent {counts['sent']},"
          f" dead {counts['dead']})")


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-n", type=int, default=2000)
    p.add_argument("--concurrency", type=int, default=16, help="[relay] concurrency")
    p.add_argument("--host-concurrency", type=int, default=4, help="smarthost concurrency (connections)")
    p.add_argument("--dkim", choices=("none", "rsa", "ed25519"), default="none")
    p.add_argument("--store", default="", help="postgresql://… server URL (default: SQLite files)")
    args = p.parse_args()
    port = free_port()
    sink, sink_name = start_sink(port)
    tmp = tempfile.mkdtemp(prefix="bench-relay-")
    try:
        key = None
        if args.dkim != "none":
            key = str(Path(tmp) / "dkim.key")
            keygen("example.test", "bench", args.dkim, key)
        shown = " --store postgresql://…" if args.store else ""
        print(f"# python bench/bench_relay.py -n {args.n} --concurrency {args.concurrency} "
              f"--host-concurrency {args.host_concurrency} --dkim {args.dkim}{shown}")
        print(f"# smarthost: {sink_name}; store: {'PostgreSQL' if args.store else 'SQLite'}; {os.cpu_count()} CPUs;"
              f" Python {sys.version.split()[0]}")
        table = relay_cfg([port], args, key)
        stores = BenchStore(args.store or None, tmp)
        try:
            await bench_render_enqueue(min(args.n, 1000), tmp, table, stores)
            await bench_deliver("deliver", args.n, tmp, table, stores)
            await bench_deliver("failover", args.n, tmp, relay_cfg([free_port(), port], args, key), stores)
        finally:
            if args.store:
                await stores.drop_all()
    finally:
        sink.terminate()
        sink.wait()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
