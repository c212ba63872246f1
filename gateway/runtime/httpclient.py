"""The outbound HTTP clients (rspamd's /checkv2, an OAuth2 token endpoint): httpx, one client per loop.

httpx (on h11/httpcore) replaces the hand-written HTTP/1.1 reader these clients shared: chunked
bodies, keep-alive, TLS and malformed answers are its job now. A client is bound to the event loop
that made it (its pooled connections are that loop's sockets), and the pipeline runs in worker
processes with loops of their own, so :class:`LoopClients` creates one lazily per (process, loop)
instead of at import or construction time.
"""
from __future__ import annotations

import asyncio
import functools
import os
import ssl
import weakref
from typing import Any

import httpx

__all__ = ["LoopClients", "read_limited", "TooLarge", "shared_ssl_context"]


class TooLarge(ValueError):
    """The response body is larger than the caller accepts."""


class LoopClients:
    """``get()`` → the ``httpx.AsyncClient`` of the running loop, made on first use with ``kwargs``."""

    def __init__(self, **kwargs: Any) -> None:
        self._kwargs = kwargs
        self._clients: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, tuple[int, httpx.AsyncClient]]" = \
            weakref.WeakKeyDictionary()

    def get(self) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        found = self._clients.get(loop)
        if found is not None and found[0] == os.getpid() and not found[1].is_closed:
            return found[1]
        client = httpx.AsyncClient(**self._kwargs)
        self._clients[loop] = (os.getpid(), client)
        return client

    async def aclose(self) -> None:
        """Close the running loop's client (others are dropped with their loops)."""
        found = self._clients.pop(asyncio.get_running_loop(), None)
        if found is not None and found[0] == os.getpid():
            await found[1].aclose()


async def read_limited(response: httpx.Response, max_body: int) -> bytes:
    """The body of a streamed response, refusing (``TooLarge``) more than ``max_body`` bytes as it arrives."""
    length = response.headers.get("content-length", "")
    if length.isdigit() and int(length) > max_body:
        raise TooLarge("HTTP response too large")
    body = bytearray()
    async for chunk in response.aiter_bytes():
        body += chunk
        if len(body) > max_body:
            raise TooLarge("HTTP response too large")
    return bytes(body)


def shared_ssl_context(verify: bool = True, ca_file: str | None = None) -> ssl.SSLContext:
    """A client TLS context shared by everyone with the same settings: each context loads the CA bundle
    (hundreds of KB), and a gateway with a hundred OAuth sources would otherwise hold a hundred copies.
    A CA file changed on disk (same path, new mtime) gets a new context."""
    mtime = 0.0
    if ca_file:
        try:
            mtime = os.stat(ca_file).st_mtime
        except OSError:
            pass
    return _context(verify, ca_file, mtime)


@functools.lru_cache(maxsize=32)
def _context(verify: bool, ca_file: str | None, mtime: float) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=ca_file)
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx
