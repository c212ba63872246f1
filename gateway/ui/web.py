"""What every UI page module uses (H10's admin pages too): templates, the signed-in user, CSRF, the
security headers, the navigation.

    from gateway.ui.web import NavItem, NAV, Page, page, render, router_for

    router = router_for()                       # an APIRouter whose unsafe methods check the CSRF token
    NAV.append(NavItem("Quarantine", "/ui/admin/quarantine", "admin"))

    @router.get("/ui/admin/quarantine")
    async def quarantine(request: Request, p: Page = Depends(page("admin"))) -> HTMLResponse:
        return render(request, "admin/quarantine.html", p, rows=...)

``p.who`` is the user as the API's :class:`~gateway.http.deps.Principal` (role and queue scope), so a page
calls the API's own functions and store methods with the same rules. Writes audit as ``p.who`` (the
user's address); a form carries ``{{ csrf_field() }}`` and an htmx request sends the token as
``X-CSRF-Token`` (set once on <body> by the base layout).
"""
from __future__ import annotations

import hmac
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Coroutine
from urllib.parse import quote, urlsplit

import jinja2
from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from itsdangerous import BadSignature, TimestampSigner
from markupsafe import Markup

from gateway.http.deps import Principal, Problem, client_address, services
from gateway.ui import users

HERE = Path(__file__).resolve().parent
SESSION_COOKIE = "tmx_session"
PRE_COOKIE = "tmx_signin"            # the sign-in form's CSRF pair (no session yet)
COOKIE_PATH = "/ui/"
TOUCH_EVERY = 60.0                   # a session's last_seen is written at most this often
UNSAFE = frozenset({"POST", "PUT", "PATCH", "DELETE"})

# The whole UI's policy: nothing inline (no script, no style attribute), nothing from elsewhere, framed
# by nobody; the customer-HTML frame is the one frame and gets its own stricter policy (routes_frame).
CSP = ("default-src 'self'; frame-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; "
       "form-action 'self'; frame-ancestors 'none'")
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",                   # for browsers without frame-ancestors
    "Referrer-Policy": "same-origin",            # a ticket URL never leaves in a Referer
    "Cache-Control": "no-store",                 # a shared computer's back button shows nothing after sign-out
    "Cross-Origin-Opener-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=(), payment=()",
}


@dataclass(frozen=True)
class NavItem:
    """One entry of the main navigation, shown to users of at least ``role``."""

    label: str
    href: str
    role: str = "viewer"
    match: str = ""                   # path prefix that marks it current (default: href)


# The main navigation, in order. Page modules append their entries at import (H10: the admin pages).
NAV: list[NavItem] = [NavItem("Tickets", "/ui/tickets", "viewer", "/ui/ticket")]


@dataclass
class Page:
    """The signed-in user as a page sees it."""

    session: users.Session
    who: Principal
    csrf: str
    secure: bool
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def user(self) -> users.User:
        return self.session.user


class SignInNeeded(Exception):
    """No live session: answered with a redirect to the sign-in page (or HX-Redirect for htmx)."""

    def __init__(self, next_url: str) -> None:
        super().__init__(next_url)
        self.next_url = next_url


# -- templates ---------------------------------------------------------------------------------------
_env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(HERE / "templates")),
                          autoescape=jinja2.select_autoescape(default=True, default_for_string=True),
                          trim_blocks=True, lstrip_blocks=True, undefined=jinja2.StrictUndefined)
_STATIC_VERSION = secrets.token_hex(4)  # cache-busting per process start (files are served no-store anyway)


def env() -> jinja2.Environment:
    return _env


def static_url(name: str) -> str:
    return f"/ui/static/{name}?v={_STATIC_VERSION}"


def render(request: Request, template: str, p: Page | None, status_code: int = 200,
           headers: dict[str, str] | None = None, **ctx: Any) -> HTMLResponse:
    """A page (or an htmx fragment) with the security headers. ``p`` None: signed-out pages."""
    csrf = p.csrf if p is not None else ctx.pop("csrf", "")
    path = request.url.path
    nav = [] if p is None else [
        {"label": n.label, "href": n.href, "current": path.startswith(n.match or n.href)}
        for n in NAV if p.who.at_least(n.role)]
    html = _env.get_template(template).render(
        request=request, p=p, user=p.user if p is not None else None, nav=nav, csrf=csrf,
        csrf_field=lambda: Markup('<input type="hidden" name="csrf" value="{}">').format(csrf),
        static=static_url, htmx=bool(request.headers.get("hx-request")), **ctx)
    return HTMLResponse(html, status_code=status_code, headers={**SECURITY_HEADERS, **(headers or {})})


# -- sessions ----------------------------------------------------------------------------------------
async def signer(request: Request, salt: str) -> TimestampSigner:
    state = request.app.state
    key = getattr(state, "ui_cookie_key", None)
    if key is None:
        key = state.ui_cookie_key = await users.cookie_key(services(request).store)
    return TimestampSigner(key, salt=salt)


def is_secure(request: Request) -> bool:
    """https to the browser: the request came over https (a trusted proxy's X-Forwarded-Proto counts) or
    the configured public URL is https."""
    return request.url.scheme == "https" or services(request).cfg.http.public_url.startswith("https:")


def set_cookie(response: Response, request: Request, name: str, value: str, max_age: int | None) -> None:
    response.set_cookie(name, value, max_age=max_age, path=COOKIE_PATH, secure=is_secure(request), httponly=True,
                        samesite="lax")


async def current_session(request: Request) -> users.Session | None:
    cached = getattr(request.state, "ui_session", False)
    if cached is not False:
        return cached
    request.state.ui_session = None
    raw = request.cookies.get(SESSION_COOKIE, "")
    if not raw or len(raw) > 200:
        return None
    cfg = services(request).cfg.ui
    try:
        sid = (await signer(request, "session")).unsign(raw, max_age=int(cfg.session_lifetime)).decode()
    except BadSignature:
        return None
    svc = services(request)
    s = await users.session_get(svc.store, sid, cfg.session_idle)
    if s is not None and time.time() - s.last_seen >= TOUCH_EVERY:
        await users.session_touch(svc.store, s.key, time.time())
    request.state.ui_session = s
    return s


def principal_of(user: users.User) -> Principal:
    """The user as the API sees a caller: the same role and queue rules as a token."""
    return Principal(name=user.email, role=user.role, queues=user.queues)


def page(min_role: str = "viewer") -> Callable[..., Coroutine[Any, Any, Page]]:
    """A dependency: the signed-in user (else a redirect to sign in), with at least ``min_role`` (else 403)."""

    async def dependency(request: Request) -> Page:
        s = await current_session(request)
        if s is None:
            nxt = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            raise SignInNeeded(nxt if request.method == "GET" else "/ui/")
        who = principal_of(s.user)
        request.state.principal = who
        p = Page(session=s, who=who, csrf=s.csrf, secure=is_secure(request))
        if request.method in UNSAFE:
            await check_csrf(request, s.csrf)
        if not who.at_least(min_role):
            raise Problem(403, "Forbidden", f"this page needs the {min_role} role; you are {who.role}")
        return p

    dependency.__name__ = f"page_{min_role}"
    return dependency


async def check_csrf(request: Request, expected: str) -> None:
    """Every unsafe request: the token from the form field ``csrf`` or the ``X-CSRF-Token`` header (htmx)
    must equal the session's; and a browser's Origin, when sent, must be this site."""
    origin = request.headers.get("origin")
    if origin is not None and origin != "null":
        host = request.headers.get("host", "")
        if urlsplit(origin).netloc != host:
            raise Problem(403, "Forbidden", "cross-site request refused (Origin is not this site)")
    elif origin == "null":
        raise Problem(403, "Forbidden", "request from an opaque origin refused")
    got = request.headers.get("x-csrf-token", "")
    if not got and request.headers.get("content-type", "").startswith(("application/x-www-form-urlencoded",
                                                                       "multipart/form-data")):
        form = await request.form()
        got = str(form.get("csrf", ""))
    if not got or not hmac.compare_digest(got.encode(), expected.encode()):
        raise Problem(403, "Forbidden", "the form's CSRF token is missing or stale: reload the page and try again")


def safe_next(url: str) -> str:
    """Where to go after signing in: a path of ours only (never another site, never //host)."""
    if not url.startswith("/ui/") or url.startswith("//") or "\\" in url or any(ord(c) < 32 for c in url):
        return "/ui/tickets"
    return url


def signin_redirect(request: Request, next_url: str) -> Response:
    target = "/ui/signin?next=" + quote(next_url, safe="/")
    if request.headers.get("hx-request"):
        return Response(status_code=204, headers={"HX-Redirect": target, **SECURITY_HEADERS})
    return RedirectResponse(target, status_code=303, headers=SECURITY_HEADERS)


def router_for() -> APIRouter:
    """A router for UI pages: out of the OpenAPI document (it is not the API)."""
    return APIRouter(include_in_schema=False)


__all__ = ["NAV", "NavItem", "Page", "page", "render", "router_for", "principal_of", "check_csrf", "client_address",
           "SignInNeeded", "signin_redirect", "SECURITY_HEADERS", "CSP", "Depends"]
