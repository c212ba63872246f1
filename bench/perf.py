#!/usr/bin/env python3
"""Issue 9 harness: ticketmx doing all the work vs a discarding Haraka (two processes) vs postfix's smtp-sink.

    python bench/perf.py                  # everything, a few minutes on 2 cores
    python bench/perf.py --quick          # smaller counts, under a minute
    python bench/perf.py --workload reuse --targets haraka,ticketmx -n 3000 --extras none --json

One run installs Haraka from the npm registry into bench/.haraka/ (once; pinned with --haraka-version), starts
  * sink      postfix's smtp-sink (C, discards),
  * haraka    Haraka, `nodes=2` cluster on 127.0.0.1, a 3-line local plugin that accepts every recipient
              and returns OK from hook_queue (discard); no other plugin, no DNS (rDNS answered locally),
  * ticketmx  `python -m gateway serve` with conf/ticketmx.example.toml moved to a private port, a private
              SQLite store in a temp dir, [dns] at the bench DNS server, log level warning, metrics off,
              max_sessions_per_ip raised for the 200-session probe and max_message_size for the 50 MB one,
and drives them with the SAME client: an asyncio SMTP client (one process, callback-based so it stays cheap)
sending unique, DKIM-signed (rsa-2048) mail from customer.test, whose SPF (ip4:127.0.0.1) and DMARC (p=reject)
records and DKIM keys come from a DNS server (tests/auth/dnsserver.py, in its own process) on 127.0.0.1.
`--client smtp-source` uses postfix's smtp-source instead (C, cheaper; unsigned copies of the same messages).

Workloads: reuse (4 KB, 20 sessions, many messages per connection), conn (4 KB, one message per connection),
big (50 KB: text + HTML alternative + a small attachment, 20 sessions reusing connections).
ticketmx throughput counts until every message is out of the spool (ticket committed), not the 250s.

Extras (--extras): latency (p99 end-of-DATA -> 250 at half of the measured ticketmx reuse rate, and p99
250 -> ticket committed from the spool's finished_at), memory (RSS of the serve process tree with 200 idle,
then active, sessions; RSS growth while one 50 MB message streams through), linearity (ticketmx reuse at 40
and 80 sessions vs 20), profile (py-spy on the serve process tree during a reuse load; not in the default set).

Every figure is printed with a command reproducing it; --json adds one JSON line.
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import random
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))
import ingest  # noqa: E402  (bench/ingest.py: free_port, wait_port, tool, spool_counts, make_messages, start_dns)

HARAKA_DIR = BENCH / ".haraka"
HARAKA_VERSION = "3.3.4"     # the newest on registry.npmjs.org when this was written (2026-11-22)
OUT_DIR = BENCH / "out"      # gitignored; profiles go here
PAGE = os.sysconf("SC_PAGE_SIZE")
CLK = os.sysconf("SC_CLK_TCK")
TERMINAL = ("ticket_created", "article_added", "suppressed", "quarantined")
TARGETS = {"reuse": 0.6, "conn": 0.9, "big": 0.3}      # ticketmx/Haraka ratios from issue 9
SENDER, RCPT = "bench@customer.test", "support@example.test"

WORKLOADS = {
    # name: (message kind, sessions, reuse connections)
    "reuse": ("small", 20, True),
    "conn": ("small", 20, False),
    "big": ("big", 20, True),
}
COUNTS = {"reuse": 3000, "conn": 2000, "big": 600}
QUICK_COUNTS = {"reuse": 400, "conn": 300, "big": 60}


def code_version() -> str:
    """The commit under test and how many application files differ from it (others edit concurrently)."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "gateway", "relay", "conf", "pyproject.toml"],
                               cwd=ROOT, capture_output=True, text=True).stdout.splitlines()
        return f"{head}" + (f" + {len(dirty)} changed/new files in gateway/ relay/ conf/" if dirty else "")
    except OSError:
        return "unknown"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def load1() -> float:
    return os.getloadavg()[0]


# --------------------------------------------------------------------------------------------- processes


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def cpu_budget(rate: float, runs: list[dict]) -> float:
    """CPU ms per message the server may spend at ``rate`` msgs/s: every core fully used, less what the
    bench client spends per message (its share of a core at the measured rate, which scales with the rate).

    A server whose measured ms/msg exceeds this cannot reach ``rate`` on this machine, whatever it
    overlaps or parallelises: it is the arithmetic behind the throughput ratios (docs/perf.md)."""
    client_ms = statistics.median(r["client_cpu_pct"] * 10 / r["msgs_per_s"] for r in runs if r["msgs_per_s"])
    return _cores() * 1000 / rate - client_ms

def _budget_verdict(budget: float, measured: float) -> str:
    if budget <= 0:
        return "no CPU left for the server at all"
    if measured <= budget:
        return "within budget"
    return f"needs {(1 - budget / measured) * 100:.0f} % less CPU per message"


class Interrupted(BaseException):
    """SIGINT/SIGTERM/SIGHUP: unwinds through every try/finally (not an Exception, not a SystemExit)."""


class Procs:
    """Every process we start, each in its own session (process group), and every temp dir; all stopped
    and removed on exit."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []
        self.dirs: list[Path] = []

    def start(self, args: list[str], **kw: Any) -> subprocess.Popen:
        proc = subprocess.Popen(args, start_new_session=True, **kw)
        self.procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 30) -> None:
        """`sig` to the leader (it stops its own workers, as in production), SIGKILL to what is left."""
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
        try:   # leftovers of its group (workers), whatever the leader did
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        if proc.poll() is None:
            proc.wait(timeout=10)
        if proc in self.procs:
            self.procs.remove(proc)

    def stop_all(self) -> None:
        for proc in reversed(list(self.procs)):
            try:
                self.stop(proc, timeout=15)
            except Exception as exc:  # noqa: BLE001 - cleanup must go on
                log(f"cleanup of pid {proc.pid}: {exc}")
        for d in self.dirs:
            shutil.rmtree(d, ignore_errors=True)


def _stat(pid: int) -> tuple[int, int, float] | None:
    """(ppid, rss bytes, cpu seconds incl. reaped children) of a process, None if gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    fields = data[data.rindex(b")") + 2:].split()
    ppid = int(fields[1])
    cpu = sum(int(x) for x in fields[11:15]) / CLK          # utime stime cutime cstime
    return ppid, int(fields[21]) * PAGE, cpu


def _name(pid: int) -> str:
    """A short name for a process: the python module, 'pipeline worker' for a multiprocessing child, or the
    executable."""
    try:
        argv = [a.decode(errors="replace") for a in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") if a]
    except OSError:
        return "?"
    joined = " ".join(argv)
    try:
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        comm = ""
    if comm.startswith("ticketmx-smtp"):
        return "smtp process"  # [smtp] processes > 1: the extra SMTP processes (gateway/smtp/group.py)
    if "multiprocessing.spawn" in joined or "multiprocessing-fork" in joined:
        return "pipeline worker"
    if "multiprocessing.resource_tracker" in joined:
        return "resource tracker"
    if "-m" in argv[:3]:
        i = argv.index("-m")
        return " ".join(argv[i + 1:i + 3])
    return Path(argv[0]).name if argv else "?"


def tree(root: int) -> list[int]:
    """root and all its descendants (from /proc/*/stat)."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            st = _stat(int(name))
            if st:
                children.setdefault(st[0], []).append(int(name))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, ()))
    return out


def tree_usage(root: int, pids: list[int] | None = None) -> tuple[int, float]:
    """(sum of RSS bytes, sum of CPU seconds) over the process tree."""
    rss, cpu = 0, 0.0
    for pid in pids or tree(root):
        st = _stat(pid)
        if st:
            rss += st[1]
            cpu += st[2]
    return rss, cpu


def tree_pss(root: int) -> int:
    """Sum of PSS (shared pages divided among sharers) over the tree, bytes; 0 if unavailable."""
    total = 0
    for pid in tree(root):
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        total += int(line.split()[1]) * 1024
                        break
        except OSError:
            pass
    return total


def reset_hwm(root: int) -> dict[int, int]:
    """Reset each process's peak RSS (VmHWM := VmRSS, /proc/PID/clear_refs) and return {pid: VmRSS}."""
    base = {}
    for pid in tree(root):
        try:
            with open(f"/proc/{pid}/clear_refs", "w") as f:
                f.write("5")
            base[pid] = _status_kb(pid)["VmRSS"] * 1024
        except (OSError, KeyError):
            pass
    return base


def hwm_growth(base: dict[int, int]) -> dict[str, int]:
    """{process name: VmHWM now - VmRSS at reset_hwm} over the processes of `base` still alive."""
    out = {}
    for pid, rss in base.items():
        try:
            out[f"{_name(pid)}[{pid}]"] = _status_kb(pid)["VmHWM"] * 1024 - rss
        except (OSError, KeyError):
            pass
    return out


def _status_kb(pid: int) -> dict[str, int]:
    with open(f"/proc/{pid}/status") as f:
        return {k: int(v.split()[0]) for k, _, v in (line.partition(":") for line in f)
                if k in ("VmRSS", "VmHWM")}


class RssSampler:
    """Samples the tree's RSS sum every `interval` seconds in a thread; .peak, .samples."""

    def __init__(self, root: int, interval: float = 0.02) -> None:
        self.root, self.interval = root, interval
        self.peak = 0
        self.samples = 0
        self.base = {pid: st[1] for pid in tree(root) if (st := _stat(pid))}   # RSS per process at start
        self.peaks: dict[int, int] = dict(self.base)                            # highest RSS per process
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        pids, refreshed = tree(self.root), time.monotonic()
        while not self._stop.is_set():
            if time.monotonic() - refreshed > 0.5:
                pids, refreshed = tree(self.root), time.monotonic()
            rss = 0
            for pid in pids:
                st = _stat(pid)
                if st:
                    rss += st[1]
                    self.peaks[pid] = max(self.peaks.get(pid, 0), st[1])
            self.peak = max(self.peak, rss)
            self.samples += 1
            self._stop.wait(self.interval)

    def growth_by_process(self) -> list[tuple[str, float]]:
        """[(process, MB grown from the start to its peak)] biggest first."""
        out = []
        for pid, peak in self.peaks.items():
            out.append((f"{_name(pid)}[{pid}]", (peak - self.base.get(pid, 0)) / 1048576))
        return sorted(out, key=lambda x: -x[1])

    def __enter__(self) -> "RssSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()


# ----------------------------------------------------------------------------------------------- targets

class Target:
    name = ""
    proc: subprocess.Popen
    port: int
    db: Path | None = None

    def usage(self) -> tuple[int, float]:
        return tree_usage(self.proc.pid)

    def cpu_by_process(self) -> dict[str, float]:
        """CPU seconds per process of the tree, keyed by a short name (summed over equal names)."""
        out: dict[str, float] = {}
        for pid in tree(self.proc.pid):
            st = _stat(pid)
            if st:
                name = _name(pid)
                out[name] = out.get(name, 0.0) + st[2]
        return out


class Sink(Target):
    name = "sink"

    def __init__(self, procs: Procs) -> None:
        self.port = ingest.free_port()
        args = [ingest.tool("smtp-sink")]
        if os.geteuid() == 0:
            args += ["-u", "nobody"]
        self.proc = procs.start(args + [f"127.0.0.1:{self.port}", "256"], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        ingest.wait_port(self.port)


HARAKA_PLUGIN = """\
// bench: accept every recipient, discard every message (pretend it was queued), no DNS at all
exports.hook_lookup_rdns = (next) => next(OK, 'localhost')
exports.hook_rcpt = (next) => next(OK)
exports.hook_queue = (next) => next(OK)
"""


def haraka_install(version: str) -> Path:
    """npm install Haraka@version into bench/.haraka (once); returns its bin/haraka."""
    HARAKA_DIR.mkdir(exist_ok=True)
    (HARAKA_DIR / ".gitignore").write_text("*\n")
    pkg = HARAKA_DIR / "node_modules" / "Haraka" / "package.json"
    binary = pkg.parent / "bin" / "haraka"
    if pkg.exists() and json.loads(pkg.read_text()).get("version") == version:
        return binary
    for exe in ("node", "npm"):
        if not shutil.which(exe):
            raise SystemExit(f"{exe} not found (Debian: apt-get install nodejs npm); or run --targets sink,ticketmx")
    (HARAKA_DIR / "package.json").write_text(json.dumps(
        {"name": "ticketmx-bench-haraka", "private": True, "dependencies": {"Haraka": version}}, indent=2) + "\n")
    log(f"installing Haraka {version} from the npm registry into {HARAKA_DIR} ...")
    proc = subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--loglevel=error"], cwd=HARAKA_DIR,
                          capture_output=True, text=True, timeout=600)
    if proc.returncode != 0 or not pkg.exists():
        raise SystemExit(f"npm install Haraka@{version} failed:\n{proc.stderr[-3000:]}")
    return binary


class Haraka(Target):
    name = "haraka"

    def __init__(self, procs: Procs, version: str, nodes: int) -> None:
        binary = haraka_install(version)
        self.dir = HARAKA_DIR / f"server-{os.getpid()}"
        procs.dirs.append(self.dir)
        shutil.rmtree(self.dir, ignore_errors=True)
        out = subprocess.run(["node", str(binary), "-i", str(self.dir)], capture_output=True, text=True)
        if out.returncode != 0:
            raise SystemExit(f"haraka -i failed: {out.stderr[-2000:]}")
        self.port = ingest.free_port()
        cfg = self.dir / "config"
        (cfg / "smtp.ini").write_text(f"listen=127.0.0.1:{self.port}\nnodes={nodes}\n")
        (cfg / "plugins").write_text("bench_discard\n")
        (cfg / "log.ini").write_text("[main]\nlevel=warn\ntimestamps=false\nformat=default\n")
        (cfg / "me").write_text("haraka.bench.test\n")
        (self.dir / "plugins").mkdir(exist_ok=True)
        (self.dir / "plugins" / "bench_discard.js").write_text(HARAKA_PLUGIN)
        self.log = self.dir / "haraka.log"
        self.proc = procs.start(["node", str(binary), "-c", str(self.dir)], stdout=open(self.log, "wb"),
                                stderr=subprocess.STDOUT, cwd=self.dir)
        try:
            ingest.wait_port(self.port, timeout=60)
        except SystemExit:
            raise SystemExit(f"Haraka did not start; {self.log}:\n{self.log.read_text()[-3000:]}")
        # cluster: the master opens the port as soon as one worker listens; wait for all of them
        deadline = time.monotonic() + 30
        while len(tree(self.proc.pid)) < 1 + nodes and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.5)


def _set_key(text: str, section: str, key: str, value: str) -> str:
    """Set `key = value` in [section] of a TOML text (dropping its old value and comment); fail loudly if
    absent. A section or key the example only shows commented out (``# [pipeline.attachments]``,
    ``# max_attachment_size = ...``) is added."""
    header = re.compile(rf"(?m)^\[{re.escape(section)}\]\s*$")
    m = header.search(text)
    if not m and re.search(rf"(?m)^#+ *\[{re.escape(section)}\]\s*$", text):
        text = text.rstrip("\n") + f"\n\n[{section}]\n"
        m = header.search(text)
    if not m:
        raise SystemExit(f"conf/ticketmx.example.toml has no [{section}] section any more")
    end = re.compile(r"(?m)^\[").search(text, m.end())
    stop = end.start() if end else len(text)
    km = re.compile(rf"(?m)^{re.escape(key)}\s*=.*$").search(text, m.end(), stop)
    if not km and re.search(rf"(?m)^#+ *{re.escape(key)}\s*=", text):
        return text[:m.end()] + f"\n{key} = {value}" + text[m.end():]
    if not km:
        raise SystemExit(f"conf/ticketmx.example.toml: no {section}.{key} to set")
    return text[:km.start()] + f"{key} = {value}" + text[km.end():]


def blob_bytes(db: Path) -> int:
    """Bytes of attachment blobs stored (did the big attachment get stored, or was it stripped?)."""
    import sqlite3
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return int(conn.execute("SELECT COALESCE(SUM(length(data)), 0) FROM blobs").fetchone()[0])
    finally:
        conn.close()


class Ticketmx(Target):
    name = "ticketmx"

    def __init__(self, procs: Procs, dns_port: int, tag: str, extra_cfg: dict[tuple[str, str], str] | None = None):
        self.procs = procs
        self.tmp = Path(tempfile.mkdtemp(prefix=f"ticketmx-perf-{tag}-"))
        procs.dirs.append(self.tmp)
        self.port = ingest.free_port()
        self.db = self.tmp / "bench.db"
        text = (ROOT / "conf" / "ticketmx.example.toml").read_text()
        settings = {
            ("smtp", "listen"): f'["127.0.0.1:{self.port}"]',
            ("smtp", "max_sessions_per_ip"): "1000",      # the 200-session probe comes from one IP
            ("smtp", "max_message_size"): '"100MiB"',     # the 50 and 80 MB probes
            ("store", "url"): f'"sqlite:///{self.db}"',
            ("dns", "nameservers"): f'["127.0.0.1:{dns_port}"]',
            ("metrics", "listen"): '""',
            ("log", "level"): '"warning"',
            ("smtp", "shutdown_grace"): '"3s"',            # stopping an instance mid-load (^C) stays quick
        }
        settings.update(extra_cfg or {})
        for (section, key), value in settings.items():
            text = _set_key(text, section, key, value)
        self.config = self.tmp / "bench.toml"
        self.config.write_text(text)
        self.log = self.tmp / "serve.log"
        # BENCH_CPROFILE=FILE: run the SMTP process under cProfile (written when it stops; the pipeline
        # worker processes are not profiled). Sees inside uvloop callbacks, which py-spy cannot.
        prof = os.environ.get("BENCH_CPROFILE")
        pre = ["-m", "cProfile", "-o", prof] if prof else []
        self.proc = procs.start([sys.executable, *pre, "-m", "gateway", "serve", "--config", str(self.config)],
                                cwd=ROOT, stdout=open(self.log, "wb"), stderr=subprocess.STDOUT)
        try:
            ingest.wait_port(self.port, timeout=60)
        except SystemExit:
            text = self.log.read_text()[-3000:]
            procs.stop(self.proc)
            raise SystemExit(f"ticketmx did not start; {self.log}:\n{text}")
        time.sleep(0.3)

    def terminal(self) -> int:
        counts = ingest.spool_counts(self.db)
        return sum(counts.get(s, 0) for s in TERMINAL)

    def wait_drained(self, expected: int, stall: float = 90) -> float:
        """perf_counter() when `expected` spool entries are terminal; fails after `stall` s without progress."""
        last, last_change = -1, time.monotonic()
        while True:
            done = self.terminal()
            if done >= expected:
                return time.perf_counter()
            if done != last:
                last, last_change = done, time.monotonic()
            elif time.monotonic() - last_change > stall:
                raise SystemExit(f"ticketmx pipeline stalled at {done}/{expected}: {ingest.spool_counts(self.db)}"
                                 f"\n{self.log.read_text()[-3000:]}")
            time.sleep(0.02)

    def close(self) -> None:
        self.procs.stop(self.proc, timeout=20)
        problems = [line for line in self.log.read_text(errors="replace").splitlines()
                    if "Traceback" in line or " ERROR " in line or "CRITICAL" in line]
        if problems:
            log(f"ticketmx {self.tmp.name} logged {len(problems)} errors, e.g. {problems[0][:200]}")
        shutil.rmtree(self.tmp, ignore_errors=True)


class DnsServer:
    """tests/auth/dnsserver.py (via bench/ingest.start_dns) in its own process, so its GIL and CPU are not
    the client's. `queries()` asks it how many questions it answered."""

    def __init__(self, procs: Procs, records: list[tuple[str, str]]) -> None:
        self.proc = procs.start([sys.executable, str(Path(__file__).resolve()), "--_dns-server"], cwd=ROOT,
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.proc.stdin.write(json.dumps(records) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line.strip().isdigit():
            raise SystemExit(f"bench DNS server did not start: {line!r}")
        self.port = int(line)

    def queries(self) -> int:
        self.proc.stdin.write("count\n")
        self.proc.stdin.flush()
        return int(self.proc.stdout.readline())


def dns_server_main() -> None:
    records = [tuple(r) for r in json.loads(sys.stdin.readline())]
    srv = ingest.start_dns(records)
    print(srv.port, flush=True)
    for line in sys.stdin:
        if line.strip() == "count":
            print(len(srv.queries), flush=True)
    srv.stop()


# ---------------------------------------------------------------------------------------------- messages

_WORDS = ("printer invoice the a of and to please urgent laptop screen error since yesterday office network "
          "password reset account locked order shipment refund thanks regards broken again help").split()


def _text(rng: random.Random, size: int, width: int = 72) -> list[str]:
    lines, total = [], 0
    while total < size:
        words, n = [], 0
        while n < width:
            w = rng.choice(_WORDS)
            words.append(w)
            n += len(w) + 1
        line = " ".join(words)
        lines.append(line)
        total += len(line) + 2
    return lines


def big_body(size: int) -> bytes:
    """A multipart/mixed message of about `size` bytes: text/plain + text/html alternative, and a small
    PDF-ish attachment, like a mail client with an HTML signature and a screenshot would send."""
    rng = random.Random(9)
    att = base64.encodebytes(bytes(rng.getrandbits(8) for _ in range(3000))).decode().replace("\n", "\r\n")
    head = ("From: Bench Sender <bench@customer.test>\r\nTo: support@example.test\r\n"
            "Subject: bench: printer on fire (50 KB)\r\nDate: Sun, 22 Nov 2026 10:00:00 +0000\r\n"
            "MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"mix\"\r\n\r\n")
    room = max(2000, size - len(head) - len(att) - 600)
    text = _text(rng, int(room * 0.4))
    paras = _text(rng, int(room * 0.6) - 200, width=60)
    html = (["<html><head><meta charset=\"utf-8\"></head><body>"]
            + [f"<p style=\"margin:0\">{p}</p>" for p in paras] + ["</body></html>"])
    parts = [head, "--mix\r\nContent-Type: multipart/alternative; boundary=\"alt\"\r\n\r\n",
             "--alt\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 7bit\r\n\r\n",
             "\r\n".join(text), "\r\n--alt\r\nContent-Type: text/html; charset=utf-8\r\n"
             "Content-Transfer-Encoding: 7bit\r\n\r\n", "\r\n".join(html), "\r\n--alt--\r\n",
             "--mix\r\nContent-Type: application/pdf; name=\"screenshot.pdf\"\r\n"
             "Content-Disposition: attachment; filename=\"screenshot.pdf\"\r\n"
             "Content-Transfer-Encoding: base64\r\n\r\n", att, "--mix--\r\n"]
    return "".join(parts).encode()


def huge_body(size: int) -> bytes:
    """About `size` bytes: a short text and one base64 attachment (a log archive) making up the rest."""
    raw = os.urandom(size * 3 // 4 - 1024)
    att = base64.encodebytes(raw).replace(b"\n", b"\r\n")
    return (b"From: bench@customer.test\r\nTo: support@example.test\r\nSubject: bench: big log archive\r\n"
            b"Date: Sun, 22 Nov 2026 10:00:00 +0000\r\nMIME-Version: 1.0\r\n"
            b"Content-Type: multipart/mixed; boundary=\"mix\"\r\n\r\n--mix\r\n"
            b"Content-Type: text/plain; charset=utf-8\r\n\r\nThe logs you asked for are attached.\r\n--mix\r\n"
            b"Content-Type: application/gzip; name=\"logs.tar.gz\"\r\n"
            b"Content-Disposition: attachment; filename=\"logs.tar.gz\"\r\n"
            b"Content-Transfer-Encoding: base64\r\n\r\n" + att + b"--mix--\r\n")


class Signer:
    """One rsa-2048 key (selector `perf`) for the 50 KB and 50 MB messages; the 4 KB ones come from
    bench/ingest.make_messages (its own key, selector `bench`)."""

    def __init__(self, algo: str) -> None:
        self.algo = algo
        self.records: list[tuple[str, str]] = []
        if algo == "none":
            return
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                     serialization.NoEncryption())
        pub = key.public_key().public_bytes(serialization.Encoding.DER,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)
        self.records.append(("perf._domainkey.customer.test", f"v=DKIM1; k=rsa; p={base64.b64encode(pub).decode()}"))

    def sign(self, body: bytes) -> bytes:
        if self.algo == "none":
            return body
        import dkim
        return dkim.sign(body, b"perf", b"customer.test", self.pem, canonicalize=(b"relaxed", b"relaxed"),
                         include_headers=[b"from", b"to", b"subject", b"date", b"mime-version",
                                          b"content-type"]) + body


def factory(body: bytes, tag: str) -> Callable[[], bytes]:
    """Unique messages: a Message-ID (outside the signature) in front of a fixed, signed message."""
    counter = iter(range(10**9))
    stamp = time.time_ns()

    def make() -> bytes:
        return f"Message-ID: <{tag}{next(counter)}.{stamp}@customer.test>\r\n".encode() + body
    return make


def msgid_of(msg: bytes) -> str:
    return msg[13:msg.index(b">", 13)].decode()


# ------------------------------------------------------------------------------------------------ client

class Load:
    """`c` logical sessions against 127.0.0.1:port. Each sends MAIL/RCPT/DATA in one write (every target
    here accepts pipelining), the message and the dot in one write, and waits for each reply.
    n > 0: send n messages as fast as the server answers. rate > 0: paced, for `seconds`. rate == 0 and
    seconds > 0: as fast as possible for `seconds`. reuse=False: one message per connection.
    hold=True: every session connects, says EHLO, then waits for release()."""

    def __init__(self, port: int, make: Callable[[], bytes], c: int, n: int = 0, reuse: bool = True,
                 rate: float = 0.0, seconds: float = 0.0, record: bool = False, hold: bool = False,
                 per_session: int = 0, pipelining: str = "off") -> None:
        self.port, self.make, self.c, self.reuse = port, make, c, reuse
        self.pipelining = pipelining
        self.remaining = n
        self.per_session = per_session
        self.rate, self.seconds = rate, seconds
        self.interval = c / rate if rate else 0.0
        self.record = record
        self.hold, self.held = hold, []
        self.latencies: list[float] = []
        self.accepted: dict[str, float] = {}      # Message-ID -> time.time() of its 250
        self.errors: list[str] = []
        self.sent = 0
        self.active = 0
        self.ready = 0

    async def run(self) -> float:
        self.loop = asyncio.get_running_loop()
        self.done = self.loop.create_future()
        self.all_ready = self.loop.create_future()
        self.t0 = time.perf_counter()
        self.stop_at = self.t0 + self.seconds if self.seconds else None
        self.active = self.c
        for k in range(self.c):
            slot = {"next_at": self.t0 + (k / self.c) * self.interval, "sent": 0}
            self.connect(slot)
        await self.done
        elapsed = time.perf_counter() - self.t0
        if self.errors:
            raise SystemExit(f"client errors ({len(self.errors)}), first: {self.errors[0]}")
        return elapsed

    def connect(self, slot: dict) -> None:
        async def go() -> None:
            try:
                await self.loop.create_connection(lambda: _Client(self, slot), "127.0.0.1", self.port)
            except OSError as exc:
                self.fail(slot, f"connect: {exc}")
        self.loop.create_task(go())

    def fail(self, slot: dict, why: str) -> None:
        self.errors.append(why)
        self.finish(slot)

    def finish(self, slot: dict) -> None:
        if slot.get("finished"):
            return
        slot["finished"] = True
        self.active -= 1
        if self.active == 0 and not self.done.done():
            self.done.set_result(None)

    def want_more(self, slot: dict) -> bool:
        if self.per_session:
            return slot["sent"] < self.per_session
        if self.stop_at is not None:
            return time.perf_counter() < self.stop_at
        return self.remaining > 0

    def on_ready(self, client: "_Client") -> None:
        if self.hold:
            self.held.append(client)
            self.ready += 1
            if self.ready == self.c and not self.all_ready.done():
                self.all_ready.set_result(None)
            return
        client.next()

    def release(self) -> None:
        self.hold = False
        for client in self.held:
            client.next()
        self.held = []


_MAIL = f"MAIL FROM:<{SENDER}>\r\n".encode()
_RCPT = f"RCPT TO:<{RCPT}>\r\n".encode()
_DATA = b"DATA\r\n"


class _Client(asyncio.Protocol):
    def __init__(self, load: Load, slot: dict) -> None:
        self.load, self.slot = load, slot
        self.buf = b""
        self.state = "greet"
        self.pending = 1
        self.transport: asyncio.Transport | None = None
        self.msgid = ""
        self.pipelining = load.pipelining == "on"
        self.queue: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data if self.buf else data
        start = 0
        while True:
            i = buf.find(b"\n", start)
            if i < 0:
                break
            line = buf[start:i + 1]
            start = i + 1
            if line[3:4] != b"-":
                self.reply(line)
            elif self.state == "ehlo" and line[4:14].upper() == b"PIPELINING" and self.load.pipelining == "auto":
                self.pipelining = True
        self.buf = buf[start:]

    def connection_lost(self, exc: Exception | None) -> None:
        if self.state not in ("quit", "next"):
            self.load.fail(self.slot, f"connection lost in state {self.state}: {exc}")

    def reply(self, line: bytes) -> None:
        code = line[:3]
        state = self.state
        if state == "greet":
            if code != b"220":
                return self.abort(line)
            self.state = "ehlo"
            self.transport.write(b"EHLO client.test\r\n")
        elif state == "ehlo":
            if code != b"250":
                return self.abort(line)
            if line[4:14].upper() == b"PIPELINING" and self.load.pipelining == "auto":
                self.pipelining = True
            self.state = "idle"
            self.load.on_ready(self)
        elif state == "txn":
            self.pending -= 1
            expected = b"354" if self.pending == 0 else b"250"
            if code != expected:
                return self.abort(line)
            if self.queue:
                self.transport.write(self.queue.pop(0))
            elif self.pending == 0:
                self.state = "eod"
                self.transport.write(self.msg)
                self.t0 = time.perf_counter()
        elif state == "eod":
            now = time.perf_counter()
            if code != b"250":
                return self.abort(line)
            load = self.load
            load.latencies.append(now - self.t0)
            if load.record:
                load.accepted[self.msgid] = time.time()
            self.slot["sent"] += 1
            if load.reuse:
                self.state = "idle"
                self.next()
            else:
                self.state = "next"
                self.transport.write(b"QUIT\r\n")
                self.transport.close()
                if load.want_more(self.slot):
                    load.connect(self.slot)
                else:
                    load.finish(self.slot)

    def abort(self, line: bytes) -> None:
        self.load.errors.append(f"{self.state}: {line.decode(errors='replace').strip()}")
        self.quit()

    def quit(self) -> None:
        self.state = "quit"
        self.transport.write(b"QUIT\r\n")
        self.transport.close()
        self.load.finish(self.slot)

    def next(self) -> None:
        load = self.load
        if not load.want_more(self.slot):
            return self.quit()
        if load.stop_at is None and not load.per_session:
            load.remaining -= 1
        if load.interval:
            delay = self.slot["next_at"] - time.perf_counter()
            self.slot["next_at"] += load.interval
            if delay > 0:
                self.state = "wait"
                load.loop.call_later(delay, self.send)
                return
        self.send()

    def send(self) -> None:
        if self.transport.is_closing():
            return
        msg = self.load.make()
        if self.load.record:
            self.msgid = msgid_of(msg)
        self.msg = msg + b".\r\n"
        self.state = "txn"
        self.pending = 3
        self.load.sent += 1
        if self.pipelining:
            self.transport.write(_MAIL + _RCPT + _DATA)
        else:
            self.queue = [_RCPT, _DATA]
            self.transport.write(_MAIL)


def smtp_source_run(port: int, n: int, c: int, reuse: bool, msgfile: Path) -> float:
    args = [ingest.tool("smtp-source"), "-s", str(c), "-m", str(n), "-f", SENDER, "-t", RCPT,
            "-M", "client.test", "-F", str(msgfile)]
    if reuse:
        args.append("-d")
    t0 = time.perf_counter()
    proc = subprocess.run(args + [f"127.0.0.1:{port}"], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"smtp-source failed: {proc.stderr.strip()[-2000:]}")
    return time.perf_counter() - t0


def client_cpu() -> float:
    """CPU seconds of this process and of its reaped children (smtp-source)."""
    import resource
    ch = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + ch.ru_utime + ch.ru_stime


def pct(values: list[float], p: float) -> float:
    return ingest.pct(values, p) if values else float("nan")


# ------------------------------------------------------------------------------------------------- bench

class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.procs = Procs()
        self.results: dict[str, Any] = {}
        self.rows: list[tuple[str, str, str]] = []     # (label, value, command)
        self.haraka: Haraka | None = None
        self.sink: Sink | None = None
        self.dns: DnsServer | None = None

    # ---- output
    def cmd(self, **opts: Any) -> str:
        a = self.args
        parts = ["python bench/perf.py"]
        for k, v in opts.items():
            if k == "repeat" and v == 1:
                continue
            flag = "-n" if k == "n" else f"--{k.replace('_', '-')}"
            parts.append(flag + ("" if v is True else f" {v}"))
        if a.client != "asyncio":
            parts.append(f"--client {a.client}")
        if a.dkim != "rsa":
            parts.append(f"--dkim {a.dkim}")
        if a.pipelining != "off":
            parts.append(f"--pipelining {a.pipelining}")
        if a.quick and "n" not in opts:
            parts.append("--quick")
        for (section, key), value in a.set:
            parts.append(shlex.quote(f"--set={section}.{key}={value}"))
        return " ".join(parts)

    def row(self, label: str, value: str, command: str) -> None:
        self.rows.append((label, value, command))
        print(f"{label:<44} {value:<40} # {command}", flush=True)

    # ---- set-up
    def setup(self) -> None:
        a = self.args
        self.small_make, small_records = ingest.make_messages(4096, a.dkim)
        self.signer = Signer(a.dkim)
        self.big_msg = self.signer.sign(big_body(50 * 1024))
        first = self.small_make()
        self.small_msg = first[first.index(b"\r\n") + 2:]   # without its Message-ID
        log(f"messages: 4 KB = {len(self.small_msg)} B, 50 KB = {len(self.big_msg)} B, DKIM {a.dkim}")
        self.dns = DnsServer(self.procs, small_records + self.signer.records)
        if "sink" in a.targets:
            self.sink = Sink(self.procs)
        if "haraka" in a.targets:
            self.haraka = Haraka(self.procs, a.haraka_version, a.haraka_nodes)
            hv = json.loads((HARAKA_DIR / "node_modules" / "Haraka" / "package.json").read_text())["version"]
            self.results["haraka_version"] = hv
            log(f"Haraka {hv} on 127.0.0.1:{self.haraka.port} with {a.haraka_nodes} worker processes")

    def make_for(self, kind: str) -> Callable[[], bytes]:
        return factory(self.big_msg, "big") if kind == "big" else factory(self.small_msg, "s")

    def new_load(self, *a: Any, **kw: Any) -> Load:
        return Load(*a, pipelining=self.args.pipelining, **kw)

    def new_ticketmx(self, tag: str, extra: dict | None = None) -> Ticketmx:
        settings = dict(self.args.set)
        settings.update(extra or {})
        return Ticketmx(self.procs, self.dns.port, tag, settings)

    # ---- one throughput measurement
    def drive(self, target: Target, workload: str, n: int, c: int) -> dict[str, Any]:
        """Send n messages of `workload` with c sessions; for ticketmx wait until all are terminal."""
        kind, _c, reuse = WORKLOADS[workload]
        before = target.terminal() if isinstance(target, Ticketmx) else 0
        _rss, cpu0 = target.usage()
        split0 = target.cpu_by_process()
        ccpu0 = client_cpu()
        la = load1()
        t0 = time.perf_counter()
        if self.args.client == "smtp-source":
            path = Path(tempfile.mkstemp(prefix="perf-msg-", suffix=".eml")[1])
            path.write_bytes((self.big_msg if kind == "big" else self.small_msg).replace(b"\r\n", b"\n"))
            try:
                elapsed = smtp_source_run(target.port, n, c, reuse, path)
            finally:
                path.unlink()
            lat: list[float] = []
        else:
            load = self.new_load(target.port, self.make_for(kind), c, n=n, reuse=reuse)
            elapsed = asyncio.run(load.run())
            lat = load.latencies
        out: dict[str, Any] = {"n": n, "c": c, "accept_msgs_per_s": n / elapsed, "load1": la}
        if isinstance(target, Ticketmx):
            t_end = target.wait_drained(before + n)
            out["msgs_per_s"] = n / (t_end - t0)
            out["states"] = ingest.spool_counts(target.db)
        else:
            out["msgs_per_s"] = out["accept_msgs_per_s"]
        _rss, cpu1 = target.usage()
        out["server_cpu_ms_per_msg"] = (cpu1 - cpu0) * 1000 / n
        split1 = target.cpu_by_process()
        out["cpu_ms_per_msg_by_process"] = {k: round((v - split0.get(k, 0.0)) * 1000 / n, 3)
                                            for k, v in split1.items() if v - split0.get(k, 0.0) > 0}
        out["client_cpu_pct"] = (client_cpu() - ccpu0) * 100 / elapsed
        if lat:
            out["eod_to_250_p50_ms"] = pct(lat, 0.5)
            out["eod_to_250_p99_ms"] = pct(lat, 0.99)
        return out

    def warm(self, target: Target, workload: str) -> None:
        """ticketmx: a few hundred messages (imports, caches, SQLite pages). Haraka (and the sink): rounds of
        messages until the rate settles (within 15% of the previous round, at most --warm-seconds): node's
        JIT makes Haraka 2-3x faster after a few thousand messages."""
        kind, c, reuse = WORKLOADS[workload]
        if isinstance(target, Ticketmx):
            n = min(200, max(20, self.n(workload) // 10))
            before = target.terminal()
            asyncio.run(self.new_load(target.port, self.make_for(kind), c, n=n, reuse=reuse).run())
            target.wait_drained(before + n)
            return
        deadline = time.monotonic() + (self.args.warm_seconds if isinstance(target, Haraka) else 0)
        n, prev, rates = max(100, self.n(workload) // 3), 0.0, []
        while not rates or time.monotonic() < deadline:
            load = self.new_load(target.port, self.make_for(kind), c, n=n, reuse=reuse)
            rate = n / asyncio.run(load.run())
            rates.append(round(rate))
            if prev and abs(rate / prev - 1) < 0.15:
                break
            prev = rate
        log(f"  warm-up {target.name}: {' -> '.join(map(str, rates))} msgs/s ({n} per round)")

    def n(self, workload: str) -> int:
        a = self.args
        if a.n:
            return a.n
        return (QUICK_COUNTS if a.quick else COUNTS)[workload]

    # ---- sections
    def throughput(self) -> None:
        a = self.args
        for workload in a.workload:
            kind, c, reuse = WORKLOADS[workload]
            n = self.n(workload)
            per: dict[str, list[dict]] = {}
            for rep in range(a.repeat):
                for tname in a.targets:
                    if tname == "ticketmx":
                        target: Target = self.new_ticketmx(f"{workload}")
                    else:
                        target = self.sink if tname == "sink" else self.haraka
                    try:
                        log(f"{workload}: {tname} ({n} msgs, {c} sessions, run {rep + 1}/{a.repeat})")
                        q0 = self.dns.queries()
                        self.warm(target, workload)
                        r = self.drive(target, workload, n, c)
                        if tname == "ticketmx":
                            r["dns_queries"] = self.dns.queries() - q0     # warm-up and run, one instance
                    finally:
                        if isinstance(target, Ticketmx):
                            target.close()
                    per.setdefault(tname, []).append(r)
            for tname, runs in per.items():
                best = statistics.median(r["msgs_per_s"] for r in runs)
                key = f"{workload}.{tname}"
                self.results[key] = {"msgs_per_s": best, "runs": runs}
                vals = " / ".join(f"{r['msgs_per_s']:.0f}" for r in runs)
                extra = (f"  (250s {statistics.median(r['accept_msgs_per_s'] for r in runs):.0f}/s)"
                         if tname == "ticketmx" else "")
                cpu = statistics.median(r["server_cpu_ms_per_msg"] for r in runs)
                self.row(f"{workload:<6} {tname:<9} msgs/s", f"{vals}{extra}",
                         self.cmd(workload=workload, targets=tname, extras="none", n=n, repeat=a.repeat))
                split = ""
                if tname == "ticketmx":
                    parts = runs[-1]["cpu_ms_per_msg_by_process"]
                    split = " = " + " + ".join(f"{k} {v:.2f}" for k, v in sorted(parts.items(), key=lambda kv: -kv[1])
                                               if v >= 0.01)
                self.row(f"{workload:<6} {tname:<9} server CPU ms/msg", f"{cpu:.3f}{split}"
                         f"  (client CPU {statistics.median(r['client_cpu_pct'] for r in runs):.0f}%,"
                         f" load1 {runs[0]['load1']:.2f})",
                         self.cmd(workload=workload, targets=tname, extras="none", n=n, repeat=a.repeat))
                if tname == "ticketmx":
                    states = runs[-1]["states"]
                    if set(states) - {"ticket_created"}:
                        log(f"NOTE {workload}: spool states {states} (not all tickets)")
            if "haraka" in per and "ticketmx" in per:
                ratio = self.results[f"{workload}.ticketmx"]["msgs_per_s"] / \
                    self.results[f"{workload}.haraka"]["msgs_per_s"]
                goal = TARGETS[workload]
                self.results[f"{workload}.ratio_ticketmx_haraka"] = ratio
                each = [t["msgs_per_s"] / h["msgs_per_s"] for t, h in zip(per["ticketmx"], per["haraka"])]
                self.results[f"{workload}.ratio_runs"] = each
                runs_note = f"; per run {' / '.join(f'{x:.3f}' for x in each)}" if len(each) > 1 else ""
                self.row(f"{workload:<6} ratio ticketmx/haraka", f"{ratio:.3f}  (target >= {goal}:"
                         f" {'PASS' if ratio >= goal else 'FAIL'}{runs_note})",
                         self.cmd(workload=workload, targets="haraka,ticketmx", extras="none", n=n, repeat=a.repeat))
                cpu = {t: statistics.median(r["server_cpu_ms_per_msg"] for r in per[t]) for t in ("haraka", "ticketmx")}
                self.results[f"{workload}.cpu_ratio_haraka_ticketmx"] = cpu["haraka"] / cpu["ticketmx"]
                self.row(f"{workload:<6} CPU/msg haraka/ticketmx", f"{cpu['haraka'] / cpu['ticketmx']:.3f}  (less"
                         " sensitive to other load than the msgs/s ratio)",
                         self.cmd(workload=workload, targets="haraka,ticketmx", extras="none", n=n, repeat=a.repeat))
                budget = cpu_budget(goal * self.results[f"{workload}.haraka"]["msgs_per_s"], per["ticketmx"])
                self.results[f"{workload}.cpu_budget_ms_per_msg"] = budget
                self.row(f"{workload:<6} CPU budget at target", f"{budget:.3f} ms/msg for the server, against"
                         f" {cpu['ticketmx']:.3f} measured ({_budget_verdict(budget, cpu['ticketmx'])};"
                         f" {_cores()} cores at {goal * self.results[f'{workload}.haraka']['msgs_per_s']:.0f}"
                         " msgs/s, less the client's CPU per message)",
                         self.cmd(workload=workload, targets="haraka,ticketmx", extras="none", n=n, repeat=a.repeat))

    def ticketmx_reuse_rate(self) -> float:
        r = self.results.get("reuse.ticketmx")
        if r:
            return r["msgs_per_s"]
        log("latency: measuring the ticketmx reuse rate first")
        tm = self.new_ticketmx("rate")
        try:
            self.warm(tm, "reuse")
            rate = self.drive(tm, "reuse", self.n("reuse"), 20)["msgs_per_s"]
        finally:
            tm.close()
        self.results["reuse.ticketmx"] = {"msgs_per_s": rate}
        return rate

    def latency(self) -> None:
        a = self.args
        rate = a.latency_rate or self.ticketmx_reuse_rate() / 2
        seconds = a.latency_seconds or (3 if a.quick else 10)
        tm = self.new_ticketmx("latency")
        try:
            self.warm(tm, "reuse")
            before = tm.terminal()
            log(f"latency: {rate:.0f} msgs/s paced over 20 sessions for {seconds:.0f} s")
            load = self.new_load(tm.port, self.make_for("small"), 20, rate=rate, seconds=seconds, record=True)
            asyncio.run(load.run())
            tm.wait_drained(before + load.sent)
            import sqlite3
            conn = sqlite3.connect(tm.db)
            rows = conn.execute("SELECT message_id, received_at, finished_at FROM spool"
                                " WHERE finished_at IS NOT NULL").fetchall()
            conn.close()
            to_ticket = [f - load.accepted[m] for m, _r, f in rows if m in load.accepted]
            spooled_to_ticket = [f - r for m, r, f in rows if m in load.accepted]
        finally:
            tm.close()
        lat = load.latencies
        sent_rate = len(lat) / seconds
        res = {"rate": rate, "achieved": sent_rate, "samples": len(lat),
               "eod_to_250_p50_ms": pct(lat, 0.5), "eod_to_250_p99_ms": pct(lat, 0.99),
               "ack_to_ticket_p50_ms": pct(to_ticket, 0.5), "ack_to_ticket_p99_ms": pct(to_ticket, 0.99),
               "spooled_to_ticket_p99_ms": pct(spooled_to_ticket, 0.99), "load1": load1()}
        self.results["latency"] = res
        c = self.cmd(extras="latency", workload="none", targets="ticketmx", latency_rate=f"{rate:.0f}",
                     latency_seconds=f"{seconds:g}")
        self.row(f"latency EOD->250 @{rate:.0f}/s p50 / p99", f"{res['eod_to_250_p50_ms']:.1f} / "
                 f"{res['eod_to_250_p99_ms']:.1f} ms  (target p99 <= 25; {len(lat)} msgs)", c)
        self.row("latency 250->ticket committed p50 / p99", f"{res['ack_to_ticket_p50_ms']:.1f} / "
                 f"{res['ack_to_ticket_p99_ms']:.1f} ms  (target p99 <= 250; received_at->finished_at"
                 f" p99 {res['spooled_to_ticket_p99_ms']:.1f})", c)

    def memory(self) -> None:
        a = self.args
        sessions = a.memory_sessions
        sizes = a.huge_mb or [20 if a.quick else 50]
        mb = 1024 * 1024
        if sessions > 0:
            # Haraka as a reference (it has no durable work to do)
            if self.haraka is not None:
                self.results["memory.haraka"] = self._sessions_rss(self.haraka, sessions)
            tm = self.new_ticketmx("memory")
            try:
                base = tm.usage()[0]
                res = self._sessions_rss(tm, sessions)
                res["baseline_mb"] = base / mb
                self.results["memory.ticketmx"] = res
                c = self.cmd(extras="memory", workload="none", targets="ticketmx")
                self.row(f"RSS ticketmx, {sessions} sessions idle / active", f"{res['idle_mb']:.0f} / "
                         f"{res['active_peak_mb']:.0f} MB  (target < 200; at start {base / mb:.0f},"
                         f" PSS idle {res['idle_pss_mb']:.0f})", c)
                if "memory.haraka" in self.results:
                    h = self.results["memory.haraka"]
                    self.row(f"RSS haraka,   {sessions} sessions idle / active",
                             f"{h['idle_mb']:.0f} / {h['active_peak_mb']:.0f} MB  (PSS idle {h['idle_pss_mb']:.0f})",
                             self.cmd(extras="memory", workload="none", targets="haraka,ticketmx"))
                if len(sizes) == 1:  # the classic run: the huge message on the warmed-up instance
                    self._huge_rss(tm, sizes[0], warm=False)
                    return
            finally:
                tm.close()
        # one fresh instance per size, warmed up by a few ordinary messages first (so the first
        # message's one-off costs -- imports, thread pools, caches -- are not counted as its growth);
        # --memory-repeat R: R fresh instances per size, the median is reported
        runs: dict[float, list[dict[str, Any]]] = {}
        for _ in range(a.memory_repeat):
            for size_mb in sizes:
                tm = self.new_ticketmx(f"huge{size_mb:g}")
                try:
                    runs.setdefault(size_mb, []).append(self._huge_rss(tm, size_mb, warm=True))
                finally:
                    tm.close()
        if a.memory_repeat > 1 or a.huge_count > 1:
            for size_mb, res in runs.items():
                summary = {"runs": len(res)}
                for key in ("growth_x_size", "hwm_growth_x_size"):
                    summary[key] = statistics.median(r[key] for r in res)
                    if a.huge_count > 1:
                        summary[key + "_later"] = [statistics.median(r["later"][i][key] for r in res)
                                                   for i in range(a.huge_count - 1)]
                self.results[f"memory.huge.{size_mb:g}.median"] = summary
                later = ""
                if a.huge_count > 1:
                    later = "; later messages " + ", ".join(
                        f"{x:.2f}/{y:.2f}" for x, y in zip(summary["growth_x_size_later"],
                                                           summary["hwm_growth_x_size_later"]))
                self.row(f"RSS growth x size, {size_mb:g} MB, median of {len(res)}",
                         f"sampled {summary['growth_x_size']:.2f}, VmHWM {summary['hwm_growth_x_size']:.2f}{later}",
                         self.cmd(extras="memory", workload="none", targets="ticketmx", huge_mb=f"{size_mb:g}",
                                  memory_sessions=0, memory_repeat=a.memory_repeat, huge_count=a.huge_count))

    def _huge_rss(self, tm: "Ticketmx", huge_mb: float, warm: bool) -> dict[str, Any]:
        """RSS growth of the tree while one message of ``huge_mb`` MB streams through, until it is terminal.

        Two figures: the peak of the tree's RSS sum sampled every 10 ms (can miss a short peak: a 1 MB
        message is through in ~0.1 s), and the sum of each process's own peak (VmHWM, reset through
        /proc/PID/clear_refs at the start; an upper bound, since the peaks need not coincide).
        --huge-count N sends N-1 more messages of the same size afterwards, each measured against the
        same start: a one-off cost shows as growth that the later messages do not add to."""
        mb = 1024 * 1024
        if warm:
            before = tm.terminal()
            load = self.new_load(tm.port, self.make_for("small"), 2, n=10)
            asyncio.run(load.run())
            load = self.new_load(tm.port, self.make_for("big"), 2, n=4)
            asyncio.run(load.run())
            tm.wait_drained(before + 14)
        log(f"memory: building and signing a {huge_mb:g} MB message")
        body = self.signer.sign(huge_body(int(huge_mb * mb)))
        size = len(body)
        make = factory(body, "huge")
        time.sleep(1)
        base = tm.usage()[0]
        hwm_base = reset_hwm(tm.proc.pid)
        measured: list[dict[str, Any]] = []
        for _ in range(max(1, self.args.huge_count)):
            before = tm.terminal()
            with RssSampler(tm.proc.pid, 0.01) as sampler:
                t0 = time.perf_counter()
                load = self.new_load(tm.port, make, 1, n=1, record=True)
                asyncio.run(load.run())
                accepted = time.perf_counter() - t0
                tm.wait_drained(before + 1, stall=300)
                done = time.perf_counter() - t0
            peak = max(sampler.peak, measured[-1]["peak_mb"] * mb if measured else 0)
            hwm = hwm_growth(hwm_base)
            measured.append({"peak_mb": peak / mb, "growth_mb": (peak - base) / mb,
                             "growth_x_size": (peak - base) / size, "hwm_growth_mb": sum(hwm.values()) / mb,
                             "hwm_growth_x_size": sum(hwm.values()) / size, "accept_s": accepted, "ticket_s": done,
                             "samples": sampler.samples, "hwm_growth_by_process_mb":
                             sorted(((k, round(v / mb, 2)) for k, v in hwm.items()), key=lambda x: -x[1])})
        first = measured[0]
        res2 = {"size_mb": size / mb, "baseline_mb": base / mb, **first, "states": ingest.spool_counts(tm.db),
                "blobs_mb": blob_bytes(tm.db) / mb, "later": measured[1:]}
        self.results.setdefault(f"memory.huge.{huge_mb:g}.runs", []).append(res2)
        if len(self.args.huge_mb or []) <= 1:
            self.results[f"memory.huge.{huge_mb:g}"] = res2
            self.results["memory.huge"] = res2
        growth = first["growth_mb"] * mb
        self.row(f"RSS growth, one {size / mb:.0f} MB message",
                 f"{growth / mb:.2f} MB = {growth / size:.2f} x size, VmHWM {first['hwm_growth_x_size']:.2f} x"
                 f"  (target < 2 x; 250 after {first['accept_s']:.1f} s, terminal after {first['ticket_s']:.1f} s;"
                 f" blobs {res2['blobs_mb']:.0f} MB)",
                 self.cmd(extras="memory", workload="none", targets="ticketmx", huge_mb=f"{huge_mb:g}",
                          **({"memory_sessions": 0} if warm else {})))
        print("#   VmHWM growth per process: " + ", ".join(f"{p} +{g:.2f} MB"
                                                          for p, g in first["hwm_growth_by_process_mb"]))
        for i, later in enumerate(measured[1:], 2):
            print(f"#   message {i}: peak growth since the start {later['growth_mb']:.2f} MB"
                  f" = {later['growth_x_size']:.2f} x, VmHWM {later['hwm_growth_x_size']:.2f} x")
        return res2

    def _sessions_rss(self, target: Target, sessions: int) -> dict[str, float]:
        mb = 1024 * 1024
        per = 2 if self.args.quick else 5
        before = target.terminal() if isinstance(target, Ticketmx) else 0
        load = self.new_load(target.port, self.make_for("small"), sessions, reuse=True, hold=True, per_session=per)

        async def go() -> dict[str, float]:
            task = asyncio.ensure_future(load.run())
            while not hasattr(load, "all_ready"):
                await asyncio.sleep(0.01)
            await asyncio.wait([task, load.all_ready], timeout=120, return_when=asyncio.FIRST_COMPLETED)
            if task.done():
                await task
            await asyncio.sleep(1.0)
            idle = target.usage()[0]
            pss = tree_pss(target.proc.pid)
            sampler = RssSampler(target.proc.pid, 0.01)
            with sampler:
                load.release()
                await task
                if isinstance(target, Ticketmx):
                    await asyncio.to_thread(target.wait_drained, before + sessions * per)
            return {"sessions": sessions, "messages": sessions * per, "idle_mb": idle / mb,
                    "idle_pss_mb": pss / mb, "active_peak_mb": sampler.peak / mb}
        return asyncio.run(go())

    def linearity(self) -> None:
        """ticketmx reuse at 40 and 80 sessions against 20, in interleaved rounds (20, 40, 80, 20, ...),
        each run on a fresh instance; the medians are compared. One run each, minutes apart, measured
        the machine's drift (+-10-25 % within minutes) as often as the server: the same code gave
        -11 % to +20 % from one run to the next (docs/perf.md)."""
        n = self.n("reuse")
        rounds = self.args.linearity_rounds or (1 if self.args.quick else 3)
        runs: dict[int, list[float]] = {20: [], 40: [], 80: []}
        cpu: dict[int, list[float]] = {20: [], 40: [], 80: []}    # server CPU ms per message
        for r in range(rounds):
            for c in (20, 40, 80):
                tm = self.new_ticketmx(f"lin{c}")
                try:
                    log(f"linearity: ticketmx reuse with {c} sessions (round {r + 1}/{rounds})")
                    self.warm(tm, "reuse")
                    got = self.drive(tm, "reuse", n, c)
                    runs[c].append(got["msgs_per_s"])
                    cpu[c].append(got["server_cpu_ms_per_msg"])
                finally:
                    tm.close()
        figures = {c: statistics.median(v) for c, v in runs.items()}
        self.results["linearity"] = {str(k): v for k, v in figures.items()}
        self.results["linearity"]["runs"] = {str(k): v for k, v in runs.items()}
        self.results["linearity"]["cpu_ms_per_msg"] = {str(k): statistics.median(v) for k, v in cpu.items()}
        for c in (40, 80):
            dev = figures[c] / figures[20] - 1
            self.results["linearity"][f"dev_{c}"] = dev
            each = "" if rounds == 1 else (f"; runs {'/'.join(f'{x:.0f}' for x in runs[c])} vs "
                                           f"{'/'.join(f'{x:.0f}' for x in runs[20])}")
            self.row(f"linearity ticketmx reuse {c} vs 20 sessions", f"{figures[c]:.0f} vs {figures[20]:.0f}"
                     f" msgs/s = {dev * 100:+.1f}%  (target within 10%: {'PASS' if abs(dev) <= 0.10 else 'FAIL'}"
                     f"{'; median of ' + str(rounds) + ' interleaved rounds' if rounds > 1 else ''}{each};"
                     f" CPU ms/msg {statistics.median(cpu[c]):.2f} vs {statistics.median(cpu[20]):.2f})",
                     self.cmd(extras="linearity", workload="none", targets="ticketmx", n=n,
                              **({"linearity_rounds": rounds} if self.args.linearity_rounds else {})))

    def profile(self) -> None:
        if not shutil.which("py-spy"):
            log("profile: py-spy not found (pip install py-spy); skipped")
            return
        seconds = self.args.profile_seconds
        OUT_DIR.mkdir(exist_ok=True)
        workload = self.args.profile_workload
        kind, c, reuse = WORKLOADS[workload]
        out = OUT_DIR / f"pyspy-{workload}-{time.strftime('%Y%m%d-%H%M%S')}.txt"
        tm = self.new_ticketmx("profile")
        try:
            self.warm(tm, workload)
            spy = self.procs.start(["py-spy", "record", "-p", str(tm.proc.pid), "--subprocesses", "-d",
                                    str(seconds), "-r", "100", "-f", "raw", "-o", str(out)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            time.sleep(1.0)
            load = self.new_load(tm.port, self.make_for(kind), c, reuse=reuse, seconds=seconds + 1)
            asyncio.run(load.run())
            spy.wait(timeout=seconds + 60)
            self.procs.procs.remove(spy)
        finally:
            tm.close()
        if not out.exists():
            log(f"profile: py-spy wrote nothing: {spy.stderr.read().decode()[-500:]}")
            return
        summary = summarise_pyspy(out)
        self.results["profile"] = {"file": str(out.relative_to(ROOT)), **summary}
        print(f"# py-spy on ticketmx, {workload} load for {seconds} s, {load.sent} msgs sent; raw stacks in"
              f" {out.relative_to(ROOT)}  # {self.cmd(extras='profile', workload='none', targets='ticketmx', profile_workload=workload)}")
        grand = sum(p[1] for p in summary["processes"]) or 1
        for proc_name, total, selfs, incl in summary["processes"]:
            if total < grand * 0.03:
                continue
            print(f"#  process {proc_name}: {total} samples; top self time:")
            for frame, n in selfs[:12]:
                print(f"#    {n * 100 / total:5.1f}%  {frame}")
            print("#   top inclusive (gateway/, relay/, dkim/, email/ and aiosmtpd frames):")
            for frame, n in incl[:12]:
                print(f"#    {n * 100 / total:5.1f}%  {frame}")


_LINE = re.compile(r":\d+\)$")


def _short_process(desc: str) -> str:
    """'1234:"/usr/bin/python -m gateway serve --config x"' -> 'gateway serve (1234)'."""
    pid, _, cmd = desc.partition(":")
    cmd = cmd.strip('"')
    if " -m " in cmd:
        name = " ".join(cmd.split(" -m ", 1)[1].split()[:2])
    elif "multiprocessing.spawn" in cmd:
        name = "pipeline worker (multiprocessing child)"
    else:
        name = cmd[:50]
    return f"{name} ({pid})"


def summarise_pyspy(path: Path) -> dict[str, Any]:
    """Self and inclusive sample counts per function (file:line dropped), per process, from py-spy's raw
    (collapsed stacks) output."""
    procs: dict[str, dict[str, Any]] = {}
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        frames = stack.split(";")
        pname = "?"
        while frames and frames[0].startswith("process "):    # children come as parent;child;frames
            pname = _short_process(frames[0][8:])
            frames = frames[1:]
        frames = [_LINE.sub(")", f.strip()) for f in frames if not f.startswith("thread ")]
        if not frames:
            continue
        p = procs.setdefault(pname, {"total": 0, "self": {}, "incl": {}})
        p["total"] += n
        p["self"][frames[-1]] = p["self"].get(frames[-1], 0) + n
        for f in set(frames):
            if any(k in f for k in ("(gateway/", "(relay/", "(dkim/", "(email/", "(aiosmtpd/smtp.py")):
                p["incl"][f] = p["incl"].get(f, 0) + n
    out = []
    for pname, p in sorted(procs.items(), key=lambda kv: -kv[1]["total"]):
        selfs = sorted(p["self"].items(), key=lambda kv: -kv[1])
        incl = sorted(p["incl"].items(), key=lambda kv: -kv[1])
        out.append((pname, p["total"], selfs[:25], incl[:25]))
    return {"processes": out}


def main() -> None:
    if "--_dns-server" in sys.argv:
        return dns_server_main()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workload", default="reuse,conn,big",
                    help="comma list of reuse,conn,big (throughput); 'none' for none")
    ap.add_argument("--targets", default="sink,haraka,ticketmx", help="comma list of sink,haraka,ticketmx")
    ap.add_argument("--extras", default="latency,memory,linearity",
                    help="comma list of latency,memory,linearity,profile; 'none' for none")
    ap.add_argument("-n", type=int, default=0, help="messages per throughput run (default: reuse %d, conn %d,"
                    " big %d; --quick: %d/%d/%d)" % (*COUNTS.values(), *QUICK_COUNTS.values()))
    ap.add_argument("--quick", action="store_true", help="small counts and short probes (under a minute)")
    ap.add_argument("--repeat", type=int, default=1, help="measure each throughput figure R times (median)")
    ap.add_argument("--client", choices=("asyncio", "smtp-source"), default="asyncio",
                    help="asyncio: the bench's own client, DKIM-signed mail; smtp-source: postfix's C client"
                         " sending the same messages unsigned (-F file)")
    ap.add_argument("--pipelining", choices=("off", "auto", "on"), default="off",
                    help="asyncio client: off = one command per round trip, like smtp-source (default); auto ="
                         " MAIL/RCPT/DATA in one write when EHLO advertises PIPELINING; on = always")
    ap.add_argument("--dkim", choices=("rsa", "none"), default="rsa", help="sign with rsa-2048 (default) or not")
    ap.add_argument("--warm-seconds", type=float, default=0,
                    help="longest warm-up of Haraka per workload (default 10; --quick: 4)")
    ap.add_argument("--haraka-version", default=HARAKA_VERSION)
    ap.add_argument("--haraka-nodes", type=int, default=2, help="Haraka worker processes (smtp.ini nodes=)")
    ap.add_argument("--latency-rate", type=float, default=0, help="msgs/s (default: half the ticketmx reuse rate)")
    ap.add_argument("--latency-seconds", type=float, default=0, help="default 10 (--quick: 4)")
    ap.add_argument("--memory-sessions", type=int, default=200)
    ap.add_argument("--linearity-rounds", type=int, default=0,
                    help="interleaved rounds of 20/40/80 sessions whose medians are compared (3; --quick: 1)")
    ap.add_argument("--huge-mb", default="", help="size of the streamed message, MB (50; --quick: 20); a comma"
                    " list (e.g. 1,5,20,50,80) measures each on a fresh, warmed-up instance")
    ap.add_argument("--memory-repeat", type=int, default=1,
                    help="--huge-mb: measure each size on R fresh instances, report the median")
    ap.add_argument("--huge-count", type=int, default=1,
                    help="--huge-mb: N messages of the size one after the other (is the growth one-off?)")
    ap.add_argument("--profile-seconds", type=int, default=10)
    ap.add_argument("--profile-workload", choices=tuple(WORKLOADS), default="reuse")
    ap.add_argument("--json", action="store_true", help="also print one JSON line with every figure")
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=TOML",
                    help="override a key of the example config for ticketmx, e.g. --set smtp.processes=2"
                         " or --set 'pipeline.processes=\"auto\"' (repeatable)")
    args = ap.parse_args()
    overrides = []
    for item in args.set:
        key, eq, value = item.partition("=")
        section, dot, name = key.rpartition(".")  # pipeline.attachments.max_attachment_size
        if not (eq and dot and section and name and value):
            ap.error(f"--set {item!r}: expected SECTION.KEY=VALUE (a TOML value)")
        overrides.append(((section.strip(), name.strip()), value.strip()))
    args.set = overrides

    def split(v: str, allowed: tuple[str, ...], what: str) -> list[str]:
        items = [] if v in ("", "none") else [x.strip() for x in v.split(",") if x.strip()]
        bad = [x for x in items if x not in allowed]
        if bad:
            ap.error(f"unknown {what}: {', '.join(bad)} (choose from {', '.join(allowed)})")
        return items
    try:
        args.huge_mb = [float(x) for x in args.huge_mb.split(",") if x.strip()]
    except ValueError:
        ap.error(f"--huge-mb {args.huge_mb!r}: expected MB, or a comma list of them")
    args.workload = split(args.workload, tuple(WORKLOADS), "workload")
    args.targets = split(args.targets, ("sink", "haraka", "ticketmx"), "target")
    args.extras = split(args.extras, ("latency", "memory", "linearity", "profile"), "extra")
    if args.extras and "ticketmx" not in args.targets:
        args.targets.append("ticketmx")
    if args.client == "smtp-source":
        args.dkim = "none"
    args.warm_seconds = args.warm_seconds or (4 if args.quick else 10)

    command = "python bench/perf.py" + "".join(" " + shlex.quote(x) for x in sys.argv[1:])
    bench = Bench(args)

    def on_signal(signum: int, _frame: Any) -> None:
        raise Interrupted(signal.Signals(signum).name)
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)
    started = time.monotonic()
    print(f"# {command}")
    print(f"# {os.cpu_count()} cores, load average {' '.join(f'{x:.2f}' for x in os.getloadavg())} at start;"
          f" client={args.client}, DKIM={args.dkim}, python {sys.version.split()[0]}")
    version = code_version()
    print(f"# code: {version}")
    try:
        bench.setup()
        if args.workload:
            bench.throughput()
        if "latency" in args.extras:
            bench.latency()
        if "linearity" in args.extras:
            bench.linearity()
        if "memory" in args.extras:
            bench.memory()
        if "profile" in args.extras:
            bench.profile()
    except Interrupted as exc:
        log(f"interrupted ({exc}); stopping everything")
        raise SystemExit(130)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)     # a second ^C must not cut the cleanup short
        bench.procs.stop_all()
    elapsed = time.monotonic() - started
    print(f"# done in {elapsed:.0f} s; load average {' '.join(f'{x:.2f}' for x in os.getloadavg())} at end")
    if args.json:
        print(json.dumps({"command": command, "code": version, "cores": os.cpu_count(), "seconds": round(elapsed, 1),
                          "loadavg_end": os.getloadavg(), "client": args.client, "dkim": args.dkim,
                          **bench.results}, default=str))


if __name__ == "__main__":
    main()
