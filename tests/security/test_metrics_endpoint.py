"""Issue 18 item 8: the metrics endpoint has a request deadline, a connection cap, a clean 400 for
an over-long line and logs no traceback - all over real sockets on 127.0.0.1. (Issue 22 moved it onto
uvicorn: the answers are the same; the status line says HTTP/1.1 where the hand-written server said 1.0.)"""
from __future__ import annotations

import asyncio
import logging
import socket
import time
import urllib.request

import pytest

from gateway.http.metrics_server import MetricsServer
from gateway.runtime.metrics import Metrics

DEADLINE = 1.0
CAP = 32


@pytest.fixture
async def server(caplog):
    caplog.set_level(logging.DEBUG)
    m = Metrics()
    m.accepted.inc(7)
    srv = MetricsServer(m, "127.0.0.1", 0, lambda: True, deadline=DEADLINE, max_connections=CAP)
    await srv.start()
    yield srv
    await srv.close()
    text = "\n".join(r.getMessage() + (repr(r.exc_info) if r.exc_info else "") for r in caplog.records)
    assert "Traceback" not in caplog.text and not any(r.exc_info for r in caplog.records), text
    assert not any(r.levelno >= logging.ERROR for r in caplog.records), text


async def _raw(port: int, data: bytes, read_timeout: float = 5.0) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    try:
        return await asyncio.wait_for(reader.read(), read_timeout)
    finally:
        writer.close()


def _scrape(port: int, path: str = "/metrics") -> tuple[int, str]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
        return r.status, r.read().decode()


async def _closed_after(reader: asyncio.StreamReader, started: float, limit: float) -> float:
    """Seconds until the server closed the connection (EOF or reset); fails after ``limit``."""
    try:
        while await asyncio.wait_for(reader.read(1024), limit):
            pass
    except ConnectionError:
        pass
    return time.monotonic() - started


async def test_scrape_health_ready_and_404(server):
    status, body = await asyncio.to_thread(_scrape, server.port)
    assert status == 200 and "ticketmx_messages_accepted_total 7.0" in body
    assert await asyncio.to_thread(_scrape, server.port, "/healthz") == (200, "ok\n")
    assert await asyncio.to_thread(_scrape, server.port, "/readyz") == (200, "ready\n")
    assert (await _raw(server.port, b"GET /nope HTTP/1.0\r\n\r\n")).startswith(b"HTTP/1.1 404 ")
    assert (await _raw(server.port, b"GET /healthz HTTP/1.1\nHost: x\n\n")).endswith(b"\r\n\r\nok\n")


async def test_silent_client_is_closed_at_the_deadline(server):
    started = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    took = await _closed_after(reader, started, DEADLINE + 3)
    writer.close()
    assert DEADLINE * 0.8 <= took <= DEADLINE + 1.5
    assert server.timed_out == 1


async def test_slowloris_is_closed_within_the_deadline(server):
    started = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)

    async def drip() -> None:
        try:
            for b in b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 1000:
                writer.write(bytes([b]))
                await writer.drain()
                await asyncio.sleep(0.05)  # every byte well within any per-read timeout
        except ConnectionError:
            pass
    dripper = asyncio.create_task(drip())
    took = await _closed_after(reader, started, DEADLINE + 3)
    dripper.cancel()
    await asyncio.gather(dripper, return_exceptions=True)
    writer.close()
    assert took <= DEADLINE + 1.5 and server.timed_out == 1


@pytest.mark.parametrize("request_bytes", [
    b"GET /" + b"a" * 10_000 + b" HTTP/1.1\r\n\r\n",                     # over-long request line
    b"GET /metrics HTTP/1.1\r\nX-Big: " + b"b" * 10_000 + b"\r\n\r\n",  # over-long header line
    b"GET /metrics HTTP/1.1\r\n" + b"X: y\r\n" * 5000 + b"\r\n",          # header section too large
    b"GET /" + b"a" * 100_000,                                           # a line that never ends
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(256)) + b"\r\n\r\n",  # TLS hello
    b"GARBAGE\r\n\r\n",
    b"GET\r\n\r\n",
    b"GET metrics HTTP/1.1\r\n\r\n",
    b"\r\n\r\n",
    b"\xff\xfe\x00\r\n\r\n",
])
async def test_malformed_requests_get_a_clean_400(server, request_bytes):
    reply = await _raw(server.port, request_bytes)
    assert reply.startswith(b"HTTP/1.1 400 Bad Request\r\n"), reply[:100]
    assert server.bad_requests == 1
    status, _ = await asyncio.to_thread(_scrape, server.port)   # and the endpoint carries on
    assert status == 200


async def test_other_methods_405(server):
    # (Host: an HTTP/1.1 request without one is a 400, RFC 9112 section 3.2)
    reply = await _raw(server.port, b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc")
    assert reply.startswith(b"HTTP/1.1 405 ") and reply.endswith(b"\r\n\r\nonly GET\n"), reply


async def test_head_and_content_types(server):
    head = await _raw(server.port, b"HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ") and head.endswith(b"\r\n\r\n"), head  # no body
    from prometheus_client.exposition import CONTENT_TYPE_LATEST
    assert b"content-type: " + CONTENT_TYPE_LATEST.encode() + b"\r\n" in head.lower()
    ready = await _raw(server.port, b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert b"\r\ncontent-type: text/plain\r\n" in ready.lower() and b"connection: close" in ready.lower()


async def test_1000_connections_stay_within_the_cap_and_a_scrape_still_works(server):
    baseline = len(asyncio.all_tasks())
    socks: list[socket.socket] = []
    peak_active = peak_tasks = 0
    try:
        for i in range(1000):
            s = socket.socket()
            s.setblocking(False)
            try:
                s.connect(("127.0.0.1", server.port))
            except BlockingIOError:
                pass
            socks.append(s)
            if i % 50 == 0:
                await asyncio.sleep(0.01)  # let the server accept
                peak_active = max(peak_active, len(server.active))
                peak_tasks = max(peak_tasks, len(asyncio.all_tasks()) - baseline)
        for _ in range(20):
            await asyncio.sleep(0.02)
            peak_active = max(peak_active, len(server.active))
            peak_tasks = max(peak_tasks, len(asyncio.all_tasks()) - baseline)
        assert peak_active <= CAP and peak_tasks <= 1
        assert server.refused >= 1000 - CAP - 50      # the excess was closed at once
        started = time.monotonic()
        status, body = await asyncio.to_thread(_scrape, server.port)  # 1000 sockets still open
        assert status == 200 and "ticketmx_messages_accepted_total" in body
        assert time.monotonic() - started < DEADLINE
        assert len(server.active) <= CAP
    finally:
        for s in socks:
            s.close()
