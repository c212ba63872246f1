#!/usr/bin/env python3
"""SMTP ingest with and without the HTTP API busy (issue 22: "the SMTP path's throughput unchanged with
the HTTP server busy"). With ``--http-processes 0`` the HTTP server is a task in the SMTP process's event
loop, so a busy API takes that loop's time; by default it runs in its own process; this measures how much
either costs SMTP.

Usage:  python bench/bench_http_smtp.py [-n 3000] [-c 20] [--http-clients 4] [--rounds 2] [--http-rate R]
                                        [--paths /api/v1/me,...] [--http-processes N]

Starts `ticketmx serve` (the example config, [http] listen on a free port), creates an admin token
with `ticketmx token create`, then alternates rounds of postfix's smtp-source alone and smtp-source
while HTTP clients (another process, httpx, keep-alive) loop over GET /api/v1/me, GET /api/v1/messages
?limit=20 and GET /api/v1/relay/queue?limit=20 as fast as they are answered. Prints SMTP msgs/s of each
round, the HTTP requests/s served meanwhile, and the ratio. Not a test: figures and the command.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from ingest import free_port, smtp_source, start_dns, start_ticketmx, wait_port  # noqa: E402

HAMMER = r'''
import asyncio, sys, time, httpx
async def one(base, token, stop, counts, interval):
    async with httpx.AsyncClient(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=30) as c:
        paths = sys.argv[5].split(",")
        i = 0
        nxt = time.monotonic()
        while time.monotonic() < stop:
            r = await c.get(paths[i % len(paths)]); i += 1
            if interval:
                nxt += interval
                await asyncio.sleep(max(0, nxt - time.monotonic()))
            counts[r.status_code] = counts.get(r.status_code, 0) + 1
async def main(base, token, clients, seconds, rate):
    counts = {}; stop = time.monotonic() + seconds; t0 = time.monotonic()
    interval = clients / rate if rate else 0
    await asyncio.gather(*(one(base, token, stop, counts, interval) for _ in range(clients)))
    print(sum(counts.values()) / (time.monotonic() - t0), counts)
asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[6])))
'''


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=3000, help="messages per round")
    ap.add_argument("-c", type=int, default=20, help="concurrent SMTP sessions")
    ap.add_argument("--http-clients", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=2, help="rounds of each kind, alternating")
    ap.add_argument("--paths", default="/api/v1/me,/api/v1/messages?limit=20,/api/v1/relay/queue?limit=20",
                    help="comma-separated paths the HTTP clients cycle through")
    ap.add_argument("--http-rate", type=float, default=0, help="total HTTP requests/s (0: as fast as answered)")
    ap.add_argument("--http-processes", type=int, default=None,
                    help="[http] processes (default: the config default, 1; 0 = the API in the SMTP process)")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-http-smtp-"))
    dns = start_dns([])
    port, http_port = free_port(), free_port()
    proc, cfg = start_ticketmx(tmp, port, dns.port)
    proc.terminate()
    proc.wait()
    cfg.write_text(cfg.read_text() + f'\n[http]\nlisten = "127.0.0.1:{http_port}"\nrate_per_token = ""\n'
                     + (f"processes = {args.http_processes}\n" if args.http_processes is not None else ""))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "gateway", "serve", "--config", str(cfg)], cwd=ROOT, env=env,
                            stdout=open(tmp / "serve.log", "ab"), stderr=subprocess.STDOUT)
    try:
        wait_port(port)
        wait_port(http_port)
        token = subprocess.run([sys.executable, "-m", "gateway", "token", "create", "--name", "bench", "--role",
                                "admin", "--config", str(cfg)], cwd=ROOT, env=env, capture_output=True, text=True,
                               check=True).stdout.strip()
        smtp_source(port, 200, args.c, 4096, "reuse", "support@example.test")  # warm up
        alone, busy, http_rates = [], [], []
        for _ in range(args.rounds):
            alone.append(smtp_source(port, args.n, args.c, 4096, "reuse", "support@example.test"))
            est = args.n / alone[-1] + 5
            hammer = subprocess.Popen([sys.executable, "-c", HAMMER, f"http://127.0.0.1:{http_port}", token,
                                       str(args.http_clients), str(est), args.paths,
                                       str(args.http_rate)], env=env, stdout=subprocess.PIPE, text=True)
            time.sleep(0.5)
            busy.append(smtp_source(port, args.n, args.c, 4096, "reuse", "support@example.test"))
            out = hammer.communicate(timeout=est + 60)[0]
            http_rates.append(float(out.split()[0]))
            print(f"round: SMTP alone {alone[-1]:.0f} msg/s, with HTTP busy {busy[-1]:.0f} msg/s; "
                  f"HTTP {http_rates[-1]:.0f} req/s ({out.split(' ', 1)[1].strip()})", flush=True)
        a, b = statistics.median(alone), statistics.median(busy)
        result = {"smtp_alone": round(a), "smtp_http_busy": round(b), "ratio": round(b / a, 3),
                  "http_rps": round(statistics.median(http_rates)), "n": args.n, "c": args.c,
                  "http_clients": args.http_clients, "paths": args.paths, "http_rate": args.http_rate,
                  "http_processes": args.http_processes, "cpus": os.cpu_count()}
        print(json.dumps(result))
        print(f"command: python bench/bench_http_smtp.py -n {args.n} -c {args.c} --http-clients "
              f"{args.http_clients} --rounds {args.rounds} --paths '{args.paths}' --http-rate {args.http_rate:g}"
              + (f" --http-processes {args.http_processes}" if args.http_processes is not None else ""))
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        dns.stop()


if __name__ == "__main__":
    main()
