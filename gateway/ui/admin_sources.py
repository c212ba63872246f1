"""The sources page (/ui/admin/sources): pulled mailboxes (issue 23's ``[[source]]``) with their status,
last sync and errors, Draft/Active, pause / resume, an OAuth authorisation hint and a Test Connection
button that shows every step of the connection.

It calls what ``ticketmx source list|pause|resume|test`` calls (gateway/ingress/sources/cli.py,
manager.py). In a build without pulled mailboxes it shows the sources named in the config, if any,
and says that fetching is not available.
"""
from __future__ import annotations

import asyncio
from typing import Any

from fastapi import Depends, Request
from fastapi.responses import HTMLResponse

from gateway.http import tokens
from gateway.http.deps import Problem, client_address, services
from gateway.ui import admin_data
from gateway.ui.admin import show
from gateway.ui.web import Page, page, router_for

try:  # issue 23: pulled mailboxes
    from gateway.ingress.sources import cli as source_cli
    from gateway.ingress.sources import manager as source_manager
except ImportError:  # a build without them
    source_cli = source_manager = None  # type: ignore[assignment]

router = router_for()
TEST_TIMEOUT = 60.0


def available() -> bool:
    return source_cli is not None and source_manager is not None


async def source_rows(cfg: Any, store: Any) -> list[dict[str, Any]]:
    """What ``ticketmx source list`` shows (status, last success, last error, backlog), plus how the
    source signs in, for the OAuth hint."""
    if not available():
        return admin_data.configured_sources(cfg)
    rows = await source_cli.rows(cfg, store)
    by_name = {sc.name: sc for sc in getattr(cfg, "sources", ())}
    for r in rows:
        sc = by_name.get(r["name"])
        r["auth"] = getattr(sc, "auth", "") if sc is not None else ""
        r["oauth_grant"] = sc.oauth.grant if sc is not None and getattr(sc, "oauth", None) else ""
        r["last_success_text"] = _when(r.get("last_success"))
        r["last_error_at_text"] = _when(r.get("last_error_at"))
    return rows


def _when(t: Any) -> str:
    from gateway.store.render import iso
    return (iso(t) or "").replace("T", " ")[:19] + " UTC" if t else "never"


async def _page(request: Request, p: Page, status: int = 200, **ctx: Any) -> HTMLResponse:
    svc = services(request)
    ctx.setdefault("test", None)
    return show(request, "admin/sources.html", p, "Sources", "/ui/admin/sources", status=status,
                available=available(), rows=await source_rows(svc.cfg, svc.store), **ctx)


@router.get("/ui/admin/sources")
async def sources(request: Request, p: Page = Depends(page("admin"))) -> HTMLResponse:
    return await _page(request, p)


def _config_of(request: Request, name: str) -> Any:
    if not available():
        raise Problem(409, "Conflict", "pulled mailboxes are not available in this build")
    sc = next((s for s in getattr(services(request).cfg, "sources", ()) if s.name == name), None)
    if sc is None:
        raise Problem(404, "Not Found", f"no [[source]] named {name!r}")
    return sc


@router.post("/ui/admin/sources/{name}/test")
async def test_connection(name: str, request: Request, p: Page = Depends(page("admin"))) -> HTMLResponse:
    """Every step of a connection (``ticketmx source test NAME``): resolve, connect, TLS, sign in, the
    folders; the server's answers with secrets masked. Changes nothing but folders it creates."""
    sc = _config_of(request, name)
    try:
        steps = await asyncio.wait_for(source_manager.build_source(sc).test(), TEST_TIMEOUT)
        error = ""
    except asyncio.TimeoutError:
        steps, error = [], f"no answer within {TEST_TIMEOUT:.0f} s"
    except ImportError as exc:
        steps, error = [], f"kind {sc.kind!r} is not available: {exc}"
    ok = bool(steps) and all(s.ok for s in steps) and not error
    test = {"name": name, "ok": ok, "error": error,
            "steps": [{"name": s.name, "ok": s.ok, "detail": s.detail} for s in steps]}
    return await _page(request, p, status=200, test=test,
                       notice=f"{name}: every step passed" if ok else "",
                       error="" if ok else f"{name}: the connection test failed" + (f" ({error})" if error else ""))


@router.post("/ui/admin/sources/{name}/{action}")
async def pause_resume(name: str, action: str, request: Request, p: Page = Depends(page("admin"))) -> HTMLResponse:
    if action not in ("pause", "resume"):
        raise Problem(404, "Not Found", f"no action {action!r}")
    sc = _config_of(request, name)
    store = services(request).store
    if action == "pause":
        reason = f"paused by {p.who.name} in the web UI"
        await source_manager.pause_source(store, sc.name, reason)
        detail: dict[str, Any] = {"reason": reason}
    else:
        await source_manager.resume_source(store, sc.name)
        detail = {}
    await tokens.audit(store, p.who.name, p.who.role, f"source.{action}", sc.name, detail, client_address(request))
    return await _page(request, p, notice=f"{name}: {'paused' if action == 'pause' else 'fetching again'}"
                       " (a running gateway sees it within 2 s)")


__all__ = ["router", "available", "source_rows"]
