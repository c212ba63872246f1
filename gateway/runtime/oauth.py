"""OAuth 2.0 access tokens for the relay's SMTP XOAUTH2 and the pull sources (IMAP/POP3 XOAUTH2, Graph).

One client for every user of a token endpoint: it lived in relay/ until the pull sources
(gateway/ingress/sources/) needed it too, and ingress may not import the relay room. The configuration is anything shaped like :class:`TokenConfig` (the relay's
``OAuthConfig`` and a source's are both).

Two flows against the configured token endpoint (RFC 6749):

* client credentials (section 4.4): ``grant_type=client_credentials`` with client id, secret and scope
  (Microsoft 365 app-only SMTP: scope ``https://outlook.office365.com/.default``);
* refresh token (section 6): ``grant_type=refresh_token`` (Google and delegated Microsoft 365). When the
  server rotates the refresh token, the new one is written back to ``oauth_refresh_token_file``
  (tmp + fsync + rename) so a restart does not reuse a revoked token.

Tokens are cached and refreshed ``REFRESH_MARGIN`` (or 10 % of their lifetime, whichever is smaller)
before they expire; concurrent deliveries share one token request. Neither the secret, the refresh token
nor the access token ever appears in an exception message or a log line. Of a refusal only the HTTP
status and the RFC 6749 ``error`` code (checked by :func:`error_code`) are kept: ``error_description``
is never copied anywhere, since a provider that echoes the request would leak the secret through it.

HTTP: one form POST and a JSON answer, over httpx (gateway/runtime/httpclient.py: a client per event loop,
made on first use, since the relay worker may run in a loop of its own). TLS is verified with the
smarthost's ``oauth`` settings (``verify_cert``, ``ca_file``); answers are read up to ``MAX_BODY``. No
httpx error text is ever copied into an :class:`OAuthError` for a malformed answer: h11 quotes the
status line it refused, and a provider can echo the request (the secret) there. The transport is
injectable (``post``) for other needs.
"""
from __future__ import annotations

import asyncio
import json
import os
import re
import ssl
import tempfile
import time
from dataclasses import dataclass
from typing import Awaitable, Callable, Iterable
from urllib.parse import urlencode, urlsplit

import httpx

from typing import Protocol

from gateway.runtime.httpclient import LoopClients, TooLarge, read_limited, shared_ssl_context

REFRESH_MARGIN = 300.0
MAX_BODY = 1 << 20


class TokenConfig(Protocol):
    """What a token client needs (gateway.config.relay.OAuthConfig has these fields)."""

    token_url: str
    client_id: str
    scope: str
    client_secret: str
    refresh_token: str
    refresh_token_file: str | None
    timeout: float
    verify_cert: bool
    ca_file: str | None

    @property
    def grant(self) -> str: ...


class OAuthError(Exception):
    """The token endpoint refused or could not be reached (message free of secrets)."""


@dataclass(frozen=True, slots=True)
class HttpResponse:
    status: int
    headers: dict[str, str]
    body: bytes


PostFn = Callable[[str, dict[str, str], float], Awaitable[HttpResponse]]


def _ssl_context(verify: bool, ca_file: str | None) -> ssl.SSLContext:
    return shared_ssl_context(verify, ca_file)


def token_clients(ssl_context: ssl.SSLContext | None, user_agent: str = "ticketmx-relay") -> LoopClients:
    """The httpx clients (one per event loop) for a token endpoint checked with ``ssl_context``."""
    return LoopClients(verify=ssl_context or ssl.create_default_context(), trust_env=False,
                       follow_redirects=False,
                       headers={"User-Agent": user_agent, "Accept": "application/json"})


async def http_post_form(url: str, fields: dict[str, str], timeout: float,
                         ssl_context: ssl.SSLContext | None = None, clients: LoopClients | None = None
                         ) -> HttpResponse:
    """POST ``fields`` as application/x-www-form-urlencoded; the whole exchange bounded by ``timeout``.
    Without ``clients`` a client is made for this one request."""
    if clients is not None:
        return await asyncio.wait_for(_post(url, fields, timeout, clients), timeout)
    once = token_clients(ssl_context)
    try:
        return await asyncio.wait_for(_post(url, fields, timeout, once), timeout)
    finally:
        await once.aclose()


async def _post(url: str, fields: dict[str, str], timeout: float, clients: LoopClients) -> HttpResponse:
    u = urlsplit(url)
    if u.scheme not in ("http", "https") or not u.hostname:
        raise OAuthError(f"bad token endpoint URL scheme/host: {u.scheme}://{u.hostname}")
    try:
        async with clients.get().stream("POST", url, content=urlencode(fields).encode(), timeout=timeout,
                                        headers={"Content-Type": "application/x-www-form-urlencoded"}) as resp:
            data = await read_limited(resp, MAX_BODY)
            return HttpResponse(resp.status_code, {k.lower(): v for k, v in resp.headers.items()}, data)
    except httpx.TimeoutException:
        raise asyncio.TimeoutError() from None
    except (httpx.ConnectError, httpx.NetworkError) as exc:
        # an OS-level failure (refused, unreachable, TLS verification): its text names no secret
        cause = exc.__cause__ if isinstance(exc.__cause__, (OSError, ssl.SSLError)) else None
        raise OSError(getattr(cause, "errno", None), str(cause or exc)) from None
    except (httpx.HTTPError, TooLarge):  # never the answer's bytes: they may echo what we sent
        raise OAuthError("token endpoint: malformed or oversized HTTP response") from None


class TokenProvider:
    """A cached access token for one OAuth client (a smarthost's, a source's).

    ``expires_at`` (wall clock, 0 before the first token) and ``failures`` (token requests refused or
    failed in a row, 0 after a success) are what the sources' metrics export, so an expiring or
    unrenewable token shows before mail stops.
    """

    def __init__(self, cfg: TokenConfig, post: PostFn | None = None,
                 clock: Callable[[], float] = time.monotonic, user_agent: str = "ticketmx-relay") -> None:
        self.cfg = cfg
        self._clock = clock
        self._refresh_token = cfg.refresh_token
        self._token: str | None = None
        self._expires = 0.0
        self._lock = asyncio.Lock()
        self.requests = 0  # token requests made (tests, metrics)
        self.failures = 0  # token requests failed in a row
        self.expires_at = 0.0  # wall-clock expiry of the current access token
        self.last_error = ""
        if post is None:
            ctx = _ssl_context(cfg.verify_cert, cfg.ca_file)
            clients = token_clients(ctx, user_agent)

            async def post(url: str, fields: dict[str, str], timeout: float) -> HttpResponse:
                return await http_post_form(url, fields, timeout, ctx, clients)
        self._post = post

    def __repr__(self) -> str:
        return f"TokenProvider({self.cfg.token_url!r}, grant={self.grant})"

    @property
    def refresh_token(self) -> str:
        """The refresh token in use now (the configured one, or the last one the server rotated to)."""
        return self._refresh_token

    def _fresh(self) -> bool:
        return self._token is not None and self._clock() < self._expires

    async def token(self) -> str:
        if self._fresh():
            assert self._token is not None
            return self._token
        async with self._lock:  # one request for everybody waiting
            if not self._fresh():
                await self._fetch()
            assert self._token is not None
            return self._token

    @property
    def grant(self) -> str:
        """The grant the next token request uses: a refresh token once one is known (configured, picked
        up from its file since, or rotated), else the client credentials."""
        return "refresh_token" if self._refresh_token else "client_credentials"

    def invalidate(self) -> None:
        """The server refused the token (535): fetch a new one next time."""
        self._token = None
        self._expires = 0.0

    async def _fetch(self) -> None:
        try:
            await self._request()
        except OAuthError as exc:
            self.failures += 1
            self.last_error = str(exc)
            raise
        self.failures = 0
        self.last_error = ""

    async def _request(self) -> None:
        fields = {"client_id": self.cfg.client_id}
        if self._refresh_token:   # the configured one, or one a subclass picked up since (sources: the file)
            fields.update(grant_type="refresh_token", refresh_token=self._refresh_token)
        else:
            fields["grant_type"] = "client_credentials"
        if self.cfg.client_secret:
            fields["client_secret"] = self.cfg.client_secret
        if self.cfg.scope:
            fields["scope"] = self.cfg.scope
        self.requests += 1
        started = self._clock()
        try:
            resp = await self._post(self.cfg.token_url, fields, self.cfg.timeout)
        except asyncio.TimeoutError:
            raise OAuthError(f"token endpoint {_where(self.cfg.token_url)} timed out") from None
        except (OSError, ssl.SSLError) as exc:
            raise OAuthError(f"token endpoint {_where(self.cfg.token_url)} unreachable: "
                             f"{type(exc).__name__}: {getattr(exc, 'strerror', None) or exc}") from None
        try:
            doc = json.loads(resp.body.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            doc = None
        if resp.status != 200 or not isinstance(doc, dict) or not isinstance(doc.get("access_token"), str):
            code = error_code(doc.get("error") if isinstance(doc, dict) else None,
                              (self.cfg.client_secret, self._refresh_token, self.cfg.client_id))
            raise OAuthError(f"token endpoint {_where(self.cfg.token_url)} answered HTTP {resp.status}"
                             f" (error={code})")
        lifetime = doc.get("expires_in", 3600)
        try:
            lifetime = float(lifetime)
        except (TypeError, ValueError):
            lifetime = 3600.0
        margin = min(REFRESH_MARGIN, lifetime * 0.1)
        self._token = doc["access_token"]
        self._expires = started + max(0.0, lifetime - margin)
        self.expires_at = time.time() + lifetime - (self._clock() - started)
        new_refresh = doc.get("refresh_token")
        if isinstance(new_refresh, str) and new_refresh and new_refresh != self._refresh_token:
            used, self._refresh_token = self._refresh_token, new_refresh
            if self.cfg.refresh_token_file:
                await self._keep_rotated(self.cfg.refresh_token_file, used, new_refresh)

    async def _keep_rotated(self, path: str, used: str, new: str) -> None:
        """The server rotated the refresh token ``used`` to ``new``: write it back to the file."""
        await asyncio.to_thread(_write_secret, path, new)


_ERROR_CODE = re.compile(r"[a-z0-9_.-]{1,64}")


def error_code(value: object, secrets: Iterable[str | None] = ()) -> str:
    """The RFC 6749 5.2 ``error`` code of a refusal, fit to log: the only part of the body we keep.

    ``error_description``, ``error_uri`` and any other text are dropped unread: a provider that
    echoes the request would put the client secret or refresh token there, and from here the text
    would reach the log, the relay queue's ``last_error`` and CLI output. The code itself must look
    like one (lower-case letters, digits, ``_.-``; at most 64) and must not overlap a secret we sent;
    anything else is reported as ``unrecognised``.
    """
    if not isinstance(value, str) or not _ERROR_CODE.fullmatch(value):
        return "missing" if value is None else "unrecognised"
    low = value.lower()
    for secret in secrets:
        if secret and len(secret) >= 4 and (secret.lower() in low or (len(low) >= 8 and low in secret.lower())):
            return "unrecognised"
    return value


def _where(url: str) -> str:
    u = urlsplit(url)
    return f"{u.scheme}://{u.netloc}{u.path}"


def write_secret(path: str, value: str) -> None:
    """Replace the secret file ``path`` with ``value`` (0600, tmp + fsync + rename): a crash leaves the old or the new."""
    _write_secret(path, value)


def _write_secret(path: str, value: str) -> None:
    d = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".refresh-")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(value + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


__all__ = ["TokenProvider", "TokenConfig", "OAuthError", "http_post_form", "HttpResponse", "error_code",
           "write_secret"]
