"""The UI's request metrics: ``ticketmx_ui_requests_total{route,status}`` and
``ticketmx_ui_request_duration_seconds{route}`` (docs/metrics.md).

A plain ASGI middleware around the app (only paths under /ui/, and ``/``): after the router has run,
the scope holds the matched route, whose path *template* (``/ui/tickets/{number}``) is the label —
never the raw path, so a label's values are the UI's routes and nothing a client types. A path no
route matched is ``other``. Samples go to this process's registry; in an HTTP child process they reach
the real ``/metrics`` as every other family does (the main process adds up the children's snapshots,
gateway/http/process.py).
"""
from __future__ import annotations

import time
from typing import Any, Awaitable, Callable

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


def is_ui_path(path: str) -> bool:
    return path == "/" or path == "/ui" or path.startswith("/ui/")


def route_label(scope: Scope, mounts: tuple[str, ...] = ()) -> str:
    """The matched route's path template, a mount's prefix with ``/{path}`` (FastAPI's router does not
    put a mount in the scope as ``route``), or ``other``."""
    path = getattr(scope.get("route"), "path", None)
    if isinstance(path, str) and is_ui_path(path):
        return path
    raw = scope.get("path", "")
    return next((m + "/{path}" for m in mounts if raw.startswith(m + "/")), "other")


class UiMetrics:
    """Counts and times every UI request by route template and status."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]], metrics: Any,
                 mounts: tuple[str, ...] = ()) -> None:
        self.app, self.metrics, self.mounts = app, metrics, mounts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("type") != "http" or not is_ui_path(scope.get("path", "")):
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def watch(message: dict[str, Any]) -> None:
            nonlocal status
            if message.get("type") == "http.response.start":
                status = int(message.get("status", 500))
            await send(message)
        try:
            await self.app(scope, receive, watch)
        finally:
            route = route_label(scope, self.mounts)
            self.metrics.ui_requests.labels(route=route, status=str(status)).inc()
            self.metrics.ui_request_duration.labels(route=route).observe(time.perf_counter() - started)
