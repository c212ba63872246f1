#!/usr/bin/env python3
"""Latency of the HTTP server core over loopback: p50/p99 of GET /healthz (no token), /api/v1/me (token
lookup, rate limit) and /api/v1/messages?limit=50 (a page of spool entries), 1000 sequential requests
each on one keep-alive connection, against an in-process gateway holding 60 messages.

Usage:  python bench/bench_http_core.py [-n 1000]
"""
from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


async def main(n: int) -> None:
    import aiosmtplib
    import httpx

    from gateway.app import Gateway
    from gateway.config.load import build_config
    from gateway.http import tokens
    d = Path(tempfile.mkdtemp(prefix="bench-http-core-"))
    cfg = build_config({"smtp": {"listen": ["127.0.0.1:0"]}, "store": {"url": f"sqlite:///{d}/t.db"},
                        "mailbox": [{"address": "support@example.test"}], "metrics": {"listen": ""},
                        "pipeline": {"processes": 0},
                        "http": {"listen": "127.0.0.1:0", "rate_per_token": ""}}, "bench")
    gw = Gateway(cfg)
    await gw.start()
    try:
        token = await tokens.create(gw.store, "bench", "admin", (), "bench")
        for i in range(60):
            msg = (f"From: a{i}@x.test\r\nTo: support@example.test\r\nSubject: s{i}\r\nMessage-ID: <m{i}@x.test>"
                   "\r\n\r\nhi\r\n").encode()
            await aiosmtplib.send(msg, sender=f"a{i}@x.test", recipients=["support@example.test"],
                                  hostname="127.0.0.1", port=gw.listener.ports[0])
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{gw.http.port}",
                                     headers={"Authorization": f"Bearer {token}"}) as c:
            for path in ("/healthz", "/api/v1/me", "/api/v1/messages?limit=50"):
                for _ in range(50):
                    await c.get(path)
                times = []
                for _ in range(n):
                    t0 = time.perf_counter()
                    r = await c.get(path)
                    times.append(time.perf_counter() - t0)
                    assert r.status_code == 200, r.text
                times.sort()
                print(f"{path:28} p50 {times[n // 2] * 1000:.2f} ms  p99 {times[int(n * 0.99)] * 1000:.2f} ms")
    finally:
        await gw.stop(grace=1)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=1000)
    asyncio.run(main(ap.parse_args().n))
