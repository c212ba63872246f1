"""The HTTP server: :func:`build_app` (FastAPI, every error as problem+json) and :class:`HttpServer`
(uvicorn as a task in the gateway's own event loop, bounded like every other listener).

Bounds (docs/api.md, "Limits"), since anyone who reaches the port can talk to it:

* ``[http] max_connections``: a connection over the cap gets a 503 problem and is closed before any
  request is read (uvicorn's own ``limit_concurrency`` still reads the request first);
* ``[http] header_timeout``: from connect, and from the end of each response on a kept-alive
  connection, to the end of the next request's headers (uvicorn has no such timer: a client trickling
  header bytes would hold its connection forever);
* ``[http] request_timeout``: from the headers to the start of the response (a slow body included);
* ``[http] max_body_size``: a declared Content-Length over it is answered 413 before the body is read,
  a chunked body as soon as the bytes read pass it — never buffered whole first. An endpoint module may
  set another limit for its paths: ``BODY_LIMITS = {"/inbound/": lambda cfg: …}`` (a path prefix under
  /api/v1 -> a function of the running Config giving bytes), e.g. a hosted service's JSON post of a
  mail as large as ``[smtp] max_message_size``, base64-encoded.

Every response carries ``X-Content-Type-Options: nosniff``; those under /api/v1 ``Cache-Control: no-store``.
"""
from __future__ import annotations

import asyncio
import importlib
import json
import logging
import socket
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.exceptions import HTTPException as StarletteHTTPException
from uvicorn.protocols.http.h11_impl import H11Protocol

from gateway.http.deps import Problem, Services, client_address
from gateway.runtime.netaddr import ip_in_networks
from gateway.http.uvserver import QuietServer as _Server

log = logging.getLogger(__name__)

API = "/api/v1"
PROBLEM = "application/problem+json"
# Endpoint modules included under /api/v1 (each defines ``router``); one not present in this build is skipped.
ROUTERS = ("gateway.http.api_admin", "gateway.http.api_tickets", "gateway.http.inbound",
           "gateway.http.api_sources", "gateway.http.reply_templates")
# Modules mounted beside the API (each defines ``install(app)``): the web UI under /ui/. Named here, not
# imported, so the UI may build on gateway.http while the API never depends on it (rooms stay one-way).
MOUNTS = ("gateway.ui.routes",)


def problem_response(p: Problem, request: Request | None = None) -> Response:
    """The problem as JSON, or as a mounted module renders it for its paths (the UI: an HTML page)."""
    if request is not None:
        for prefix, render in getattr(request.app.state, "problem_renderers", ()):
            if request.url.path.startswith(prefix):
                return render(request, p)
    return JSONResponse(p.body(request.url.path if request is not None else ""), status_code=p.status,
                        headers=p.headers, media_type=PROBLEM)


_TITLES = {413: "Content Too Large", 422: "Unprocessable Content"}  # RFC 9110's names (older Pythons differ)


def _status_title(status: int) -> str:
    from http import HTTPStatus
    if status in _TITLES:
        return _TITLES[status]
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


class BodyTooLarge(StarletteHTTPException):
    """Raised from ``receive`` when a body passes the limit; an HTTPException so FastAPI's body
    parsing lets it through (it turns other exceptions into a 400) and the handler answers 413."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body is over {limit} bytes ([http] max_body_size)")


def build_app(services: Services) -> FastAPI:
    """The FastAPI app: /api/v1 endpoint modules, /healthz /readyz /metrics, problem+json errors."""
    from importlib.metadata import PackageNotFoundError, version
    try:
        ver = version("ticketmx")
    except PackageNotFoundError:
        ver = "0"
    app = FastAPI(title="ticketmx", version=ver, openapi_url=f"{API}/openapi.json", docs_url=f"{API}/docs",
                  redoc_url=None, swagger_ui_oauth2_redirect_url=None,
                  description="The ticketmx HTTP API (docs/api.md). Errors are RFC 9457 problem+json.")
    app.state.services = services

    @app.exception_handler(Problem)
    async def _problem(request: Request, exc: Problem) -> Response:
        return problem_response(exc, request)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        detail = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
        if exc.status_code == 404 and detail == "Not Found":
            detail = f"no such endpoint: {request.method} {request.url.path}"
        elif exc.status_code == 405 and detail == "Method Not Allowed":
            detail = f"{request.method} is not allowed on {request.url.path}"
        title = _status_title(exc.status_code)
        return problem_response(Problem(exc.status_code, title, "" if detail == title else detail,
                                        headers=dict(exc.headers or {})), request)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> Response:
        errors = [{"loc": [str(x) for x in e.get("loc", ())], "msg": e.get("msg", ""), "type": e.get("type", "")}
                  for e in exc.errors()]
        first = errors[0] if errors else {"loc": [], "msg": ""}
        where = ".".join(first["loc"])
        return problem_response(Problem(422, "Unprocessable Content", f"{where}: {first['msg']}" if where
                                        else first["msg"], extra={"errors": errors}), request)

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception) -> Response:
        log.error("HTTP %s %s failed: %s: %s", request.method, request.url.path, type(exc).__name__, exc,
                  exc_info=exc)
        return problem_response(Problem(500, "Internal Server Error", "the request failed; the gateway log says "
                                        "why"), request)

    body_limits: dict[str, Any] = {}
    for name in ROUTERS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue
        app.include_router(module.router, prefix=API)
        for prefix, limit in getattr(module, "BODY_LIMITS", {}).items():
            body_limits[API + prefix] = limit

    for name in MOUNTS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue
        module.install(app)

    @app.get("/healthz", tags=["operations"], response_class=PlainTextResponse,
             summary="Liveness: the process answers")
    async def healthz() -> str:
        return "ok\n"

    @app.get("/readyz", tags=["operations"], response_class=PlainTextResponse,
             summary="Readiness: started and not stopping (503 otherwise)",
             responses={503: {"description": "not ready"}})
    async def readyz(request: Request) -> PlainTextResponse:
        ok = services.ready
        return PlainTextResponse("ready\n" if ok else "not ready\n", status_code=200 if ok else 503)

    @app.get("/metrics", tags=["operations"], response_class=Response,
             summary="Prometheus metrics (the same exposition as [metrics] listen)",
             responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}})
    async def metrics(request: Request) -> Response:
        if not ip_in_networks(client_address(request), services.cfg.http.metrics_allow):
            raise Problem(403, "Forbidden", "/metrics is served only to the networks in [http] metrics_allow")
        return Response(await services.render_metrics(), media_type=CONTENT_TYPE_LATEST)

    # longest prefix first: the most specific limit wins
    app.add_middleware(_Limits, services=services,
                       body_limits=tuple(sorted(body_limits.items(), key=lambda kv: -len(kv[0]))))
    return app


class _Limits:
    """Pure ASGI middleware: the body limit while reading and the request timeout."""

    def __init__(self, app: Any, services: Services, body_limits: tuple[tuple[str, Any], ...] = ()) -> None:
        self.app = app
        self.services = services
        self.body_limits = body_limits

    def body_limit(self, path: str) -> int:
        cfg = self.services.cfg
        for prefix, limit in self.body_limits:
            if path.startswith(prefix):
                return int(limit(cfg))
        return cfg.http.max_body_size

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        http = self.services.cfg.http
        path = scope.get("path", "")
        limit = self.body_limit(path)
        extra = [(b"x-content-type-options", b"nosniff")]
        if path.startswith(API + "/"):
            extra.append((b"cache-control", b"no-store"))
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            await _send_problem(send, scope, Problem(413, "Content Too Large", f"the request body ({declared} "
                                                     f"bytes) is over {limit} bytes ([http] max_body_size)"))
            return
        seen = 0
        started = False

        async def limited_receive() -> dict[str, Any]:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge(limit)
            return message

        async def watched_send(message: dict[str, Any]) -> None:
            nonlocal started
            if message["type"] == "http.response.start" and not started:
                started = True
                deadline.reschedule(None)  # the response is under way: the timeout was for getting here
                names = {k.lower() for k, _ in message.get("headers", ())}
                message = {**message, "headers": [*message.get("headers", ()),
                                                  *(h for h in extra if h[0] not in names)]}
            await send(message)

        try:
            async with asyncio.timeout(http.request_timeout) as deadline:
                await self.app(scope, limited_receive, watched_send)
        except TimeoutError:
            if started:
                raise
            await _send_problem(send, scope, Problem(503, "Service Unavailable", f"no answer within "
                                                     f"{http.request_timeout:g}s ([http] request_timeout)",
                                                     headers={"Retry-After": "5"}))
        except BodyTooLarge as exc:  # raised where no handler saw it (e.g. while streaming a body)
            if started:
                raise
            await _send_problem(send, scope, Problem(413, "Content Too Large", str(exc.detail)))


def _content_length(scope: dict[str, Any]) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _send_problem(send: Any, scope: dict[str, Any], p: Problem) -> None:
    body = json.dumps(p.body(scope.get("path", ""))).encode()
    headers = [(b"content-type", PROBLEM.encode()), (b"content-length", str(len(body)).encode()),
               (b"connection", b"close"), (b"x-content-type-options", b"nosniff"), (b"cache-control", b"no-store")] + [(k.lower().encode(), v.encode()) for k, v in p.headers.items()]
    await send({"type": "http.response.start", "status": p.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _raw_problem(status: int, reason: str, detail: str) -> bytes:
    """A whole HTTP/1.1 response, for the protocol level (no request was parsed, no app runs)."""
    body = json.dumps({"type": "about:blank", "title": reason, "status": status, "detail": detail}).encode()
    return (f"HTTP/1.1 {status} {reason}\r\ncontent-type: {PROBLEM}\r\ncontent-length: {len(body)}\r\n"
            f"connection: close\r\n\r\n").encode() + body


class _GuardedH11(H11Protocol):
    """uvicorn's h11 protocol with a connection cap at accept and a header timeout (module docstring).
    The class attributes are set on a per-server subclass (:meth:`HttpServer._protocol`)."""

    max_connections = 256
    header_timeout = 10.0
    owner: "HttpServer | None" = None
    _header_timer: asyncio.TimerHandle | None = None
    _refused = False
    _partial = False          # bytes of the next request arrived since the timer was armed

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if len(self.connections) >= self.max_connections:
            self._refused = True
            self.transport = transport
            if self.owner is not None:
                self.owner.refused += 1
            transport.write(_raw_problem(503, "Service Unavailable", "too many connections ([http] "
                                                                    "max_connections); try again shortly"))
            transport.close()
            return
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            # uvicorn writes a response's head and body separately: with Nagle on, the body waits for
            # the client's delayed ACK of the head (40 ms a request on Linux)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self._refused:
            return
        super().connection_lost(exc)

    def _between_requests(self) -> bool:
        """No request being answered: the next one's headers are awaited (or arriving)."""
        return self.cycle is None or self.cycle.response_complete

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        self._partial = True
        super().data_received(data)
        if not self._between_requests():  # a request's headers were parsed: the timer's job is done
            self._disarm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and self._between_requests():  # not a pipelined request started
            self._arm()

    def send_400_response(self, msg: str) -> None:
        """A request h11 cannot parse (or headers over 64 KiB): a problem too, then closed."""
        if self.owner is not None:
            self.owner.bad_requests += 1
        self.transport.write(_raw_problem(400, "Bad Request", "malformed HTTP request"))
        self.transport.close()

    def _arm(self) -> None:
        self._disarm()
        self._partial = False
        self._header_timer = self.loop.call_later(self.header_timeout, self._header_expired)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_expired(self) -> None:
        self._header_timer = None
        if self.transport.is_closing() or not self._between_requests():
            return
        if self.owner is not None:
            self.owner.timed_out += 1
        if self._partial:  # mid-headers: nothing of a response is on its way, so a whole one may go out
            self.transport.write(_raw_problem(408, "Request Timeout", "the request headers did not arrive "
                                              f"within {self.header_timeout:g}s ([http] header_timeout)"))
        # else idle: closed without a word (a 408 could cross a request the client is sending right now
        # and be read as its answer)
        self.transport.close()


def bind(host: str, port: int) -> socket.socket:
    """The listening socket of ``[http] listen``, bound here rather than in uvicorn, which answers a
    bind error with sys.exit: an OSError (address in use) ends the start like the SMTP listener's does.
    The main process binds it once and hands it to every HTTP process (they accept from one queue)."""
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, _, proto, _, addr = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM, proto)  # proto IPPROTO_TCP: asyncio sets TCP_NODELAY
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
        sock.listen(1024)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, f"[http] listen {host}:{port}: {exc.strerror}") from None
    return sock


class HttpServer:
    """uvicorn serving :func:`build_app` on ``[http] listen`` as a task of the running loop."""

    def __init__(self, services: Services, http_cfg: Any) -> None:
        self.services = services
        self.cfg = http_cfg
        self.app = build_app(services)
        self.host, self.port = http_cfg.listen
        self.refused = 0      # connections closed at once for max_connections (tests, docs)
        self.timed_out = 0    # connections closed by header_timeout
        self.bad_requests = 0  # requests h11 could not parse (400)
        self._server: _Server | None = None
        self._task: asyncio.Task[None] | None = None

    def _protocol(self) -> type[H11Protocol]:
        return type("GuardedH11", (_GuardedH11,), {"max_connections": self.cfg.max_connections,
                                                  "header_timeout": self.cfg.header_timeout, "owner": self})

    async def start(self, sock: socket.socket | None = None) -> None:
        """Serve on ``sock`` (bound by the main process, for an HTTP process) or bind ``[http] listen``."""
        # uvicorn says "Invalid HTTP request received." at WARNING for every malformed request (a
        # client could fill the log) and repeats what we log at start; errors (a crashed app) remain.
        logging.getLogger("uvicorn.error").setLevel(logging.ERROR)
        if sock is None:
            sock = bind(self.host, self.port)
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.app, lifespan="off", log_config=None, access_log=False, server_header=False,
            http=self._protocol(), ws="none", interface="asgi3",
            timeout_keep_alive=max(1, round(self.cfg.keepalive_timeout)),
            timeout_graceful_shutdown=max(1, round(self.cfg.shutdown_grace)),
            proxy_headers=bool(self.cfg.trusted_proxies),
            forwarded_allow_ips=[str(n) for n in self.cfg.trusted_proxies] or None,
            h11_max_incomplete_event_size=64 * 1024,   # request line + headers
        )
        self._server = _Server(config)
        self._task = asyncio.get_running_loop().create_task(self._server.serve(sockets=[sock]), name="http")
        while not self._server.started:
            if self._task.done():
                self._task.result()  # raises what stopped it
                raise RuntimeError("the HTTP server stopped while starting")
            await asyncio.sleep(0.01)
        log.info("HTTP API listening on http://%s:%d%s/ (OpenAPI: %s/openapi.json)",
                 self.host if ":" not in self.host else f"[{self.host}]", self.port, API, API)

    async def close(self) -> None:
        """Stop accepting, let requests in flight finish within ``[http] shutdown_grace``."""
        if self._server is None or self._task is None:
            return
        self._server.should_exit = True
        try:
            await asyncio.wait_for(asyncio.shield(self._task), self.cfg.shutdown_grace + 5)
        except (asyncio.TimeoutError, Exception) as exc:  # noqa: BLE001 - the gateway keeps stopping
            if not isinstance(exc, asyncio.TimeoutError):
                log.warning("HTTP server stopped with %s: %s", type(exc).__name__, exc)
            self._server.force_exit = True
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._server = None
