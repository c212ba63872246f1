#!/usr/bin/env python3
"""Initial sync of a Graph or POP3 mailbox into tickets, end to end, against a real `python -m gateway serve`.

    python bench/bench_graph_pop3.py graph [-n 2000] [--size 4096] [--latency MS]  # the Graph EMULATOR
    python bench/bench_graph_pop3.py pop3 [-n 2000] [--size 4096]    # a real Dovecot (tests/sources/dovecot.py)
    python bench/bench_graph_pop3.py graph --sources 100 -n 3      # 100 sources (mailboxes) of 3 messages each

With --sources S: S sources, one mailbox each, N messages in each; besides the time to settle them all, the
serving process's RSS with S sources against one source (VmRSS once everything settled), per source, and,
over 70 s of idling after that, the largest gap between two successful cycles of any source
(ticketmx_source_last_success_timestamp_seconds sampled every second) against poll_interval = 60s.

N messages of about SIZE bytes are put in the mailbox before the gateway starts; the figure is N divided by
the time from the gateway's start to the moment every message is a ticket and settled (moved to
success_folder for graph; for pop3 imported and, with --delete, deleted). The emulator is Python on the same
machine as the gateway and is part of what is measured: it is not Microsoft's service, whose per-request
latency (tens of ms) and throttling limits decide the real figure. Nothing here is a test.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.conftest import free_port, toml_dump, wait_port  # noqa: E402
from tests.sources.dovecot import Dovecot  # noqa: E402
from tests.sources.graph_emulator import GraphEmulator  # noqa: E402

USER = "support@example.test"


def message(i: int, size: int) -> bytes:
    body = ("Lorem ipsum dolor sit amet, consectetur adipiscing elit. " * (size // 57 + 1))[:size]
    lines = "\r\n".join(body[j:j + 76] for j in range(0, len(body), 76))
    return (f"From: Customer {i} <c{i}@customer.test>\r\nTo: {USER}\r\nSubject: Bench {i}\r\n"
            f"Message-ID: <bench{i}.{time.time_ns()}@customer.test>\r\nDate: Sun, 22 Nov 2026 10:00:00 +0000\r\n"
            f"\r\n{lines}\r\n").encode()


def count(db: Path, sql: str) -> int:
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as c:
            return int(c.execute(sql).fetchone()[0])
    except sqlite3.OperationalError:
        return 0


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def run(a: argparse.Namespace, sources: int, tmp: Path) -> tuple[float, int, float]:
    """One serve with ``sources`` sources of ``a.n`` messages each: (seconds to settle all, RSS kB, worst gap)."""
    emu = dove = None
    proc = None
    tmp.mkdir(parents=True, exist_ok=True)
    users = [USER if i == 0 else f"box{i}@example.test" for i in range(sources)]
    try:
        secret = tmp / "secret"
        srcs = []
        if a.kind == "graph":
            emu = GraphEmulator().start()
            emu.latency = a.latency / 1000
            secret.write_text(emu.client_secret + "\n")
            for u in users:
                for i in range(a.n):
                    emu.deliver(u, message(i, a.size), received=1_790_000_000 + i)
                srcs.append({"kind": "graph", "tenant": emu.tenant, "user": u, "endpoint": emu.base,
                             "authority": emu.base, "oauth_client_id": emu.client_id,
                             "oauth_client_secret_file": str(secret)})
        else:
            dove = Dovecot(tmp, users={u: "bench-pass" for u in users}).start()
            secret.write_text("bench-pass\n")
            for u in users:
                for i in range(a.n):
                    dove.deliver(u, message(i, a.size))
                srcs.append({"kind": "pop3", "host": "127.0.0.1", "port": dove.pop3_port, "tls": "none", "username": u,
                             "password_file": str(secret), "delete_after_import": a.delete})
        secret.chmod(0o600)
        for i, src in enumerate(srcs):
            src.update(name=f"s{i}", mailbox=USER, poll_interval="60s" if sources > 1 else "1s",
                       stop_after_failures=0)
        port, db = free_port(), tmp / "bench.db"
        cfg = tmp / "bench.toml"
        cfg.write_text(toml_dump({"smtp": {"listen": [f"127.0.0.1:{port}"], "hostname": "mx.example.test"},
                                  "store": {"url": f"sqlite:///{db}"}, "mailbox": [{"address": USER, "queue": "IT"}],
                                  "metrics": {"listen": f"127.0.0.1:{(mport := free_port())}"},
                                  "pipeline": {"processes": 1},
                                  "log": {"level": "warning"}, "source": srcs}))
        t0 = time.monotonic()
        proc = subprocess.Popen([sys.executable, "-m", "gateway", "serve", "--config", str(cfg)], cwd=ROOT,
                                stdout=open(tmp / "serve.log", "ab"), stderr=subprocess.STDOUT, start_new_session=True)
        wait_port(port)
        total = a.n * sources
        while count(db, "SELECT count(*) FROM source_messages WHERE state = 'settled'") < total:
            if time.monotonic() - t0 > 600 or proc.poll() is not None:
                raise SystemExit(f"did not finish: see {tmp / 'serve.log'}")
            time.sleep(0.05)
        took = time.monotonic() - t0
        settled_rss = rss_kb(proc.pid)
        gap = 0.0
        if sources > 1:   # idle for 70 s (over one poll_interval), sampling every source's last success
            last: dict[str, float] = {}
            end = time.monotonic() + 70
            while time.monotonic() < end:
                text = urllib.request.urlopen(f"http://127.0.0.1:{mport}/metrics", timeout=5).read().decode()
                now = time.time()
                for name, v in re.findall(r'^ticketmx_source_last_success_timestamp_seconds\{source="([^"]+)"\} (\S+)$',
                                          text, re.M):
                    last[name] = float(v)
                    gap = max(gap, now - float(v))
                time.sleep(1)
            assert len(last) == sources, f"{len(last)} of {sources} sources reported"
        return took, settled_rss, gap
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGTERM)   # the main process, as systemd's KillMode=mixed does
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                print(f"serve did not stop within 30 s of SIGTERM (log: {tmp / 'serve.log'}); killed", file=sys.stderr)
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        if emu is not None:
            emu.stop()
        if dove is not None:
            dove.stop()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("kind", choices=("graph", "pop3"))
    ap.add_argument("-n", type=int, default=2000)
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--delete", action="store_true", help="pop3: delete_after_import = true")
    ap.add_argument("--sources", type=int, default=1, metavar="S", help="S sources, one mailbox each")
    ap.add_argument("--latency", type=float, default=0.0, metavar="MS",
                    help="graph: the emulator answers every request this much later (Graph is tens of ms away)")
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="ticketmx-bench-"))
    try:
        if a.sources == 1:
            took, _, _ = run(a, 1, tmp)
            print(f"{a.kind}: {a.n} messages of ~{a.size} B -> all tickets and settled in {took:.1f} s"
                  f" = {a.n / took:.0f} msgs/s (gateway start included)")
        else:
            _, one, _ = run(a, 1, tmp / "one")
            took, many, gap = run(a, a.sources, tmp / "many")
            print(f"{a.kind}: {a.sources} sources x {a.n} messages settled in {took:.1f} s; RSS {one / 1024:.1f} MiB"
                  f" with 1 source, {many / 1024:.1f} MiB with {a.sources}: {(many - one) / (a.sources - 1):.0f} KiB"
                  f" per source; longest time since a source's last successful cycle: {gap:.0f} s"
                  " (poll_interval 60 s)")
        print("reproduce: python bench/bench_graph_pop3.py " + " ".join(sys.argv[1:]))
    finally:
        if not os.environ.get("BENCH_KEEP"):
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
