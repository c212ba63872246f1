"""The mail-admin pages under /ui/admin/ (admins only; docs/ui.md, "Mail admins"): dashboard, quarantine
(list, detail, release / replay / delete, bulk), message trace, the outbound queues, the configuration
and the audit history. The sources page is admin_sources.py.

Every action calls the API's own function (gateway/http/api_admin.py → gateway/pipeline/runner/
spool_ops.py): the same refusals, the same ``force`` rule, the audit row in the action's transaction,
written as the signed-in user (``p.who``). Forms are plain POSTs (they work without JavaScript) and
carry the CSRF token, which ``page("admin")`` checks before anything else runs.
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urlencode

from fastapi import Depends, Request
from fastapi.responses import HTMLResponse, Response

from gateway.http import api_admin
from gateway.http.deps import Problem, client_address, services
from gateway.http.times import parse_when
from gateway.ui import admin_data
from gateway.ui.web import NAV, NavItem, Page, env, page, render, router_for

router = router_for()
NAV.append(NavItem("Admin", "/ui/admin", "admin", "/ui/admin"))

ADMIN_NAV = [("/ui/admin", "Dashboard"), ("/ui/admin/quarantine", "Quarantine"), ("/ui/admin/trace", "Trace"),
             ("/ui/admin/sources", "Sources"), ("/ui/admin/outbound", "Outbound"),
             ("/ui/admin/config", "Configuration"), ("/ui/admin/audit", "Audit")]
ACTOR = "ui"          # spool_audit's actor is "ui:<user>" (the API's is "api:<token>", the CLI's "cli:<OS user>")
MAX_BULK = 200


def _hour_label(start: float, i: int) -> str:
    return datetime.fromtimestamp(start + i * admin_data.HOUR, timezone.utc).strftime("%H:00")


def _when(ts: Any) -> str:
    if isinstance(ts, (int, float)):
        return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    return str(ts or "")


env().globals.update(hour_label=_hour_label, auth_rows=admin_data.auth_summary, when=_when)


def show(request: Request, template: str, p: Page, title: str, here: str, status: int = 200, **ctx: Any
         ) -> HTMLResponse:
    """An admin page: the admin sub-navigation, a notice or an error line, then the template's own part."""
    ctx.setdefault("notice", "")
    ctx.setdefault("error", "")
    ctx.setdefault("results", [])
    return render(request, template, p, status_code=status, title=title, admin_nav=ADMIN_NAV, admin_here=here, **ctx)


@dataclass(frozen=True)
class Outcome:
    id: str
    ok: bool
    text: str


# -- dashboard --------------------------------------------------------------------------------------------

@router.get("/ui/admin")
async def dashboard(request: Request, p: Page = Depends(page("admin"))) -> HTMLResponse:
    d = await admin_data.dashboard(services(request).store)
    return show(request, "admin/dashboard.html", p, "Dashboard", "/ui/admin", d=d)


# -- quarantine --------------------------------------------------------------------------------------------

@router.get("/ui/admin/quarantine")
async def quarantine(request: Request, before: str = "", p: Page = Depends(page("admin"))) -> HTMLResponse:
    return await _quarantine_page(request, p, before=before[:64])


async def _quarantine_page(request: Request, p: Page, before: str = "", status: int = 200, **ctx: Any
                           ) -> HTMLResponse:
    rows, nxt = await admin_data.quarantine_page(services(request).store, before=before)
    ctx.setdefault("confirm_delete", [])
    return show(request, "admin/quarantine.html", p, "Quarantine", "/ui/admin/quarantine", status=status,
                rows=rows, next_before=nxt, **ctx)


async def _act(request: Request, p: Page, action: str, spool_id: str, force: bool) -> Outcome:
    """One action on one entry through the API's function; a refusal becomes its reason."""
    svc = services(request)
    try:
        e = await api_admin.find_entry(svc, p.who, spool_id)
        if action == "release":
            r = await api_admin.release_entry(svc, p.who, e, force, request, admin_data.UI_HOW, ACTOR)
            return Outcome(e.id, True, f"released past {r.stage}" + (" (forced)" if r.forced else "")
                           + ": the pipeline runs it now")
        if action == "replay":
            await api_admin.replay_entry(svc, p.who, e, request)
            return Outcome(e.id, True, "replayed: the pipeline runs it again (never a second ticket)")
        if action == "delete":
            await api_admin.delete_entry(svc, p.who, e, request, ACTOR)
            return Outcome(e.id, True, "raw message deleted (the entry and its history stay)")
    except Problem as exc:
        return Outcome(spool_id, False, exc.detail)
    return Outcome(spool_id, False, f"unknown action {action!r}")


@router.post("/ui/admin/quarantine/bulk")
async def quarantine_bulk(request: Request, p: Page = Depends(page("admin"))) -> HTMLResponse:
    form = await request.form()
    action = str(form.get("action", ""))
    ids = list(dict.fromkeys(str(i) for i in form.getlist("ids") if str(i).strip()))[:MAX_BULK]
    if action not in ("release", "replay", "delete"):
        return await _quarantine_page(request, p, status=422, error="choose Release, Replay or Delete")
    if not ids:
        return await _quarantine_page(request, p, status=422, error="select at least one message first")
    if action == "delete" and form.get("confirm") != "1":
        entries = await services(request).store.spool_get_many(ids)
        return await _quarantine_page(request, p, confirm_delete=[admin_data.quarantine_row(e) for e in entries])
    force = form.get("force") == "1"
    results = [await _act(request, p, action, sid, force) for sid in ids]
    done = sum(r.ok for r in results)
    notice = f"{action}: {done} of {len(results)} done" + ("" if done == len(results) else "; see why below")
    return await _quarantine_page(request, p, status=200 if done else 409, results=results, notice=notice)


@router.get("/ui/admin/messages/{spool_id}")
async def message(spool_id: str, request: Request, p: Page = Depends(page("admin"))) -> HTMLResponse:
    return await _message_page(request, p, spool_id)


async def _message_page(request: Request, p: Page, spool_id: str, status: int = 200, **ctx: Any) -> HTMLResponse:
    svc = services(request)
    e = await api_admin.find_entry(svc, p.who, spool_id)        # 404 page when there is none
    m = await api_admin.message_detail(svc, e)
    stage, why = (admin_data.quarantine_row(e).stage, admin_data.quarantine_row(e).why) \
        if e.state == "quarantined" else (None, "")
    return show(request, "admin/message.html", p, f"Message {e.id}", "/ui/admin/quarantine", status=status, m=m,
                raw_headers=admin_data.header_text(e), hold_stage=stage, release_why=why, **ctx)


@router.post("/ui/admin/messages/{spool_id}/{action}")
async def message_action(spool_id: str, action: str, request: Request, p: Page = Depends(page("admin"))
                         ) -> HTMLResponse:
    form = await request.form()
    if action not in ("release", "replay", "delete"):
        raise Problem(404, "Not Found", f"no action {action!r}")
    if action == "delete" and form.get("confirm") != "1":
        return await _message_page(request, p, spool_id, status=422,
                                   error="tick “yes, delete the raw message” to delete it")
    r = await _act(request, p, action, spool_id, form.get("force") == "1")
    return await _message_page(request, p, spool_id, status=200 if r.ok else 409, results=[r],
                               notice=r.text if r.ok else "", error="" if r.ok else r.text)


@router.get("/ui/admin/messages/{spool_id}/raw")
async def message_raw(spool_id: str, request: Request, p: Page = Depends(page("admin"))) -> Response:
    """The API's own download (streamed, attachment, nosniff)."""
    return await api_admin.get_raw(spool_id, request, who=p.who)


# -- trace ----------------------------------------------------------------------------------------------

@router.get("/ui/admin/trace")
async def trace(request: Request, message_id: str = "", sender: str = "", recipient: str = "", since: str = "",
                until: str = "", p: Page = Depends(page("admin"))) -> HTMLResponse:
    q = {"message_id": message_id[:1000], "sender": sender[:320], "recipient": recipient[:320], "since": since[:64],
         "until": until[:64]}
    searched = any(v.strip() for v in q.values())
    items: list[Any] = []
    notes: dict[str, list[dict[str, Any]]] = {}
    hooks: dict[str, list[dict[str, Any]]] = {}
    error, status = "", 200
    if searched:
        svc = services(request)
        try:
            items = await api_admin.trace_entries(svc, p.who, message_id=q["message_id"], sender=q["sender"],
                                                  recipient=q["recipient"], since=q["since"] or None,
                                                  until=q["until"] or None, limit=50)
        except Problem as exc:
            error, status = exc.detail, exc.status
        for m in items:
            notes[m.id] = await admin_data.notifications_for(svc.store, m.ticket_id)
            hooks[m.id] = await admin_data.webhooks_for(svc.store, m.ticket_id)
    return show(request, "admin/trace.html", p, "Message trace", "/ui/admin/trace", status=status, q=q,
                searched=searched, items=items, notes=notes, hooks=hooks, error=error)


# -- outbound ---------------------------------------------------------------------------------------------

@router.get("/ui/admin/outbound")
async def outbound(request: Request, relay_state: str = "", webhook_state: str = "",
                   p: Page = Depends(page("admin"))) -> HTMLResponse:
    return await _outbound_page(request, p, relay_state=relay_state, webhook_state=webhook_state)


async def _outbound_page(request: Request, p: Page, relay_state: str = "", webhook_state: str = "", status: int = 200,
                         **ctx: Any) -> HTMLResponse:
    from gateway.store.relay_queue import STATES as RELAY_STATES
    from gateway.webhooks.outbox import STATES as WEBHOOK_STATES
    store = services(request).store
    relay_state = relay_state if relay_state in RELAY_STATES else ""
    webhook_state = webhook_state if webhook_state in WEBHOOK_STATES else ""
    return show(request, "admin/outbound.html", p, "Outbound", "/ui/admin/outbound", status=status,
                relay=await admin_data.relay_page(store, relay_state), relay_state=relay_state,
                hooks=await admin_data.webhook_page(store, webhook_state), **ctx)


@router.post("/ui/admin/relay/{mail_id}/retry")
async def relay_retry(mail_id: int, request: Request, p: Page = Depends(page("admin"))) -> HTMLResponse:
    try:
        await api_admin.relay_retry_entry(services(request), p.who, mail_id, request)
    except Problem as exc:
        return await _outbound_page(request, p, status=exc.status, error=exc.detail)
    return await _outbound_page(request, p, notice=f"notification {mail_id} queued again")


@router.post("/ui/admin/webhooks/{row_id}/retry")
async def webhook_retry(row_id: int, request: Request, p: Page = Depends(page("admin"))) -> HTMLResponse:
    why = await admin_data.webhook_retry(services(request).store, row_id, p.who.name, p.who.role,
                                         client_address(request))
    if why:
        return await _outbound_page(request, p, status=409, error=f"cannot retry webhook event {row_id}: {why}")
    return await _outbound_page(request, p, notice=f"webhook event {row_id} queued again")


# -- configuration and audit ------------------------------------------------------------------------------

@router.get("/ui/admin/config")
async def config(request: Request, q: str = "", p: Page = Depends(page("admin"))) -> HTMLResponse:
    cfg = services(request).cfg
    written = await asyncio.to_thread(admin_data.read_written, cfg.source)
    rows = admin_data.config_rows(cfg, written)
    needle = q.strip().lower()[:100]
    if needle:
        rows = [(k, v) for k, v in rows if needle in k.lower()]
    return show(request, "admin/config.html", p, "Configuration", "/ui/admin/config", rows=rows, q=q[:100],
                source=cfg.source if cfg.source and cfg.source != "test" else "")


@router.get("/ui/admin/audit")
async def audit(request: Request, actor: str = "", action: str = "", target: str = "", since: str = "",
                until: str = "", before: int | None = None, p: Page = Depends(page("admin"))) -> HTMLResponse:
    q = {"actor": actor[:200], "action": action[:100], "target": target[:200], "since": since[:64], "until": until[:64]}
    error, status, rows, nxt = "", 200, [], None
    try:
        rows, nxt = await admin_data.audit_page(services(request).store, actor=q["actor"], action=q["action"],
                                                target=q["target"], since=parse_when(q["since"], "since"),
                                                until=parse_when(q["until"], "until"), before=before, limit=100)
    except Problem as exc:
        error, status = exc.detail, exc.status
    next_url = "/ui/admin/audit?" + urlencode({**{k: v for k, v in q.items() if v}, "before": nxt}) if nxt else ""
    return show(request, "admin/audit.html", p, "Audit history", "/ui/admin/audit", status=status, rows=rows, q=q,
                actions=admin_data.audit_actions(), next_before=nxt, next_url=next_url, error=error)


__all__ = ["router"]
