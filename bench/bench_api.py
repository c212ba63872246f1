#!/usr/bin/env python3
"""HTTP ticket API benchmark: p50/p99 of GET /tickets, GET /tickets/{number} and full-text search.

Usage:  python bench/bench_api.py [--tickets 1000000] [--articles 3] [--requests 400]
                                  [--pg postgresql://USER:PASS@HOST:PORT/DB] [--keep DIR]

Builds N tickets with ``--articles`` articles each by bulk SQL (not through SMTP: rows as the delivery
transaction writes them, the full-text index included) on a fresh SQLite database (WAL) and, with
``--pg``, on a fresh database of that server (created and dropped; the role needs CREATEDB;
``scripts/pg-start`` prints such a URL). Then ``ticketmx serve`` runs on it as a child process, an
admin token is made with ``ticketmx token create``, and one httpx client sends requests one at a time
over real HTTP on 127.0.0.1:

* list: ``GET /tickets?limit=50`` unfiltered, by status, by queue, by requester, and a few pages deep
  by cursor;
* get: ``GET /tickets/{number}`` of random tickets (3 articles each);
* search: ``GET /tickets?q=<word>`` — a word of the synthetic vocabulary drawn by its frequency (what
  people search for is mostly ordinary words), reported apart for the 5 most common words and for
  rare ones.

Targets (issue 22): list and get p99 <= 50 ms, search p99 <= 100 ms at 1,000,000 tickets.
Nothing here is a test: it prints figures and the command line that produced them.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from bench.ingest import free_port, wait_port  # noqa: E402
from gateway.store.search import search_rowid  # noqa: E402

QUEUES = ("IT", "Billing", "Sales", "HR")
STATUSES = ("new", "open", "pending", "resolved", "closed")
VOCAB = 20_000
T0 = 1_700_000_000.0


def vocabulary(rng: random.Random) -> tuple[list[str], list[float]]:
    """Synthetic words with Zipf-like frequencies (the first ones are very common)."""
    letters = "abcdefghijklmnopqrstuvwxyz"
    words = list(dict.fromkeys("".join(rng.choice(letters) for _ in range(rng.randint(4, 10)))
                               for _ in range(VOCAB * 2)))[:VOCAB]
    weights = [1.0 / (i + 1) for i in range(len(words))]
    return words, weights


class Text:
    """Subjects and bodies drawn from the vocabulary (a pool of words drawn at once: fast)."""

    def __init__(self, rng: random.Random, words: list[str], weights: list[float]) -> None:
        self.pool = rng.choices(words, weights, k=1_000_003)
        self.i = 0
        self.rng = rng

    def take(self, n: int) -> str:
        i = self.i
        self.i = (i + n * 7 + 1) % (len(self.pool) - n)
        return " ".join(self.pool[i:i + n])


def rows(n: int, per: int, seed: int = 7) -> Iterator[tuple[Any, ...]]:
    """(ticket row, contact id, [article rows]) for tickets 1..n, deterministic."""
    rng = random.Random(seed)
    words, weights = vocabulary(rng)
    text = Text(rng, words, weights)
    contacts = max(1, n // 3)
    aid = 0
    for tid in range(1, n + 1):
        cid = rng.randint(1, contacts)
        created = T0 + tid * 30.0
        subject = text.take(5)
        t = (tid, f"HD-{999 + tid}", subject, cid, QUEUES[tid % len(QUEUES)], "support@example.test",
             STATUSES[rng.randrange(len(STATUSES))], created, created + 600)
        arts = []
        for k in range(per):
            aid += 1
            arts.append((aid, tid, k + 1, f"a{aid}@bench.test", subject if k == 0 else "Re: " + subject,
                         text.take(40), created + k * 200))
        yield t, cid, arts


def build_sqlite(path: Path, n: int, per: int) -> None:
    from gateway.store.sqlite import SqliteStore

    async def migrate() -> None:
        s = SqliteStore(path)
        await s.open()
        await s.close()
    asyncio.run(migrate())
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA synchronous=OFF")
    conn.execute("BEGIN")
    conn.executemany("INSERT INTO contacts (id, email, name, created_at) VALUES (?,?,?,?)",
                     ((i, f"c{i}@customer.test", f"Customer {i}", T0) for i in range(1, max(1, n // 3) + 1)))
    batch_t: list[Any] = []
    batch_a: list[Any] = []
    batch_s: list[Any] = []
    batch_p: list[Any] = []

    def flush() -> None:
        conn.executemany("INSERT INTO tickets (id, number, subject, requester_id, queue, mailbox, status, created_at,"
                         " updated_at) VALUES (?,?,?,?,?,?,?,?,?)", batch_t)
        conn.executemany("INSERT INTO participants (ticket_id, contact_id, role) VALUES (?,?,'requester')", batch_p)
        conn.executemany("INSERT INTO articles (id, ticket_id, message_id, from_addr, subject, body_text, new_text,"
                         " created_at) VALUES (?,?,?,?,?,?,?,?)", batch_a)
        conn.executemany("INSERT INTO ticket_search (rowid, subject, body) VALUES (?,?,?)", batch_s)
        for b in (batch_t, batch_a, batch_s, batch_p):
            b.clear()

    for t, cid, arts in rows(n, per):
        batch_t.append(t)
        batch_p.append((t[0], cid))
        for aid, tid, k, mid, subj, body, at in arts:
            batch_a.append((aid, tid, mid, f"c{cid}@customer.test", subj, body, body, at))
            batch_s.append((search_rowid(tid, k), subj, body))
        if len(batch_t) >= 20_000:
            flush()
    flush()
    conn.execute("COMMIT")
    conn.execute("ANALYZE")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()


async def build_pg(url: str, n: int, per: int) -> None:
    import asyncpg

    from gateway.store.postgres import PostgresStore
    s = PostgresStore(url)
    await s.open()
    await s.close()
    conn = await asyncpg.connect(url)
    try:
        await conn.copy_records_to_table("contacts", columns=["id", "email", "name", "created_at"], records=[
            (i, f"c{i}@customer.test", f"Customer {i}", T0) for i in range(1, max(1, n // 3) + 1)])
        bt: list[Any] = []
        ba: list[Any] = []
        bp: list[Any] = []

        async def flush() -> None:
            await conn.copy_records_to_table("tickets", columns=[
                "id", "number", "subject", "requester_id", "queue", "mailbox", "status", "created_at", "updated_at"],
                records=bt)
            await conn.copy_records_to_table("participants", columns=["ticket_id", "contact_id", "role"], records=bp)
            await conn.copy_records_to_table("articles", columns=[
                "id", "ticket_id", "message_id", "from_addr", "subject", "body_text", "new_text", "created_at"],
                records=ba)
            for b in (bt, ba, bp):
                b.clear()

        for t, cid, arts in rows(n, per):
            bt.append(t)
            bp.append((t[0], cid, "requester"))
            for aid, tid, _k, mid, subj, body, at in arts:
                ba.append((aid, tid, mid, f"c{cid}@customer.test", subj, body, body, at))
            if len(bt) >= 20_000:
                await flush()
        await flush()
        # the index as the store writes it: every article's subject and text, positionless, per ticket
        step = 50_000
        for lo in range(1, n + 1, step):
            await conn.execute(
                "UPDATE tickets t SET search = s.v FROM (SELECT ticket_id, strip(to_tsvector('simple',"
                " string_agg(subject || ' ' || body_text, ' ' ORDER BY id))) AS v FROM articles"
                " WHERE ticket_id >= $1 AND ticket_id < $2 GROUP BY ticket_id) s WHERE t.id = s.ticket_id",
                lo, lo + step)
        for table in ("tickets", "articles", "contacts"):
            await conn.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT max(id) FROM {table}))")
        await conn.execute("VACUUM ANALYZE")
    finally:
        await conn.close()


def serve(workdir: Path, store_url: str) -> tuple[subprocess.Popen, str, str]:
    http_port, smtp_port = free_port(), free_port()
    cfg = workdir / "bench.toml"
    cfg.write_text(
        f'[smtp]\nlisten = ["127.0.0.1:{smtp_port}"]\nhostname = "mx.bench.test"\n\n'
        f'[store]\nurl = "{store_url}"\n\n[metrics]\nlisten = ""\n\n'
        f'[http]\nlisten = "127.0.0.1:{http_port}"\nrate_per_token = ""\n\n'
        '[[mailbox]]\naddress = "support@example.test"\nqueue = "IT"\n')
    proc = subprocess.Popen([sys.executable, "-m", "gateway", "serve", "--config", str(cfg)], cwd=ROOT,
                            stdout=open(workdir / "serve.log", "ab"), stderr=subprocess.STDOUT)
    wait_port(http_port, timeout=120)
    token = subprocess.run([sys.executable, "-m", "gateway", "token", "create", "--name", "bench", "--role", "admin",
                            "--config", str(cfg)], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    return proc, f"http://127.0.0.1:{http_port}", token


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


async def measure(base: str, token: str, n: int, requests: int) -> dict[str, list[float]]:
    rng = random.Random(11)
    words, weights = vocabulary(random.Random(7))
    common = words[:5]
    rare = words[VOCAB // 2:VOCAB // 2 + 200]
    out: dict[str, list[float]] = {k: [] for k in ("list", "get", "search", "search_common", "search_rare")}
    async with httpx.AsyncClient(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=30) as c:
        async def timed(kind: str, url: str, **params: Any) -> Any:
            t0 = time.perf_counter()
            r = await c.get(url, params=params)
            out[kind].append((time.perf_counter() - t0) * 1000)
            if r.status_code != 200:
                raise SystemExit(f"{url} {params}: {r.status_code} {r.text[:300]}")
            return r.json()
        for _ in range(20):  # warm-up (connections, caches, first imports)
            await c.get("/api/v1/tickets")
        for i in range(requests):
            which = i % 5
            if which == 0:
                await timed("list", "/api/v1/tickets", limit=50)
            elif which == 1:
                await timed("list", "/api/v1/tickets", limit=50, status=rng.choice(STATUSES))
            elif which == 2:
                await timed("list", "/api/v1/tickets", limit=50, queue=rng.choice(QUEUES))
            elif which == 3:
                await timed("list", "/api/v1/tickets", limit=50, requester=f"c{rng.randint(1, max(1, n // 3))}@customer.test")
            else:
                body = await timed("list", "/api/v1/tickets", limit=50)
                for _ in range(3):
                    if not body["next_cursor"]:
                        break
                    body = await timed("list", "/api/v1/tickets", limit=50, cursor=body["next_cursor"])
            await timed("get", f"/api/v1/tickets/HD-{999 + rng.randint(1, n)}")
            await timed("search", "/api/v1/tickets", q=rng.choices(words, weights)[0], limit=50)
            if i % 4 == 0:
                await timed("search_common", "/api/v1/tickets", q=rng.choice(common), limit=50)
                await timed("search_rare", "/api/v1/tickets", q=rng.choice(rare), limit=50)
    return out


def report(label: str, n: int, per: int, build_s: float, res: dict[str, list[float]]) -> None:
    print(f"\n{label}: {n:,} tickets, {n * per:,} articles (built in {build_s:.0f}s)")
    targets = {"list": 50, "get": 50, "search": 100, "search_common": 100, "search_rare": 100}
    for kind, xs in res.items():
        if xs:
            p99 = pct(xs, 99)
            print(f"  {kind:14s} n={len(xs):5d}  p50 {statistics.median(xs):7.1f} ms  p99 {p99:7.1f} ms  "
                  f"max {max(xs):7.1f} ms  (target p99 <= {targets[kind]} ms: {'ok' if p99 <= targets[kind] else 'MISSED'})")


def run(label: str, store_url: str, workdir: Path, n: int, per: int, requests: int, build_s: float) -> None:
    proc, base, token = serve(workdir, store_url)
    try:
        res = asyncio.run(measure(base, token, n, requests))
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    report(label, n, per, build_s, res)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tickets", type=int, default=1_000_000)
    ap.add_argument("--articles", type=int, default=3, help="articles per ticket")
    ap.add_argument("--requests", type=int, default=400, help="rounds of list + get + search requests")
    ap.add_argument("--pg", default="", help="also on PostgreSQL (a server URL; a fresh database is made on it)")
    ap.add_argument("--keep", default="", help="build the SQLite database in this directory and keep it")
    ap.add_argument("--no-sqlite", action="store_true")
    args = ap.parse_args()
    print("command: python bench/bench_api.py " + " ".join(sys.argv[1:]))
    print(f"machine: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}, SQLite {sqlite3.sqlite_version}")
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench_api."))
    work.mkdir(parents=True, exist_ok=True)
    try:
        if not args.no_sqlite:
            db = work / "bench.db"
            t0 = time.perf_counter()
            if not db.exists():
                build_sqlite(db, args.tickets, args.articles)
            run("SQLite", f"sqlite:///{db}", work, args.tickets, args.articles, args.requests, time.perf_counter() - t0)
            print(f"  database: {db.stat().st_size / 2**20:.0f} MiB")
        if args.pg:
            from tests.pg_support import drop_database, fresh_database
            url = asyncio.run(fresh_database(args.pg))
            try:
                t0 = time.perf_counter()
                asyncio.run(build_pg(url, args.tickets, args.articles))
                run("PostgreSQL", url, work, args.tickets, args.articles, args.requests, time.perf_counter() - t0)
            finally:
                asyncio.run(drop_database(args.pg, url))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps({"tickets": args.tickets, "articles": args.articles}))


if __name__ == "__main__":
    main()
