#!/usr/bin/env python3
"""Mail-admin pages' render time: p50/p99 of each /ui/admin page on a large store.

Usage:  python bench/bench_ui_admin.py [--tickets 1000000] [--spool 1000000] [--relay 300000]
                                       [--webhooks 300000] [--audit 20000] [--requests 40] [--keep DIR]
                                       [--pg postgresql://USER:PASS@HOST:PORT/DB [--no-sqlite]]

Builds the tickets with bench/bench_api.py's bulk builder, then adds rows as the gateway writes them:
``--spool`` spool entries spread over 30 days (2% quarantined with their header section kept, the rest
ticketed, raw purged as [retention] raw_days does), ``--relay`` notifications and ``--webhooks`` outbox
events over 30 days (a few dead, deferred and queued), ``--audit`` audit rows. Runs ``ticketmx serve`` on
it (bench/bench_ui.py's ``serve``: an admin user, sign-in over real HTTP) and asks for each admin page
one at a time over 127.0.0.1, timing request to last byte (render time plus a loopback round trip).

``--pg URL``: the same rows on PostgreSQL (COPY), on a fresh database of that server (created and
dropped; the role needs CREATEDB; ``scripts/pg-start`` prints such a URL).

Target (issue 24): each page <= 100 ms p99 at 1,000,000 tickets. Prints figures and the command.
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
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from bench.bench_api import build_sqlite, pct  # noqa: E402
from bench.bench_ui import TARGET_MS, serve, signin  # noqa: E402

DAYS = 30
AUTH = json.dumps({"spf": {"result": "pass", "domain": "customer.test"}, "dkim": [{"result": "pass",
                   "domain": "customer.test"}], "dmarc": {"result": "pass"}, "arc": {"result": "none"},
                   "from": {"addresses": ["c1@customer.test"]}, "decision": {"action": "accept"}})
HISTORY_OK = json.dumps([{"stage": s, "action": "continue"} for s in ("identity", "sender_policy", "spam")]
                        + [{"stage": "ticket", "action": "ticket"}])
HISTORY_Q = json.dumps([{"stage": "identity", "action": "continue"},
                        {"stage": "sender_policy", "action": "quarantine", "reason": "sender not allowed"}])
HEAD = (b"Received: from client.test ([192.0.2.1]) by mx.bench.test\r\nAuthentication-Results: mx.bench.test; "
        b"spf=pass\r\nFrom: Mallory <mallory@other.test>\r\nTo: support@example.test\r\nSubject: offer\r\n"
        b"Message-ID: <q@other.test>\r\n")


SPOOL_COLS = ("id", "received_at", "mail_from", "rcpt_tos", "mailboxes", "peer_ip", "helo", "message_id", "size", "raw",
              "auth_header", "auth", "state", "reason", "attempts", "history", "ticket_id", "finished_at")
RELAY_COLS = ("id", "ticket_id", "event", "mailbox", "mail_from", "message", "message_id", "state", "attempts",
              "next_attempt_at", "last_error", "created_at", "lifetime_from", "sent_at", "finished_at")
HOOK_COLS = ("id", "event_id", "webhook", "event", "ticket_id", "payload", "dedupe_key", "state", "attempts",
             "next_attempt_at", "last_status", "last_error", "created_at", "lifetime_from", "delivered_at", "finished_at")
AUDIT_COLS = ("at", "actor", "role", "action", "target", "detail", "client")
Batch = tuple[str, tuple[str, ...], list[tuple[Any, ...]]]


def batches(spool: int, relay: int, hooks: int, audit: int, now: float, picked: dict[str, Any]) -> Iterator[Batch]:
    """The admin tables' rows as the gateway leaves them, as (table, columns, rows) batches for either
    backend; fills ``picked`` with ids to ask for (a quarantined entry, a Message-ID, a sender)."""
    rng = random.Random(7)
    start = now - DAYS * 86400
    step = DAYS * 86400 / max(1, spool)
    rows: list[tuple[Any, ...]] = []
    raws: list[tuple[Any, ...]] = []
    for i in range(spool):
        t = start + i * step
        sid = f"{int(t * 1000):011x}{i:08x}"
        q = rng.random() < 0.02
        mid = f"m{i}@customer.test"
        rows.append((sid, t, f"c{i % 50000}@customer.test", '["support@example.test"]', '["support@example.test"]',
                     "192.0.2.1", "client.test", mid, 900, b"", "spf=pass", AUTH,
                     "quarantined" if q else "ticket_created", "sender not allowed" if q else "", 1,
                     HISTORY_Q if q else HISTORY_OK, None if q else (i % 1_000_000) + 1, t + 0.05))
        if q:
            raws.append((sid, HEAD))
            picked["quarantined"] = sid
        if i == spool // 2:
            picked["message_id"], picked["sender"] = mid, f"c{i % 50000}@customer.test"
        if len(rows) >= 20000 or i == spool - 1:
            yield "spool", SPOOL_COLS, rows
            yield "spool_raw", ("spool_id", "raw"), raws
            rows, raws = [], []
    rstep = DAYS * 86400 / max(1, relay)
    batch: list[tuple[Any, ...]] = []
    rcpts: list[tuple[Any, ...]] = []
    for i in range(1, relay + 1):
        t = start + i * rstep
        state = "dead" if i % 997 == 0 else "deferred" if i % 1999 == 0 else "queued" if i > relay - 20 else "sent"
        done = t + 2 if state in ("sent", "dead") else None
        batch.append((i, (i % 1_000_000) + 1, "ack", "support@example.test", "helpdesk@example.test", b"x" * 600,
                      f"n{i}@mx.bench.test", state, 1, t + 60, "451 try later" if state != "sent" else "", t, t, done,
                      done))
        rcpts.append((i, f"c{i % 50000}@customer.test", state))
        if len(batch) >= 20000 or i == relay:
            yield "relay_queue", RELAY_COLS, batch
            yield "relay_recipients", ("notification_id", "address", "state"), rcpts
            batch, rcpts = [], []
    hstep = DAYS * 86400 / max(1, hooks)
    for i in range(1, hooks + 1):
        t = start + i * hstep
        state = "dead" if i % 997 == 0 else "queued" if i > hooks - 20 else "delivered"
        done = t + 1 if state != "queued" else None
        batch.append((i, f"ev-{i}", "desk", "ticket.created", (i % 1_000_000) + 1, "{}", f"ticket:{i}", state, 1,
                      t + 30, 200 if state == "delivered" else 500, "" if state == "delivered" else "HTTP 500", t, t,
                      done, done))
        if len(batch) >= 20000 or i == hooks:
            yield "webhook_outbox", HOOK_COLS, batch
            batch = []
    astep = DAYS * 86400 / max(1, audit)
    yield "audit_log", AUDIT_COLS, [
        (start + i * astep, f"ops{i % 5}", "admin", ("message.release", "relay.retry", "message.replay",
                                                     "token.create")[i % 4], f"t{i}", "{}", "127.0.0.1")
        for i in range(audit)]


def fill(db: Path, spool: int, relay: int, hooks: int, audit: int, now: float) -> dict[str, Any]:
    """:func:`batches` into the SQLite database ``db``."""
    picked: dict[str, Any] = {}
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA synchronous=OFF")
    conn.execute("BEGIN")
    for table, cols, rows in batches(spool, relay, hooks, audit, now, picked):
        if rows:
            conn.executemany(f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({','.join('?' * len(cols))})", rows)
    conn.execute("COMMIT")
    # The gateway never runs ANALYZE; statistics gathered on these synthetic rows (four states evenly
    # spread, to SQLite without STAT4) would make the planner scan rather than use the state indexes.
    conn.execute("DELETE FROM sqlite_stat1 WHERE tbl IN ('spool', 'relay_queue', 'relay_recipients',"
                 " 'webhook_outbox', 'audit_log')")
    conn.close()
    return picked


async def fill_pg(url: str, spool: int, relay: int, hooks: int, audit: int, now: float) -> dict[str, Any]:
    """:func:`batches` into the PostgreSQL database ``url`` (COPY), then VACUUM ANALYZE as autovacuum would."""
    import asyncpg
    picked: dict[str, Any] = {}
    conn = await asyncpg.connect(url)
    try:
        held: list[tuple[Any, ...]] = []
        for table, cols, rows in batches(spool, relay, hooks, audit, now, picked):
            if table == "spool":      # PostgreSQL keeps the bytes in the spool row (no spool_raw): wait for them
                held = rows
                continue
            if table == "spool_raw":
                raw = dict(rows)
                table, cols, rows = "spool", SPOOL_COLS, [r[:9] + (raw.get(r[0], b""),) + r[10:] for r in held]
            if rows:
                await conn.copy_records_to_table(table, columns=list(cols), records=rows)
        for table in ("relay_queue", "webhook_outbox"):
            await conn.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT max(id) FROM {table}))")
        await conn.execute("VACUUM ANALYZE")
    finally:
        await conn.close()
    return picked


async def measure(base: str, picked: dict[str, str], requests: int) -> dict[str, list[float]]:
    pages = {
        "dashboard": ("/ui/admin", {}),
        "quarantine": ("/ui/admin/quarantine", {}),
        "message": (f"/ui/admin/messages/{picked['quarantined']}", {}),
        "trace_mid_2d": ("/ui/admin/trace", {"message_id": picked["message_id"], "since": "20d"}),
        "trace_sender_1d": ("/ui/admin/trace", {"sender": picked["sender"], "since": "1d"}),
        "trace_mid_all": ("/ui/admin/trace", {"message_id": picked["message_id"]}),
        "outbound": ("/ui/admin/outbound", {}),
        "outbound_dead": ("/ui/admin/outbound", {"relay_state": "dead"}),
        "config": ("/ui/admin/config", {}),
        "audit": ("/ui/admin/audit", {}),
        "audit_action": ("/ui/admin/audit", {"action": "relay.retry", "since": "7d"}),
        "sources": ("/ui/admin/sources", {}),
    }
    out: dict[str, list[float]] = {k: [] for k in pages}
    async with httpx.AsyncClient(base_url=base, timeout=60) as c:
        await signin(c, "agent0@staff.test")
        for path, params in pages.values():      # warm up (caches, the first query plans)
            r = await c.get(path, params=params)
            assert r.status_code == 200, (path, r.status_code, r.text[:300])
        for _ in range(requests):
            for kind, (path, params) in pages.items():
                t0 = time.perf_counter()
                r = await c.get(path, params=params)
                out[kind].append((time.perf_counter() - t0) * 1000)
                assert r.status_code == 200, (path, r.status_code)
    return out


def report(label: str, args: argparse.Namespace, build_s: float, res: dict[str, list[float]]) -> None:
    print(f"\n{label}: {args.tickets:,} tickets, {args.spool:,} spool entries over {DAYS} days, {args.relay:,} "
          f"notifications, {args.webhooks:,} webhook events, {args.audit:,} audit rows (built in {build_s:.0f}s;"
          f" load average {' '.join(f'{x:.1f}' for x in os.getloadavg())})")
    for kind, xs in res.items():
        p99 = pct(xs, 99)
        print(f"  {kind:16s} n={len(xs):4d}  p50 {statistics.median(xs):6.1f} ms  p99 {p99:6.1f} ms  "
              f"max {max(xs):6.1f} ms  (target p99 <= {TARGET_MS:g} ms: {'ok' if p99 <= TARGET_MS else 'MISSED'})")


def run(work: Path, store_url: str, picked: dict[str, Any], requests: int) -> dict[str, list[float]]:
    proc, base = serve(work, store_url)
    try:
        return asyncio.run(measure(base, picked, requests))
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tickets", type=int, default=1_000_000)
    ap.add_argument("--articles", type=int, default=1)
    ap.add_argument("--spool", type=int, default=1_000_000)
    ap.add_argument("--relay", type=int, default=300_000)
    ap.add_argument("--webhooks", type=int, default=300_000)
    ap.add_argument("--audit", type=int, default=20_000)
    ap.add_argument("--requests", type=int, default=40, help="rounds over every page")
    ap.add_argument("--keep", default="", help="build the database in this directory and keep it (reused if there)")
    ap.add_argument("--pg", default="", help="also on PostgreSQL (a server URL; a fresh database is made on it)")
    ap.add_argument("--no-sqlite", action="store_true")
    args = ap.parse_args()
    print("command: python bench/bench_ui_admin.py " + " ".join(sys.argv[1:]))
    print(f"machine: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}, SQLite {sqlite3.sqlite_version}")
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench_ui_admin."))
    work.mkdir(parents=True, exist_ok=True)
    try:
        if not args.no_sqlite:
            db, picks = work / "bench.db", work / "picked.json"
            t0 = time.perf_counter()
            if not db.exists():
                build_sqlite(db, args.tickets, args.articles)
                picked = fill(db, args.spool, args.relay, args.webhooks, args.audit, time.time())
                picked["sizes"] = {k: getattr(args, k) for k in ("tickets", "spool", "relay", "webhooks", "audit")}
                picks.write_text(json.dumps(picked))
            picked = json.loads(picks.read_text())
            for k, v in picked["sizes"].items():  # a kept database keeps the sizes it was built with
                setattr(args, k, v)
            build_s = time.perf_counter() - t0
            report("SQLite", args, build_s, run(work, f"sqlite:///{db}", picked, args.requests))
        if args.pg:
            from bench.bench_api import build_pg
            from tests.pg_support import drop_database, fresh_database
            url = asyncio.run(fresh_database(args.pg))
            try:
                t0 = time.perf_counter()
                asyncio.run(build_pg(url, args.tickets, args.articles))
                picked = asyncio.run(fill_pg(url, args.spool, args.relay, args.webhooks, args.audit, time.time()))
                report("PostgreSQL", args, time.perf_counter() - t0, run(work, url, picked, args.requests))
            finally:
                asyncio.run(drop_database(args.pg, url))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
