"""The agents' pages: queue views and the ticket view, with replies, notes and field changes.

Reads use the store methods the API uses (``tickets_page``, ``ticket_get``) with the API's scope rule
(gateway/http/api_tickets.py ``_scope`` / ``_ticket``); writes call the API's own endpoint functions
(``post_reply``, ``post_note``, ``patch_ticket``), so checks, the mail to the customer (through
gateway/http/ticket_mail.py and the relay) and the audit row are the same code whether a token or a
signed-in user asks.
"""
from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from fastapi import Depends, Request
from fastapi.responses import HTMLResponse

from gateway.http import api_tickets
from gateway.http.deps import Problem, services
from gateway.http.ticket_mail import agent_for
from gateway.http.times import parse_when
from gateway.store.base import TicketPage
from gateway.store.search import decode_cursor, encode_cursor
from gateway.ui.web import Page, page, render, router_for

router = router_for()

PAGE_SIZE = 50
# view -> (label, what it shows); the filters in the form narrow it further
VIEWS: dict[str, tuple[str, str]] = {
    "open": ("Open", "tickets with status open"),
    "mine": ("Mine", "tickets assigned to you, not closed"),
    "unassigned": ("Unassigned", "open tickets nobody is assigned to"),
    "waiting": ("Waiting", "tickets waiting for the customer (status pending)"),
    "all": ("All", "every ticket"),
}


def _view_page(view: str, me: str, status: str, queue: str, q: str, requester: str, since: float | None,
               scope: tuple[str, ...], before: int | None, limit: int) -> TicketPage:
    """The store query of a view: its own condition, then the form's filters."""
    assignee, unassigned = "", False
    if view == "open":
        status = status or "open"
    elif view == "mine":
        assignee = me
    elif view == "unassigned":
        status, unassigned = status or "open", True
    elif view == "waiting":
        status = status or "pending"
    return TicketPage(status=status, queue=queue, assignee=assignee, requester=requester, since=since, text=q,
                      scope=scope, before=before, limit=limit, unassigned=unassigned)


def _queues_of(p: Page, cfg: Any) -> list[str]:
    """The queues the user may see (for the filter's choices)."""
    return sorted(q for q in api_tickets._queues(cfg) if p.who.can_read(q))


@router.get("/ui/tickets", response_class=HTMLResponse)
async def queue_view(request: Request, p: Page = Depends(page("viewer")), view: str = "open", status: str = "",
                     queue: str = "", q: str = "", requester: str = "", since: str = "", cursor: str = "",
                     ) -> HTMLResponse:
    svc = services(request)
    view = view if view in VIEWS else "open"
    status = status.lower()[:64] if status.lower() in api_tickets.STATUSES else ""
    queue, q, requester = queue[:200], q[:500], requester[:320]
    error = ""
    try:
        when = parse_when(since or None, "since")
    except Problem as exc:
        when, error = None, exc.detail
    try:
        before = decode_cursor(cursor) if cursor else None
    except ValueError:
        before, error = None, "That page link is no longer valid; showing the newest tickets."
    me = agent_for(svc.cfg, p.who.name).address
    items: list[dict[str, Any]] = []
    nxt = None
    if not queue or p.who.can_read(queue):
        pg = _view_page(view, me, status, queue, q, requester, when, api_tickets._scope(p.who), before, PAGE_SIZE)
        items, nxt_id = await svc.store.tickets_page(pg)
        if view == "mine" and not status:
            items = [t for t in items if t["status"] != "closed"]
        nxt = encode_cursor(nxt_id) if nxt_id else None
    params = {k: v for k, v in (("view", view), ("status", status), ("queue", queue), ("q", q),
                                ("requester", requester), ("since", since)) if v}
    older = "/ui/tickets?" + urlencode({**params, "cursor": nxt}) if nxt else ""
    newest = "/ui/tickets?" + urlencode(params) if cursor else ""
    tpl = "_queue_results.html" if request.headers.get("hx-request") and request.headers.get("hx-target") == \
        "results" else "queue.html"
    return render(request, tpl, p, views=VIEWS, view=view, status=status, queue=queue, q=q, requester=requester,
                  since=since, statuses=api_tickets.STATUSES, queues=_queues_of(p, svc.cfg), items=items,
                  older=older, newest=newest, error=error, me=me)
