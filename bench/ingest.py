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
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


# What the SMTP side stores with a DKIM-signed message that passed everything (the shape of
# gateway.auth's result and its Authentication-Results field), for the benches that spool messages
# without the SMTP side (bench_claim.py, bench_pipeline.py): so that they carry and parse what the
# service's rows do.
AUTH_RESULT = {
    "spf": {"result": "pass", "identity": "mailfrom", "domain": "customer.test", "sender": "a@customer.test",
            "client_ip": "127.0.0.1", "helo": "client.customer.test", "reason": "", "mechanism": "ip4:127.0.0.1"},
    "helo_spf": {"result": "pass", "identity": "helo", "domain": "client.customer.test"},
    "dkim": [{"result": "pass", "domain": "customer.test", "selector": "bench", "algorithm": "rsa-sha256",
              "aligned": True, "key_bits": 2048, "b": "abcdefgh", "reason": ""}],
    "dmarc": {"result": "pass", "policy": "reject", "disposition": "none", "from_domain": "customer.test",
              "org_domain": "customer.test", "spf_aligned": True, "dkim_aligned": True},
    "arc": {"result": "none"}, "action": "accept"}
AUTH_HEADER = ("mx.support.test;\r\n\tspf=pass (domain of a@customer.test designates 127.0.0.1 as permitted"
               " sender) smtp.mailfrom=a@customer.test;\r\n\tdkim=pass (2048-bit key) header.d=customer.test"
               " header.s=bench header.b=abcdefgh;\r\n\tdmarc=pass (p=reject) header.from=customer.test")


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


def start_dns(extra: list) -> object:
    """A DNS server on 127.0.0.1 publishing SPF, DMARC (and DKIM keys) for the sending domain."""
    sys.path.insert(0, str(ROOT))
    from tests.auth.dnsserver import TestDnsServer
    zone = {
        "customer.test": [("TXT", "v=spf1 ip4:127.0.0.1 -all")],
        "_dmarc.customer.test": [("TXT", "v=DMARC1; p=reject")],
    }
    for name, txt in extra:
        zone[name] = [("TXT", txt)]
    srv = TestDnsServer(zone)
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


def make_messages(size: int, dkim_algo: str) -> tuple[callable, list]:
    """A factory of unique messages (optionally DKIM-signed once, Message-ID added after signing) and
    the DNS records the bench zone must publish for them."""
    body = (b"From: bench@customer.test\r\nTo: support@example.test\r\nSubject: bench\r\n"
            b"Date: Sun, 22 Nov 2026 10:00:00 +0000\r\n\r\n" + (b"x" * 76 + b"\r\n") * max(1, size // 78))
    records: list = []
    if dkim_algo != "none":
        import base64
        import dkim
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
        if dkim_algo == "rsa":
            key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                    serialization.NoEncryption())
            pub = key.public_key().public_bytes(serialization.Encoding.DER,
                                                serialization.PublicFormat.SubjectPublicKeyInfo)
            txt, alg = f"v=DKIM1; k=rsa; p={base64.b64encode(pub).decode()}", b"rsa-sha256"
        else:
            key = ed25519.Ed25519PrivateKey.generate()
            pem = base64.b64encode(key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                                     serialization.NoEncryption()))
            pub = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
            txt, alg = f"v=DKIM1; k=ed25519; p={base64.b64encode(pub).decode()}", b"ed25519-sha256"
        sig = dkim.sign(body, b"bench", b"customer.test", pem, signature_algorithm=alg,
                        include_headers=[b"from", b"to", b"subject", b"date"])
        body = sig + body
        records.append(("bench._domainkey.customer.test", txt))
    counter = iter(range(10**9))

    def make() -> bytes:
        return f"Message-ID: <b{next(counter)}.{time.time_ns()}@customer.test>\r\n".encode() + body
    return make, records


async def asyncio_load(port: int, n: int, c: int, make, rate: float = 0.0, seconds: float = 0.0,
                       reuse: bool = True) -> tuple[list[float], float]:
    """``c`` sessions sending ``n`` messages (or, with ``rate``, paced for ``seconds``).
    Returns (end-of-DATA → 250 latencies, elapsed seconds)."""
    latencies: list[float] = []
    remaining = [n]
    stop_at = time.perf_counter() + seconds
    interval = c / rate if rate else 0.0

    async def session(k: int) -> None:
        reader = writer = None

        async def reply() -> bytes:
            while True:
                line = await reader.readline()
                if line[3:4] != b"-":
                    return line

        async def connect() -> None:
            nonlocal reader, writer
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            await reply()
            writer.write(b"EHLO client.test\r\n")
            await reply()

        next_at = time.perf_counter() + (k / c) * interval
        while (time.perf_counter() < stop_at) if rate else remaining[0] > 0:
            if not rate:
                remaining[0] -= 1
            else:
                await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
                next_at += interval
            if writer is None:
                await connect()
            writer.write(b"MAIL FROM:<bench@customer.test>\r\nRCPT TO:<support@example.test>\r\nDATA\r\n")
            for _ in range(3):
                await reply()
            writer.write(make() + b".\r\n")
            t0 = time.perf_counter()
            line = await reply()
            latencies.append(time.perf_counter() - t0)
            if not line.startswith(b"250"):
                raise SystemExit(f"unexpected reply {line!r}")
            if not reuse:
                writer.write(b"QUIT\r\n")
                writer.close()
                writer = None
        if writer is not None:
            writer.write(b"QUIT\r\n")
            writer.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(session(k) for k in range(c)))
    return latencies, time.perf_counter() - t0


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
    ap.add_argument("--dkim", choices=("none", "rsa", "ed25519"), default="none",
                    help="also measure ticketmx with DKIM-signed mail sent by the asyncio client")
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
        make, records = make_messages(args.size, args.dkim)
        dns = start_dns(records)
        proc, _cfg = start_ticketmx(tmp, port, dns.port)
        try:
            t0 = time.perf_counter()
            results["ticketmx_accept_msgs_per_s"] = smtp_source(port, args.n, args.c, args.size, args.mode,
                                                                "support@example.test")
            t_end = wait_drained(tmp / "bench.db", args.n)
            results["ticketmx_tickets_msgs_per_s"] = args.n / (t_end - t0)
            counts = spool_counts(tmp / "bench.db")
            results["tickets_created"] = counts.get("ticket_created", 0)
            if args.dkim != "none":
                before = sum(spool_counts(tmp / "bench.db").values())
                _lat, elapsed = asyncio.run(asyncio_load(port, args.n, args.c, make, reuse=args.mode == "reuse"))
                wait_drained(tmp / "bench.db", before + args.n)
                results[f"ticketmx_dkim_{args.dkim}_msgs_per_s"] = args.n / elapsed
                states = spool_counts(tmp / "bench.db")
                results["dkim_tickets_total"] = states.get("ticket_created", 0)
            if args.latency_rate > 0:
                lat, _e = asyncio.run(asyncio_load(port, 0, args.c, make, rate=args.latency_rate,
                                                   seconds=args.latency_seconds))
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
    if args.dkim != "none":
        print(f"ticketmx DKIM-{args.dkim} (asyncio)  {results[f'ticketmx_dkim_{args.dkim}_msgs_per_s']:8.0f} msgs/s"
              f"   ({results['dkim_tickets_total']} tickets in all)")
    if "accept_p50_ms" in results:
        print(f"accept latency @ {args.latency_rate:.0f} msgs/s   p50 {results['accept_p50_ms']:.1f} ms"
              f"   p99 {results['accept_p99_ms']:.1f} ms   ({results['latency_samples']} samples)")
    if args.json:
        print(json.dumps({"command": cmd, **results}))


if __name__ == "__main__":
    main()
