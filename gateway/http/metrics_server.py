"""The ``[metrics] listen`` endpoint: /metrics, /healthz, /readyz on uvicorn (docs/metrics.md).

It runs in the main process, which holds the whole service's registry (the pipeline's reports, the
SMTP and HTTP processes' samples asked at scrape time) and knows whether the service is ready. The
answers are the operators' scrape contract and do not change: ``/metrics`` in Prometheus' text
format, ``/healthz`` ``ok``, ``/readyz`` ``ready`` (503 ``not ready`` while starting or stopping),
404 elsewhere, 405 to anything but GET and HEAD, each ``Connection: close``.

Bounded, since anyone who can reach the port can talk to it (issue 18), by a protocol class around
uvicorn's h11 one:

* a **deadline** per connection (``deadline`` seconds from accept to the end of the answer): a client
  that sends nothing, sends slowly or does not read is aborted when it expires;
* a **connection cap** (``max_connections``): over it, the oldest connection that has not sent its
  whole request is closed (a flood of idle connections cannot lock a scraper out: a scraper sends its
  request at once); when every one is being answered, the newcomer is, before anything exists for it;
* **line limits**: a request or header line over ``MAX_LINE`` octets, a header section over
  ``MAX_HEAD``, a request line that is not ``METHOD /path HTTP/1.x`` get ``400 Bad Request`` before
  h11 sees the request; what h11 itself cannot parse gets the same. No traceback in the log.
"""
from __future__ import annotations

import asyncio
import logging
import re
from typing import Any, Callable

import uvicorn
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from uvicorn.protocols.http.h11_impl import H11Protocol

from gateway.http.uvserver import QuietServer

log = logging.getLogger(__name__)
_HEAD_END = re.compile(rb"\n\r?\n")


class MetricsServer:
    """uvicorn serving the metrics endpoint as a task of the running loop."""

    MAX_LINE = 4096
    MAX_HEAD = 16384

    def __init__(self, metrics: Any, host: str, port: int, ready: Callable[[], bool], *,
                 deadline: float = 5.0, max_connections: int = 64) -> None:
        self.metrics, self.host, self.port, self.ready = metrics, host, port, ready
        self.deadline, self.max_connections = deadline, max_connections
        self.active: dict[_MetricsH11, None] = {}  # insertion order: oldest first
        self.refused = 0        # connections closed for the cap (tests)
        self.timed_out = 0      # connections aborted at the deadline (tests)
        self.bad_requests = 0   # 400s (tests)
        self._server: QuietServer | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        import socket
        logging.getLogger("uvicorn.error").setLevel(logging.ERROR)  # not a line per malformed request
        infos = socket.getaddrinfo(self.host or None, self.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, _, proto, _, addr = infos[0]
        sock = socket.socket(family, socket.SOCK_STREAM, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(addr)
            sock.listen(128)
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            raise OSError(exc.errno, f"[metrics] listen {self.host}:{self.port}: {exc.strerror}") from None
        self.port = sock.getsockname()[1]
        protocol = type("MetricsH11", (_MetricsH11,), {"owner": self})
        config = uvicorn.Config(_App(self), lifespan="off", log_config=None, access_log=False, server_header=False,
                                date_header=False, http=protocol, ws="none", interface="asgi3",
                                timeout_keep_alive=max(1, round(self.deadline)), timeout_graceful_shutdown=1,
                                h11_max_incomplete_event_size=self.MAX_HEAD)
        self._server = QuietServer(config)
        self._task = asyncio.get_running_loop().create_task(self._server.serve(sockets=[sock]), name="metrics")
        while not self._server.started:
            if self._task.done():
                self._task.result()
                raise RuntimeError("the metrics server stopped while starting")
            await asyncio.sleep(0.01)
        log.info("metrics listening on http://%s:%d/metrics", self.host, self.port)

    async def close(self) -> None:
        if self._server is None or self._task is None:
            return
        self._server.should_exit = True
        for conn in list(self.active):
            conn.transport.abort()
        try:
            await asyncio.wait_for(asyncio.shield(self._task), 5)
        except (asyncio.TimeoutError, Exception):  # noqa: BLE001 - the gateway keeps stopping
            self._server.force_exit = True
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._server = None

    async def respond(self, path: str) -> tuple[int, str, bytes]:
        """(status, content type, body) for a GET of ``path``."""
        if path == "/metrics":
            return 200, CONTENT_TYPE_LATEST, await self.metrics.render_all()
        if path == "/healthz":
            return 200, "text/plain", b"ok\n"
        if path == "/readyz":
            ok = self.ready()
            return (200 if ok else 503), "text/plain", b"ready\n" if ok else b"not ready\n"
        return 404, "text/plain", b"not found\n"


class _App:
    """The ASGI app: three paths, GET and HEAD, every answer closes the connection."""

    def __init__(self, server: MetricsServer) -> None:
        self.server = server

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        method = scope["method"]
        if method not in ("GET", "HEAD"):
            status, ctype, body = 405, "text/plain", b"only GET\n"
        else:
            try:
                status, ctype, body = await self.server.respond(scope["path"])
            except Exception as exc:  # our bug, not the client's: say so once, without the request
                log.error("metrics: %s failed: %s: %s", scope["path"], type(exc).__name__, exc)
                status, ctype, body = 500, "text/plain", b"error\n"
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", ctype.encode()), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": b"" if method == "HEAD" else body})


class _MetricsH11(H11Protocol):
    """uvicorn's h11 protocol with the deadline, the cap and the line limits (module docstring)."""

    owner: MetricsServer

    _timer: asyncio.TimerHandle | None = None
    _refused = False
    _head_seen = False      # the whole request head arrived (and passed the limits)
    _done = False           # a 400 was written: nothing more is read
    _buf: bytearray
    _line_start = 0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        srv = self.owner
        if len(srv.active) >= srv.max_connections:
            srv.refused += 1
            victim = next((c for c in srv.active if not c._head_seen), None)
            if victim is None:
                self._refused = True
                transport.abort()  # no buffer, no task, no timer
                return
            srv.active.pop(victim, None)
            victim._done = True
            victim.transport.abort()
        super().connection_made(transport)
        self._buf = bytearray()
        srv.active[self] = None
        self._timer = self.loop.call_later(srv.deadline, self._expired)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._refused:
            return
        self.owner.active.pop(self, None)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        super().connection_lost(exc)

    def _expired(self) -> None:
        self._timer = None
        self.owner.timed_out += 1
        self.transport.abort()

    def data_received(self, data: bytes) -> None:
        if self._refused or self._done:
            return
        if not self._head_seen:
            why = self._check_head(data)
            if why:
                return self._bad(why)
        super().data_received(data)

    def _check_head(self, data: bytes) -> str:
        """The limits on the request head, linear in what was received (a byte-at-a-time client too)."""
        buf, old = self._buf, len(self._buf)
        buf += data
        m = _HEAD_END.search(buf, max(0, old - 2))
        head_end = m.start() if m else len(buf)
        pos = buf.find(b"\n", old, head_end)
        while pos >= 0:
            if pos - self._line_start > MetricsServer.MAX_LINE:
                return "request or header line too long"
            self._line_start = pos + 1
            pos = buf.find(b"\n", pos + 1, head_end)
        if head_end - self._line_start > MetricsServer.MAX_LINE:
            return "request or header line too long"
        if head_end > MetricsServer.MAX_HEAD:
            return "request header section too large"
        if m is None:
            return ""
        first = bytes(buf[:buf.find(b"\n")]).rstrip(b"\r")
        parts = first.decode("latin-1").split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1.") or not parts[1].startswith("/"):
            return "malformed request line"
        self._head_seen = True
        self._buf = bytearray()
        return ""

    def send_400_response(self, msg: str) -> None:
        """What h11 cannot parse: the same 400 as the limits."""
        self._bad("malformed request")

    def _bad(self, why: str) -> None:
        self._done = True
        self._head_seen = True  # answered: not a candidate for eviction
        self.owner.bad_requests += 1
        log.debug("metrics: 400 to a client: %s", why)
        body = f"{why}\n".encode()
        self.transport.write(b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nContent-Length: "
                             + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body)
        self.transport.close()
