"""Ticket endpoints under /api/v1 (docs/api.md, "Tickets"): list and search, one ticket with its
articles, field changes, public replies (mailed to the customer through the relay, as an agent's
mail reply would be), internal notes, attachment downloads.

Scope: a viewer reads; an agent reads and writes the tickets of its token's queues; an admin all.
A ticket outside the caller's queues is answered 404, exactly like a ticket that does not exist, so
ticket numbers of other queues do not leak.
"""
from __future__ import annotations

import re
import time
import unicodedata
from typing import Any, Literal
from urllib.parse import quote

from fastapi import APIRouter, Body, Depends, Path, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from gateway.pipeline.stages.commands import DEFAULT_FIELDS, MAX_VALUE_CHARS
from gateway.store.base import ArticleDraft, TicketPage
from gateway.store.search import decode_cursor, encode_cursor
from gateway.http.deps import Principal, Problem, audit, principal, services
from gateway.http.ticket_mail import TicketMail, agent_for
from gateway.http.times import parse_when

router = APIRouter(tags=["tickets"])

MAX_LIMIT = 200
MAX_TEXT = 100_000          # characters of a reply or note
MAX_TAGS = 50
STATUSES = tuple(sorted(v.lower() for v in DEFAULT_FIELDS["Status"] or ()))      # as $Status=…$ by mail
PRIORITIES = tuple(sorted(v.lower() for v in DEFAULT_FIELDS["Priority"] or ()))  # as $Priority=…$
# Attachment types a browser may be told as they are: they cannot carry script when opened as
# files. Anything else (HTML, SVG, XML, JavaScript, unknown) is served as application/octet-stream.
SAFE_TYPES = frozenset({"application/pdf", "image/png", "image/jpeg", "image/gif", "image/webp", "application/zip", "audio/mpeg", "video/mp4",
                        "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
                        "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet", "application/msword",
                        "application/vnd.ms-excel"})

PROBLEMS: dict[int | str, dict[str, Any]] = {
    401: {"description": "no, unknown or revoked token (problem+json)"},
    403: {"description": "the token's role or queues do not allow this (problem+json)"},
    404: {"description": "no such ticket, or not in the token's queues (problem+json)"},
    422: {"description": "invalid parameters or body (problem+json, with errors)"},
    429: {"description": "over [http] rate_per_token; see Retry-After (problem+json)"},
}


# -- models -----------------------------------------------------------------------------------------
class TicketSummary(BaseModel):
    id: int
    number: str
    subject: str
    status: str
    priority: str
    queue: str
    mailbox: str
    category: str
    assignee: str
    tags: list[str]
    flags: list[str]
    fields: dict[str, Any]
    requester: str = Field(description="the requester's address")
    requester_name: str
    linked_ticket_id: int | None
    created_at: str = Field(description="RFC 3339 UTC")
    updated_at: str
    closed_at: str | None


class TicketList(BaseModel):
    items: list[TicketSummary] = Field(description="newest first")
    next_cursor: str | None = Field(description="pass as cursor= for the next (older) page; null at the end. "
                                                "A search page may hold fewer than limit items and still have one.")


class AttachmentOut(BaseModel):
    id: int
    filename: str
    content_type: str = Field(description="as the mail declared it (the download is served by SAFE type only)")
    size: int
    sha256: str
    inline: bool
    content_id: str
    url: str = Field(description="the download path (always Content-Disposition: attachment)")


class StrippedOut(BaseModel):
    filename: str
    content_type: str
    size: int
    sha256: str
    reason: str


class ArticleOut(BaseModel):
    model_config = ConfigDict(populate_by_name=True)
    id: int
    from_: str = Field(alias="from", description="sender address (an agent's for replies and notes)")
    from_name: str
    to: list[str]
    cc: list[str]
    subject: str
    body_text: str
    body_html: str = Field(description="sanitised HTML")
    new_text: str = Field(description="the text without quoted history and signature")
    visibility: Literal["public", "internal"]
    kind: str = Field(description="email | note | system")
    message_id: str
    created_at: str
    attachments: list[AttachmentOut]
    stripped_attachments: list[StrippedOut]
    authentication_results: str | None = Field(description="the Authentication-Results we stamped")
    auth: dict[str, Any] | None = Field(description="SPF/DKIM/DMARC/ARC results as stored")


class Participant(BaseModel):
    email: str
    name: str
    role: str = Field(description="requester | cc")
    undeliverable: bool


class HistoryRow(BaseModel):
    at: str
    actor: str
    action: str
    detail: dict[str, Any]


class TicketDetail(TicketSummary):
    articles: list[ArticleOut]
    participants: list[Participant]
    history: list[HistoryRow]


class TicketPatch(BaseModel):
    """Fields to change; those left out stay. Values are checked as the mail commands check them."""

    model_config = ConfigDict(extra="forbid")
    status: str | None = Field(None, description=f"one of {', '.join(STATUSES)}")
    priority: str | None = Field(None, description=f"one of {', '.join(PRIORITIES)}")
    assignee: str | None = Field(None, max_length=MAX_VALUE_CHARS, description="'' to unassign")
    queue: str | None = Field(None, description="a configured queue the token may write")
    category: str | None = Field(None, max_length=MAX_VALUE_CHARS)
    tags: list[str] | None = Field(None, max_length=MAX_TAGS, description="the whole new list")


class Change(BaseModel):
    ticket: TicketSummary
    old: dict[str, Any]
    new: dict[str, Any]


class TextIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str = Field(min_length=1, max_length=MAX_TEXT)


class Posted(BaseModel):
    article: ArticleOut
    mail_queued: bool = Field(description="a mail to the customer was queued with the reply (false for notes, "
                                          "and for a reply held as a note by the agent-conflict rule)")


# -- helpers ----------------------------------------------------------------------------------------
def _summary(t: dict[str, Any]) -> TicketSummary:
    return TicketSummary(**{k: t[k] for k in TicketSummary.model_fields})


def _article(a: dict[str, Any], number: str) -> ArticleOut:
    atts = [AttachmentOut(**x, url=f"/api/v1/tickets/{quote(number)}/attachments/{x['id']}")
            for x in a["attachments"]]
    return ArticleOut(**{**a, "attachments": atts})


def _detail(t: dict[str, Any]) -> TicketDetail:
    return TicketDetail(**_summary(t).model_dump(), articles=[_article(a, t["number"]) for a in t["articles"]],
                        participants=t["participants"], history=t["history"])


def _scope(who: Principal) -> tuple[str, ...]:
    return () if who.role == "admin" else who.queues


async def _ticket(request: Request, who: Principal, number: str, write: bool = False) -> dict[str, Any]:
    """The ticket, or 404 when it does not exist or is outside the caller's queues; 403 when the
    caller may read but not write it."""
    t = await services(request).store.ticket_get(number) if len(number) <= 64 else None
    if t is None or not who.can_read(t["queue"]):
        raise Problem(404, "Not Found", f"no ticket {number}")
    if write and not who.can_write(t["queue"]):
        raise Problem(403, "Forbidden", f"token {who.name!r} may not change tickets of queue {t['queue']!r}")
    return t


def _mail(request: Request) -> TicketMail:
    """The mail path's notification hook for the running config (made again after a reload)."""
    svc = services(request)
    state = request.app.state
    mail = getattr(state, "ticket_mail", None)
    if mail is None or mail.cfg is not svc.cfg:
        mail = state.ticket_mail = TicketMail(svc.cfg)
    return mail


def _relay_on(cfg: Any) -> bool:
    relay = getattr(cfg, "relay", None)
    return relay is not None and relay.enabled


def _queues(cfg: Any) -> set[str]:
    tw = getattr(cfg, "twoway", None)
    return {mb.queue for mb in cfg.mailboxes} | {q.name for q in (tw.queues if tw is not None else ())}


def _bad(field: str, msg: str) -> Problem:
    return Problem(422, "Unprocessable Content", f"body.{field}: {msg}",
                   extra={"errors": [{"loc": ["body", field], "msg": msg, "type": "value_error"}]})


def _clean(value: str, field: str) -> str:
    value = value.strip()
    if any(unicodedata.category(c) in ("Cc", "Cf") for c in value):
        raise _bad(field, "control characters are not allowed")
    return value


def _updates(body: TicketPatch, who: Principal, cfg: Any) -> dict[str, Any]:
    """The changes, checked like the mail commands (Status and Priority from their value sets, free
    Assignee and Category within the same length) plus a known queue the caller may write."""
    given = body.model_dump(exclude_unset=True)
    out: dict[str, Any] = {}
    for key, value in given.items():
        if value is None:
            raise _bad(key, "null is not a value; leave the field out to keep it")
        if key in ("status", "priority"):
            allowed = STATUSES if key == "status" else PRIORITIES
            if value.lower() not in allowed:
                raise _bad(key, f"{value!r} is not one of {', '.join(allowed)}")
            out[key] = value.lower()
        elif key == "queue":
            if value not in _queues(cfg):
                raise _bad(key, f"{value!r} is not a configured queue ({', '.join(sorted(_queues(cfg)))})")
            if not who.can_write(value):
                raise Problem(403, "Forbidden", f"token {who.name!r} may not move tickets to queue {value!r}")
            out[key] = value
        elif key == "tags":
            tags = [_clean(t, key) for t in value]
            if any(not t or len(t) > 64 or re.search(r"[\s,]", t) for t in tags):
                raise _bad(key, "a tag is 1 to 64 characters without spaces or commas")
            out[key] = list(dict.fromkeys(tags))
        else:
            out[key] = _clean(value, key)
    if not out:
        raise _bad("", "nothing to change: give at least one of status, priority, assignee, queue, category, tags")
    return out


# -- endpoints --------------------------------------------------------------------------------------
@router.get("/tickets", response_model=TicketList, responses=PROBLEMS,
            summary="Tickets, newest first: filters, full-text search, cursor pages")
async def list_tickets(request: Request, who: Principal = Depends(principal("viewer")),
                       status: str = Query("", max_length=64, description="e.g. open"),
                       queue: str = Query("", max_length=200),
                       assignee: str = Query("", max_length=MAX_VALUE_CHARS, description="address (any case)"),
                       requester: str = Query("", max_length=320, description="the requester's address"),
                       since: str | None = Query(None, description="created since: a duration back (2d, 12h) "
                                                                   "or an ISO date/time"),
                       q: str = Query("", max_length=500, description="words that must all occur in a subject "
                                                                      "or article text (whole words, any case)"),
                       cursor: str | None = Query(None, max_length=64, description="next_cursor of the page before"),
                       limit: int = Query(50, ge=1, le=MAX_LIMIT)) -> TicketList:
    if queue and not who.can_read(queue):
        return TicketList(items=[], next_cursor=None)  # nothing to see there (and no hint whether it exists)
    try:
        before = decode_cursor(cursor) if cursor else None
    except ValueError as exc:
        raise Problem(422, "Unprocessable Content", f"query.cursor: {exc}",
                      extra={"errors": [{"loc": ["query", "cursor"], "msg": str(exc), "type": "value_error"}]})
    page = TicketPage(status=status.lower(), queue=queue, assignee=assignee, requester=requester,
                      since=parse_when(since, "since"), text=q, scope=_scope(who), before=before, limit=limit)
    items, nxt = await services(request).store.tickets_page(page)
    return TicketList(items=[_summary(t) for t in items], next_cursor=encode_cursor(nxt) if nxt else None)


@router.get("/tickets/{number}", response_model=TicketDetail, responses=PROBLEMS,
            summary="One ticket: articles, participants, authentication results, history")
async def get_ticket(request: Request, number: str = Path(description="HD-1042 (or the numeric id)"),
                     who: Principal = Depends(principal("viewer"))) -> TicketDetail:
    return _detail(await _ticket(request, who, number))


@router.patch("/tickets/{number}", response_model=Change, responses=PROBLEMS,
              summary="Change status, priority, assignee, queue, category, tags")
async def patch_ticket(request: Request, body: TicketPatch, number: str = Path(),
                       who: Principal = Depends(principal("agent"))) -> Change:
    svc = services(request)
    t = await _ticket(request, who, number, write=True)
    updates = _updates(body, who, svc.cfg)
    agent = agent_for(svc.cfg, who.name)
    mail = _mail(request) if _relay_on(svc.cfg) else None
    before = mail.queued if mail is not None else 0
    out = await svc.store.ticket_update(t["id"], updates, agent.address, time.time(),
                                        hook=mail.update_hook(agent.address, updates) if mail is not None else None)
    if out is None:
        raise Problem(404, "Not Found", f"no ticket {number}")
    if mail is not None and mail.queued > before:
        svc.wake_relay()
    await audit(who, "ticket.update", t["number"], {"old": out["old"], "new": out["new"]}, request)
    fresh = await svc.store.ticket_get(str(t["id"]))
    return Change(ticket=_summary(fresh), old=out["old"], new=out["new"])


def _reply_subject(subject: str) -> str:
    return subject if re.match(r"(?i)^\s*re\s*:", subject) else f"Re: {subject}"


@router.post("/tickets/{number}/replies", response_model=Posted, status_code=201, responses={
    **PROBLEMS, 409: {"description": "outbound mail ([relay]) is not configured (problem+json)"}},
             summary="A public reply: stored and mailed to the requester and participants through the relay")
async def post_reply(request: Request, number: str = Path(), body: TextIn = Body(),
                     who: Principal = Depends(principal("agent"))) -> Posted:
    svc = services(request)
    t = await _ticket(request, who, number, write=True)
    if not _relay_on(svc.cfg):
        raise Problem(409, "Conflict", "outbound mail is not configured ([relay] smarthost): a reply could not be "
                                       "sent; add a note instead")
    agent = agent_for(svc.cfg, who.name)
    draft = ArticleDraft(from_addr=agent.address, from_name=agent.name, subject=_reply_subject(t["subject"]),
                         body_text=body.text, body_html="", message_id="", new_text=body.text)
    mail = _mail(request)
    before = mail.queued
    aid = await svc.store.ticket_add_article(t["id"], draft, agent.address, time.time(), agent_reply=True,
                                             hook=mail.reply_hook(draft))
    if aid is None:
        raise Problem(404, "Not Found", f"no ticket {number}")
    queued = mail.queued > before
    if queued:
        svc.wake_relay()
    art = await _stored_article(request, t["id"], aid)
    await audit(who, "ticket.reply", t["number"], {"article_id": aid, "mail_queued": queued,
                                                   "visibility": art.visibility}, request)
    return Posted(article=art, mail_queued=queued and art.visibility == "public")


@router.post("/tickets/{number}/notes", response_model=Posted, status_code=201, responses=PROBLEMS,
             summary="An internal note (never mailed to the customer)")
async def post_note(request: Request, number: str = Path(), body: TextIn = Body(),
                    who: Principal = Depends(principal("agent"))) -> Posted:
    svc = services(request)
    t = await _ticket(request, who, number, write=True)
    agent = agent_for(svc.cfg, who.name)
    draft = ArticleDraft(from_addr=agent.address, from_name=agent.name, subject=t["subject"], body_text=body.text,
                         body_html="", message_id="", visibility="internal", kind="note", new_text=body.text)
    aid = await svc.store.ticket_add_article(t["id"], draft, agent.address, time.time())
    if aid is None:
        raise Problem(404, "Not Found", f"no ticket {number}")
    await audit(who, "ticket.note", t["number"], {"article_id": aid}, request)
    return Posted(article=await _stored_article(request, t["id"], aid), mail_queued=False)


async def _stored_article(request: Request, ticket_id: int, article_id: int) -> ArticleOut:
    t = await services(request).store.ticket_get(str(ticket_id))
    a = next(a for a in t["articles"] if a["id"] == article_id)
    return _article(a, t["number"])


def content_disposition(filename: str) -> str:
    """``attachment`` with an ASCII fallback name and the exact one as RFC 8187 ``filename*``
    (RFC 6266): no quote, backslash, control character or path separator reaches the header."""
    name = unicodedata.normalize("NFC", filename or "").replace("/", "_").replace("\\", "_")
    name = "".join(c for c in name if unicodedata.category(c)[0] != "C").strip().lstrip(".") or "attachment"
    name = name[:200]
    ascii_name = re.sub(r"[^A-Za-z0-9._ ()+-]", "_", unicodedata.normalize("NFKD", name).encode(
        "ascii", "ignore").decode()).strip() or "attachment"
    return f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(name, safe='')}"


@router.get("/tickets/{number}/attachments/{attachment_id}", response_class=Response, responses={
    **PROBLEMS, 200: {"description": "the file, always as a download", "content": {"application/octet-stream": {}}}},
            summary="Download an attachment (Content-Disposition: attachment, nosniff; never inline)")
async def get_attachment(request: Request, number: str = Path(), attachment_id: int = Path(ge=1, lt=2**63),
                         who: Principal = Depends(principal("viewer"))) -> Response:
    t = await _ticket(request, who, number)
    got = await services(request).store.attachment_get(attachment_id)
    if got is None or got[0]["ticket_id"] != t["id"]:
        raise Problem(404, "Not Found", f"no attachment {attachment_id} on ticket {t['number']}")
    meta, data = got
    ctype = meta["content_type"].split(";")[0].strip().lower()
    return Response(data, media_type=ctype if ctype in SAFE_TYPES else "application/octet-stream", headers={
        "Content-Disposition": content_disposition(meta["filename"]),
        "X-Content-Type-Options": "nosniff",
        "Content-Security-Policy": "default-src 'none'; sandbox",
        "Cache-Control": "private, no-store",
    })
