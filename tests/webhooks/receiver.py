"""A real HTTP/1.1 receiver on 127.0.0.1 for webhook tests (asyncio streams, in its own thread).

It verifies every request's ``Ticketmx-Signature`` the way docs/webhooks.md tells receivers to
(HMAC-SHA256 over "<t>.<raw body>", compared in constant time, timestamp within 5 minutes) - written
here again, not imported, so a mistake in gateway/webhooks/sign.py cannot verify itself.
"""
from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable


def verify(secret: str, header: str, body: bytes, tolerance: int = 300) -> bool:
    fields = dict(p.split("=", 1) for p in header.split(",") if "=" in p)
    t = fields.get("t", "")
    if not t.isdigit() or abs(time.time() - int(t)) > tolerance:
        return False
    expected = hmac.new(secret.encode(), t.encode() + b"." + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, fields.get("v1", ""))


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    valid: bool
    status: int
    json: Any = None
    path: str = ""


@dataclass
class Receiver:
    secret: str
    # (event id, how many times this id was received before) -> status to answer
    answer: Callable[[str, int], int] = lambda event_id, n: 200
    delay: float = 0.0
    received: list[Received] = field(default_factory=list)
    port: int = 0

    def __post_init__(self) -> None:
        self._seen: dict[str, int] = {}
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.base_events.Server | None = None
        self._thread: threading.Thread | None = None

    # -- what the tests read
    def ids(self) -> list[str]:
        with self._lock:
            return [r.headers.get("ticketmx-event-id", "") for r in self.received]

    def accepted(self) -> list[Received]:
        with self._lock:
            return [r for r in self.received if 200 <= r.status < 300]

    def wait(self, pred: Callable[["Receiver"], bool], timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if pred(self):
                return
            time.sleep(0.02)
        raise AssertionError(f"receiver: condition not met within {timeout}s ({len(self.received)} received)")

    async def await_(self, pred: Callable[["Receiver"], bool], timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if pred(self):
                return
            await asyncio.sleep(0.02)
        raise AssertionError(f"receiver: condition not met within {timeout}s ({len(self.received)} received)")

    # -- the server
    def start(self) -> "Receiver":
        ready = threading.Event()

        def run() -> None:
            loop = self._loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            self._server = loop.run_until_complete(asyncio.start_server(self._conn, "127.0.0.1", 0))
            self.port = self._server.sockets[0].getsockname()[1]
            ready.set()
            loop.run_forever()
            self._server.close()
            tasks = asyncio.all_tasks(loop)  # connections still open: end them on this loop
            for t in tasks:
                t.cancel()
            loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            loop.run_until_complete(self._server.wait_closed())
            loop.close()

        self._thread = threading.Thread(target=run, daemon=True, name="webhook-receiver")
        self._thread.start()
        ready.wait(10)
        return self

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(10)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/ticketmx"

    async def _conn(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                line = await reader.readline()
                if not line:
                    return
                method, path, _ = line.decode("latin-1").split(" ", 2)
                headers: dict[str, str] = {}
                while True:
                    h = await reader.readline()
                    if h in (b"\r\n", b"\n", b""):
                        break
                    k, _, v = h.decode("latin-1").partition(":")
                    headers[k.strip().lower()] = v.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                valid = method == "POST" and verify(self.secret, headers.get("ticketmx-signature", ""), body)
                event_id = headers.get("ticketmx-event-id", "")
                with self._lock:
                    n = self._seen.get(event_id, 0)
                    self._seen[event_id] = n + 1
                status = self.answer(event_id, n) if valid else 401
                if self.delay:
                    await asyncio.sleep(self.delay)
                try:
                    doc = json.loads(body)
                except ValueError:
                    doc = None
                with self._lock:
                    self.received.append(Received(headers, body, valid, status, doc, path))
                writer.write(f"HTTP/1.1 {status} X\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok"
                             .encode())
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, ValueError):
            return
        finally:
            writer.close()
