#!/usr/bin/env python3
"""Store faults: time to unstick after a write error, time for a failed start to exit (issue 25, items 4, 5).

Usage (root: mounts small tmpfs filesystems of its own, unmounted at the end):

    python bench/bench_faults.py unstick [-n 133] [--hold 8]
    python bench/bench_faults.py failed-start

``unstick``: a real `ticketmx serve` (one pipeline worker, batches of up to 200) with its SQLite store on a
24 MB tmpfs. N messages of 40 KB are spooled with the pipeline paused, the filesystem is filled to the last
byte, the pipeline resumed: deliveries and their fallback writes fail with SQLITE_FULL. After ``--hold``
seconds the filler is deleted; prints how many entries were stuck in ``processing`` while full, how long
after the space came back none was ``processing`` any more, and when every entry was terminal.

``failed-start``: `ticketmx serve` against a database another process holds with BEGIN EXCLUSIVE, on a
full tmpfs and on a read-only one: exit code and seconds until the process is gone.
Nothing here is a test (tests/test_store_write_error.py and tests/test_failed_start.py are).
"""
from __future__ import annotations

import argparse
import asyncio
import random
import sqlite3
import string
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.auth.dnsserver import TestDnsServer  # noqa: E402
from tests.conftest import free_port, simple_message, toml_dump, wait_port  # noqa: E402
from tests.test_store_write_error import fill_filesystem  # noqa: E402


def _mount(path: Path, size: str) -> None:
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)


def _config(work: Path, db: Path, dns_port: int, **pipeline: object) -> tuple[Path, int]:
    port = free_port()
    cfg = {"smtp": {"listen": [f"127.0.0.1:{port}"], "hostname": "mx.example.test", "shutdown_grace": "5s"},
           "store": {"url": f"sqlite:///{db}"},
           "mailbox": [{"address": "support@example.test", "queue": "IT"}],
           "metrics": {"listen": f"127.0.0.1:{free_port()}"},
           "pipeline": {"poll_interval": "1s", **pipeline},
           "dns": {"nameservers": [f"127.0.0.1:{dns_port}"], "timeout": "1s"}}
    path = work / "bench.toml"
    path.write_text(toml_dump(cfg))
    return path, port


def _states(db: Path) -> dict[str, int]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return dict(conn.execute("SELECT state, COUNT(*) FROM spool GROUP BY state").fetchall())
    finally:
        conn.close()


def _cli(conf: Path, *args: str) -> None:
    subprocess.run([sys.executable, "-m", "gateway", *args, "--config", str(conf)], cwd=ROOT, check=True,
                   capture_output=True)


def unstick(n: int, hold: float) -> None:
    import aiosmtplib
    dns = TestDnsServer({}).start()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        mnt = work / "mnt"
        _mount(mnt, "24m")
        proc = None
        try:
            db = mnt / "serve.db"
            conf, port = _config(work, db, dns.port, processes=1, batch_size=200)
            proc = subprocess.Popen([sys.executable, "-m", "gateway", "serve", "--config", str(conf)], cwd=ROOT,
                                    stdout=open(work / "serve.log", "wb"), stderr=subprocess.STDOUT)
            wait_port(port)
            _cli(conf, "pipeline", "pause")

            async def send() -> None:
                rnd = random.Random(25)
                smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=20, start_tls=False)
                await smtp.connect()
                for i in range(n):
                    text = "".join(rnd.choices(string.ascii_letters + " ", k=40000))
                    body = "\r\n".join(text[j:j + 70] for j in range(0, len(text), 70))
                    await smtp.sendmail("a@customer.test", ["support@example.test"],
                                        simple_message(subject=f"m{i}", body=body, message_id=f"m{i}@c.test"))
                await smtp.quit()
            asyncio.run(send())
            time.sleep(1.0)  # the background WAL checkpoint is done: it would eat the reserve below
            for i in range(3):
                (mnt / f"reserve{i}").write_bytes(b"\0" * 512 * 1024)
            fill_filesystem(mnt / "filler")
            for i in range(3):  # room for the resume command, and little more
                (mnt / f"reserve{i}").unlink()
                try:
                    _cli(conf, "pipeline", "resume")
                    break
                except subprocess.CalledProcessError:
                    continue
            time.sleep(hold)
            full = _states(db)
            (mnt / "filler").unlink()
            freed = time.monotonic()
            none_processing = None
            while time.monotonic() - freed < 120:
                states = _states(db)
                if none_processing is None and not states.get("processing"):
                    none_processing = time.monotonic() - freed
                if not states.get("processing") and not states.get("queued"):
                    break
                time.sleep(0.05)
            done = time.monotonic() - freed
            print(f"{n} messages; while the disk was full ({hold:g}s): {full}")
            print(f"after freeing space: none processing in {none_processing:.2f}s, all terminal in {done:.2f}s:"
                  f" {_states(db)}")
        finally:
            if proc is not None:
                proc.terminate()
                proc.wait(30)
            subprocess.run(["umount", "-l", str(mnt)])
    dns.stop()


def failed_start() -> None:
    dns = TestDnsServer({}).start()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        mnt = work / "mnt"
        _mount(mnt, "4m")
        try:
            db = mnt / "serve.db"
            conf, port = _config(work, db, dns.port)
            proc = subprocess.Popen([sys.executable, "-m", "gateway", "serve", "--config", str(conf)], cwd=ROOT,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            wait_port(port)
            proc.terminate()
            proc.wait(30)

            def run(what: str) -> None:
                t0 = time.monotonic()
                p = subprocess.run([sys.executable, "-m", "gateway", "serve", "--config", str(conf)], cwd=ROOT,
                                   capture_output=True, text=True, timeout=120)
                lines = [line for line in p.stdout.splitlines() + p.stderr.splitlines() if " ERROR " in line]
                print(f"{what}: exit {p.returncode} after {time.monotonic() - t0:.2f}s; "
                      f"{len(lines)} error line(s): {lines[0][24:160] if lines else ''}")

            held, release = threading.Event(), threading.Event()

            def hold() -> None:
                conn = sqlite3.connect(db, isolation_level=None)
                conn.execute("BEGIN EXCLUSIVE")
                held.set()
                release.wait()
                conn.execute("ROLLBACK")
                conn.close()
            holder = threading.Thread(target=hold)
            holder.start()
            held.wait()
            run("locked (BEGIN EXCLUSIVE held)")
            release.set()
            holder.join()
            fill_filesystem(mnt / "filler")
            run("disk full")
            (mnt / "filler").unlink()
            subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)
            run("read-only filesystem")
        finally:
            subprocess.run(["umount", "-l", str(mnt)])
    dns.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="what", required=True)
    u = sub.add_parser("unstick")
    u.add_argument("-n", type=int, default=133)
    u.add_argument("--hold", type=float, default=8.0)
    sub.add_parser("failed-start")
    args = ap.parse_args()
    if args.what == "unstick":
        unstick(args.n, args.hold)
    else:
        failed_start()


if __name__ == "__main__":
    main()
