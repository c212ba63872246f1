"""The agents' pages: queue views and the ticket view, with replies, notes and field changes.

Reads use the store methods the API uses (``tickets_page``, ``ticket_get``) with the API's scope rule
(gateway/http/api_tickets.py ``_scope`` / ``_ticket``); writes call the API's own endpoint functions
(``post_reply``, ``post_note``, ``patch_ticket``), so checks, the mail to the customer (through
gateway/http/ticket_mail.py and the relay) and the audit row are the same code whether a token or a
signed-in user asks.
"""
from __future__ import annotations

from typing import Any
from urllib.parse import quote, urlencode

from fastapi import Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import ValidationError

from gateway.http import api_tickets, reply_templates
from gateway.http.deps import Problem, services
from gateway.http.ticket_mail import agent_for, with_signature
from gateway.http.times import parse_when
from gateway.store.base import TicketPage
from gateway.store.search import decode_cursor, encode_cursor
from gateway.ui.web import SECURITY_HEADERS, Page, page, render, router_for

router = router_for()

PAGE_SIZE = 50
OPEN = ("new", "open")               # a new ticket has status "new" until an agent or a command changes it
FILTER_STATUSES = ("new",) + api_tickets.STATUSES
# view -> (label, what it shows); the filters in the form narrow it further
VIEWS: dict[str, tuple[str, str]] = {
    "open": ("Open", "tickets with status new or open"),
    "mine": ("Mine", "tickets assigned to you: new, open or pending"),
    "unassigned": ("Unassigned", "open tickets nobody is assigned to"),
    "waiting": ("Waiting", "tickets waiting for the customer (status pending)"),
    "all": ("All", "every ticket"),
}


def _view_page(view: str, me: str, status: str, queue: str, q: str, requester: str, since: float | None,
               scope: tuple[str, ...], before: int | None, limit: int) -> TicketPage:
    """The store query of a view: its own condition, unless the form picks a status."""
    assignee, unassigned, statuses = "", False, ()
    if view == "open":
        statuses = OPEN
    elif view == "mine":
        assignee, statuses = me, OPEN + ("pending",)
    elif view == "unassigned":
        statuses, unassigned = OPEN, True
    elif view == "waiting":
        statuses = ("pending",)
    return TicketPage(status=status, queue=queue, assignee=assignee, requester=requester, since=since, text=q,
                      scope=scope, before=before, limit=limit, unassigned=unassigned,
                      statuses=() if status else statuses)


def _queues_of(p: Page, cfg: Any) -> list[str]:
    """The queues the user may see (for the filter's choices)."""
    return sorted(q for q in api_tickets._queues(cfg) if p.who.can_read(q))


@router.get("/ui/tickets", response_class=HTMLResponse)
async def queue_view(request: Request, p: Page = Depends(page("viewer")), view: str = "open", status: str = "",
                     queue: str = "", q: str = "", requester: str = "", since: str = "", cursor: str = "",
                     ) -> HTMLResponse:
    svc = services(request)
    view = view if view in VIEWS else "open"
    status = status.lower() if status.lower() in FILTER_STATUSES else ""
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
        nxt = encode_cursor(nxt_id) if nxt_id else None
    params = {k: v for k, v in (("view", view), ("status", status), ("queue", queue), ("q", q),
                                ("requester", requester), ("since", since)) if v}
    older = "/ui/tickets?" + urlencode({**params, "cursor": nxt}) if nxt else ""
    newest = "/ui/tickets?" + urlencode(params) if cursor else ""
    tpl = "_queue_results.html" if request.headers.get("hx-request") and request.headers.get("hx-target") == \
        "results" else "queue.html"
    return render(request, tpl, p, views=VIEWS, view=view, status=status, queue=queue, q=q, requester=requester,
                  since=since, statuses=FILTER_STATUSES, queues=_queues_of(p, svc.cfg), items=items,
                  older=older, newest=newest, error=error, me=me)


# -- the ticket view ---------------------------------------------------------------------------------
def auth_words(auth: dict[str, Any] | None, kind: str) -> tuple[str, str, str]:
    """(css class, headline, detail) in plain words from the stored SMTP-time auth record."""
    if kind != "email":
        return "", "", ""
    if not auth:
        return "auth-none", "not checked", "this message came without an authentication record"
    dmarc = auth.get("dmarc") or {}
    result = str(dmarc.get("result") or "none").lower()
    frm = auth.get("from") or {}
    domain = frm.get("domain") or ", ".join(str(d) for d in (frm.get("domains") or ())) or "the sender's domain"
    decision = auth.get("decision") or {}
    if result == "pass":
        how = dmarc.get("override") and "a trusted relay's verdict" or "SPF or DKIM aligned with the From domain"
        return "auth-ok", "verified sender", f"{domain} vouches for this message (DMARC pass: {how})"
    why = {"fail": f"{domain} says this message did not come from it (DMARC fail)",
           "none": f"{domain} publishes no DMARC policy, so the From address cannot be checked",
           "temperror": "a DNS error prevented the check (DMARC temperror)",
           "permerror": f"the check could not be done: {dmarc.get('reason') or 'a broken DMARC record'} (DMARC permerror)",
           }.get(result, f"DMARC {result}")
    if decision.get("suspicious"):
        why += "; the ticket is flagged suspicious"
    return "auth-bad", "could not verify", why


def _article_view(a: dict[str, Any], number: str, html_ids: set[str], images: bool) -> dict[str, Any]:
    new = (a["new_text"] or "").strip("\n")
    full = (a["body_text"] or "").strip("\n")
    quoted = full[len(new):].strip("\n") if new and full.startswith(new) else (full if new and full != new else "")
    cls, headline, detail = auth_words(a.get("auth"), a["kind"])
    shown = str(a["id"]) in html_ids or "all" in html_ids
    return {**a, "text": new or full, "quoted": quoted, "auth_class": cls, "auth_headline": headline,
            "auth_detail": detail, "has_html": bool(a["body_html"]), "show_html": shown and bool(a["body_html"]),
            "frame_src": f"/ui/tickets/{quote(number)}/articles/{a['id']}/html" + ("?images=1" if images else ""),
            "attachments": [{**x, "url": f"/ui/tickets/{quote(number)}/attachments/{x['id']}"}
                            for x in a["attachments"]]}


def _template_id(raw: str) -> int | None:
    """``?template=ID`` as a number, or None (then no template is loaded)."""
    raw = raw.strip()
    return int(raw) if raw.isdigit() and len(raw) <= 18 else None


async def compose_from_template(request: Request, p: Page, t: dict[str, Any], raw_id: str) -> tuple[str, str]:
    """(text for the reply box, error for the form): the template ``raw_id`` rendered for this ticket and
    agent, when it is one for the ticket's queue or for every queue; any other id is "no such template"."""
    tid = _template_id(raw_id)
    svc = services(request)
    tpl = await reply_templates.get_for_queue(svc.store, tid, t["queue"]) if tid is not None else None
    if tpl is None:
        return "", f"There is no template {raw_id[:20]!r} for queue {t['queue']}."
    me = agent_for(svc.cfg, p.who.name)
    name = me.name if me.configured and me.name else (p.user.name or p.user.email)
    try:
        return reply_templates.render(tpl.body, reply_templates.context(t, name, me.address)), ""
    except reply_templates.TemplateError as exc:
        return "", f"The template {tpl.name!r} could not be used: {exc}"


@router.get("/ui/tickets/{number}", response_class=HTMLResponse)
async def ticket_view(request: Request, number: str, p: Page = Depends(page("viewer")), html: str = "",
                      images: int = 0, done: str = "", template: str = "") -> HTMLResponse:
    svc = services(request)
    t = await api_tickets._ticket(request, p.who, number)
    html_ids = set(html.split(",")[:100]) if html else set()
    articles = [_article_view(a, t["number"], html_ids, bool(images)) for a in t["articles"]]
    me = agent_for(svc.cfg, p.who.name)
    writable = p.who.can_write(t["queue"])
    flash = {"reply": "Reply sent.", "reply-held": "Reply saved; it was held as a note (another agent answered "
             "moments ago) — check before sending again.", "note": "Note added.", "fields": "Ticket updated.",
             "unchanged": "Nothing to change."}.get(done, "")
    templates: list[dict[str, Any]] = []
    compose_text = compose_error = ""
    if writable:
        templates = [{"id": i, "name": n, "queue": q} for i, n, q in
                     await reply_templates.choices_for(svc.store, t["queue"])]
        if template:
            compose_text, compose_error = await compose_from_template(request, p, t, template)
    return render(request, "ticket.html", p, t=t, articles=articles, writable=writable, me=me, flash=flash,
                  statuses=api_tickets.STATUSES, priorities=api_tickets.PRIORITIES,
                  queues=sorted(q for q in api_tickets._queues(svc.cfg) if p.who.can_write(q) or q == t["queue"]),
                  relay_on=api_tickets._relay_on(svc.cfg), html=html, images=images, templates=templates,
                  template_id=_template_id(template), compose_text=compose_text, compose_error=compose_error)


@router.get("/ui/tickets/{number}/compose", response_class=HTMLResponse)
async def compose(request: Request, number: str, p: Page = Depends(page("agent")), template: str = ""
                  ) -> HTMLResponse:
    """The reply box with a template rendered into it: htmx swaps it in place (without JavaScript the
    picker's form GETs the ticket page with ``?template=``, which renders the same)."""
    t = await api_tickets._ticket(request, p.who, number, write=True)
    text, error = await compose_from_template(request, p, t, template)
    return render(request, "_reply_box.html", p, compose_text=text, compose_error=error)


async def _form_text(request: Request) -> str:
    form = await request.form()
    return str(form.get("text", "")).replace("\r\n", "\n")


def _text_in(text: str) -> api_tickets.TextIn:
    try:
        return api_tickets.TextIn(text=text)
    except ValidationError:
        if not text.strip():
            raise Problem(422, "Unprocessable Content", "the text is empty") from None
        raise Problem(422, "Unprocessable Content", f"the text is over {api_tickets.MAX_TEXT} characters") from None


def _back(number: str, done: str, anchor: str = "") -> RedirectResponse:
    return RedirectResponse(f"/ui/tickets/{quote(number)}?done={done}{anchor}", status_code=303,
                            headers=SECURITY_HEADERS)


@router.post("/ui/tickets/{number}/reply")
async def reply(request: Request, number: str, p: Page = Depends(page("agent"))) -> RedirectResponse:
    """A public reply: the API's own endpoint function (checks, relay mail, audit). With "Add my
    signature" ticked, the user's signature goes under a "-- " line of the text handed to it."""
    text = await _form_text(request)
    if not text.strip():
        raise Problem(422, "Unprocessable Content", "the reply is empty")
    form = await request.form()
    if form.get("signature") and p.user.signature:
        text = with_signature(text, p.user.signature)
        if len(text) > api_tickets.MAX_TEXT:
            raise Problem(422, "Unprocessable Content", f"the reply with your signature is over "
                          f"{api_tickets.MAX_TEXT:,} characters: shorten it or untick \"Add my signature\"")
    posted = await api_tickets.post_reply(request, number=number, body=_text_in(text), who=p.who)
    return _back(number, "reply" if posted.mail_queued else "reply-held",
                 f"#article-{posted.article.id}")


@router.post("/ui/tickets/{number}/note")
async def note(request: Request, number: str, p: Page = Depends(page("agent"))) -> RedirectResponse:
    text = await _form_text(request)
    posted = await api_tickets.post_note(request, number=number, body=_text_in(text), who=p.who)
    return _back(number, "note", f"#article-{posted.article.id}")


@router.post("/ui/tickets/{number}/fields")
async def fields(request: Request, number: str, p: Page = Depends(page("agent"))) -> RedirectResponse:
    """Status, priority, assignee, queue: only those that differ from the ticket's are sent to the API's PATCH."""
    t = await api_tickets._ticket(request, p.who, number, write=True)
    form = await request.form()
    changes: dict[str, Any] = {}
    for key in ("status", "priority", "assignee", "queue"):
        if key in form:
            value = str(form[key]).strip()
            if value != str(t[key] or ""):
                changes[key] = value
    if not changes:
        return _back(number, "unchanged")
    try:
        patch = api_tickets.TicketPatch(**changes)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise Problem(422, "Unprocessable Content", f"{'.'.join(map(str, first['loc']))}: {first['msg']}") from None
    await api_tickets.patch_ticket(request, body=patch, number=number, who=p.who)
    return _back(number, "fields")


@router.get("/ui/tickets/{number}/attachments/{attachment_id}")
async def attachment(request: Request, number: str, attachment_id: int, p: Page = Depends(page("viewer"))
                     ) -> Response:
    """The API's download itself: its scope rule and its headers (attachment, nosniff, sandbox CSP)."""
    if not 1 <= attachment_id < 2 ** 63:
        raise Problem(404, "Not Found", f"no attachment {attachment_id}")
    return await api_tickets.get_attachment(request, number=number, attachment_id=attachment_id, who=p.who)
