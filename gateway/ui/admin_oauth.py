"""OAuth authorisation of a ``[[source]]`` from the sources page (docs/sources.md, "Authorising from the
web UI"): the two grants of ``ticketmx source authorize``, run with the same functions
(gateway/runtime/oauth_authorize.py, gateway/ingress/sources/authorize.py), one request at a time.

* **Authorise**: authorization code + PKCE (S256). The POST stores a pending authorisation (random
  ``state``, the verifier, the source, this browser's session; 10 minutes) and answers 303 to the
  provider's authorization endpoint with ``redirect_uri = [http] public_url + CALLBACK_PATH`` — one fixed
  URI for every source (the state says which), never built from the request's Host header, which
  the client chooses. The callback takes the pending row only for the session that started it, once,
  before it expires, exchanges the code with the verifier and writes the refresh token as the CLI does.
* **Authorise with a code**: the device grant (RFC 8628), for app registrations without a web redirect.
  The POST asks the device endpoint and stores the device code; the page shows the verification URI and
  the user code and checks (htmx every ``interval`` s, or the "Check now" button without JavaScript):
  each check makes at most ONE token request, and only when the interval since the last one has passed
  (:func:`~gateway.ui.oauth_pending.claim_poll`), so no background task runs in the HTTP process.

A refusal (the provider's ``error=``, an unknown, expired, reused or foreign state, the token endpoint's
refusal) shows why and writes nothing; a success is audited as ``source.authorize``.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Any
from urllib.parse import quote

from fastapi import Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from gateway.http.deps import audit, services
from gateway.ingress.sources.authorize import NotAuthorizable, Target, save_refresh_token, target
from gateway.runtime.oauth import OAuthError
from gateway.runtime.oauth_authorize import (PENDING, SLOW_DOWN, authorization_url, device_poll, device_start,
                                             exchange_code, pkce_pair, redirect_error)
from gateway.ui import oauth_pending as pend
from gateway.ui.admin_sources import authorized_proof, page_response
from gateway.ui.web import SECURITY_HEADERS, Page, page, render, router_for

router = router_for()
log = logging.getLogger(__name__)


def _done(name: str, p: Page) -> str:
    """The sources page with the success notice, and the proof that this session finished it: a link
    someone else crafts with ``?authorized=NAME`` shows no notice."""
    return f"/ui/admin/sources?authorized={quote(name, safe='')}&proof={authorized_proof(p.csrf, name)}"


async def _refuse(request: Request, p: Page, text: str, status: int = 400) -> HTMLResponse:
    return await page_response(request, p, status=status, error=text)


async def _store_token(request: Request, p: Page, t: Target, ans: dict[str, Any], grant: str) -> None:
    """The CLI's write (0600, atomic) off the loop, then the audit row (nothing is audited before it)."""
    path = await asyncio.to_thread(save_refresh_token, t.sc, ans)
    await audit(p.who, "source.authorize", t.sc.name, {"grant": grant, "file": path}, request)


# -- authorization code + PKCE -----------------------------------------------------------------------------
@router.post("/ui/admin/sources/{name}/authorize")
async def authorize(name: str, request: Request, p: Page = Depends(page("admin"))) -> Response:
    cfg = services(request).cfg
    try:
        t = target(cfg, name, loopback=True)
    except NotAuthorizable as exc:
        return await _refuse(request, p, f"{name}: {exc}")
    public = cfg.http.public_url
    if not public:
        return await _refuse(request, p, f"{name}: set http.public_url (the address browsers reach this UI at) to"
                             " authorise from the web UI: the redirect URI is built from it"
                             f" ({{http.public_url}}{pend.CALLBACK_PATH}), never from the request's Host header."
                             f" Or use `ticketmx source authorize {name}` on the gateway host.")
    redirect = public + pend.CALLBACK_PATH
    verifier, challenge = pkce_pair()
    state = await pend.add(services(request).store, pend.CODE, name, p.session.key, p.user.email, verifier,
                           redirect_uri=redirect)
    url = authorization_url(t.sc.oauth, t.url, redirect, t.scope, state, challenge, t.login_hint)
    return RedirectResponse(url, status_code=303, headers=SECURITY_HEADERS)


@router.get(pend.CALLBACK_PATH)
async def callback(request: Request, p: Page = Depends(page("admin"))) -> Response:
    """The provider's redirect back: ``state`` and ``code``, or ``error``."""
    params = {k: v for k, v in request.query_params.items() if len(v) <= 4096}
    state = params.get("state", "")
    store = services(request).store
    row = await pend.get(store, pend.key_of(state)) if state else None
    if row is None or row.kind != pend.CODE:
        return await _refuse(request, p, "This authorisation is unknown, expired or already used: nothing was"
                             " written. Start again with Authorise.")
    if row.session != p.session.key and row.user_email == p.user.email and \
            not await pend.session_live(store, row.session):
        return await _refuse(request, p, f"{row.source}: your session ended while you were at the provider (you"
                             " signed in again since): nothing was written. Start again with Authorise.", 403)
    if row.session != p.session.key:
        log.warning("source %s: an OAuth callback with the state of another session refused (user %s)",
                    row.source, p.user.email)
        return await _refuse(request, p, f"{row.source}: this authorisation was started in another browser session"
                             " and can only be finished there: nothing was written.", 403)
    if not await pend.take(store, row.key, p.session.key):
        return await _refuse(request, p, "This authorisation was already used: nothing was written. Start again"
                             " with Authorise.")
    if row.expires < time.time():
        return await _refuse(request, p, f"{row.source}: this authorisation took longer than"
                             f" {pend.PENDING_TTL / 60:.0f} minutes and expired: nothing was written. Start again.")
    if (refused := redirect_error(params)) is not None:
        return await _refuse(request, p, f"{row.source}: {refused}: nothing was written.")
    try:
        t = target(services(request).cfg, row.source, loopback=True)
        ans = await exchange_code(t.sc.oauth, params["code"], row.redirect_uri, row.secret)
        await _store_token(request, p, t, ans, "authorization_code")
    except (OAuthError, NotAuthorizable) as exc:
        return await _refuse(request, p, f"{row.source}: {exc}: nothing was written.")
    return RedirectResponse(_done(row.source, p), status_code=303, headers=SECURITY_HEADERS)


# -- device grant -----------------------------------------------------------------------------------------
@router.post("/ui/admin/sources/{name}/authorize/device")
async def device(name: str, request: Request, p: Page = Depends(page("admin"))) -> Response:
    try:
        t = target(services(request).cfg, name, loopback=False)
        dc = await device_start(t.sc.oauth, t.url, t.scope)
    except (NotAuthorizable, OAuthError) as exc:
        return await _refuse(request, p, f"{name}: {exc}")
    ttl = min(dc.expires_in or pend.PENDING_TTL, pend.PENDING_TTL)
    await pend.add(services(request).store, pend.DEVICE, name, p.session.key, p.user.email, dc.device_code, ttl=ttl,
                   user_code=dc.user_code, verification_uri=dc.verification_uri, poll_interval=dc.interval)
    return RedirectResponse(f"/ui/admin/sources#device-{quote(name, safe='')}", status_code=303,
                            headers=SECURITY_HEADERS)


@router.post("/ui/admin/sources/{name}/authorize/device/check")
async def device_check(name: str, request: Request, p: Page = Depends(page("admin"))) -> Response:
    """One check: at most one token request (none when the interval since the last has not passed)."""
    htmx = bool(request.headers.get("hx-request"))
    store = services(request).store
    row = (await pend.devices(store, p.session.key)).get(name)
    if row is None:
        return await _device_answer(request, p, name, None, f"{name}: no authorisation with a code is waiting (it"
                                    " expired, was finished or was started in another browser): nothing was written.",
                                    htmx)
    now = time.time()
    if not await pend.claim_poll(store, row.key, now):
        return await _device_answer(request, p, name, row, "", htmx)     # checked less than an interval ago
    try:
        t = target(services(request).cfg, name, loopback=False)
        ans = await device_poll(t.sc.oauth, row.secret)
    except (NotAuthorizable, OAuthError) as exc:
        await pend.drop(store, row.key)
        return await _device_answer(request, p, name, None, f"{name}: {exc}: nothing was written.", htmx)
    if ans == SLOW_DOWN:
        await pend.slow_down(store, row.key, now)
        row = await pend.get(store, row.key) or row
        return await _device_answer(request, p, name, row, "", htmx)
    if ans == PENDING:
        return await _device_answer(request, p, name, row, "", htmx)
    assert isinstance(ans, dict)
    if not await pend.take(store, row.key, p.session.key):
        return await _device_answer(request, p, name, None, f"{name}: this authorisation was already finished.", htmx)
    try:
        await _store_token(request, p, t, ans, "device_code")
    except NotAuthorizable as exc:
        return await _device_answer(request, p, name, None, f"{name}: {exc}: nothing was written.", htmx)
    if htmx:
        return Response(status_code=204, headers={"HX-Redirect": _done(name, p), **SECURITY_HEADERS})
    return RedirectResponse(_done(name, p), status_code=303, headers=SECURITY_HEADERS)


async def _device_answer(request: Request, p: Page, name: str, row: pend.Pending | None, error: str,
                         htmx: bool) -> Response:
    """htmx: the device panel alone (polling on while waiting, off after a refusal); else the whole page."""
    if htmx:
        return render(request, "admin/_oauth_device.html", p, name=name, d=pend.panel(row) if row else None,
                      error=error)
    if error:
        return await _refuse(request, p, error)
    return await page_response(request, p, notice=f"{name}: not approved yet; checking again every"
                               f" {row.poll_interval if row else 0:.0f} s.")


__all__ = ["router"]
