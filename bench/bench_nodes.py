#!/usr/bin/env python3
"""Scale-out benchmark: 1, 2 and 3 `ticketmx serve` nodes sharing one PostgreSQL, in one run.

    python bench/bench_nodes.py                      # 1, 2, 3 nodes; 3000 msgs; plus a 1-node SQLite baseline
    python bench/bench_nodes.py -n 6000 -c 30 --nodes 1,2,3 --size 4096 --json

PostgreSQL: $TICKETMX_PG_URL, else scripts/pg-start (Debian's postgresql on 127.0.0.1, a private cluster).
Every configuration gets a fresh database. The nodes run on THIS machine, next to PostgreSQL and the
client, so the figures show what the shared database and the cores allow here, not what N separate
hosts would do. Each node: conf/ticketmx.example.toml moved to a private port, [store] url = the
database, `[pipeline] processes = 1`, metrics off, log level warning, [dns] at the bench DNS server.

The client is bench/ingest.py's asyncio client (`asyncio_load`, `make_messages`, `start_dns`): unique
4 KB messages from customer.test (SPF pass, DMARC p=reject published), -c sessions spread evenly over the
nodes, many messages per connection. Reported per configuration:
  accept   msgs/s of 250s (every 250 is a committed spool row: PostgreSQL flushed its WAL)
  tickets  msgs/s until every message is out of the spool (ticket committed), from the first byte sent
Nothing here is a test: it prints figures and the command that produced them.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))

from ingest import asyncio_load, free_port, make_messages, start_dns, wait_port  # noqa: E402


def pg_url() -> str:
    from tests.pg_support import server_url
    url, why = server_url()
    if url is None:
        raise SystemExit(f"bench_nodes: {why}")
    return url


def node_config(tmp: Path, name: str, port: int, dns_port: int, store_url: str, processes: int) -> Path:
    example = (ROOT / "conf" / "ticketmx.example.toml").read_text()
    cfg = (example.replace('listen = ["127.0.0.1:2525"]', f'listen = ["127.0.0.1:{port}"]')
                  .replace('nameservers = []', f'nameservers = ["127.0.0.1:{dns_port}"]')
                  .replace('url = "sqlite:state/ticketmx.db"', f'url = "{store_url}"')
                  .replace('listen = "127.0.0.1:9101"', 'listen = ""')
                  .replace('level = "info"', 'level = "warning"')
                  .replace("\nprocesses = 1\n", f"\nprocesses = {processes}\n"))
    path = tmp / f"{name}.toml"
    path.write_text(cfg)
    return path


def start_node(tmp: Path, name: str, dns_port: int, store_url: str, processes: int) -> tuple[subprocess.Popen, int]:
    port = free_port()
    cfg = node_config(tmp, name, port, dns_port, store_url, processes)
    # tests.pg_support is `ticketmx serve`, with the PostgreSQL wiring patched in only while this
    # checkout's config.py / open_store lack it.
    proc = subprocess.Popen([sys.executable, "-m", "tests.pg_support", "serve", "--config", str(cfg)], cwd=ROOT,
                            stdout=open(tmp / f"{name}.log", "wb"), stderr=subprocess.STDOUT,
                            env={**os.environ, "TICKETMX_PG_SHIM": "1"}, start_new_session=True)
    try:
        wait_port(port, timeout=60)
    except SystemExit:
        raise SystemExit(f"{name} did not start:\n{(tmp / f'{name}.log').read_text()[-2000:]}") from None
    return proc, port


async def live_count(store_url: str) -> int:
    if store_url.startswith("sqlite"):
        import sqlite3
        conn = sqlite3.connect(store_url[len("sqlite:///") - 1:] if store_url.startswith("sqlite:///") else
                               store_url[len("sqlite:"):])
        try:
            return conn.execute("SELECT COUNT(*) FROM spool WHERE state IN ('queued','processing')").fetchone()[0]
        finally:
            conn.close()
    import asyncpg
    conn = await asyncpg.connect(store_url)
    try:
        return await conn.fetchval("SELECT COUNT(*) FROM spool WHERE state IN ('queued','processing')")
    finally:
        await conn.close()


async def total_finished(store_url: str) -> tuple[int, int]:
    """(finished entries, tickets) in the store."""
    if store_url.startswith("sqlite"):
        import sqlite3
        conn = sqlite3.connect("/" + store_url[len("sqlite:///"):].lstrip("/"))
        try:
            return (conn.execute("SELECT COUNT(*) FROM spool WHERE state NOT IN ('queued','processing')").fetchone()[0],
                    conn.execute("SELECT COUNT(*) FROM tickets").fetchone()[0])
        finally:
            conn.close()
    import asyncpg
    conn = await asyncpg.connect(store_url)
    try:
        return (await conn.fetchval("SELECT COUNT(*) FROM spool WHERE state NOT IN ('queued','processing')"),
                await conn.fetchval("SELECT COUNT(*) FROM tickets"))
    finally:
        await conn.close()


async def run_config(label: str, n_nodes: int, store_url: str, tmp: Path, dns_port: int, n: int, c: int,
                     make, processes: int, warmup: int) -> dict:
    procs: list[tuple[subprocess.Popen, int]] = []
    try:
        for k in range(n_nodes):
            procs.append(start_node(tmp, f"{label}-node{k}", dns_port, store_url, processes))
        ports = [p for _proc, p in procs]
        if warmup:  # connections, prepared statements, worker processes up
            await asyncio.gather(*(asyncio_load(p, warmup, 2, make) for p in ports))
            while await live_count(store_url):
                await asyncio.sleep(0.05)
        before, _t = await total_finished(store_url)
        per_node_c = [c // n_nodes + (1 if k < c % n_nodes else 0) for k in range(n_nodes)]
        per_node_n = [n // n_nodes + (1 if k < n % n_nodes else 0) for k in range(n_nodes)]
        t0 = time.perf_counter()
        results = await asyncio.gather(*(asyncio_load(p, nn, cc, make)
                                         for p, nn, cc in zip(ports, per_node_n, per_node_c)))
        accepted_at = time.perf_counter()
        while await live_count(store_url):
            await asyncio.sleep(0.02)
        done_at = time.perf_counter()
        finished, tickets = await total_finished(store_url)
        lat = sorted(x for lats, _e in results for x in lats)
        return {"config": label, "nodes": n_nodes, "messages": n, "sessions": c,
                "accept_msgs_per_s": n / (accepted_at - t0), "tickets_msgs_per_s": n / (done_at - t0),
                "accept_p50_ms": lat[len(lat) // 2] * 1000, "accept_p99_ms": lat[int(len(lat) * 0.99)] * 1000,
                "finished": finished - before, "tickets_total": tickets}
    finally:
        for proc, _p in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc, _p in procs:
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


async def main_async(args: argparse.Namespace) -> list[dict]:
    from tests.pg_support import drop_database, fresh_database
    make, records = make_messages(args.size, "none")
    dns = start_dns(records)
    out: list[dict] = []
    try:
        with tempfile.TemporaryDirectory(prefix="ticketmx-nodes-") as tmpdir:
            tmp = Path(tmpdir)
            if args.sqlite_baseline:
                out.append(await run_config("sqlite-1", 1, f"sqlite:///{tmp}/baseline.db", tmp, dns.port, args.n,
                                            args.c, make, args.processes, args.warmup))
                print(_line(out[-1]), flush=True)
            server = pg_url()
            for n_nodes in args.nodes:
                url = await fresh_database(server, prefix="tmxbench")
                try:
                    out.append(await run_config(f"pg-{n_nodes}", n_nodes, url, tmp, dns.port, args.n, args.c,
                                                make, args.processes, args.warmup))
                finally:
                    await drop_database(server, url)
                print(_line(out[-1]), flush=True)
    finally:
        dns.stop()
    return out


def _line(r: dict) -> str:
    return (f"{r['config']:<10} nodes={r['nodes']}  accept {r['accept_msgs_per_s']:7.0f} msgs/s"
            f"   tickets {r['tickets_msgs_per_s']:7.0f} msgs/s   250 latency p50 {r['accept_p50_ms']:6.1f} ms"
            f" p99 {r['accept_p99_ms']:7.1f} ms   ({r['finished']} finished)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=3000, help="messages per configuration")
    ap.add_argument("-c", type=int, default=24, help="concurrent sessions, spread over the nodes")
    ap.add_argument("--size", type=int, default=4096, help="payload bytes per message")
    ap.add_argument("--nodes", type=lambda s: [int(x) for x in s.split(",")], default=[1, 2, 3],
                    help="node counts to run, e.g. 1,2,3")
    ap.add_argument("--processes", type=int, default=1, help="[pipeline] processes of each node")
    ap.add_argument("--warmup", type=int, default=50, help="messages per node before measuring")
    ap.add_argument("--no-sqlite-baseline", dest="sqlite_baseline", action="store_false",
                    help="skip the 1-node SQLite run")
    ap.add_argument("--json", action="store_true", help="also print one JSON line of results")
    args = ap.parse_args()
    cmd = "python bench/bench_nodes.py " + " ".join(sys.argv[1:])
    print(f"# {cmd}")
    print(f"# {os.cpu_count()} cores; {args.n} msgs x {args.size} B, {args.c} sessions over the nodes, "
          f"[pipeline] processes={args.processes} per node; PostgreSQL, nodes and client on this machine")
    results = asyncio.run(main_async(args))
    if args.json:
        print(json.dumps({"command": cmd, "cores": os.cpu_count(), "results": results}))


if __name__ == "__main__":
    main()
