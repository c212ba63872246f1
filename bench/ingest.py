#!/usr/bin/env python3
"""Ingest benchmark: the same client against postfix's smtp-sink (discards) and ticketmx (durable, tickets).

Usage:  python bench/ingest.py [-n 5000] [-c 20] [--size 4096] [--mode reuse|conn] [--latency-rate 300]

For each target it runs postfix's smtp-source (C, so the client costs little CPU) and prints msgs/s.
For ticketmx it also waits until every accepted message is a ticket and prints the end-to-end rate,
then runs an asyncio client at a fixed rate (--latency-rate msgs/s; 0 skips) to measure p50/p99 from
end of DATA to the 250. Nothing here is a test: it prints figures and the command that produced them.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"port {port} never opened")


def tool(name: str) -> str:
    path = shutil.which(name) or (f"/usr/sbin/{name}" if os.path.exists(f"/usr/sbin/{name}") else None)
    if not path:
        raise SystemExit(f"{name} not found: apt-get install postfix (scripts/test does it without starting postfix)")
    return path


def smtp_source(port: int, n: int, c: int, size: int, mode: str, rcpt: str) -> float:
    args = [tool("smtp-source"), "-s", str(c), "-m", str(n), "-l", str(size), "-f", "bench@customer.test",
            "-t", rcpt, "-M", "client.test", "-S", "bench"]
    if mode == "reuse":
        args.append("-d")
    args.append(f"127.0.0.1:{port}")
    t0 = time.perf_counter()
    proc = subprocess.run(args, capture_output=True, text=True)
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"smtp-source failed: {proc.stderr.strip()}")
    return n / elapsed


def start_sink(port: int) -> subprocess.Popen:
    args = [tool("smtp-sink")]
    if os.geteuid() == 0:
        args += ["-u", "nobody"]
    proc = subprocess.Popen(args + [f"127.0.0.1:{port}", "256"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    wait_port(port)
    return proc


def start_dns() -> object:
    """A DNS server on 127.0.0.1 publishing SPF and DMARC for the sending domain (full auth path)."""
    sys.path.insert(0, str(ROOT))
    from tests.auth.dnsserver import TestDnsServer
    srv = TestDnsServer({
        "customer.test": [("TXT", "v=spf1 ip4:127.0.0.1 -all")],
        "_dmarc.customer.test": [("TXT", "v=DMARC1; p=reject")],
    })
    srv.start()
    return srv


def start_ticketmx(tmp: Path, port: int, dns_port: int) -> tuple[subprocess.Popen, Path]:
    """ticketmx with the example config, moved to a private port, state dir and the bench DNS server."""
    example = (ROOT / "conf" / "ticketmx.example.toml").read_text()
    cfg = (example.replace('listen = ["127.0.0.1:2525"]', f'listen = ["127.0.0.1:{port}"]')
                  .replace('nameservers = []', f'nameservers = ["127.0.0.1:{dns_port}"]')
                  .replace('url = "sqlite:state/ticketmx.db"', f'url = "sqlite:///{tmp}/bench.db"')
                  .replace('listen = "127.0.0.1:9101"', 'listen = ""')
                  .replace('level = "info"', 'level = "warning"'))
    path = tmp / "bench.toml"
    path.write_text(cfg)
    proc = subprocess.Popen([sys.executable, "-m", "gateway", "serve", "--config", str(path)], cwd=ROOT,
                            stdout=open(tmp / "serve.log", "wb"), stderr=subprocess.STDOUT)
    wait_port(port)
    return proc, path


def spool_counts(db: Path) -> dict[str, int]:
    import sqlite3
    conn = sqlite3.connect(db)
    try:
        return dict(conn.execute("SELECT state, COUNT(*) FROM spool GROUP BY state").fetchall())
    finally:
        conn.close()


def wait_drained(db: Path, expected: int, timeout: float = 600) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        counts = spool_counts(db)
        done = sum(v for k, v in counts.items() if k not in ("queued", "processing"))
        if done >= expected:
            return time.perf_counter()
        time.sleep(0.05)
    raise SystemExit(f"pipeline did not drain: {spool_counts(db)}")


async def latency_probe(port: int, rate: float, seconds: float, size: int, c: int) -> list[float]:
    """Sessions reusing connections, paced to ``rate`` msgs/s overall; returns end-of-DATA → 250 times."""
    body = (b"From: bench@customer.test\r\nTo: support@example.test\r\nSubject: latency\r\n"
            b"Date: Sun, 22 Nov 2026 10:00:00 +0000\r\n")
    latencies: list[float] = []
    interval = c / rate
    filler = (b"x" * 76 + b"\r\n") * max(1, size // 78)
    stop_at = time.perf_counter() + seconds

    async def session(k: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)

        async def reply() -> bytes:
            while True:
                line = await reader.readline()
                if line[3:4] != b"-":
                    return line
        await reply()
        writer.write(b"EHLO client.test\r\n")
        await reply()
        i = 0
        next_at = time.perf_counter() + (k / c) * interval
        while time.perf_counter() < stop_at:
            await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
            next_at += interval
            mid = f"<lat-{k}-{i}-{time.time_ns()}@customer.test>".encode()
            msg = body + b"Message-ID: " + mid + b"\r\n\r\n" + filler
            writer.write(b"MAIL FROM:<bench@customer.test>\r\nRCPT TO:<support@example.test>\r\nDATA\r\n")
            for _ in range(3):
                await reply()
            writer.write(msg + b".\r\n")
            t0 = time.perf_counter()
            line = await reply()
            latencies.append(time.perf_counter() - t0)
            if not line.startswith(b"250"):
                raise SystemExit(f"unexpected reply {line!r}")
            i += 1
        writer.write(b"QUIT\r\n")
        writer.close()

    await asyncio.gather(*(session(k) for k in range(c)))
    return latencies


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p))] * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=5000, help="messages per target")
    ap.add_argument("-c", type=int, default=20, help="concurrent sessions")
    ap.add_argument("--size", type=int, default=4096, help="payload bytes per message")
    ap.add_argument("--mode", choices=("reuse", "conn"), default="reuse",
                    help="reuse: many messages per connection; conn: one message per connection")
    ap.add_argument("--latency-rate", type=float, default=300, help="msgs/s for the latency probe (0: skip)")
    ap.add_argument("--latency-seconds", type=float, default=10)
    ap.add_argument("--json", action="store_true", help="also print one JSON line of results")
    args = ap.parse_args()
    cmd = "python bench/ingest.py " + " ".join(sys.argv[1:])
    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="ticketmx-bench-") as tmpdir:
        tmp = Path(tmpdir)
        port = free_port()
        sink = start_sink(port)
        try:
            results["smtp_sink_msgs_per_s"] = smtp_source(port, args.n, args.c, args.size, args.mode,
                                                          "support@example.test")
        finally:
            sink.send_signal(signal.SIGTERM)
            sink.wait()
        port = free_port()
        dns = start_dns()
        proc, _cfg = start_ticketmx(tmp, port, dns.port)
        try:
            t0 = time.perf_counter()
            results["ticketmx_accept_msgs_per_s"] = smtp_source(port, args.n, args.c, args.size, args.mode,
                                                                "support@example.test")
            t_end = wait_drained(tmp / "bench.db", args.n)
            results["ticketmx_tickets_msgs_per_s"] = args.n / (t_end - t0)
            counts = spool_counts(tmp / "bench.db")
            results["tickets_created"] = counts.get("ticket_created", 0)
            if args.latency_rate > 0:
                lat = asyncio.run(latency_probe(port, args.latency_rate, args.latency_seconds, args.size, args.c))
                results["latency_rate_msgs_per_s"] = args.latency_rate
                results["accept_p50_ms"] = pct(lat, 0.50)
                results["accept_p99_ms"] = pct(lat, 0.99)
                results["latency_samples"] = len(lat)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
            dns.stop()
    ratio = results["ticketmx_tickets_msgs_per_s"] / results["smtp_sink_msgs_per_s"]
    print(f"# {cmd}")
    print(f"# {os.cpu_count()} cores; {args.n} msgs x {args.size} B payload, {args.c} sessions, mode={args.mode}")
    print(f"smtp-sink (discard)            {results['smtp_sink_msgs_per_s']:8.0f} msgs/s")
    print(f"ticketmx 250s (durable)        {results['ticketmx_accept_msgs_per_s']:8.0f} msgs/s")
    print(f"ticketmx tickets committed     {results['ticketmx_tickets_msgs_per_s']:8.0f} msgs/s"
          f"   ({results['tickets_created']} tickets)")
    print(f"ratio ticketmx/smtp-sink       {ratio:8.3f}")
    if "accept_p50_ms" in results:
        print(f"accept latency @ {args.latency_rate:.0f} msgs/s   p50 {results['accept_p50_ms']:.1f} ms"
              f"   p99 {results['accept_p99_ms']:.1f} ms   ({results['latency_samples']} samples)")
    if args.json:
        print(json.dumps({"command": cmd, **results}))


if __name__ == "__main__":
    main()
