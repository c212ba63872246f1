"""``kind = "graph"``: a Microsoft 365 / Exchange Online mailbox over Microsoft Graph (v1.0 mail API).

For tenants with IMAP and POP switched off. EWS is left out on purpose: Microsoft switches it off in
Exchange Online from October 2026.

* **Auth**: always OAuth 2.0 through gateway/runtime/oauth.py (the relay's token client: client
  credentials for an app with ``Mail.ReadWrite`` application permission, or a delegated refresh token
  from ``ticketmx source authorize``, rotated tokens written back). A 401 drops the cached token and
  retries once with a new one.
* **Keys** are ``graph:<immutable id>``: every request says ``Prefer: IdType="ImmutableId"``, so moving
  a message to ``success_folder`` does not change its id (a plain Graph id does change on a move, and a
  crash between the move and our state update would otherwise look like a new message).
* **Listing** (``keys``): ``mailFolders/{folder}/messages`` with ``$select=id,receivedDateTime``,
  ``$filter=receivedDateTime ge <since>``, paged by ``@odata.nextLink``. **Waiting** (``wait_for_new``,
  ``idle = true``): the folder's ``messages/delta``, asked every ``DELTA_INTERVAL`` seconds, returns as
  soon as a message was added; Graph change notifications would need a public HTTPS endpoint.
* **Throttling**: 429, 503 and 504 are retried after the answer's ``Retry-After`` (else 1, 2, 4 … s),
  at most ``THROTTLE_TRIES`` times per request; ``throttled`` counts them. Then the request fails
  (``SourceError`` kind ``throttled``) and the manager tries again at its next round.
* Links in answers (``nextLink``/``deltaLink``) are followed only on the configured endpoint's origin:
  the bearer token is never sent elsewhere.

HTTP is httpx (already the gateway's client): msal is synchronous (a thread per token call) and would
duplicate the token client the relay already has (rotation written back, secret-free errors); the
msgraph-sdk is a large generated client (kiota, many dependencies) for six plain REST calls.
"""
from __future__ import annotations

import asyncio
import json
import logging
import socket
import ssl
import time
from datetime import date, datetime, timezone
from typing import Any
from urllib.parse import quote, urlsplit

import httpx

from gateway.ingress.sources.base import Fetched, SourceError, Step
from gateway.ingress.sources.oauth import SourceTokens
from gateway.runtime.httpclient import TooLarge, read_limited, shared_ssl_context
from gateway.runtime.oauth import OAuthError

log = logging.getLogger(__name__)

DEFAULT_ENDPOINT = "https://graph.microsoft.com"
DEFAULT_AUTHORITY = "https://login.microsoftonline.com"
WELL_KNOWN = frozenset({"inbox", "archive", "deleteditems", "drafts", "sentitems", "junkemail", "outbox",
                        "clutter", "conversationhistory", "recoverableitemsdeletions", "scheduled",
                        "searchfolders", "serverfailures", "syncissues"})
PAGE = 200                 # ids per listing page ($top; Graph allows up to 1000)
DELTA_INTERVAL = 5.0       # seconds between delta checks while waiting for new mail
THROTTLE_TRIES = 6        # tries of one request answered 429/503/504
MAX_RETRY_AFTER = 300.0    # a longer Retry-After fails the request (the manager retries later)
MAX_MIME = 160 << 20       # Exchange Online's largest message is 150 MB
PREFER_IMMUTABLE = 'IdType="ImmutableId"'
CONCURRENCY = 4            # requests in flight per mailbox: Exchange Online's MailboxConcurrency limit


def graph_token_url(authority: str, tenant: str) -> str:
    """The identity platform's v2.0 token endpoint for ``tenant`` under ``authority`` (national clouds too)."""
    return f"{authority.rstrip('/')}/{quote(tenant, safe='')}/oauth2/v2.0/token"


def graph_scope(endpoint: str) -> str:
    """The app-only scope of a Graph endpoint: ``https://graph.microsoft.com/.default`` for the global cloud."""
    return f"{endpoint.rstrip('/')}/.default"


def since_iso(value: Any) -> str | None:
    """``since`` (a date, datetime, "YYYY-MM-DD[THH:MM:SS]" string or epoch seconds) as Graph's UTC ISO form."""
    if value in (None, ""):
        return None
    if isinstance(value, (int, float)):
        dt = datetime.fromtimestamp(float(value), timezone.utc)
    elif isinstance(value, datetime):
        dt = value if value.tzinfo else value.replace(tzinfo=timezone.utc)
    elif isinstance(value, date):
        dt = datetime(value.year, value.month, value.day, tzinfo=timezone.utc)
    else:
        dt = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        dt = dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)
    return dt.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def graph_error(resp: httpx.Response, body: bytes) -> str:
    """``HTTP 404 ErrorItemNotFound: The specified object…`` from Graph's ``{"error": {"code", "message"}}``."""
    code, message = "", ""
    try:
        err = json.loads(body.decode("utf-8")).get("error")
        if isinstance(err, dict):
            code, message = str(err.get("code", ""))[:80], str(err.get("message", ""))[:200]
    except (ValueError, AttributeError, UnicodeDecodeError):
        pass
    return f"HTTP {resp.status_code} {code}: {message}".rstrip(": ") if code else f"HTTP {resp.status_code}"


class GraphError(SourceError):
    """Graph answered an error: ``status`` and Graph's ``code`` kept for the caller's decisions."""

    def __init__(self, status: int, message: str) -> None:
        kind = "auth" if status in (401, 403) else "throttled" if status in (429, 503, 504) else "protocol"
        super().__init__(kind, message, temporary=status not in (400, 403, 404))
        self.status = status


class GraphSource:
    """One ``[[source]]`` with ``kind = "graph"``; see the module docstring."""

    def __init__(self, cfg: Any, token: SourceTokens | None = None, *,
                 sleep: Any = asyncio.sleep) -> None:
        self.cfg = cfg
        self.endpoint = (cfg.endpoint or DEFAULT_ENDPOINT).rstrip("/")
        if cfg.oauth is None and token is None:
            raise SourceError("token", f"source {cfg.name}: graph needs the oauth_* keys", temporary=False)
        self.token = token or SourceTokens(cfg.oauth)
        self._sleep = sleep
        self._client: httpx.AsyncClient | None = None
        self._user = quote(cfg.user, safe="@")
        self._folder_ids: dict[str, str] = {}
        self._received: dict[str, float] = {}
        self._delta: str | None = None
        self._origin = self._origin_of(self.endpoint)
        self.delta_interval = DELTA_INTERVAL
        self.settle_concurrency = CONCURRENCY   # the manager moves this many at once
        self._ahead: dict[str, asyncio.Future[bytes]] = {}   # prefetched $value downloads by key
        self._queue: list[str] = []                          # keys the manager will fetch next, in order
        self.throttled = 0   # answers 429/503/504 retried (metrics)
        self.requests = 0

    @staticmethod
    def _origin_of(url: str) -> tuple[str, str]:
        u = urlsplit(url)
        return (u.scheme, u.netloc.lower())

    # ------------------------------------------------------------------ plumbing
    def _make_client(self) -> httpx.AsyncClient:
        verify = shared_ssl_context(bool(getattr(self.cfg, "verify_cert", True)), getattr(self.cfg, "ca_file", None))
        return httpx.AsyncClient(verify=verify, trust_env=False, follow_redirects=False,
                                 timeout=float(getattr(self.cfg, "timeout", 30.0) or 30.0),
                                 headers={"User-Agent": "ticketmx-source", "Accept": "application/json",
                                          "Prefer": PREFER_IMMUTABLE})

    def _url(self, path: str) -> str:
        if path.startswith("http://") or path.startswith("https://"):
            if self._origin_of(path) != self._origin:  # a link that points elsewhere never gets our token
                raise SourceError("protocol", f"Graph link to another host refused: {urlsplit(path).netloc}")
            return path
        return f"{self.endpoint}/v1.0/users/{self._user}/{path}"

    async def _call(self, method: str, path: str, *, params: dict[str, str] | None = None,
                    json: Any = None, headers: dict[str, str] | None = None,
                    limit: int = 16 << 20) -> tuple[httpx.Response, bytes]:
        """One Graph request with token refresh on 401 and Retry-After on 429/503/504; raises SourceError."""
        if self._client is None:
            self._client = self._make_client()
        url = self._url(path)
        tries = 0
        refreshed = False
        while True:
            tries += 1
            try:
                token = await self.token.access_token()
            except OAuthError as exc:
                raise SourceError("token", str(exc)) from None
            h = {"Authorization": f"Bearer {token}", **(headers or {})}
            self.requests += 1
            try:
                async with self._client.stream(method, url, params=params, json=json, headers=h) as resp:
                    body = await read_limited(resp, limit)
            except httpx.TimeoutException:
                raise SourceError("connect", f"Graph {method} timed out") from None
            except TooLarge:
                raise SourceError("protocol", f"Graph answer over {limit} bytes") from None
            except httpx.HTTPError as exc:
                raise SourceError("connect", f"Graph {urlsplit(url).netloc}: {type(exc).__name__}: {exc}") from None
            status = resp.status_code
            if status == 401 and not refreshed:
                self.token.invalidate()   # expired or revoked: one new token, one more try
                refreshed = True
                continue
            if status in (429, 503, 504) and tries < THROTTLE_TRIES:
                self.throttled += 1
                delay = _retry_after(resp.headers.get("retry-after"), tries)
                if delay > MAX_RETRY_AFTER:
                    raise SourceError("throttled", f"Graph asked to wait {delay:.0f}s ({graph_error(resp, body)})")
                log.info("source %s: Graph answered %s, retrying in %.1fs", self.cfg.name, status, delay)
                await self._sleep(delay)
                continue
            if status >= 400:
                raise GraphError(status, f"Graph {method} {_path_only(url)}: {graph_error(resp, body)}")
            return resp, body

    async def _json(self, method: str, path: str, **kw: Any) -> dict[str, Any]:
        _, body = await self._call(method, path, **kw)
        try:
            doc = json.loads(body.decode("utf-8"))
        except (ValueError, UnicodeDecodeError):
            raise SourceError("protocol", "Graph answer is not JSON") from None
        if not isinstance(doc, dict):
            raise SourceError("protocol", "Graph answer is not a JSON object")
        return doc

    # ------------------------------------------------------------------ folders
    async def folder_id(self, name: str, create: bool) -> str | None:
        """The id of the top-level folder called ``name`` (or a well-known name); created when ``create``."""
        if name.lower() in WELL_KNOWN:
            return name.lower()
        if name in self._folder_ids:
            return self._folder_ids[name]
        flt = "displayName eq '" + name.replace("'", "''") + "'"
        doc = await self._json("GET", "mailFolders", params={"$filter": flt, "$select": "id,displayName"})
        found = [f for f in doc.get("value", []) if isinstance(f, dict) and isinstance(f.get("id"), str)]
        if found:
            self._folder_ids[name] = found[0]["id"]
            return found[0]["id"]
        if not create:
            return None
        try:
            made = await self._json("POST", "mailFolders", json={"displayName": name})
        except GraphError as exc:
            if exc.status != 409:  # ErrorFolderExists: made meanwhile by someone else, look it up again
                raise
            return await self.folder_id(name, create=False)
        self._folder_ids[name] = str(made["id"])
        return self._folder_ids[name]

    async def _watched(self) -> str:
        fid = await self.folder_id(self.cfg.folder or "inbox", create=False)
        if fid is None:
            raise SourceError("folder", f"folder {self.cfg.folder!r} not found in {self.cfg.user}", temporary=False)
        return fid

    # ------------------------------------------------------------------ Source
    async def connect(self) -> None:
        if self._client is None:
            self._client = self._make_client()
        await self._watched()

    async def close(self) -> None:
        self._queue = []
        for fut in self._ahead.values():
            fut.cancel()
        if self._ahead:
            await asyncio.gather(*self._ahead.values(), return_exceptions=True)
        self._ahead.clear()
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def keys(self) -> list[str]:
        fid = await self._watched()
        params = {"$select": "id,receivedDateTime", "$top": str(PAGE), "$orderby": "receivedDateTime asc"}
        since = since_iso(getattr(self.cfg, "since", None))
        if since:
            params["$filter"] = f"receivedDateTime ge {since}"
        out: list[str] = []
        received: dict[str, float] = {}
        link: str | None = f"mailFolders/{quote(fid, safe='')}/messages"
        first = True
        while link:
            doc = await self._json("GET", link, params=params if first else None)
            first = False
            for item in doc.get("value", []):
                if isinstance(item, dict) and isinstance(item.get("id"), str):
                    key = "graph:" + item["id"]
                    out.append(key)
                    received[key] = _ts(item.get("receivedDateTime"))
            link = doc.get("@odata.nextLink")
        self._received = received
        return out

    def prefetch(self, keys: list[str]) -> None:
        """The keys the manager is about to fetch, in order: ``fetch`` downloads up to ``CONCURRENCY`` ahead
        (each is a whole HTTP round trip; Graph is tens of ms away). Fetching has no effect on the server."""
        self._queue = list(keys)
        wanted = set(keys)
        for key, fut in list(self._ahead.items()):   # left over from a cycle that ended early
            if key not in wanted or (fut.done() and (fut.cancelled() or fut.exception() is not None)):
                fut.cancel()
                del self._ahead[key]

    async def fetch(self, key: str) -> Fetched:
        fut = self._ahead.pop(key, None)
        if key in self._queue:
            self._queue = self._queue[self._queue.index(key) + 1:]
            for nxt in self._queue[:CONCURRENCY - 1]:
                if nxt not in self._ahead:
                    self._ahead[nxt] = asyncio.ensure_future(self._value(nxt))
        raw = await (fut if fut is not None else self._value(key))
        return Fetched(key=key, raw=raw, folder=self.cfg.folder or "inbox", received=self._received.get(key))

    async def _value(self, key: str) -> bytes:
        mid = _mid(key)
        try:   # max_size is the manager's to enforce (a quarantine with its reason); MAX_MIME bounds memory
            _, raw = await self._call("GET", f"messages/{quote(mid, safe='')}/$value", limit=MAX_MIME)
        except GraphError as exc:
            if exc.status == 404:
                raise SourceError("fetch", f"{key}: no longer in the mailbox", temporary=False) from None
            if exc.kind == "protocol":   # this message's trouble (a 500 on its $value): the others go on
                raise SourceError("fetch", str(exc)) from None
            raise
        return raw

    async def settle(self, key: str, outcome: str) -> None:
        target = {"ticket": self.cfg.success_folder, "quarantined": self.cfg.failure_folder,
                  "suppressed": self.cfg.exclusion_folder}.get(outcome, "")
        mid = quote(_mid(key), safe="")
        try:
            if target:
                fid = await self.folder_id(target, create=True)
                await self._call("POST", f"messages/{mid}/move", json={"destinationId": fid})
            else:   # "" = leave it where it is, marked read
                await self._call("PATCH", f"messages/{mid}", json={"isRead": True})
        except GraphError as exc:
            if exc.status == 404:  # moved or deleted by someone (or by us before a crash): nothing to do
                log.info("source %s: %s is gone from the mailbox; nothing to settle", self.cfg.name, key)
                return
            if exc.kind == "protocol":   # a refused move: tried again at the next cycle
                raise SourceError("settle", str(exc)) from None
            raise

    async def wait_for_new(self, timeout: float) -> None:
        """Sleep ``timeout``; with ``idle``, return early when the folder's delta shows a new message."""
        deadline = time.monotonic() + timeout
        if not getattr(self.cfg, "idle", True):
            await self._sleep(timeout)
            return
        if self._delta is None:
            await self._delta_round()   # the first round only sets the baseline: keys() lists what is there
        while (left := deadline - time.monotonic()) > 0:
            await self._sleep(min(self.delta_interval, left))
            if await self._delta_round():
                return

    async def _delta_round(self) -> int:
        """Follow the delta link to its end; the number of messages added since the last round."""
        fid = await self._watched()
        link = self._delta or f"mailFolders/{quote(fid, safe='')}/messages/delta"
        params: dict[str, str] | None = None
        if self._delta is None:
            params = {"$select": "id"}
            since = since_iso(getattr(self.cfg, "since", None))
            if since:
                params["$filter"] = f"receivedDateTime ge {since}"
        added = 0
        while True:
            doc = await self._json("GET", link, params=params, headers={"Prefer": f"{PREFER_IMMUTABLE}, odata.maxpagesize=200"})
            params = None
            added += sum(1 for i in doc.get("value", []) if isinstance(i, dict) and "@removed" not in i)
            if isinstance(doc.get("@odata.nextLink"), str):
                link = doc["@odata.nextLink"]
                continue
            if isinstance(doc.get("@odata.deltaLink"), str):
                self._delta = doc["@odata.deltaLink"]
            return added

    async def _probe(self, url: str, steps: list[Step]) -> bool:
        """DNS, TCP and (https) TLS with the certificate of ``url``'s host, as steps; False at a failure."""
        u = urlsplit(url)
        host, port = u.hostname or "", u.port or (443 if u.scheme == "https" else 80)
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            steps.append(Step("dns", False, f"{host}: {exc}"))
            return False
        steps.append(Step("dns", True, f"{host} -> {', '.join(sorted({str(i[4][0]) for i in infos}))}"))
        ctx = shared_ssl_context(bool(getattr(self.cfg, "verify_cert", True)), getattr(self.cfg, "ca_file", None))
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(
                host, port, ssl=ctx if u.scheme == "https" else None,
                server_hostname=host if u.scheme == "https" else None), float(getattr(self.cfg, "timeout", 30.0)))
        except (OSError, asyncio.TimeoutError) as exc:
            kind = "tls" if isinstance(exc, ssl.SSLError) else "tcp"
            steps.append(Step(kind, False, f"{host}:{port}: {type(exc).__name__}: {exc}"))
            return False
        try:
            if u.scheme == "https":
                tls = writer.get_extra_info("ssl_object")
                steps.append(Step("tls", True, f"{host}:{port} {tls.version() if tls else '?'};"
                                  f" {_cert_summary(writer.get_extra_info('peercert'))}"))
            else:
                steps.append(Step("tcp", True, f"connected to {host}:{port} (plain HTTP: a test endpoint)"))
        finally:
            writer.close()
            try:
                await asyncio.wait_for(writer.wait_closed(), 2)
            except (OSError, asyncio.TimeoutError):
                pass
        return True

    async def test(self) -> list[Step]:
        steps: list[Step] = []
        c = self.cfg
        steps.append(Step("endpoint", True, f"Graph {self.endpoint} (v1.0), mailbox {c.user}"))
        origins = {self._origin_of(u): u for u in (c.oauth.token_url if c.oauth else "", self.endpoint) if u}
        for url in origins.values():   # the Graph host, and the token endpoint's when it is another one
            if not await self._probe(url, steps):
                return steps
        try:
            token = await self.token.access_token()
            left = self.token.expires_at - time.time()
            steps.append(Step("token", True, f"{c.oauth.token_url if c.oauth else ''} grant="
                              f"{self.token.grant}: access token {mask(token)}, expires in {left:.0f}s"))
        except OAuthError as exc:
            steps.append(Step("token", False, str(exc)))
            return steps
        try:
            fid = await self.folder_id(c.folder or "inbox", create=False)
            if fid is None:
                steps.append(Step("folder", False, f"{c.folder!r} not found (top-level display name or a well-known name)"))
                return steps
            info = await self._json("GET", f"mailFolders/{quote(fid, safe='')}")
            steps.append(Step("folder", True, f"{c.folder!r}: {info.get('totalItemCount', '?')} messages,"
                              f" {info.get('unreadItemCount', '?')} unread"))
            doc = await self._json("GET", f"mailFolders/{quote(fid, safe='')}/messages",
                                   params={"$select": "id,receivedDateTime", "$top": "1"})
            steps.append(Step("list", True, f"messages readable ({len(doc.get('value', []))} on a first page of 1)"))
            for key in ("success_folder", "failure_folder", "exclusion_folder"):
                name = getattr(c, key, "")
                if not name:
                    steps.append(Step(key, True, "not set: " + ("left in place, marked read" if key == "success_folder"
                                                             else "left in place")))
                    continue
                found = await self.folder_id(name, create=False)
                steps.append(Step(key, True, f"{name!r} exists" if found else f"{name!r} missing: created at first use"))
        except SourceError as exc:
            steps.append(Step(exc.kind, False, str(exc)))
        return steps


def _cert_summary(cert: dict[str, Any] | None) -> str:
    if not cert:
        return "certificate not verified (verify_cert = false)"
    subject = dict(x[0] for x in cert.get("subject", ()))
    issuer = dict(x[0] for x in cert.get("issuer", ()))
    names = ",".join(v for _, v in cert.get("subjectAltName", ()))[:120]
    return (f"certificate CN={subject.get('commonName', '-')} SAN={names or '-'}"
            f" issuer={issuer.get('commonName') or issuer.get('organizationName', '?')}"
            f" valid until {cert.get('notAfter', '?')}")


def mask(secret: str) -> str:
    """A secret shown as its length only: ``<1234 chars>``."""
    return f"<{len(secret)} chars, masked>"


def _retry_after(value: str | None, tries: int) -> float:
    if value:
        try:
            return max(0.0, float(value))
        except ValueError:
            pass
    return float(min(2 ** (tries - 1), 60))


def _mid(key: str) -> str:
    if not key.startswith("graph:"):
        raise SourceError("protocol", f"not a graph key: {key[:40]!r}")
    return key[6:]


def _ts(value: object) -> float:
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return time.time()


def _path_only(url: str) -> str:
    return urlsplit(url).path


__all__ = ["GraphSource", "graph_token_url", "graph_scope", "since_iso", "DEFAULT_ENDPOINT", "DEFAULT_AUTHORITY"]
