"""Getting the first refresh token on a headless server: the two grants a person completes elsewhere.

* **Device authorization grant** (RFC 8628): POST the device endpoint, show the person the
  verification URI and the user code, poll the token endpoint every ``interval`` seconds (5 when the
  server names none), 5 s slower after each ``slow_down`` (section 3.5), until the person approved
  (tokens), declined (``access_denied``) or the code expired (``expired_token``, or ``expires_in``).
* **Authorization code with PKCE and a loopback redirect** (RFC 7636, RFC 8252 section 7.3): a one-shot
  HTTP listener on 127.0.0.1 and a free port (the IP literal, not "localhost": section 8.3), the person
  opens the printed URL in a browser that can reach that port (ssh -L), the code comes back with our
  ``state`` and is exchanged with the S256 verifier.

Both return the token endpoint's JSON answer; the caller stores the refresh token (``write_secret``).
Their steps are functions of their own, which the web UI's "Authorise" buttons call one request at a
time (gateway/ui/admin_oauth.py, which keeps the pending state in the store between requests):
:func:`device_start` and :func:`device_poll` (one token request), :func:`authorization_url`,
:func:`redirect_error` and :func:`exchange_code`.
Refusals are reported by their RFC 6749 ``error`` code only, checked by :func:`error_code`, as the
token client does. The loopback listener is the standard library's http.server in a thread (one
request at a time, bounded by ``timeout``): it answers one GET and is gone.
"""
from __future__ import annotations

import asyncio
import base64
import hashlib
import http.server
import json
import secrets
import ssl
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable
from urllib.parse import parse_qs, urlencode, urlsplit

from gateway.runtime.oauth import HttpResponse, OAuthError, TokenConfig, error_code, http_post_form

DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
GOOGLE_TOKEN = "https://oauth2.googleapis.com/token"

PostFn = Callable[[str, dict[str, str], float], Awaitable[HttpResponse]]


@dataclass(frozen=True)
class Endpoints:
    device_url: str | None
    authorize_url: str | None


def endpoints_for(token_url: str) -> Endpoints:
    """The device and authorization endpoints that go with a well-known token endpoint: Microsoft's
    identity platform (``…/{tenant}/oauth2/v2.0/token``, national clouds too) and Google's."""
    if token_url.rstrip("/").endswith("/oauth2/v2.0/token"):
        base = token_url.rstrip("/")[: -len("token")]
        return Endpoints(base + "devicecode", base + "authorize")
    if token_url.rstrip("/") == GOOGLE_TOKEN:
        return Endpoints("https://oauth2.googleapis.com/device/code", "https://accounts.google.com/o/oauth2/v2/auth")
    return Endpoints(None, None)


def delegated_scope(scope: str, token_url: str) -> str:
    """The scope to ask a person for: Microsoft gives a refresh token only with ``offline_access``."""
    if token_url.rstrip("/").endswith("/oauth2/v2.0/token") and "offline_access" not in scope.split():
        return (scope + " offline_access").strip()
    return scope


def _ssl(cfg: TokenConfig) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=cfg.ca_file)
    if not cfg.verify_cert:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def _poster(cfg: TokenConfig, post: PostFn | None) -> PostFn:
    if post is not None:
        return post
    ctx = _ssl(cfg)

    async def default(url: str, fields: dict[str, str], timeout: float) -> HttpResponse:
        return await http_post_form(url, fields, timeout, ctx)
    return default


def _doc(resp: HttpResponse) -> dict[str, Any] | None:
    try:
        doc = json.loads(resp.body.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    return doc if isinstance(doc, dict) else None


async def _form(post: PostFn, cfg: TokenConfig, url: str, fields: dict[str, str]) -> tuple[int, dict[str, Any] | None]:
    try:
        resp = await post(url, fields, cfg.timeout)
    except asyncio.TimeoutError:
        raise OAuthError(f"{_where(url)} timed out") from None
    except (OSError, ssl.SSLError) as exc:
        raise OAuthError(f"{_where(url)} unreachable: {type(exc).__name__}: {getattr(exc, 'strerror', None) or exc}") from None
    return resp.status, _doc(resp)


def _refusal(url: str, status: int, doc: dict[str, Any] | None, cfg: TokenConfig) -> OAuthError:
    code = error_code(doc.get("error") if doc else None, (cfg.client_secret, cfg.client_id))
    return OAuthError(f"{_where(url)} answered HTTP {status} (error={code})")


def _client_fields(cfg: TokenConfig) -> dict[str, str]:
    fields = {"client_id": cfg.client_id}
    if cfg.client_secret:   # a confidential client (Google's "TVs and limited input" clients have one too)
        fields["client_secret"] = cfg.client_secret
    return fields


@dataclass(frozen=True)
class DeviceCode:
    """The device endpoint's answer: what the person is shown, and what polling needs."""

    device_code: str
    user_code: str
    verification_uri: str
    verification_uri_complete: str
    interval: float
    expires_in: float       # 0: the server named none


async def device_start(cfg: TokenConfig, device_url: str, scope: str, *, post: PostFn | None = None) -> DeviceCode:
    """RFC 8628 3.1-3.2: one POST to the device endpoint (the CLI and the web UI start the grant here)."""
    post = _poster(cfg, post)
    fields = {"client_id": cfg.client_id, "scope": scope}
    if cfg.client_secret and cfg.token_url.rstrip("/") == GOOGLE_TOKEN:
        fields["client_secret"] = cfg.client_secret
    status, doc = await _form(post, cfg, device_url, fields)
    if status != 200 or not doc or not isinstance(doc.get("device_code"), str) or not isinstance(doc.get("user_code"), str):
        raise _refusal(device_url, status, doc, cfg)
    uri = doc.get("verification_uri") or doc.get("verification_url")   # Google spells it _url
    if not isinstance(uri, str):
        raise OAuthError(f"{_where(device_url)}: answer without verification_uri")
    complete = doc.get("verification_uri_complete")
    return DeviceCode(doc["device_code"], doc["user_code"], uri, complete if isinstance(complete, str) else "",
                      _number(doc.get("interval"), 5.0), _number(doc.get("expires_in"), 0.0))


PENDING, SLOW_DOWN = "pending", "slow_down"


async def device_poll(cfg: TokenConfig, device_code: str, *, post: PostFn | None = None) -> dict[str, Any] | str:
    """RFC 8628 3.4-3.5: ONE token request. The token endpoint's answer once approved; ``PENDING`` or
    ``SLOW_DOWN`` (the caller adds 5 s to its interval, for this and every later request) while waiting;
    :class:`OAuthError` when declined (``access_denied``), expired (``expired_token``) or refused."""
    post = _poster(cfg, post)
    fields = {**_client_fields(cfg), "grant_type": DEVICE_GRANT, "device_code": device_code}
    status, ans = await _form(post, cfg, cfg.token_url, fields)
    if status == 200 and ans and isinstance(ans.get("access_token"), str):
        return ans
    code = ans.get("error") if ans else None
    if code == "authorization_pending":
        return PENDING
    if code == "slow_down":
        return SLOW_DOWN
    if code == "access_denied":
        raise OAuthError("the request was declined at the verification page (access_denied)")
    if code == "expired_token":
        raise OAuthError("the device code expired before it was approved (expired_token); start again")
    raise _refusal(cfg.token_url, status, ans, cfg)


async def device_grant(cfg: TokenConfig, device_url: str, scope: str, prompt: Callable[[str], None], *,
                       post: PostFn | None = None, sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                       clock: Callable[[], float] = time.monotonic, max_wait: float = 900.0) -> dict[str, Any]:
    """RFC 8628: the token endpoint's answer once the person approved; ``prompt`` shows them the code."""
    post = _poster(cfg, post)
    dc = await device_start(cfg, device_url, scope, post=post)
    prompt(f"Open {dc.verification_uri} in a browser and enter the code {dc.user_code}"
           + (f"\n(or open {dc.verification_uri_complete})" if dc.verification_uri_complete else ""))
    interval = dc.interval
    deadline = clock() + (min(dc.expires_in, max_wait) if dc.expires_in else max_wait)
    while True:
        if clock() + interval > deadline:
            raise OAuthError("the device code expired before it was approved; run the command again")
        await sleep(interval)
        ans = await device_poll(cfg, dc.device_code, post=post)
        if ans == PENDING:
            continue
        if ans == SLOW_DOWN:
            interval += 5.0   # RFC 8628 3.5: for this and every later request
            continue
        assert isinstance(ans, dict)
        return ans


def pkce_pair() -> tuple[str, str]:
    """(code_verifier, S256 code_challenge) per RFC 7636 4.1/4.2: 64 random bytes, base64url, 86 chars."""
    verifier = base64.urlsafe_b64encode(secrets.token_bytes(64)).decode().rstrip("=")
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode("ascii")).digest()).decode().rstrip("=")
    return verifier, challenge


class _Redirect(http.server.BaseHTTPRequestHandler):
    """Takes the one redirect: the query goes to ``server.result``; a favicon or other path gets 404."""

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        u = urlsplit(self.path)
        if u.path != "/":
            self.send_error(404)
            return
        self.server.result = {k: v[0] for k, v in parse_qs(u.query).items()}  # type: ignore[attr-defined]
        body = (b"<!doctype html><title>ticketmx</title><p>Done: you can close this window and go back to"
                b" the terminal.</p>")
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # the query holds the code: never logged
        return


def authorization_url(cfg: TokenConfig, authorize_url: str, redirect_uri: str, scope: str, state: str,
                      challenge: str, login_hint: str = "") -> str:
    """The URL a browser opens for the authorization code grant with PKCE S256 (RFC 6749 4.1.1, RFC 7636
    4.3): the CLI's loopback redirect and the web UI's callback both start here."""
    q = {"client_id": cfg.client_id, "response_type": "code", "redirect_uri": redirect_uri, "scope": scope,
         "state": state, "code_challenge": challenge, "code_challenge_method": "S256"}
    if login_hint:
        q["login_hint"] = login_hint
    if urlsplit(authorize_url).hostname == "accounts.google.com":
        q.update(access_type="offline", prompt="consent")   # Google sends a refresh token only then
    return f"{authorize_url}{'&' if '?' in authorize_url else '?'}{urlencode(q)}"


def redirect_error(params: dict[str, str]) -> OAuthError | None:
    """The redirect's own refusal (RFC 6749 4.1.2.1: ``error=access_denied`` …), or a redirect without a code."""
    if "error" in params:
        return OAuthError(f"the authorization was refused (error={error_code(params.get('error'))})")
    if not params.get("code"):
        return OAuthError("the redirect carried no code")
    return None


async def exchange_code(cfg: TokenConfig, code: str, redirect_uri: str, verifier: str, *,
                        post: PostFn | None = None) -> dict[str, Any]:
    """RFC 6749 4.1.3 with the PKCE verifier: the token endpoint's answer for the code the browser brought."""
    post = _poster(cfg, post)
    fields = {**_client_fields(cfg), "grant_type": "authorization_code", "code": code,
              "redirect_uri": redirect_uri, "code_verifier": verifier}
    status, ans = await _form(post, cfg, cfg.token_url, fields)
    if status != 200 or not ans or not isinstance(ans.get("access_token"), str):
        raise _refusal(cfg.token_url, status, ans, cfg)
    return ans


async def loopback_grant(cfg: TokenConfig, authorize_url: str, scope: str, prompt: Callable[[str], None], *,
                         post: PostFn | None = None, timeout: float = 300.0, login_hint: str = "",
                         port: int = 0) -> dict[str, Any]:
    """RFC 8252 loopback redirect with PKCE: the token endpoint's answer for the code the browser brought."""
    verifier, challenge = pkce_pair()
    state = secrets.token_urlsafe(24)
    server = http.server.HTTPServer(("127.0.0.1", port), _Redirect)
    server.timeout = 1.0
    server.result = None  # type: ignore[attr-defined]
    redirect = f"http://127.0.0.1:{server.server_address[1]}/"
    url = authorization_url(cfg, authorize_url, redirect, scope, state, challenge, login_hint)
    prompt(f"Open this URL in a browser (the redirect goes to {redirect} on this machine: forward the port"
           f" with ssh -L {server.server_address[1]}:127.0.0.1:{server.server_address[1]} if the browser is"
           f" elsewhere):\n{url}")
    deadline = time.monotonic() + timeout
    try:
        while server.result is None:  # type: ignore[attr-defined]
            if time.monotonic() > deadline:
                raise OAuthError(f"no redirect came back within {timeout:.0f}s")
            await asyncio.to_thread(server.handle_request)
            res = server.result  # type: ignore[attr-defined]
            if res is not None and res.get("state") != state:
                server.result = None  # type: ignore[attr-defined]   # not ours (or forged): keep waiting
    finally:
        server.server_close()
    res = server.result  # type: ignore[attr-defined]
    if (refused := redirect_error(res)) is not None:
        raise refused
    return await exchange_code(cfg, res["code"], redirect, verifier, post=post)


def _number(value: object, default: float) -> float:
    try:
        n = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return default
    return n if n > 0 else default


def _where(url: str) -> str:
    u = urlsplit(url)
    return f"{u.scheme}://{u.netloc}{u.path}"


__all__ = ["device_grant", "loopback_grant", "endpoints_for", "delegated_scope", "pkce_pair", "Endpoints",
           "DEVICE_GRANT", "DeviceCode", "device_start", "device_poll", "PENDING", "SLOW_DOWN", "authorization_url",
           "redirect_error", "exchange_code"]
