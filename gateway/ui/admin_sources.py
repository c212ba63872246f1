"""The sources page (/ui/admin/sources): pulled mailboxes (issue 23's ``[[source]]``) with their status,
last sync and errors, Draft/Active, pause / resume, OAuth authorisation (its state and next step here;
the "Authorise" routes in admin_oauth.py) and a Test Connection button that shows every step of the
connection.

It calls the API's own functions (gateway/http/api_sources.py: ``GET /api/v1/sources``, ``POST
/api/v1/sources/{name}/test|pause|resume``), so the page lists, tests, pauses and audits exactly as the
API does.
"""
from __future__ import annotations

import asyncio
import hashlib
import hmac
from typing import Any

from fastapi import Depends, Request
from fastapi.responses import HTMLResponse

from gateway.http.deps import services
from gateway.ingress.sources.authorize import next_step
from gateway.ui import oauth_pending
from gateway.ui.admin import show
from gateway.ui.web import CSP, Page, page, router_for

from gateway.http import api_sources

router = router_for()
TEST_TIMEOUT = 60.0


async def source_rows(request: Request, p: Page) -> list[dict[str, Any]]:
    """``GET /api/v1/sources`` (status, last success, last error, backlog), plus how each source signs
    in, for the OAuth hint."""
    cfg = services(request).cfg
    by_name = {sc.name: sc for sc in getattr(cfg, "sources", ())}
    oauth_states = await asyncio.to_thread(oauth_pending.states, cfg)
    out = []
    for item in await api_sources.list_sources(request, who=p.who):
        r = item.model_dump()
        sc = by_name.get(r["name"])
        r["auth"] = getattr(sc, "auth", "") if sc is not None else ""
        oauth = getattr(sc, "oauth", None) if sc is not None else None
        r["oauth_grant"] = oauth.grant.replace("_", " ") if oauth is not None else ""
        r["oauth"] = oauth_states.get(r["name"])
        r["last_success_text"] = _when(r.get("last_success"))
        r["last_error_at_text"] = _when(r.get("last_error_at"))
        out.append(r)
    return out


def _when(iso_text: str | None) -> str:
    return iso_text.replace("T", " ")[:19] + " UTC" if iso_text else "never"


async def page_response(request: Request, p: Page, status: int = 200, **ctx: Any) -> HTMLResponse:
    """The sources page with ``notice`` / ``error`` / ``test``; this session's device grants waiting; a
    ``form-action`` that lets "Authorise" redirect to the configured OAuth sources' authorization endpoints."""
    ctx.setdefault("test", None)
    svc = services(request)
    waiting = await oauth_pending.devices(svc.store, p.session.key)
    origins = oauth_pending.authorize_origins(svc.cfg)
    csp = CSP.replace("form-action 'self'", " ".join(["form-action 'self'", *origins])) if origins else CSP
    return show(request, "admin/sources.html", p, "Sources", "/ui/admin/sources", status=status,
                rows=await source_rows(request, p), devices=[oauth_pending.panel(d) for d in waiting.values()],
                headers={"Content-Security-Policy": csp}, **ctx)


_page = page_response


def authorized_proof(csrf: str, name: str) -> str:
    """HMAC of the source name under the session's CSRF secret: the success notice's proof of origin."""
    return hmac.new(csrf.encode(), b"authorized:" + name.encode(), hashlib.sha256).hexdigest()[:32]


@router.get("/ui/admin/sources")
async def sources(request: Request, authorized: str = "", proof: str = "",
                  p: Page = Depends(page("admin"))) -> HTMLResponse:
    """``?authorized=NAME&proof=…``: where an authorisation from this page lands (admin_oauth.py)."""
    if authorized and not hmac.compare_digest(proof.encode(), authorized_proof(p.csrf, authorized).encode()):
        authorized = ""  # not finished by this session: no notice (the rows show the true state anyway)
    sc = next((s for s in services(request).cfg.sources if s.name == authorized), None) if authorized else None
    notice = (f"{sc.name}: authorised — the refresh token is written to {sc.oauth.refresh_token_file} (mode 0600)."
              f" {next_step(sc)}" if sc is not None and sc.oauth is not None else "")
    return await _page(request, p, notice=notice)


@router.post("/ui/admin/sources/{name}/test")
async def test_connection(name: str, request: Request, p: Page = Depends(page("admin"))) -> HTMLResponse:
    """``POST /api/v1/sources/{name}/test``: every step of a connection (resolve, connect, TLS, sign in,
    the folders), the server's answers with secrets masked. Changes nothing but folders it creates."""
    error = ""
    try:
        result = await asyncio.wait_for(api_sources.test_source(name, request, who=p.who), TEST_TIMEOUT)
        steps, ok = [s.model_dump() for s in result.steps], result.ok
    except asyncio.TimeoutError:
        steps, ok, error = [], False, f"no answer within {TEST_TIMEOUT:.0f} s"
    except ImportError as exc:
        steps, ok, error = [], False, f"this kind of source is not available: {exc}"
    test = {"name": name, "ok": ok, "error": error, "steps": steps}
    return await _page(request, p, test=test, notice=f"{name}: every step passed" if ok else "",
                       error="" if ok else f"{name}: the connection test failed" + (f" ({error})" if error else ""))


@router.post("/ui/admin/sources/{name}/pause")
async def pause(name: str, request: Request, p: Page = Depends(page("admin"))) -> HTMLResponse:
    """``POST /api/v1/sources/{name}/pause`` (audited as source.pause)."""
    await api_sources.pause(name, request, who=p.who)
    return await _page(request, p, notice=f"{name}: paused")


@router.post("/ui/admin/sources/{name}/resume")
async def resume(name: str, request: Request, p: Page = Depends(page("admin"))) -> HTMLResponse:
    """``POST /api/v1/sources/{name}/resume`` (audited as source.resume)."""
    await api_sources.resume(name, request, who=p.who)
    return await _page(request, p, notice=f"{name}: fetching again")


__all__ = ["router", "source_rows", "page_response"]
