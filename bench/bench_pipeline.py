"""Where a pipeline worker's time goes, per message: parse, each stage, the delivery transaction.

Runs the real Worker in this process (no SMTP, no DNS) on the example config with a private SQLite store,
spools N copies of the perf bench's messages (4 KB text, or 50 KB text + HTML + attachment, unique
Message-IDs) the way the SMTP side does (its Received and Authentication-Results fields on top, an auth
result with the row), processes them in batches like the service does and prints CPU µs per message for each part
(thread CPU of this process, so the SQLite thread's work is in "deliver"), and the median time the claim
and delivery transactions held the store's write lock (what the SMTP side's spool commit may wait for).

    python bench/bench_pipeline.py                  # both kinds, 1,000 messages each
    python bench/bench_pipeline.py --kind big -n 500
"""
from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from gateway.config.load import load_config  # noqa: E402
from gateway.pipeline.runner import worker as worker_mod  # noqa: E402
from gateway.pipeline.runner.worker import Worker, make_executor  # noqa: E402
from gateway.spool import new_spool_id  # noqa: E402
from gateway.store import open_store  # noqa: E402
from gateway.store.base import SpoolEntry  # noqa: E402


class NullSink:
    def outcome(self, state: str, latency: float | None) -> None: ...
    def error(self) -> None: ...
    def batch(self, seconds: float) -> None: ...
    def consecutive_failures(self, n: int) -> None: ...
    def notifications_queued(self, n: int) -> None: ...
    def budget_exceeded(self) -> None: ...


def messages(kind: str, n: int) -> list[bytes]:
    import ingest
    import perf
    if kind == "big":
        body = perf.big_body(50 * 1024)
        return [f"Message-ID: <bench-{i}-{os.getpid()}@customer.test>\r\n".encode() + body for i in range(n)]
    make, _ = ingest.make_messages(4096, "none")
    return [make() for _ in range(n)]


async def run(kind: str, n: int, batch: int) -> dict[str, float]:
    from gateway.auth.authenticator import from_record
    from gateway.auth.dmarc import parse_from
    tmp = tempfile.mkdtemp(prefix="bench-pipeline-")
    cfg = load_config(str(ROOT / "conf" / "ticketmx.example.toml"))
    cfg = replace(cfg, store=replace(cfg.store, url=f"sqlite:///{tmp}/bench.db"),
                  pipeline=replace(cfg.pipeline, batch_size=batch))
    store = open_store(cfg)
    await store.open()
    mbox = cfg.mailboxes[0].address
    raws = messages(kind, n)
    # as the SMTP side spools them: its Received and Authentication-Results fields on top, the auth result
    import ingest
    top = (f"Received: from client.customer.test ([127.0.0.1])\r\n\tby mx.support.test (ticketmx) with ESMTP"
           f" id x;\r\n\tSun, 22 Nov 2026 10:00:00 +0000\r\nAuthentication-Results: {ingest.AUTH_HEADER}\r\n"
           ).encode()
    await store.spool_insert([SpoolEntry(id=new_spool_id(), received_at=time.time(), mail_from="bench@customer.test",
                                         rcpt_tos=(mbox,), mailboxes=(mbox,), peer_ip="127.0.0.1", helo="bench",
                                         tls=None, message_id="", raw=top + r, auth_header=ingest.AUTH_HEADER,
                                         auth={**ingest.AUTH_RESULT, "from": from_record(parse_from(r))})
                              for r in raws])  # the From reading the SMTP side records with every message
    w = Worker(cfg, store, NullSink(), make_executor(), owner="bench")
    spent: dict[str, float] = defaultdict(float)
    clock = time.thread_time  # this thread only; the SQLite thread is measured around deliver below

    for stage in w.stages:  # time each stage's run
        orig = stage.run

        async def timed(msg, ctx, _orig=orig, _name=stage.name):  # noqa: ANN001
            t = clock()
            try:
                return await _orig(msg, ctx)
            finally:
                spent["stage " + _name] += clock() - t
        stage.run = timed  # type: ignore[method-assign]

    orig_parse = worker_mod.parse_message

    def parse(raw, *a):  # noqa: ANN001
        t = clock()
        try:
            return orig_parse(raw, *a)
        finally:
            spent["parse"] += clock() - t
    worker_mod.parse_message = parse  # type: ignore[assignment]

    orig_deliver = store.deliver

    async def deliver(*a, **kw):  # noqa: ANN002
        t, p = clock(), time.process_time()
        try:
            return await orig_deliver(*a, **kw)
        finally:  # process CPU while we waited = the SQLite thread's work (nothing else runs)
            spent["deliver (SQLite thread)"] += (time.process_time() - p) - (clock() - t)
            spent["deliver (loop)"] += clock() - t
    store.deliver = deliver  # type: ignore[method-assign]

    held: dict[str, list[float]] = defaultdict(list)  # write lock held per transaction, by operation
    store.on_transaction = lambda name, _waited, h: held[name.split(".")[1]].append(h)
    p0, wall0 = time.process_time(), time.perf_counter()
    done = 0
    while done < n:
        got = await w.run_once()
        if not got:
            break
        done += got
    total, wall = time.process_time() - p0, time.perf_counter() - wall0
    worker_mod.parse_message = orig_parse  # type: ignore[assignment]
    w.executor.shutdown()
    states = await store.spool_counts()
    await store.close()
    spent["TOTAL process CPU"] = total
    spent["wall"] = wall
    spent["_done"] = done
    spent["_states"] = states  # type: ignore[assignment]
    spent["_held"] = held  # type: ignore[assignment]
    return spent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kind", choices=("small", "big", "both"), default="both")
    ap.add_argument("-n", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=16)
    a = ap.parse_args()
    cmd = "python bench/bench_pipeline.py" + "".join(f" {x}" for x in sys.argv[1:])
    for kind in (("small", "big") if a.kind == "both" else (a.kind,)):
        spent = asyncio.run(run(kind, a.n, a.batch))
        done, states, held = spent.pop("_done"), spent.pop("_states"), spent.pop("_held")
        print(f"# {kind}: {done} messages, batches of {a.batch}, spool states {dict(states)}  # {cmd}")
        wall = spent.pop("wall")
        total = spent.pop("TOTAL process CPU")
        for name, sec in sorted(spent.items(), key=lambda kv: -kv[1]):
            print(f"  {name:<40} {sec / done * 1e6:9.1f} µs/msg")
        print(f"  {'= process CPU (all threads)':<40} {total / done * 1e6:9.1f} µs/msg   "
              f"({done / wall:.0f} msgs/s on one core)")
        for op in ("spool_claim", "deliver"):  # what the SMTP side's spool commit may wait for
            if held.get(op):
                print(f"  {'write lock held per ' + op:<40} {statistics.median(held[op]) * 1e6:9.1f} µs median"
                      f" of {len(held[op])} transactions")


if __name__ == "__main__":
    main()
