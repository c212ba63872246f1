"""The web UI's entry point: ``install(app)`` (called by gateway/http/server.py for each of its MOUNTS)
adds the static files, sign-in and sign-out, the agent pages (gateway/ui/agent.py), the admin pages
when present (gateway/ui/admin*.py, each with ``router``), and HTML error pages for /ui/ paths.
"""
from __future__ import annotations

import asyncio
import hmac
import importlib
import pkgutil
import secrets
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from itsdangerous import BadSignature

from gateway.http.deps import Problem, client_address, services
from gateway.ui import signin_limits, users
from gateway.ui.metrics import UiMetrics
from gateway.ui.web import (HERE, PRE_COOKIE, SECURITY_HEADERS, SESSION_COOKIE, COOKIE_PATH, Page, SignInNeeded,
                            current_session, is_secure, page, render, router_for, safe_next, set_cookie,
                            signer, signin_redirect)
from fastapi import Depends

router = router_for()


class _StaticFiles(StaticFiles):
    """Our own files (htmx, the CSS) with the UI's headers; never a directory listing."""

    async def get_response(self, path: str, scope: Any) -> Response:
        response = await super().get_response(path, scope)
        response.headers.update({"X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache",
                                 "Content-Security-Policy": SECURITY_HEADERS["Content-Security-Policy"]})
        return response


def install(app: FastAPI) -> None:
    """Mount the UI on the API's app (unless ``[ui] enabled = false``)."""
    svc = app.state.services
    if not svc.cfg.ui.enabled:
        return
    from gateway.ui import agent, frame
    app.include_router(router)
    app.include_router(agent.router)
    app.include_router(frame.router)
    for mod in pkgutil.iter_modules([str(HERE)]):
        if mod.name.startswith("admin"):
            module = importlib.import_module(f"gateway.ui.{mod.name}")
            if hasattr(module, "router"):
                app.include_router(module.router)
    app.mount("/ui/static", _StaticFiles(directory=str(HERE / "static")), name="ui-static")
    app.state.problem_renderers = (("/ui/", _problem_page),)
    app.add_exception_handler(SignInNeeded, _sign_in_needed)  # type: ignore[arg-type]
    app.add_middleware(UiMetrics, metrics=svc.metrics, mounts=("/ui/static",))


async def _sign_in_needed(request: Request, exc: SignInNeeded) -> Response:
    return signin_redirect(request, exc.next_url)


def _problem_page(request: Request, p: Problem) -> Response:
    """An error under /ui/ as a page (a fragment for htmx) rather than problem+json."""
    s = getattr(request.state, "ui_session", None)
    ctx_page = None
    if s:
        from gateway.ui.web import principal_of
        ctx_page = Page(session=s, who=principal_of(s.user), csrf=s.csrf, secure=False)
    tpl = "_error_fragment.html" if request.headers.get("hx-request") else "error.html"
    headers = dict(p.headers)
    if request.headers.get("hx-request"):
        headers.update({"HX-Retarget": "#flash", "HX-Reswap": "innerHTML"})
    return render(request, tpl, ctx_page, status_code=p.status, headers=headers, problem=p)


# -- sign-in -----------------------------------------------------------------------------------------
async def _signin_form(request: Request, next_url: str, error: str = "", email: str = "",
                       status: int = 200) -> Response:
    token = secrets.token_urlsafe(32)
    resp = render(request, "signin.html", None, status_code=status, csrf=token, next_url=next_url, error=error,
                  email=email)
    set_cookie(resp, request, PRE_COOKIE, (await signer(request, "signin")).sign(token).decode(), max_age=3600)
    return resp


@router.get("/")
async def root() -> Response:
    return RedirectResponse("/ui/", status_code=307)


@router.get("/ui")
@router.get("/ui/")
async def home(request: Request) -> Response:
    s = await current_session(request)
    return RedirectResponse("/ui/tickets" if s else "/ui/signin", status_code=303, headers=SECURITY_HEADERS)


@router.get("/ui/signin")
async def signin_page(request: Request, next: str = "/ui/tickets") -> Response:
    if await current_session(request) is not None:
        return RedirectResponse(safe_next(next), status_code=303, headers=SECURITY_HEADERS)
    return await _signin_form(request, safe_next(next))


@router.post("/ui/signin")
async def signin(request: Request) -> Response:
    form = await request.form()
    email = str(form.get("email", "")).strip().lower()[:320]
    password = str(form.get("password", ""))
    next_url = safe_next(str(form.get("next", "/ui/tickets")))
    # CSRF before an account exists: the form's token must match the signed one in the pre-sign-in cookie
    # (a forged cross-site form cannot read or set it), and a browser's Origin must be ours.
    origin = request.headers.get("origin")
    host = request.headers.get("host", "")
    try:
        expected = (await signer(request, "signin")).unsign(request.cookies.get(PRE_COOKIE, ""),
                                                            max_age=3600).decode()
    except BadSignature:
        expected = ""
    got = str(form.get("csrf", ""))
    if (origin is not None and origin.split("://", 1)[-1] != host) or not expected or \
            not hmac.compare_digest(got.encode(), expected.encode()):
        _signin_counted(request, "expired_form")
        return await _signin_form(request, next_url, "The sign-in form had expired; please sign in again.",
                                  email, status=403)
    svc = services(request)
    per_account, per_ip = svc.cfg.ui.signin_rate_per_account, svc.cfg.ui.signin_rate_per_ip
    client = client_address(request)
    refused = await signin_limits.check(svc.store, per_account, per_ip, email, client)
    if refused is not None:
        wait = signin_limits.minutes(refused.retry_after)
        resp = await _signin_form(request, next_url, f"Too many failed sign-ins for {refused.what}; try again in "
                                  f"{wait} minute{'s' if wait != 1 else ''}.", email, status=429)
        resp.headers["Retry-After"] = str(wait * 60)
        _signin_counted(request, "rate_limited")
        return resp
    user, stored = await users.password_hash_of(svc.store, email)
    ok = await asyncio.get_running_loop().run_in_executor(svc.executor, users.verify_password, stored, password)
    if not ok or user is None:
        await signin_limits.hit(svc.store, per_account, per_ip, email, client)
        _signin_counted(request, "bad_password")
        return await _signin_form(request, next_url, "Wrong email address or password.", email, status=401)
    sid, _ = await users.session_start(svc.store, user, svc.cfg.ui.session_lifetime, client)
    resp = RedirectResponse(next_url, status_code=303, headers=SECURITY_HEADERS)
    set_cookie(resp, request, SESSION_COOKIE, (await signer(request, "session")).sign(sid).decode(),
               max_age=int(svc.cfg.ui.session_lifetime))
    resp.delete_cookie(PRE_COOKIE, path=COOKIE_PATH)
    _signin_counted(request, "ok")
    return resp


def _signin_counted(request: Request, result: str) -> None:
    """``ticketmx_ui_signins_total{result}``. An unknown address and a disabled account count as
    bad_password: /metrics needs no sign-in, so telling them apart would show anyone who can scrape it
    (and make a guess) which addresses have accounts — the same reason the page answers alike."""
    services(request).metrics.ui_signins.labels(result=result).inc()


async def _signout(request: Request, p: Page, everywhere: bool) -> Response:
    await users.session_end(services(request).store, p.session, everywhere, client_address(request))
    resp = RedirectResponse("/ui/signin?signed_out=" + ("everywhere" if everywhere else "1"), status_code=303,
                            headers=SECURITY_HEADERS)
    resp.delete_cookie(SESSION_COOKIE, path=COOKIE_PATH, secure=is_secure(request), httponly=True, samesite="lax")
    return resp


@router.post("/ui/signout")
async def signout(request: Request, p: Page = Depends(page("viewer"))) -> Response:
    return await _signout(request, p, everywhere=False)


@router.post("/ui/signout/everywhere")
async def signout_everywhere(request: Request, p: Page = Depends(page("viewer"))) -> Response:
    return await _signout(request, p, everywhere=True)


@router.get("/ui/account")
async def account(request: Request, p: Page = Depends(page("viewer")), done: str = "") -> HTMLResponse:
    return render(request, "account.html", p, signature=p.user.signature, error="",
                  notice="Signature saved." if done == "signature" else "", max_signature=users.MAX_SIGNATURE)


@router.post("/ui/account/signature")
async def account_signature(request: Request, p: Page = Depends(page("agent"))) -> Response:
    """The user's own reply signature (plain text, at most users.MAX_SIGNATURE characters), audited as
    ``user.signature``; a refused one comes back in the form with the reason."""
    form = await request.form()
    raw = str(form.get("signature", ""))
    try:
        if len(raw) > 4 * users.MAX_SIGNATURE:           # refused before any work on it
            raise users.UserError(f"the signature has {len(raw):,} characters; at most "
                                  f"{users.MAX_SIGNATURE:,} characters")
        text = users.clean_signature(raw)
    except users.UserError as exc:
        return render(request, "account.html", p, status_code=422, signature=raw[:4 * users.MAX_SIGNATURE],
                      error=f"Not saved: {exc}.", notice="", max_signature=users.MAX_SIGNATURE)
    await users.set_signature(services(request).store, p.user.email, text, p.who.name, p.who.role,
                              client_address(request))
    return RedirectResponse("/ui/account?done=signature", status_code=303, headers=SECURITY_HEADERS)


__all__ = ["install", "router"]
