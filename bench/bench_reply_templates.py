#!/usr/bin/env python3
"""Reply templates on the ticket page: p50/p99 with none and with N templates, and of rendering one.

Usage:  python bench/bench_reply_templates.py [--tickets 20000] [--templates 1000] [--requests 300]

Builds tickets with bench/bench_api.py's bulk builder on a fresh SQLite database, adds ``--templates``
reply templates (1,000 is the store's cap; half for every queue, half spread over the queues; each a
~1.5 KB body with placeholders, an if/elif/else and filters) and runs ``ticketmx serve`` on it (via
bench/bench_ui.py's ``serve``: signed in over real HTTP as an admin). Then, one request at a time over
127.0.0.1, it times:

* ``ticket``: ``/ui/tickets/HD-…`` (the picker lists the ticket's queue's templates), before the
  templates are added and after;
* ``compose``: ``/ui/tickets/HD-…/compose?template=ID`` (the htmx fragment: the template fetched,
  checked again, rendered; a random one of those usable on the ticket).

Target: the UI's, each page <= 100 ms p99.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from bench.bench_api import QUEUES, build_sqlite, pct  # noqa: E402
from bench.bench_ui import TARGET_MS, serve, signin  # noqa: E402

BODY = ("Hello {{ requester.name | default('there', true) | title }},\n\n"
        "thank you for writing to us about {{ ticket.number }} ({{ ticket.subject }}).\n"
        "{% if ticket.priority == 'high' %}We treat it as urgent and come back within the hour.\n"
        "{% elif ticket.priority == 'low' %}We will look at it this week.\n"
        "{% else %}We will come back to you today.\n{% endif %}"
        + "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor incididunt.\n" * 14
        + "Kind regards,\n{{ agent.name }} ({{ agent.email | lower }}), {{ ticket.queue | upper }} team\n")


def add_templates(db: Path, n: int) -> None:
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("DELETE FROM reply_templates")
    now = time.time()
    conn.executemany("INSERT INTO reply_templates (name, queue, body, created, created_by, updated, updated_by)"
                     " VALUES (?,?,?,?,?,?,?)",
                     ((f"Template {i:04d}", None if i % 2 == 0 else QUEUES[i % len(QUEUES)], BODY, now, "bench",
                       now, "bench") for i in range(n)))
    conn.close()


async def measure(base: str, n: int, requests: int, compose: bool) -> dict[str, list[float]]:
    rng = random.Random(5)
    out: dict[str, list[float]] = {"ticket": [], "compose": []}
    async with httpx.AsyncClient(base_url=base, timeout=60) as c:
        await signin(c, "agent0@staff.test")
        for _ in range(10):
            await c.get("/ui/tickets")
        for _ in range(requests):
            number = f"HD-{999 + rng.randint(1, n)}"
            t0 = time.perf_counter()
            r = await c.get(f"/ui/tickets/{number}")
            out["ticket"].append((time.perf_counter() - t0) * 1000)
            if r.status_code != 200:
                raise SystemExit(f"{number}: {r.status_code} {r.text[:300]}")
            ids = re.findall(r'<option value="(\d+)"', r.text)
            if compose:
                if not ids:
                    raise SystemExit(f"{number}: no template in the picker")
                t0 = time.perf_counter()
                r = await c.get(f"/ui/tickets/{number}/compose", params={"template": rng.choice(ids)})
                out["compose"].append((time.perf_counter() - t0) * 1000)
                if r.status_code != 200 or "thank you for writing" not in r.text:
                    raise SystemExit(f"compose {number}: {r.status_code} {r.text[:300]}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tickets", type=int, default=20_000)
    ap.add_argument("--templates", type=int, default=1000)
    ap.add_argument("--requests", type=int, default=300)
    args = ap.parse_args()
    print("command: python bench/bench_reply_templates.py " + " ".join(sys.argv[1:]))
    print(f"machine: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}, SQLite {sqlite3.sqlite_version}")
    work = Path(tempfile.mkdtemp(prefix="bench_tpl."))
    try:
        db = work / "bench.db"
        build_sqlite(db, args.tickets, 3)
        results = {}
        for label, count in (("no templates", 0), (f"{args.templates} templates", args.templates)):
            add_templates(db, count)
            proc, base = serve(work, f"sqlite:///{db}")
            try:
                results[label] = asyncio.run(measure(base, args.tickets, args.requests, compose=count > 0))
            finally:
                proc.terminate()
                proc.wait(timeout=60)
        print(f"\nSQLite: {args.tickets:,} tickets; template body {len(BODY):,} characters")
        for label, res in results.items():
            for kind, xs in res.items():
                if xs:
                    p99 = pct(xs, 99)
                    print(f"  {label:16s} {kind:8s} n={len(xs):4d}  p50 {statistics.median(xs):6.1f} ms  "
                          f"p99 {p99:6.1f} ms  max {max(xs):6.1f} ms  "
                          f"(target p99 <= {TARGET_MS:g} ms: {'ok' if p99 <= TARGET_MS else 'MISSED'})")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
