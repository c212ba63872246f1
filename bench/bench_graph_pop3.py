#!/usr/bin/env python3
"""Initial sync of a Graph or POP3 mailbox into tickets, end to end, against a real `python -m gateway serve`.

    python bench/bench_graph_pop3.py graph [-n 2000] [--size 4096] [--latency MS]  # the Graph EMULATOR
    python bench/bench_graph_pop3.py pop3 [-n 2000] [--size 4096]    # a real Dovecot (tests/sources/dovecot.py)

N messages of about SIZE bytes are put in the mailbox before the gateway starts; the figure is N divided by
the time from the gateway's start to the moment every message is a ticket and settled (moved to
success_folder for graph; for pop3 imported and, with --delete, deleted). The emulator is Python on the same
machine as the gateway and is part of what is measured: it is not Microsoft's service, whose per-request
latency (tens of ms) and throttling limits decide the real figure. Nothing here is a test.
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("kind", choices=("graph", "pop3"))
    ap.add_argument("-n", type=int, default=2000)
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--delete", action="store_true", help="pop3: delete_after_import = true")
    ap.add_argument("--latency", type=float, default=0.0, metavar="MS",
                    help="graph: the emulator answers every request this much later (Graph is tens of ms away)")
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="ticketmx-bench-"))
    emu = dove = None
    proc = None
    try:
        secret = tmp / "secret"
        if a.kind == "graph":
            emu = GraphEmulator().start()
            emu.app_user = USER
            emu.latency = a.latency / 1000
            for i in range(a.n):
                emu.deliver(USER, message(i, a.size), received=1_790_000_000 + i)
            secret.write_text(emu.client_secret + "\n")
            src = {"name": "bench", "kind": "graph", "mailbox": USER, "tenant": emu.tenant, "user": USER,
                   "endpoint": emu.base, "authority": emu.base, "oauth_client_id": emu.client_id,
                   "oauth_client_secret_file": str(secret)}
        else:
            dove = Dovecot(tmp, users={USER: "bench-pass"}).start()
            for i in range(a.n):
                dove.deliver(USER, message(i, a.size))
            secret.write_text("bench-pass\n")
            src = {"name": "bench", "kind": "pop3", "mailbox": USER, "host": "127.0.0.1", "port": dove.pop3_port,
                   "tls": "none", "username": USER, "password_file": str(secret), "delete_after_import": a.delete}
        secret.chmod(0o600)
        src.update(poll_interval="1s", stop_after_failures=0)
        port, db = free_port(), tmp / "bench.db"
        cfg = tmp / "bench.toml"
        cfg.write_text(toml_dump({"smtp": {"listen": [f"127.0.0.1:{port}"], "hostname": "mx.example.test"},
                                  "store": {"url": f"sqlite:///{db}"}, "mailbox": [{"address": USER, "queue": "IT"}],
                                  "metrics": {"listen": f"127.0.0.1:{free_port()}"},
                                  "log": {"level": "warning"}, "source": [src]}))
        t0 = time.monotonic()
        proc = subprocess.Popen([sys.executable, "-m", "gateway", "serve", "--config", str(cfg)], cwd=ROOT,
                                stdout=open(tmp / "serve.log", "ab"), stderr=subprocess.STDOUT, start_new_session=True)
        wait_port(port)
        deadline = t0 + 600
        first = 0.0
        while count(db, "SELECT count(*) FROM source_messages WHERE state = 'settled'") < a.n:
            if not first and count(db, "SELECT count(*) FROM tickets"):
                first = time.monotonic() - t0
            if time.monotonic() > deadline or proc.poll() is not None:
                raise SystemExit(f"did not finish: see {tmp / 'serve.log'}")
            time.sleep(0.05)
        took = time.monotonic() - t0
        tickets = count(db, "SELECT count(*) FROM tickets")
        print(f"{a.kind}: {a.n} messages of ~{a.size} B -> {tickets} tickets, all settled, in {took:.1f} s"
              f" = {a.n / took:.0f} msgs/s (first ticket after {first:.1f} s, gateway start included)")
        print("reproduce: python bench/bench_graph_pop3.py " + " ".join(sys.argv[1:]))
    finally:
        if proc is not None:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(30)
        if emu is not None:
            emu.stop()
        if dove is not None:
            dove.stop()
        if not os.environ.get("BENCH_KEEP"):
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
