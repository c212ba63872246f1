"""A local EMULATOR of the Microsoft Graph mail API and the Microsoft identity platform token endpoints.

This is not Microsoft's service: no real tenant is reachable from the tests, so this small Starlette app
(uvicorn in a thread of its own, on 127.0.0.1, a free port) implements the documented parts the Graph
source uses, with the documented shapes, so the source is tested over real HTTP:

* identity platform (``/{tenant}/oauth2/v2.0/…``): ``token`` with the client credentials, refresh token
  (rotated at every use, as Microsoft may), device code (RFC 8628: ``authorization_pending``,
  ``slow_down``, ``expired_token``, ``access_denied``) and authorization code + PKCE (S256) grants;
  ``devicecode``; ``authorize`` (the "user" consents at once and is redirected to the loopback
  ``redirect_uri``); errors as ``{"error", "error_description"}`` with an AADSTS code;
* an RFC 7662 introspection endpoint (``/introspect``) for Dovecot's oauth2 passdb (IMAP/POP3 XOAUTH2);
* Graph v1.0 (``/v1.0/users/{user}/…``): ``mailFolders`` (list with ``$filter=displayName eq '…'``, get,
  create; ``409 ErrorFolderExists``), ``mailFolders/{folder}/messages`` (``$select``, ``$top``, ``$filter=
  receivedDateTime ge …``, ``@odata.nextLink`` paging), ``…/messages/delta`` (``@odata.deltaLink``,
  ``@removed`` for messages moved out), ``messages/{id}/$value`` (MIME), ``messages/{id}/move`` (201 with
  the moved message: a NEW id unless the request asked ``Prefer: IdType="ImmutableId"``, as Graph does);
  errors as ``{"error": {"code", "message", "innerError"}}``: 401 ``InvalidAuthenticationToken`` for a
  missing, unknown or expired token, 404 ``ErrorItemNotFound``, and throttling switched on by the tests
  (``throttle(n)``: 429 ``TooManyRequests`` or 503 with ``Retry-After``).

Well-known folder names (``inbox``, ``archive``, ``deleteditems``, …) are accepted wherever a folder id is.
"""
from __future__ import annotations

import asyncio
import base64
import hashlib
import itertools
import os
import re
import secrets
import socket
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email import message_from_bytes
from email.utils import parseaddr
from typing import Any
from urllib.parse import urlencode

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

WELL_KNOWN = ("inbox", "archive", "deleteditems", "drafts", "sentitems", "junkemail", "outbox")
DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_iso(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def _new_id(prefix: str) -> str:
    return prefix + base64.urlsafe_b64encode(secrets.token_bytes(24)).decode().rstrip("=")


@dataclass
class Message:
    immutable_id: str
    rest_id: str
    raw: bytes
    received: float
    folder: str  # folder id
    is_read: bool = False

    def json(self, immutable: bool, select: list[str] | None) -> dict[str, Any]:
        msg = message_from_bytes(self.raw)
        name, addr = parseaddr(str(msg.get("From", "")))
        full = {
            "id": self.immutable_id if immutable else self.rest_id,
            "receivedDateTime": _iso(self.received),
            "subject": str(msg.get("Subject", "")),
            "internetMessageId": str(msg.get("Message-ID", "")),
            "from": {"emailAddress": {"name": name, "address": addr}},
            "isRead": self.is_read,
            "parentFolderId": self.folder,
        }
        if select:
            return {k: v for k, v in full.items() if k in select or k == "id"}
        return full


@dataclass
class Folder:
    id: str
    name: str
    well_known: str = ""


@dataclass
class Mailbox:
    user: str
    folders: dict[str, Folder] = field(default_factory=dict)
    messages: dict[str, Message] = field(default_factory=dict)  # by immutable id
    # (seq, folder id, immutable id, "added" | "removed"): what delta answers from
    changes: list[tuple[int, str, str, str]] = field(default_factory=list)


@dataclass
class DeviceCode:
    device_code: str
    user_code: str
    client_id: str
    scope: str
    expires: float
    interval: int
    state: str = "pending"  # pending | approved | denied
    last_poll: float = 0.0
    user: str = ""


class GraphEmulator:
    """Start with ``start()`` (or as a context manager); ``base`` is ``http://127.0.0.1:PORT``.

    Tests drive it through methods: ``deliver``, ``folder_messages``, ``throttle``, ``expire_tokens``,
    ``approve_device``; and read ``requests`` (method, path) and counters.
    """

    def __init__(self, tenant: str = "contoso-tenant", client_id: str = "app-client-id",
                 client_secret: str = "app-client-secret", token_lifetime: int = 3600, tls_dir: str = "") -> None:
        self.tls_dir = tls_dir       # set: HTTPS with a certificate for 127.0.0.1 from a test CA (ca.pem there)
        self.tenant = tenant
        self.client_id = client_id
        self.client_secret = client_secret
        self.token_lifetime = token_lifetime
        self.mailboxes: dict[str, Mailbox] = {}
        self.tokens: dict[str, tuple[float, str]] = {}       # access token -> (expiry, user or "" for app)
        self.refresh_tokens: dict[str, str] = {}             # refresh token -> user
        self.devices: dict[str, DeviceCode] = {}
        self.codes: dict[str, tuple[str, str, str, str]] = {}  # auth code -> (client, redirect, challenge, user)
        self.app_user = ""           # the mailbox an app-only (client credentials) token opens over XOAUTH2
        self.slow_down_next = 0      # device polls to answer slow_down
        self.deny_authorize = False  # the "user" at ``authorize`` declines: error=access_denied to redirect_uri
        self.requests: list[tuple[str, str]] = []
        self.token_requests: list[dict[str, str]] = []
        self.moves = 0
        self.throttled = 0           # 429/503 answers given
        self.latency = 0.0           # seconds added to every answer (benchmarks: Graph is tens of ms away)
        self.fail_values: set[str] = set()   # immutable ids whose $value answers 500
        self.fail_moves = False      # every move answers 500 (a server that takes mail but cannot move it)
        self._throttle = 0
        self._throttle_status = 429
        self._retry_after = 1
        self._seq = itertools.count(1)
        self._lock = threading.RLock()
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.port = 0
        self.app = Starlette(routes=[
            Route("/{tenant}/oauth2/v2.0/token", self._token, methods=["POST"]),
            Route("/{tenant}/oauth2/v2.0/devicecode", self._devicecode, methods=["POST"]),
            Route("/{tenant}/oauth2/v2.0/authorize", self._authorize, methods=["GET"]),
            Route("/introspect", self._introspect, methods=["POST", "GET"]),
            Route("/v1.0/users/{user}/mailFolders", self._folders, methods=["GET", "POST"]),
            Route("/v1.0/users/{user}/mailFolders/{folder}", self._folder, methods=["GET"]),
            Route("/v1.0/users/{user}/mailFolders/{folder}/messages", self._list, methods=["GET"]),
            Route("/v1.0/users/{user}/mailFolders/{folder}/messages/delta", self._delta, methods=["GET"]),
            Route("/v1.0/users/{user}/messages/{mid}/$value", self._value, methods=["GET"]),
            Route("/v1.0/users/{user}/messages/{mid}/move", self._move, methods=["POST"]),
            Route("/v1.0/users/{user}/messages/{mid}", self._message, methods=["GET", "PATCH"]),
        ])

    # ---------------------------------------------------------------- lifecycle
    @property
    def base(self) -> str:
        return f"{'https' if self.tls_dir else 'http'}://127.0.0.1:{self.port}"

    @property
    def ca_file(self) -> str:
        return os.path.join(self.tls_dir, "ca.pem")

    @property
    def token_url(self) -> str:
        return f"{self.base}/{self.tenant}/oauth2/v2.0/token"

    def start(self) -> "GraphEmulator":
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        tls: dict[str, Any] = {}
        if self.tls_dir:
            import trustme
            ca = trustme.CA()
            cert = ca.issue_cert("127.0.0.1", "localhost")
            ca.cert_pem.write_to_path(self.ca_file)
            cert.private_key_and_cert_chain_pem.write_to_path(os.path.join(self.tls_dir, "server.pem"))
            tls = {"ssl_certfile": os.path.join(self.tls_dir, "server.pem")}
        config = uvicorn.Config(self._delayed, log_level="warning", lifespan="off", access_log=False,
                                interface="asgi3", timeout_graceful_shutdown=1, **tls)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]},
                                        name="graph-emulator", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("graph emulator did not start")
            time.sleep(0.01)
        return self

    async def _delayed(self, scope: Any, receive: Any, send: Any) -> None:
        if self.latency and scope["type"] == "http":
            await asyncio.sleep(self.latency)
        await self.app(scope, receive, send)

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(10)
            self._server = None

    def __enter__(self) -> "GraphEmulator":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---------------------------------------------------------------- test controls
    def mailbox(self, user: str) -> Mailbox:
        with self._lock:
            mb = self.mailboxes.get(user.lower())
            if mb is None:
                mb = self.mailboxes[user.lower()] = Mailbox(user)
                for wk in WELL_KNOWN:
                    f = Folder(_new_id("F"), {"inbox": "Inbox", "deleteditems": "Deleted Items",
                                              "sentitems": "Sent Items", "junkemail": "Junk Email"}.get(
                                                  wk, wk.capitalize()), wk)
                    mb.folders[f.id] = f
            return mb

    def deliver(self, user: str, raw: bytes, folder: str = "inbox", received: float | None = None,
                is_read: bool = False) -> str:
        """Put a message into ``user``'s ``folder``; returns its immutable id."""
        with self._lock:
            mb = self.mailbox(user)
            fid = self._resolve_folder(mb, folder)
            if fid is None:
                raise KeyError(folder)
            m = Message(_new_id("I"), _new_id("R"), raw, time.time() if received is None else received, fid,
                        is_read)
            mb.messages[m.immutable_id] = m
            mb.changes.append((next(self._seq), fid, m.immutable_id, "added"))
            return m.immutable_id

    def folder_messages(self, user: str, folder: str) -> list[Message]:
        with self._lock:
            mb = self.mailbox(user)
            fid = self._resolve_folder(mb, folder)
            return [m for m in mb.messages.values() if m.folder == fid] if fid else []

    def throttle(self, count: int, retry_after: int = 1, status: int = 429) -> None:
        """The next ``count`` Graph (not token) requests answer ``status`` (429 or 503) with Retry-After."""
        with self._lock:
            self._throttle, self._retry_after, self._throttle_status = count, retry_after, status

    def expire_tokens(self) -> None:
        """Every access token issued so far is expired from now on (the next Graph call gets 401)."""
        with self._lock:
            self.tokens = {t: (0.0, u) for t, (_, u) in self.tokens.items()}

    def approve_device(self, user_code: str, user: str, deny: bool = False) -> None:
        """The person at the verification URI entered ``user_code`` and signed in as ``user`` (or declined)."""
        with self._lock:
            for d in self.devices.values():
                if d.user_code == user_code:
                    d.state, d.user = ("denied" if deny else "approved"), user
                    return
        raise KeyError(user_code)

    def issue_refresh_token(self, user: str) -> str:
        """A refresh token for ``user`` as if an admin had authorized already."""
        with self._lock:
            rt = _new_id("RT")
            self.refresh_tokens[rt] = user
            return rt

    # ---------------------------------------------------------------- helpers
    @staticmethod
    def _graph_error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
        body = {"error": {"code": code, "message": message,
                          "innerError": {"date": _iso(time.time()), "request-id": str(secrets.token_hex(8)),
                                         "client-request-id": str(secrets.token_hex(8))}}}
        return JSONResponse(body, status_code=status, headers=headers)

    @staticmethod
    def _aad_error(status: int, error: str, aadsts: str, text: str) -> JSONResponse:
        return JSONResponse({"error": error, "error_description": f"{aadsts}: {text}",
                             "error_codes": [int(aadsts[6:])], "timestamp": _iso(time.time())},
                            status_code=status)

    def _issue(self, user: str, with_refresh: bool) -> dict[str, Any]:
        token = _new_id("AT")
        self.tokens[token] = (time.time() + self.token_lifetime, user)
        doc: dict[str, Any] = {"token_type": "Bearer", "expires_in": self.token_lifetime,
                               "ext_expires_in": self.token_lifetime, "access_token": token}
        if with_refresh:
            rt = _new_id("RT")
            self.refresh_tokens[rt] = user
            doc["refresh_token"] = rt
            doc["scope"] = "https://graph.microsoft.com/Mail.ReadWrite offline_access"
        return doc

    def _gate(self, request: Request) -> JSONResponse | None:
        """Throttling and the bearer token: the checks every Graph request passes first."""
        with self._lock:
            self.requests.append((request.method, request.url.path))
            if self._throttle > 0:
                self._throttle -= 1
                self.throttled += 1
                code = "TooManyRequests" if self._throttle_status == 429 else "ServiceNotAvailable"
                return self._graph_error(self._throttle_status, code,
                                         "Application is over its MailboxConcurrency limit.",
                                         {"Retry-After": str(self._retry_after)})
            auth = request.headers.get("authorization", "")
            if not auth.startswith("Bearer "):
                return self._graph_error(401, "InvalidAuthenticationToken", "Access token is empty.",
                                         {"WWW-Authenticate": 'Bearer realm=""'})
            found = self.tokens.get(auth[7:])
            if found is None:
                return self._graph_error(401, "InvalidAuthenticationToken", "IDX14100: JWT is not well formed.")
            if found[0] < time.time():
                return self._graph_error(401, "InvalidAuthenticationToken",
                                         "Lifetime validation failed, the token is expired.",
                                         {"WWW-Authenticate": 'Bearer error="invalid_token"'})
            user = request.path_params.get("user", "")
            if found[1] and user and found[1].lower() != user.lower():
                return self._graph_error(403, "ErrorAccessDenied", "Access is denied. Check credentials and try again.")
            return None

    def _resolve_folder(self, mb: Mailbox, ref: str) -> str | None:
        if ref in mb.folders:
            return ref
        for f in mb.folders.values():
            if f.well_known and f.well_known == ref.lower():
                return f.id
        return None

    def _find(self, mb: Mailbox, mid: str) -> Message | None:
        m = mb.messages.get(mid)
        if m is not None:
            return m
        for m in mb.messages.values():
            if m.rest_id == mid:
                return m
        return None

    @staticmethod
    def _immutable(request: Request) -> bool:
        return 'idtype="immutableid"' in request.headers.get("prefer", "").lower().replace(" ", "")

    @staticmethod
    def _select(request: Request) -> list[str] | None:
        sel = request.query_params.get("$select")
        return [s.strip() for s in sel.split(",")] if sel else None

    @staticmethod
    def _since(request: Request) -> float | None:
        flt = request.query_params.get("$filter", "")
        if not flt:
            return None
        m = re.fullmatch(r"\s*receivedDateTime\s+ge\s+(\S+)\s*", flt)
        if m is None:
            raise ValueError(flt)
        return _parse_iso(m.group(1))

    def _folder_json(self, mb: Mailbox, f: Folder) -> dict[str, Any]:
        n = [m for m in mb.messages.values() if m.folder == f.id]
        return {"id": f.id, "displayName": f.name, "parentFolderId": "", "childFolderCount": 0,
                "totalItemCount": len(n), "unreadItemCount": sum(1 for m in n if not m.is_read)}

    # ---------------------------------------------------------------- identity platform
    async def _token(self, request: Request) -> Response:
        form = dict(await request.form())
        with self._lock:
            self.token_requests.append({k: str(v) for k, v in form.items()})
            if request.path_params["tenant"] not in (self.tenant, "common", "organizations"):
                return self._aad_error(400, "invalid_request", "AADSTS90002", "Tenant not found.")
            grant = form.get("grant_type")
            if form.get("client_id") != self.client_id:
                return self._aad_error(400, "unauthorized_client", "AADSTS700016", "Application not found.")
            if grant == "client_credentials":
                if form.get("client_secret") != self.client_secret:
                    return self._aad_error(401, "invalid_client", "AADSTS7000215", "Invalid client secret provided.")
                if not str(form.get("scope", "")).endswith("/.default"):
                    return self._aad_error(400, "invalid_scope", "AADSTS1002012",
                                           "The provided value for scope is not valid.")
                return JSONResponse(self._issue(self.app_user, with_refresh=False))
            if grant == "refresh_token":
                user = self.refresh_tokens.pop(str(form.get("refresh_token", "")), None)
                if user is None:
                    return self._aad_error(400, "invalid_grant", "AADSTS70000",
                                           "The provided value for the refresh token is not valid.")
                return JSONResponse(self._issue(user, with_refresh=True))
            if grant == DEVICE_GRANT:
                d = self.devices.get(str(form.get("device_code", "")))
                if d is None:
                    return self._aad_error(400, "invalid_grant", "AADSTS70000", "Unknown device code.")
                now = time.time()
                if now > d.expires:
                    return self._aad_error(400, "expired_token", "AADSTS70020", "The device code has expired.")
                if self.slow_down_next > 0:
                    self.slow_down_next -= 1
                    d.last_poll = now
                    return self._aad_error(400, "slow_down", "AADSTS70016", "Polling too fast.")
                if d.state == "denied":
                    return self._aad_error(400, "access_denied", "AADSTS70000", "The user declined.")
                if d.state == "pending":
                    d.last_poll = now
                    return self._aad_error(400, "authorization_pending", "AADSTS70016",
                                           "OAuth 2.0 device flow error. Authorization is pending.")
                del self.devices[d.device_code]
                return JSONResponse(self._issue(d.user, with_refresh="offline_access" in d.scope))
            if grant == "authorization_code":
                found = self.codes.pop(str(form.get("code", "")), None)
                if found is None:
                    return self._aad_error(400, "invalid_grant", "AADSTS70008", "The authorization code is invalid.")
                client, redirect, challenge, user = found
                verifier = str(form.get("code_verifier", ""))
                digest = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).decode().rstrip("=")
                if redirect != form.get("redirect_uri"):
                    return self._aad_error(400, "invalid_grant", "AADSTS50011", "The redirect URI does not match.")
                if digest != challenge:
                    return self._aad_error(400, "invalid_grant", "AADSTS501481",
                                           "The Code_Verifier does not match the code_challenge.")
                return JSONResponse(self._issue(user, with_refresh=True))
            return self._aad_error(400, "unsupported_grant_type", "AADSTS70003", "The grant type is not supported.")

    async def _devicecode(self, request: Request) -> Response:
        form = dict(await request.form())
        with self._lock:
            if form.get("client_id") != self.client_id:
                return self._aad_error(400, "unauthorized_client", "AADSTS700016", "Application not found.")
            d = DeviceCode(_new_id("DC"), "".join(secrets.choice("ABCDEFGHJKLMNPQRSTUVWXYZ") for _ in range(8)),
                           str(form["client_id"]), str(form.get("scope", "")), time.time() + 900, 1)
            self.devices[d.device_code] = d
            uri = f"{self.base}/devicelogin"
            return JSONResponse({"device_code": d.device_code, "user_code": d.user_code, "verification_uri": uri,
                                 "expires_in": 900, "interval": d.interval,
                                 "message": f"To sign in, use a web browser to open the page {uri} and enter the"
                                            f" code {d.user_code} to authenticate."})

    async def _authorize(self, request: Request) -> Response:
        """The signed-in "user" (``login_hint``, else ``app_user``) consents at once: 302 to ``redirect_uri``."""
        q = request.query_params
        redirect = q.get("redirect_uri", "")
        if q.get("client_id") != self.client_id or not redirect.startswith("http://127.0.0.1:"):
            return self._aad_error(400, "invalid_request", "AADSTS50011", "Bad client or redirect URI.")
        if q.get("response_type") != "code" or q.get("code_challenge_method") != "S256" or not q.get("code_challenge"):
            return self._aad_error(400, "invalid_request", "AADSTS900144", "PKCE (S256) is required.")
        if self.deny_authorize:
            q_err = {"error": "access_denied", "state": q.get("state", ""),
                     "error_description": "AADSTS65004: User declined to consent."}
            return RedirectResponse(f"{redirect}?{urlencode(q_err)}", 302)
        code = _new_id("AC")
        with self._lock:
            self.codes[code] = (q["client_id"], redirect, q["code_challenge"], q.get("login_hint") or self.app_user)
        return RedirectResponse(f"{redirect}?{urlencode({'code': code, 'state': q.get('state', '')})}", 302)

    async def _introspect(self, request: Request) -> Response:
        """RFC 7662 for Dovecot's oauth2 passdb: ``{"active": true, "email": user}`` for a live token."""
        if request.method == "POST":
            token = str((await request.form()).get("token", ""))
        else:
            token = request.query_params.get("access_token", "") or request.query_params.get("token", "")
        with self._lock:
            found = self.tokens.get(token)
        if found is None or found[0] < time.time():
            return JSONResponse({"active": False})
        return JSONResponse({"active": True, "email": found[1], "username": found[1],
                             "exp": int(found[0]), "client_id": self.client_id})

    # ---------------------------------------------------------------- Graph mail
    async def _folders(self, request: Request) -> Response:
        if (err := self._gate(request)) is not None:
            return err
        mb = self.mailbox(request.path_params["user"])
        with self._lock:
            if request.method == "POST":
                name = str((await request.json()).get("displayName", "")).strip()
                if not name:
                    return self._graph_error(400, "ErrorInvalidRequest", "displayName is required.")
                if any(f.name.lower() == name.lower() for f in mb.folders.values()):
                    return self._graph_error(409, "ErrorFolderExists",
                                             "A folder with the specified name already exists.")
                f = Folder(_new_id("F"), name)
                mb.folders[f.id] = f
                return JSONResponse(self._folder_json(mb, f), status_code=201)
            flt = request.query_params.get("$filter", "")
            folders = list(mb.folders.values())
            if flt:
                m = re.fullmatch(r"\s*displayName\s+eq\s+'((?:[^']|'')*)'\s*", flt)
                if m is None:
                    return self._graph_error(400, "ErrorInvalidUrlQueryFilter", "The query filter is invalid.")
                want = m.group(1).replace("''", "'")
                folders = [f for f in folders if f.name.lower() == want.lower()]
            return JSONResponse({"value": [self._folder_json(mb, f) for f in folders]})

    async def _folder(self, request: Request) -> Response:
        if (err := self._gate(request)) is not None:
            return err
        mb = self.mailbox(request.path_params["user"])
        with self._lock:
            fid = self._resolve_folder(mb, request.path_params["folder"])
            if fid is None:
                return self._graph_error(404, "ErrorItemNotFound", "The specified object was not found in the store.")
            return JSONResponse(self._folder_json(mb, mb.folders[fid]))

    async def _list(self, request: Request) -> Response:
        if (err := self._gate(request)) is not None:
            return err
        mb = self.mailbox(request.path_params["user"])
        try:
            since = self._since(request)
            top = min(int(request.query_params.get("$top", "10")), 1000)
            skip = int(request.query_params.get("$skip", "0"))
        except ValueError:
            return self._graph_error(400, "ErrorInvalidUrlQuery", "The query parameter is invalid.")
        with self._lock:
            fid = self._resolve_folder(mb, request.path_params["folder"])
            if fid is None:
                return self._graph_error(404, "ErrorItemNotFound", "The specified object was not found in the store.")
            msgs = sorted((m for m in mb.messages.values() if m.folder == fid and (since is None or m.received >= since)),
                          key=lambda m: (m.received, m.immutable_id))
            page = msgs[skip:skip + top]
            body: dict[str, Any] = {"value": [m.json(self._immutable(request), self._select(request)) for m in page]}
            if skip + top < len(msgs):
                q = dict(request.query_params)
                q["$skip"] = str(skip + top)
                body["@odata.nextLink"] = f"{self.base}{request.url.path}?{urlencode(q)}"
            return JSONResponse(body)

    async def _delta(self, request: Request) -> Response:
        """Delta over the folder's change log: the deltatoken is the last change seen; pages by $skiptoken."""
        if (err := self._gate(request)) is not None:
            return err
        mb = self.mailbox(request.path_params["user"])
        q = request.query_params
        try:
            since = self._since(request)
            after = int(q.get("$deltatoken", "0"))
            skip = int(q.get("$skiptoken", "0"))
            size = int(re.search(r"odata\.maxpagesize=(\d+)", request.headers.get("prefer", "") + "odata.maxpagesize=10"
                                 ).group(1))
        except (ValueError, AttributeError):
            return self._graph_error(400, "ErrorInvalidUrlQuery", "The query parameter is invalid.")
        with self._lock:
            fid = self._resolve_folder(mb, request.path_params["folder"])
            if fid is None:
                return self._graph_error(404, "ErrorItemNotFound", "The specified object was not found in the store.")
            immutable = self._immutable(request)
            last = mb.changes[-1][0] if mb.changes else 0
            upto = int(q.get("upto", str(last)))  # pages of one round see the same snapshot
            latest: dict[str, str] = {}
            for seq, f, mid, kind in mb.changes:
                if after < seq <= upto and f == fid:
                    latest[mid] = kind
            items: list[dict[str, Any]] = []
            for mid, kind in latest.items():
                m = mb.messages[mid]
                if kind == "added" and m.folder == fid:
                    if since is None or m.received >= since:
                        items.append(m.json(immutable, self._select(request)))
                elif after:  # a first round does not list what left before it
                    items.append({"id": m.immutable_id if immutable else m.rest_id, "@removed": {"reason": "deleted"}})
            page = items[skip:skip + size]
            keep = {k: v for k, v in q.items() if k not in ("$skiptoken", "upto", "$deltatoken")}
            path = request.url.path
            body: dict[str, Any] = {"value": page}
            if skip + size < len(items):
                body["@odata.nextLink"] = (f"{self.base}{path}?"
                                           f"{urlencode({**keep, '$deltatoken': after, '$skiptoken': skip + size, 'upto': upto})}")
            else:
                body["@odata.deltaLink"] = f"{self.base}{path}?{urlencode({**keep, '$deltatoken': upto})}"
            return JSONResponse(body)

    async def _message(self, request: Request) -> Response:
        if (err := self._gate(request)) is not None:
            return err
        mb = self.mailbox(request.path_params["user"])
        with self._lock:
            m = self._find(mb, request.path_params["mid"])
            if m is None:
                return self._graph_error(404, "ErrorItemNotFound", "The specified object was not found in the store.")
            if request.method == "PATCH":
                patch = await request.json()
                if "isRead" in patch:
                    m.is_read = bool(patch["isRead"])
            return JSONResponse(m.json(self._immutable(request), self._select(request)))

    async def _value(self, request: Request) -> Response:
        if (err := self._gate(request)) is not None:
            return err
        mb = self.mailbox(request.path_params["user"])
        with self._lock:
            m = self._find(mb, request.path_params["mid"])
            if m is None:
                return self._graph_error(404, "ErrorItemNotFound", "The specified object was not found in the store.")
            if m.immutable_id in self.fail_values:
                return self._graph_error(500, "ErrorInternalServerError", "An internal server error occurred.")
            return Response(m.raw, media_type="text/plain")

    async def _move(self, request: Request) -> Response:
        if (err := self._gate(request)) is not None:
            return err
        mb = self.mailbox(request.path_params["user"])
        if self.fail_moves:
            return self._graph_error(500, "ErrorInternalServerError", "An internal server error occurred.")
        try:
            dest = str((await request.json())["destinationId"])
        except (ValueError, KeyError, TypeError):
            return self._graph_error(400, "ErrorInvalidRequest", "destinationId is required.")
        with self._lock:
            m = self._find(mb, request.path_params["mid"])
            if m is None:
                return self._graph_error(404, "ErrorItemNotFound", "The specified object was not found in the store.")
            fid = self._resolve_folder(mb, dest)
            if fid is None:
                return self._graph_error(404, "ErrorItemNotFound", "The destination folder was not found.")
            if fid != m.folder:
                mb.changes.append((next(self._seq), m.folder, m.immutable_id, "removed"))
                m.folder = fid
                m.rest_id = _new_id("R")  # a move makes a new item: its REST id changes, its immutable id does not
                mb.changes.append((next(self._seq), fid, m.immutable_id, "added"))
            self.moves += 1
            return JSONResponse(m.json(self._immutable(request), None), status_code=201)


__all__ = ["GraphEmulator", "Message", "DEVICE_GRANT"]
