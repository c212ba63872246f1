#!/usr/bin/env python3
"""Issue 23: pull ingress against a local Dovecot (the tests' fixture, tests/sources/dovecot.py).

    python bench/bench_sources.py idle   [-n 100]                    # IMAP IDLE: delivered -> ticket, p50/p99
    python bench/bench_sources.py sync   [-n 10000]                  # initial sync of n 4 KB messages, msgs/s
    python bench/bench_sources.py many   [--sources 100] [--poll 60] [--duration 130]   # check lag, RSS/source

One ``ticketmx serve`` (a private SQLite store, ``[pipeline] processes = 1``, the tests' DNS server with an
empty zone) pulls from one Dovecot instance (Maildirs under /tmp, IMAPS on 127.0.0.1, passwd-file users).

* ``idle``: one source with ``idle = true`` and ``poll_interval = "60s"`` (so only IDLE can be quick); one
  message at a time is written into the Maildir's new/ (as an MDA does) and the clock runs until its ticket
  is in the store (polled every 5 ms: the figures include up to 5 ms of that).
* ``sync``: n messages of 4 KB are in the INBOX before ``serve`` starts; the clock runs from the moment
  serve listens until the last ticket is committed (and, separately, until the last import).
* ``many``: ``--sources`` users and sources (one message each at start, ``idle = false``: every source
  polls); every ``last_success`` in source_state is sampled each second for ``--duration`` seconds and the
  largest gap between two checks of a source is reported against ``poll_interval``. RSS: the serve main
  process's VmRSS with the sources connected minus a run with one source, per extra source.

Messages are not DKIM-signed (DMARC evaluates to none). On a shared 2-core machine Dovecot, the gateway and
its pipeline worker share the cores. Nothing here is a test: it prints figures and the command line.
"""
from __future__ import annotations

import argparse
import shlex
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.auth.dnsserver import TestDnsServer  # noqa: E402
from tests.sources.conftest import USER, message, source_table  # noqa: E402
from tests.sources.dovecot import Dovecot  # noqa: E402
from tests.test_serve import ServeProcess  # noqa: E402


def body4k(i: int) -> str:
    line = f"Message {i}: the printer on the third floor is on fire again, please send someone.\r\n"
    return line * (4096 // len(line))


def count(db: Path, sql: str) -> int:
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            return con.execute(sql).fetchone()[0]
        finally:
            con.close()
    except sqlite3.OperationalError:
        return 0


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


class Setup:
    def __init__(self, users: list[str]) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="bench-sources-"))
        self.dns = TestDnsServer({})
        self.dns.start()
        self.dovecot = Dovecot(self.tmp, users={u: "s3cret" for u in users})
        self.srv: ServeProcess | None = None

    def serve(self, sources: list[dict], **over: object) -> ServeProcess:
        pipeline = {"poll_interval": "100ms", "processes": 1}
        self.srv = ServeProcess(self.tmp, self.dns.port, source=sources, pipeline=pipeline, **over)
        return self.srv

    def close(self) -> None:
        if self.srv is not None and self.srv.proc is not None and self.srv.proc.poll() is None:
            self.srv.proc.kill()
            self.srv.proc.wait()
        self.dovecot.stop()
        self.dns.stop()
        import shutil
        shutil.rmtree(self.tmp, ignore_errors=True)

    @property
    def db(self) -> Path:
        return self.tmp / "serve.db"


def bench_idle(n: int) -> None:
    s = Setup([USER])
    try:
        s.dovecot.start()
        srv = s.serve([source_table(s.dovecot, s.tmp, idle=True, poll_interval="60s")]).start()
        deadline = time.monotonic() + 30
        while not count(s.db, "SELECT COUNT(*) FROM source_state WHERE last_success IS NOT NULL"):
            assert time.monotonic() < deadline, srv.log.read_text()[-2000:]
            time.sleep(0.05)
        time.sleep(0.5)  # the source is in IDLE now
        lat: list[float] = []
        for i in range(n):
            t0 = time.monotonic()
            s.dovecot.deliver(USER, message(i, body=body4k(i)))
            while count(s.db, "SELECT COUNT(*) FROM tickets") < i + 1:
                if time.monotonic() - t0 > 30:
                    raise SystemExit(f"message {i}: no ticket after 30 s\n{srv.log.read_text()[-2000:]}")
                time.sleep(0.005)
            lat.append(time.monotonic() - t0)
            time.sleep(0.05)
        srv.stop()
        print(f"idle: {n} messages, delivered -> ticket committed: p50 {pct(lat, 50) * 1000:.0f} ms,"
              f" p90 {pct(lat, 90) * 1000:.0f} ms, p99 {pct(lat, 99) * 1000:.0f} ms, max {max(lat) * 1000:.0f} ms"
              f" (target p99 <= 2000 ms)")
    finally:
        s.close()


def bench_sync(n: int) -> None:
    s = Setup([USER])
    try:
        s.dovecot.start()
        t = time.monotonic()
        for i in range(n):
            s.dovecot.deliver(USER, message(i, body=body4k(i)))
        print(f"sync: {n} messages of {len(message(0, body=body4k(0)))} bytes written in {time.monotonic() - t:.1f} s")
        s.dovecot.doveadm("mailbox", "status", "-u", USER, "messages", "INBOX")  # index built before the clock
        srv = s.serve([source_table(s.dovecot, s.tmp, poll_interval="1s")])
        t0 = time.monotonic()
        srv.start()
        t_listen = time.monotonic()
        t_imported = None
        deadline = t0 + 600
        while True:
            imported = count(s.db, "SELECT COUNT(*) FROM source_messages")
            if t_imported is None and imported >= n:
                t_imported = time.monotonic()
            if count(s.db, "SELECT COUNT(*) FROM tickets") >= n:
                break
            if time.monotonic() > deadline:
                raise SystemExit(f"not done: {imported} imported\n{srv.log.read_text()[-2000:]}")
            time.sleep(0.1)
        t_end = time.monotonic()
        settled_deadline = time.monotonic() + 120
        while count(s.db, "SELECT COUNT(*) FROM source_messages WHERE state='settled'") < n:
            if time.monotonic() > settled_deadline:
                break
            time.sleep(0.1)
        t_settled = time.monotonic()
        srv.stop()
        assert count(s.db, "SELECT COUNT(*) FROM spool") == n
        print(f"sync: {n} messages -> tickets in {t_end - t_listen:.1f} s = {n / (t_end - t_listen):.0f} msgs/s"
              f" (target >= 300); imported (spooled) at {n / ((t_imported or t_end) - t_listen):.0f} msgs/s;"
              f" all moved to Processed after {t_settled - t_listen:.1f} s; serve start {t_listen - t0:.1f} s")
    finally:
        s.close()


def bench_many(k: int, poll: int, duration: float) -> None:
    users = [f"user{i}@example.test" for i in range(k)]
    s = Setup(users)
    try:
        s.dovecot.start()
        pw = s.tmp / "imap-password"
        for u in users:
            s.dovecot.deliver(u, message(0, body=body4k(0)))

        def table(i: int) -> dict:
            return source_table(s.dovecot, s.tmp, name=f"s{i}", username=users[i], idle=False,
                                poll_interval=f"{poll}s", password_file=str(pw))

        # baseline: one source
        srv = s.serve([table(0)]).start()
        while count(s.db, "SELECT COUNT(*) FROM tickets") < 1:
            time.sleep(0.1)
        time.sleep(3)
        base = rss_kb(srv.proc.pid)
        srv.stop()
        s.db.unlink()
        for p in s.tmp.glob("serve.db-*"):
            p.unlink()
        for u in users:
            s.dovecot.deliver(u, message(1, body=body4k(1)))
        srv = s.serve([table(i) for i in range(k)]).start()
        t0 = time.time()
        last: dict[str, list[float]] = {}
        peak = 0
        while time.time() - t0 < duration:
            con = sqlite3.connect(f"file:{s.db}?mode=ro", uri=True, timeout=5)
            try:
                rows = con.execute("SELECT source, last_success FROM source_state").fetchall()
            except sqlite3.OperationalError:
                rows = []
            con.close()
            for name, ls in rows:
                if ls and (not last.get(name) or last[name][-1] != ls):
                    last.setdefault(name, []).append(ls)
            peak = max(peak, rss_kb(srv.proc.pid))
            time.sleep(1.0)
        rss_end = rss_kb(srv.proc.pid)
        tickets = count(s.db, "SELECT COUNT(*) FROM tickets")
        srv.stop()
        first = [v[0] - t0 for v in last.values()]
        gaps = [b - a for v in last.values() for a, b in zip(v, v[1:])]
        # a source whose last check is older than poll at the end also counts (its gap is still open)
        open_gaps = [t0 + duration - v[-1] for v in last.values()]
        worst = max(gaps + open_gaps) if gaps or open_gaps else float("nan")
        print(f"many: {k} sources, poll_interval {poll} s, {duration:.0f} s observed: {len(last)} checked;"
              f" first check after {max(first):.1f} s at the latest (median {statistics.median(first):.1f} s);"
              f" {len(gaps)} intervals, largest gap between checks {max(gaps) if gaps else float('nan'):.1f} s,"
              f" largest incl. the open one at the end {worst:.1f} s (<= poll_interval + cycle: target {poll} s);"
              f" tickets {tickets} (expected {2 * k - 1}: the baseline run took one)")
        print(f"many: serve main process VmRSS: 1 source {base / 1024:.1f} MB, {k} sources {rss_end / 1024:.1f} MB"
              f" (peak {peak / 1024:.1f} MB): {(rss_end - base) / 1024 / (k - 1):.2f} MB per extra source"
              f" (target < 2 MB)")
    finally:
        s.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("what", choices=("idle", "sync", "many"))
    ap.add_argument("-n", type=int, default=0, help="messages (idle: 100, sync: 10000)")
    ap.add_argument("--sources", type=int, default=100)
    ap.add_argument("--poll", type=int, default=60)
    ap.add_argument("--duration", type=float, default=130.0)
    a = ap.parse_args()
    print("command: python " + " ".join(shlex.quote(x) for x in sys.argv))
    if a.what == "idle":
        bench_idle(a.n or 100)
    elif a.what == "sync":
        bench_sync(a.n or 10000)
    else:
        bench_many(a.sources, a.poll, a.duration)


if __name__ == "__main__":
    main()
