"""What every endpoint module uses: the caller (:class:`Principal`, :func:`principal`), errors
(:class:`Problem`, rendered as RFC 9457 application/problem+json), the running gateway
(:func:`services`) and the audit log (:func:`audit`).

    @router.post("/things/{id}/frob")
    async def frob(id: str, request: Request, who: Principal = Depends(principal("agent"))) -> Frobbed:
        svc = services(request)
        if not who.can_write(queue):
            raise Problem(403, "Not your queue", f"queue {queue!r} is not among this token's queues")
        await svc.store.transaction(lambda conn: (frob(conn, id),
                                                  audit_row(who, "thing.frob", id, {}, request)(conn)))
        # or, when the write is not one transaction of yours: await audit(who, "thing.frob", id, {}, request)
"""
from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Coroutine

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from gateway.runtime.ratelimit import SlidingWindow
from gateway.http import tokens

log = logging.getLogger(__name__)

ROLES = tokens.ROLES                  # ("viewer", "agent", "admin"): ascending rights
_RANK = {r: i for i, r in enumerate(ROLES)}
TOUCH_EVERY = 60.0                    # last_used is written at most this often per token (it is a write)


@dataclass(frozen=True)
class Principal:
    """Who is calling: an API token's name, role and queue scope."""

    name: str
    role: str                          # "admin" | "agent" | "viewer"
    queues: tuple[str, ...] = ()       # () = every queue

    def at_least(self, role: str) -> bool:
        return _RANK.get(self.role, -1) >= _RANK[role]

    def can_read(self, queue: str) -> bool:
        """Admins read everything; others their queues (every queue when the token names none)."""
        return self.role == "admin" or not self.queues or queue in self.queues

    def can_write(self, queue: str) -> bool:
        """A viewer never writes; an agent only in its queues; an admin everywhere."""
        if self.role == "admin":
            return True
        return self.role == "agent" and (not self.queues or queue in self.queues)


class Problem(Exception):
    """An error answered as application/problem+json (RFC 9457): ``{type, title, status, detail}``.

    ``headers``: extra response headers (``Retry-After``, ``WWW-Authenticate``); ``extra``: more
    members of the problem object (e.g. ``errors`` of a validation failure)."""

    def __init__(self, status: int, title: str, detail: str = "", type: str = "about:blank", *,
                 headers: dict[str, str] | None = None, extra: dict[str, Any] | None = None) -> None:
        super().__init__(f"{status} {title}: {detail}" if detail else f"{status} {title}")
        self.status, self.title, self.detail, self.type = status, title, detail, type
        self.headers = headers or {}
        self.extra = extra or {}

    def body(self, instance: str = "") -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.type, "title": self.title, "status": self.status}
        if self.detail:
            out["detail"] = self.detail
        if instance:
            out["instance"] = instance
        out.update(self.extra)
        return out


class Services:
    """The running gateway, as endpoints see it. ``cfg`` is read at each use: a reload (SIGHUP)
    replaces the gateway's config and the next request sees the new one.

    ``host`` is the gateway (``[http] processes = 0``: the API runs in the SMTP process) or, in an HTTP
    process, that process's own store, spool writer and config (gateway/http/process.py, which also
    overrides what must reach the main process: wake-ups, /metrics, the rate limit across processes)."""

    def __init__(self, host: Any) -> None:
        self._gw = host
        self.limiter: SlidingWindow | None = None   # per-token request rate ([http] rate_per_token)
        self._touched: dict[str, float] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def store(self) -> Any:
        """gateway.store.base.Store"""
        return self._gw.store

    @property
    def cfg(self) -> Any:
        """gateway.config.load.Config (the one running now)"""
        return self._gw.cfg

    @property
    def sources(self) -> Any:
        """gateway.ingress.sources.manager.SourceManager, or None without [[source]]s"""
        return getattr(self._gw, "sources", None)

    @property
    def metrics(self) -> Any:
        """gateway.runtime.metrics.Metrics (this process's registry; /metrics is :meth:`render_metrics`)"""
        return self._gw.metrics

    @property
    def ready(self) -> bool:
        return bool(self._gw.ready)

    @property
    def spool(self) -> Any:
        """gateway.spool.SpoolWriter: the durable spool SMTP commits into (HTTP inbound uses it too)"""
        return self._gw.spool

    @property
    def executor(self) -> Any:
        """The gateway's bounded executor for CPU-heavy work (DKIM hashing of large inbound posts)"""
        return self._gw.executor

    @property
    def resolver(self) -> Any:
        """The process's DNS resolver (and cache), or None: the inbound checks make their own."""
        return getattr(self._gw, "resolver", None)

    def wake_relay(self) -> None:
        """A notification was queued: the relay worker sends it now rather than at its next poll."""
        self._gw._wake_relay()

    def wake_pipeline(self) -> None:
        """A spool entry was queued (replay, release, inbound): the pipeline claims it now."""
        for owner in (getattr(self._gw, "pool", None), getattr(self._gw, "worker", None)):
            if owner is not None:
                owner.wake()

    async def render_metrics(self) -> bytes:
        """The whole service's Prometheus exposition (every process's samples added up)."""
        return await self.metrics.render_all()

    def rate_limiter(self) -> SlidingWindow | None:
        rate = self.cfg.http.rate_per_token
        if rate is None:
            return None
        if self.limiter is None or self.limiter.rate != rate:  # first use, or a reload changed it
            self.limiter = SlidingWindow(rate)
        return self.limiter

    async def rate_check(self, name: str) -> int | None:
        """Count one request of token ``name``: None when it is within ``[http] rate_per_token``,
        else the seconds to wait (the request is not counted)."""
        return take(self.rate_limiter(), name)

    def touch(self, name: str) -> None:
        """Record the token's last use, at most every TOUCH_EVERY seconds, off the request's path."""
        now = time.time()
        if now - self._touched.get(name, 0.0) < TOUCH_EVERY:
            return
        self._touched[name] = now
        task = asyncio.get_running_loop().create_task(self._touch(name, now))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _touch(self, name: str, now: float) -> None:
        try:
            await tokens.touch(self.store, name, now)
        except Exception as exc:  # bookkeeping only: the request was answered
            log.debug("last_used of token %s not recorded: %s", name, exc)


def take(limiter: SlidingWindow | None, name: str) -> int | None:
    """One request of ``name`` against ``limiter``: None (allowed, counted) or whole seconds to wait."""
    if limiter is None:
        return None
    if not limiter.allowed(name):
        return max(1, math.ceil(limiter.retry_after(name)))
    limiter.hit(name)
    return None


def services(request: Request) -> Services:
    """The running gateway's services (store, config, metrics, wake-ups)."""
    return request.app.state.services


def client_address(request: Request) -> str:
    return request.client.host if request.client else ""


_bearer = HTTPBearer(auto_error=False, description="An API token from `ticketmx token create`.")


def principal(min_role: str) -> Callable[..., Coroutine[Any, Any, Principal]]:
    """A dependency: the calling token's :class:`Principal` if its role is at least ``min_role``.

    401 without a token or with an unknown or revoked one, 403 below the role, 429 over
    ``[http] rate_per_token`` (with Retry-After) — all problem+json."""
    if min_role not in _RANK:
        raise ValueError(f"unknown role {min_role!r} (one of {', '.join(ROLES)})")

    async def dependency(request: Request,
                         cred: HTTPAuthorizationCredentials | None = Depends(_bearer)) -> Principal:
        if cred is None or cred.scheme.lower() != "bearer" or not cred.credentials:
            raise Problem(401, "Unauthorized", "send an API token: Authorization: Bearer <token>",
                          headers={"WWW-Authenticate": 'Bearer realm="ticketmx"'})
        svc = services(request)
        row = await tokens.lookup(svc.store, cred.credentials.strip())
        if row is None:
            raise Problem(401, "Unauthorized", "unknown or revoked API token",
                          headers={"WWW-Authenticate": 'Bearer realm="ticketmx", error="invalid_token"'})
        who = Principal(name=row.name, role=row.role, queues=row.queues)
        wait = await svc.rate_check(who.name)
        if wait is not None:
            raise Problem(429, "Too Many Requests",
                          f"token {who.name!r} is over [http] rate_per_token ({svc.cfg.http.rate_per_token}); "
                          f"retry in {wait}s", headers={"Retry-After": str(wait)})
        svc.touch(who.name)
        request.state.principal = who
        if not who.at_least(min_role):
            raise Problem(403, "Forbidden", f"this needs the {min_role} role; token {who.name!r} is {who.role}")
        return who

    dependency.__name__ = f"principal_{min_role}"
    return dependency


async def audit(who: Principal, action: str, target: str, detail: dict[str, Any], request: Request) -> None:
    """Record a write: who (token name and role), what (``action``), on what (``target``), when, and
    the client address. Call it once the write succeeded (a refused write changed nothing).
    Better, when the write is one store transaction: :func:`audit_row`, which commits with it."""
    await tokens.audit(services(request).store, who.name, who.role, action, target, detail,
                       client_address(request))


def audit_row(who: Principal, action: str, target: str, detail: dict[str, Any], request: Request
              ) -> Callable[[Any], None]:
    """The audit row as ``fn(conn)``, to run inside the write's own transaction (``store.transaction``
    or a store method's ``also=``): the change and its record commit together or not at all."""
    client = client_address(request)

    def write(conn: Any) -> None:
        tokens.write_audit(conn, time.time(), who.name, who.role, action, target, detail, client)
    return write
