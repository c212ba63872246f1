#!/usr/bin/env python3
"""Issue 25's hostile-client figures against a real `python -m gateway serve`.

    python bench/bench_abuse.py slots          # slowloris: do fresh clients still get a session?
    python bench/bench_abuse.py rss            # RSS under concurrent header-only messages
    python bench/bench_abuse.py junk           # SMTP CPU for pipelined RSET/NOOP floods
    python bench/bench_abuse.py slots --set smtp.data_rate_grace='"5s"'   # any [smtp] key (TOML value)

slots: M addresses (127.0.3.x) open their per-address share of sessions each (default 10 x 100 = the
       default max_sessions), go into DATA and send one byte every 5 s; then 20 fresh clients, each
       from its own address (127.0.4.x), try to connect at each --probe-at second: how many get 220.
rss:   K concurrent DATA of X MB each without an empty line (header-only), sent as fast as loopback
       allows; the serve process's peak RSS (VmHWM) and how long one ordinary message took meanwhile.
junk:  C connections x N pipelined RSET/NOOP; CPU seconds of the serve process and replies read.

The gateway runs with conf/ticketmx.example.toml (private port, state dir, DNS at the bench server, log
level warning, metrics off). PYTHONPATH decides which tree runs (compare two checkouts that way).
Nothing here is a test; every figure is printed with the command that reproduces it.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
import ingest  # noqa: E402

TXN = b"EHLO bench.test\r\nMAIL FROM:<a@customer.test>\r\nRCPT TO:<support@example.test>\r\nDATA\r\n"


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def start(tmp: Path, sets: list[str]) -> tuple[object, object, int]:
    dns = ingest.start_dns([])
    port = ingest.free_port()
    # ingest.start_ticketmx writes the config then starts; we add our [smtp] keys in between.
    example = (ingest.ROOT / "conf" / "ticketmx.example.toml").read_text()
    extra = "".join(f"{s.split('=', 1)[0].split('.', 1)[1]} = {s.split('=', 1)[1]}\n"
                    for s in sets if s.startswith("smtp."))
    cfg = (example.replace('listen = ["127.0.0.1:2525"]', f'listen = ["127.0.0.1:{port}"]\n{extra}')
                  .replace('nameservers = []', f'nameservers = ["127.0.0.1:{dns.port}"]')
                  .replace('url = "sqlite:state/ticketmx.db"', f'url = "sqlite:///{tmp}/bench.db"')
                  .replace('listen = "127.0.0.1:9101"', 'listen = ""')
                  .replace('level = "info"', 'level = "warning"'))
    path = tmp / "bench.toml"
    path.write_text(cfg)
    import subprocess
    proc = subprocess.Popen([sys.executable, "-m", "gateway", "serve", "--config", str(path)], cwd=ingest.ROOT,
                            stdout=open(tmp / "serve.log", "wb"), stderr=subprocess.STDOUT)
    ingest.wait_port(port)
    return proc, dns, port


async def greet(port: int, source: str, timeout: float = 5.0) -> tuple[bytes, asyncio.StreamReader | None,
                                                                     asyncio.StreamWriter | None]:
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0)), timeout)
        line = await asyncio.wait_for(reader.readline(), timeout)
        return line, reader, writer
    except (OSError, asyncio.TimeoutError):
        return b"", None, None


async def slots(port: int, args: argparse.Namespace) -> None:
    hogs: list[asyncio.StreamWriter] = []
    open_hogs: set[asyncio.StreamWriter] = set()
    watchers = []
    opened = 0

    endings: dict[bytes, int] = {}

    async def watch(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        last = b""
        try:
            while data := await reader.read(4096):
                last = data.rstrip(b"\r\n").rsplit(b"\n", 1)[-1][:40]
        except OSError:
            pass
        open_hogs.discard(writer)
        endings[last] = endings.get(last, 0) + 1

    refused: dict[bytes, int] = {}
    for a in range(args.addresses):
        for _ in range(args.per_address):
            line, r, w = await greet(port, f"127.0.3.{a + 1}")
            opened += 1
            if not line.startswith(b"220"):
                refused[line[:9]] = refused.get(line[:9], 0) + 1
            if w is None:
                continue
            if line.startswith(b"220"):
                w.write(TXN)
                hogs.append(w)
                open_hogs.add(w)
                watchers.append(asyncio.create_task(watch(r, w)))
            else:
                w.close()
    t0 = time.monotonic()
    print(f"slowloris: {len(hogs)} of {opened} sessions from {args.addresses} addresses in DATA, "
          f"one byte every {args.trickle:g}s; the others got {refused}")

    async def trickle() -> None:
        while True:
            await asyncio.sleep(args.trickle)
            for w in list(open_hogs):
                try:
                    w.write(b"x")
                except (OSError, RuntimeError):
                    pass

    task = asyncio.create_task(trickle())
    for at in args.probe_at:
        await asyncio.sleep(max(0.0, t0 + at - time.monotonic()))
        got = await asyncio.gather(*(greet(port, f"127.0.4.{i + 1}") for i in range(20)))
        ok = sum(1 for line, _, _ in got if line.startswith(b"220"))
        codes = sorted({line[:9].decode(errors="replace") or "no answer" for line, _, _ in got})
        for _, _, w in got:
            if w is not None:
                w.close()
        print(f"  t={at:>5.1f}s  fresh clients with 220: {ok:>2}/20  replies {codes}  "
              f"slowloris sessions still open: {len(open_hogs)}")
    print(f"  how the slowloris sessions ended: {endings}")
    task.cancel()
    for t in watchers:
        t.cancel()
    for w in hogs:
        w.close()


async def rss(port: int, pid: int, args: argparse.Namespace) -> None:
    size = int(args.mb * 1024 * 1024)
    line = b"X-Filler: " + b"h" * 88 + b"\r\n"
    block = line * (1024 * 1024 // len(line))
    before = peak_rss_mb(pid)

    async def send_one(i: int) -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(f"127.0.5.{i % 250 + 1}", 0))
        await reader.readline()
        writer.write(TXN + b"From: a@customer.test\r\n")
        sent = 0
        while sent < size:
            writer.write(block)
            sent += len(block)
            await writer.drain()
        writer.write(b".\r\nQUIT\r\n")
        last = b""
        while True:
            ln = await reader.readline()
            if not ln:
                break
            last = ln if not ln.startswith((b"250-", b"221")) and ln[:3] != b"354" else last
        writer.close()
        return last

    async def ordinary() -> float:
        await asyncio.sleep(0.5)
        t = time.monotonic()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        await reader.readline()
        writer.write(TXN + b"From: a@customer.test\r\nSubject: hi\r\n\r\nhello\r\n.\r\nQUIT\r\n")
        while (ln := await reader.readline()) and not ln.startswith(b"221"):
            pass
        writer.close()
        return time.monotonic() - t

    t0 = time.monotonic()
    results = await asyncio.gather(*(send_one(i) for i in range(args.concurrent)), ordinary())
    finals = sorted({r[:9].decode(errors="replace") for r in results[:-1]})
    print(f"header-only: {args.concurrent} x {args.mb:g} MB without an empty line in {time.monotonic() - t0:.1f}s; "
          f"replies {finals}")
    print(f"  serve peak RSS {peak_rss_mb(pid):.0f} MB (before: {before:.0f} MB); an ordinary message meanwhile "
          f"took {results[-1]:.2f}s")


async def junk(port: int, pid: int, args: argparse.Namespace) -> None:
    await asyncio.sleep(2)  # let start-up work finish before counting CPU
    cpu0 = cpu_seconds(pid)
    await asyncio.sleep(1)
    idle = cpu_seconds(pid) - cpu0
    cpu0 += idle

    async def one(i: int) -> int:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(f"127.0.6.{i + 1}", 0))
        await reader.readline()
        writer.write(b"EHLO j.test\r\n" + b"RSET\r\nNOOP\r\n" * (args.commands // 2) + b"QUIT\r\n")
        n = 0
        try:
            while await reader.readline():
                n += 1
        except OSError:
            pass
        writer.close()
        return n

    t0 = time.monotonic()
    counts = await asyncio.gather(*(one(i) for i in range(args.connections)))
    print(f"junk: {args.connections} connections x {args.commands} pipelined RSET/NOOP: {sum(counts)} reply lines "
          f"in {time.monotonic() - t0:.2f}s, serve CPU {cpu_seconds(pid) - cpu0:.2f}s (idle: {idle:.2f}s/s)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=("slots", "rss", "junk"))
    ap.add_argument("--addresses", type=int, default=10)
    ap.add_argument("--per-address", type=int, default=100)
    ap.add_argument("--trickle", type=float, default=5.0)
    ap.add_argument("--probe-at", type=lambda s: [float(x) for x in s.split(",")], default=[2.0, 40.0])
    ap.add_argument("--concurrent", type=int, default=40)
    ap.add_argument("--mb", type=float, default=20.0)
    ap.add_argument("--connections", type=int, default=20)
    ap.add_argument("--commands", type=int, default=10000)
    ap.add_argument("--set", action="append", default=[], metavar="smtp.KEY=TOML")
    args = ap.parse_args()
    cmd = "python bench/bench_abuse.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    print(f"# {cmd}\n# code: PYTHONPATH={os.environ.get('PYTHONPATH', '(installed)')}")
    with tempfile.TemporaryDirectory() as tmp:
        proc, dns, port = start(Path(tmp), args.set)
        try:
            if args.what == "slots":
                asyncio.run(slots(port, args))
            elif args.what == "rss":
                asyncio.run(rss(port, proc.pid, args))
            else:
                asyncio.run(junk(port, proc.pid, args))
        finally:
            proc.terminate()
            try:
                proc.wait(20)
            except Exception:
                proc.kill()
            dns.stop()


if __name__ == "__main__":
    main()
