#!/usr/bin/env python3
"""Issue 22: the SMTP path's throughput with the HTTP server busy.

    python bench/bench_http_smtp_tickets.py                      # -n 2000 -c 20 --repeat 2 --http-clients 1
    python bench/bench_http_smtp_tickets.py -n 1000 --repeat 1   # under a minute

One ``ticketmx serve`` (conf/ticketmx.example.toml on private ports, a private SQLite store, [http] on
127.0.0.1 with the per-token rate limit off, the bench DNS server publishing SPF/DMARC/DKIM for
customer.test) gets n DKIM-signed 4 KB messages over SMTP from c sessions (bench/perf.py's client);
SMTP msgs/s counts until every message is out of the spool (ticket committed). The same run is made
without HTTP traffic ("idle") and while ``--http-clients`` other processes send ``GET
/api/v1/tickets?limit=50`` (an admin token from ``ticketmx token create``) over keep-alive
connections, back to back or ``--http-rate`` per second each ("busy"), alternating idle/busy ``--repeat`` times; medians are printed with
the HTTP request rate and latency seen meanwhile. The HTTP server runs in the SMTP process's event
loop (uvicorn as a task) with ``--http-processes 0``, in its own process by default; this is what an
API user costs mail intake. On a shared 2-core machine
the load generator itself takes CPU from the gateway: the figures are an upper bound of the cost.
Nothing here is a test: it prints figures and the command line that produced them.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(ROOT))
import ingest  # noqa: E402
import perf  # noqa: E402


def http_load_main(base: str, token: str, rate: float) -> None:
    """A child process: GET /tickets in a loop (back to back, or ``rate`` per second) until SIGTERM,
    then one JSON line of what it did."""
    import httpx
    stop = False

    def on_term(*_a: object) -> None:
        nonlocal stop
        stop = True
    signal.signal(signal.SIGTERM, on_term)
    lat: list[float] = []
    errors = 0
    t0 = time.perf_counter()
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=30) as c:
        print("ready", flush=True)
        while not stop:
            t = time.perf_counter()
            if rate:
                due = t0 + len(lat) / rate
                if due > t:
                    time.sleep(due - t)
                    continue
            try:
                r = c.get("/api/v1/tickets", params={"limit": 50})
                if r.status_code != 200:
                    errors += 1
            except httpx.HTTPError:
                errors += 1
            lat.append(time.perf_counter() - t)
    elapsed = time.perf_counter() - t0
    lat.sort()
    print(json.dumps({"requests": len(lat), "errors": errors, "seconds": elapsed,
                      "p50_ms": lat[len(lat) // 2] * 1000 if lat else 0,
                      "p99_ms": lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000 if lat else 0}), flush=True)


class Gateway:
    """``ticketmx serve`` on the example config with [http] added, and an admin token."""

    def __init__(self, procs: perf.Procs, dns_port: int, http_processes: int | None = None) -> None:
        self.procs = procs
        self.tmp = Path(tempfile.mkdtemp(prefix="ticketmx-http-smtp-"))
        procs.dirs.append(self.tmp)
        self.port, self.http_port = ingest.free_port(), ingest.free_port()
        self.db = self.tmp / "bench.db"
        text = (ROOT / "conf" / "ticketmx.example.toml").read_text()
        for (section, key), value in {
            ("smtp", "listen"): f'["127.0.0.1:{self.port}"]', ("smtp", "max_sessions_per_ip"): "1000",
            ("store", "url"): f'"sqlite:///{self.db}"', ("dns", "nameservers"): f'["127.0.0.1:{dns_port}"]',
            ("metrics", "listen"): '""', ("log", "level"): '"warning"', ("smtp", "shutdown_grace"): '"3s"',
        }.items():
            text = perf._set_key(text, section, key, value)
        if "\n[http]" not in text:
            text += "\n[http]\n"
        extra = f"processes = {http_processes}\n" if http_processes is not None else ""
        text = text.replace("\n[http]\n", f'\n[http]\nlisten = "127.0.0.1:{self.http_port}"\nrate_per_token = ""\n{extra}',
                            1)
        self.config = self.tmp / "bench.toml"
        self.config.write_text(text)
        self.log = self.tmp / "serve.log"
        self.proc = procs.start([sys.executable, "-m", "gateway", "serve", "--config", str(self.config)], cwd=ROOT,
                                stdout=open(self.log, "wb"), stderr=subprocess.STDOUT)
        try:
            ingest.wait_port(self.port, timeout=60)
            ingest.wait_port(self.http_port, timeout=60)
        except SystemExit:
            raise SystemExit(f"ticketmx did not start; {self.log}:\n{self.log.read_text()[-3000:]}")
        self.token = subprocess.run([sys.executable, "-m", "gateway", "token", "create", "--name", "bench",
                                     "--role", "admin", "--config", str(self.config)], cwd=ROOT, check=True,
                                    capture_output=True, text=True).stdout.strip()
        self.base = f"http://127.0.0.1:{self.http_port}"

    def terminal(self) -> int:
        counts = ingest.spool_counts(self.db)
        return sum(counts.get(s, 0) for s in perf.TERMINAL)

    def wait_drained(self, expected: int, stall: float = 90) -> float:
        last, since = -1, time.monotonic()
        while True:
            done = self.terminal()
            if done >= expected:
                return time.perf_counter()
            if done != last:
                last, since = done, time.monotonic()
            elif time.monotonic() - since > stall:
                raise SystemExit(f"pipeline stalled at {done}/{expected}\n{self.log.read_text()[-3000:]}")
            time.sleep(0.02)


def smtp_run(gw: Gateway, make, n: int, c: int) -> float:
    """n messages with c reused sessions; msgs/s until all are terminal in the spool."""
    before = gw.terminal()
    t0 = time.perf_counter()
    asyncio.run(perf.Load(gw.port, make, c, n=n, reuse=True).run())
    return n / (gw.wait_drained(before + n) - t0)


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--_http-load":
        return http_load_main(sys.argv[2], sys.argv[3], float(sys.argv[4]))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=2000, help="messages per run")
    ap.add_argument("-c", type=int, default=20, help="SMTP sessions")
    ap.add_argument("--repeat", type=int, default=2, help="idle/busy pairs (medians reported)")
    ap.add_argument("--http-clients", type=int, default=1, help="processes sending GET /tickets")
    ap.add_argument("--http-rate", type=float, default=0, help="requests/s per client (0: back to back)")
    ap.add_argument("--http-processes", type=int, default=None,
                    help="[http] processes (default: the config default, 1; 0 = the API in the SMTP process)")
    a = ap.parse_args()
    command = "python bench/bench_http_smtp_tickets.py " + " ".join(shlex.quote(x) for x in sys.argv[1:])
    procs = perf.Procs()
    try:
        make, records = ingest.make_messages(4096, "rsa")
        dns = perf.DnsServer(procs, records)
        gw = Gateway(procs, dns.port, a.http_processes)
        smtp_run(gw, make, min(300, a.n), a.c)  # warm-up: imports, caches, and tickets for GET to list
        idle: list[float] = []
        busy: list[float] = []
        http: list[dict] = []
        for i in range(a.repeat):
            idle.append(smtp_run(gw, make, a.n, a.c))
            perf.log(f"run {i + 1}: idle {idle[-1]:.0f} msgs/s")
            loaders = [procs.start([sys.executable, str(Path(__file__).resolve()), "--_http-load", gw.base, gw.token,
                                    str(a.http_rate)],
                                   cwd=ROOT, stdout=subprocess.PIPE, text=True) for _ in range(a.http_clients)]
            for p in loaders:
                assert p.stdout is not None and p.stdout.readline().strip() == "ready"
            time.sleep(0.5)  # the HTTP load is running before the mail starts
            busy.append(smtp_run(gw, make, a.n, a.c))
            for p in loaders:
                p.send_signal(signal.SIGTERM)
                out, _ = p.communicate(timeout=30)
                http.append(json.loads(out.strip().splitlines()[-1]))
                procs.procs.remove(p)
            perf.log(f"run {i + 1}: busy {busy[-1]:.0f} msgs/s, HTTP {sum(h['requests'] for h in http[-a.http_clients:])}"
                     f" requests")
        # the gateway's CPU per API request, without mail: the SMTP process alone (where uvicorn runs)
        (p,) = [procs.start([sys.executable, str(Path(__file__).resolve()), "--_http-load", gw.base, gw.token, "0"],
                            cwd=ROOT, stdout=subprocess.PIPE, text=True)]
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        cpu0 = perf.tree_usage(gw.proc.pid, [gw.proc.pid])[1]
        time.sleep(3)
        p.send_signal(signal.SIGTERM)
        out, _ = p.communicate(timeout=30)
        procs.procs.remove(p)
        alone = json.loads(out.strip().splitlines()[-1])
        cpu_ms = (perf.tree_usage(gw.proc.pid, [gw.proc.pid])[1] - cpu0) * 1000 / max(1, alone["requests"])
        i_med, b_med = statistics.median(idle), statistics.median(busy)
        rps = sum(h["requests"] / h["seconds"] for h in http) / a.repeat
        errors = sum(h["errors"] for h in http)
        p99 = statistics.median(h["p99_ms"] for h in http)
        print(f"SMTP msgs/s, HTTP idle:  {i_med:8.0f}   runs {', '.join(f'{x:.0f}' for x in idle)}   # {command}")
        print(f"SMTP msgs/s, HTTP busy:  {b_med:8.0f}   runs {', '.join(f'{x:.0f}' for x in busy)}   # {command}")
        print(f"busy/idle: {b_med / i_med:.2f}; meanwhile GET /api/v1/tickets?limit=50 at {rps:.0f} req/s from "
              f"{a.http_clients} client(s), p99 {p99:.1f} ms, {errors} errors   # {command}")
        print(f"API alone: {alone['requests'] / alone['seconds']:.0f} req/s back to back, {cpu_ms:.2f} ms CPU of the"
              f" SMTP process per GET /api/v1/tickets?limit=50   # {command}")
        print(json.dumps({"cpu_ms_per_request": cpu_ms, "n": a.n, "c": a.c, "idle_msgs_per_s": idle, "busy_msgs_per_s": busy, "http": http}))
    finally:
        procs.stop_all()


if __name__ == "__main__":
    main()
