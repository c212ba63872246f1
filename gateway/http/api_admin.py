"""Admin endpoints under /api/v1: the caller (``/me``), spool messages (list, show, raw, replay,
release, delete, trace), the relay queue and the audit log. docs/api.md describes each."""
from __future__ import annotations

import time
from typing import Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

from gateway.store.relay_queue import STATES as RELAY_STATES
from gateway.store.relay_queue import RelayQueue, queue_row_json
from gateway.store.relay_queue import retry as relay_retry_in

from gateway.pipeline.runner import spool_ops
from gateway.store.base import ALL_STATES, SpoolEntry, SpoolQuery
from gateway.store.render import iso, spool_dict
from gateway.http import tokens
from gateway.http.deps import Principal, Problem, audit_row, principal, services
from gateway.http.times import parse_when

router = APIRouter()

PROBLEMS: dict[int | str, dict[str, Any]] = {
    401: {"description": "no, unknown or revoked token (problem+json)"},
    403: {"description": "the token's role or queues do not allow this (problem+json)"},
    429: {"description": "over [http] rate_per_token; see Retry-After (problem+json)"},
}


class Me(BaseModel):
    name: str
    role: str = Field(description="admin | agent | viewer")
    queues: list[str] = Field(description="the token's queues; empty = every queue")


@router.get("/me", response_model=Me, tags=["tokens"], responses=PROBLEMS, summary="The calling token")
async def me(who: Principal = Depends(principal("viewer"))) -> Me:
    return Me(name=who.name, role=who.role, queues=list(who.queues))


class AuditRow(BaseModel):
    id: int
    at: str = Field(description="RFC 3339 UTC")
    actor: str = Field(description="token name, or cli:<OS user> for the token commands")
    role: str
    action: str = Field(description="e.g. message.replay, relay.retry, token.create")
    target: str
    detail: dict[str, Any]
    client: str = Field(description="client address (\"local\" for the CLI)")


class AuditPage(BaseModel):
    items: list[AuditRow]
    next_before: int | None = Field(None, description="pass as before= for the next (older) page")


@router.get("/audit", response_model=AuditPage, tags=["audit"], responses=PROBLEMS,
            summary="The audit log, newest first (admins)")
async def audit_log(request: Request, who: Principal = Depends(principal("admin")),
                    actor: str = Query("", description="token name"),
                    action: str = Query("", description="e.g. message.release"),
                    target: str = Query("", description="e.g. a spool id"),
                    since: str | None = Query(None, description="a duration back (2d, 12h) or an ISO date/time"),
                    until: str | None = Query(None, description="a duration back (2d, 12h) or an ISO date/time"),
                    before: int | None = Query(None, ge=1, description="only rows older than this id (paging)"),
                    limit: int = Query(100, ge=1, le=1000)) -> AuditPage:
    rows = await tokens.audit_list(services(request).store, actor=actor, action=action, target=target,
                                   since=parse_when(since, "since"), until=parse_when(until, "until"),
                                   before_id=before, limit=limit)
    items = [AuditRow(**{**r, "at": iso(r["at"])}) for r in rows]
    return AuditPage(items=items, next_before=items[-1].id if len(items) == limit else None)


# -- messages (spool entries) ---------------------------------------------------------------------------

NOT_FOUND = {404: {"description": "no such entry (problem+json)"}}
CONFLICT = {409: {"description": "the entry's state does not allow this; detail says why (problem+json)"}}


class Decision(BaseModel):
    stage: str | None
    verdict: str | None
    reason: str = ""


class MessageSummary(BaseModel):
    id: str = Field(description="spool id (time-ordered)")
    state: str = Field(description=", ".join(ALL_STATES))
    reason: str
    received_at: str | None
    finished_at: str | None
    mail_from: str = Field(description="envelope sender")
    rcpt_tos: list[str]
    mailboxes: list[str]
    queues: list[str] = Field(description="the queues of its mailboxes")
    message_id: str
    size: int
    attempts: int
    ticket_id: int | None
    article_id: int | None


class MessageDetail(MessageSummary):
    peer_ip: str
    helo: str
    tls: dict[str, Any] | None
    chunks: int
    interrupted: int
    last_error: str
    flags: list[str]
    ticket_number: str | None
    authentication_results: str | None = Field(description="the Authentication-Results header we added")
    auth: dict[str, Any] | None = Field(description="SPF, DKIM, DMARC, ARC results as evaluated at SMTP time")
    history: list[dict[str, Any]] = Field(description="every stage's decision, in order, per attempt")
    decisions: list[Decision]
    traceback: str
    raw_kept: bool = Field(description="false once the raw message was deleted")
    released: dict[str, Any] | None = Field(description="a pending operator release {stage, by, at, forced}")
    audit: list[dict[str, Any]] = Field(description="operator actions on this entry (release, delete)")


class MessagePage(BaseModel):
    items: list[MessageSummary]
    next_before: str | None = Field(None, description="pass as before= for the next (older) page")


class TraceResult(BaseModel):
    items: list[MessageDetail]


def _queues_of(cfg: Any, mailboxes: Any) -> list[str]:
    by_address = {a.lower(): mb.queue for mb in cfg.mailboxes for a in mb.addresses()}
    return sorted({by_address[m.lower()] for m in mailboxes if m.lower() in by_address})


def _scope(cfg: Any, who: Principal) -> frozenset[str] | None:
    """The mailbox addresses a token may see (None: every one)."""
    if who.role == "admin" or not who.queues:
        return None
    return frozenset(a.lower() for mb in cfg.mailboxes if mb.queue in who.queues for a in mb.addresses())


def _summary(cfg: Any, e: SpoolEntry) -> MessageSummary:
    d = spool_dict(e)
    return MessageSummary(**{k: d[k] for k in MessageSummary.model_fields if k in d},
                          queues=_queues_of(cfg, e.mailboxes))


async def message_detail(svc: Any, e: SpoolEntry) -> MessageDetail:
    """One entry as ``GET /messages/{id}`` answers it (the web UI shows the same)."""
    number = None
    if e.ticket_id is not None:
        t = await svc.store.ticket_get(str(e.ticket_id))
        number = t["number"] if t else None
    d = spool_dict(e, number)
    d.update(queues=_queues_of(svc.cfg, e.mailboxes), raw_kept=spool_ops.has_raw(e), released=e.released,
             audit=await svc.store.spool_audit(e.id))
    return MessageDetail(**d)


async def find_entry(svc: Any, who: Principal, spool_id: str) -> SpoolEntry:
    """The entry, if ``who`` may read it; a 404 Problem otherwise (an entry outside its queues is not
    shown to exist)."""
    e = await svc.store.spool_get(spool_id)
    if e is None:
        raise Problem(404, "Not Found", f"no message {spool_id}")
    scope = _scope(svc.cfg, who)
    if scope is not None and not scope.intersection(m.lower() for m in e.mailboxes):
        raise Problem(404, "Not Found", f"no message {spool_id}")
    return e


async def _entry(request: Request, who: Principal, spool_id: str) -> SpoolEntry:
    return await find_entry(services(request), who, spool_id)


@router.get("/messages", response_model=MessagePage, tags=["messages"], responses=PROBLEMS,
            summary="Spool entries, newest first (e.g. state=quarantined)")
async def list_messages(request: Request, who: Principal = Depends(principal("viewer")),
                        state: Literal[ALL_STATES] | None = Query(None, description="only this state"),
                        before: str = Query("", max_length=64, description="only entries older than this id "
                                                                           "(the next_before of a page)"),
                        limit: int = Query(50, ge=1, le=200)) -> MessagePage:
    svc = services(request)
    entries = await svc.store.spool_find(SpoolQuery(state=state or "", before=before, limit=limit,
                                                    mailboxes=_scope(svc.cfg, who)))
    items = [_summary(svc.cfg, e) for e in entries]
    return MessagePage(items=items, next_before=items[-1].id if len(items) == limit else None)


@router.get("/messages/{spool_id}", response_model=MessageDetail, tags=["messages"],
            responses={**PROBLEMS, **NOT_FOUND}, summary="One entry: auth results, stage history, audit")
async def get_message(spool_id: str, request: Request, who: Principal = Depends(principal("viewer"))
                      ) -> MessageDetail:
    return await message_detail(services(request), await _entry(request, who, spool_id))


@router.get("/messages/{spool_id}/raw", tags=["messages"], response_class=StreamingResponse,
            responses={200: {"content": {"message/rfc822": {}}, "description": "the message as spooled"},
                       **PROBLEMS, **NOT_FOUND, 410: {"description": "its raw message was deleted"}},
            summary="The raw message as spooled (always an attachment)")
async def get_raw(spool_id: str, request: Request, who: Principal = Depends(principal("viewer"))
                  ) -> StreamingResponse:
    e = await _entry(request, who, spool_id)
    if not spool_ops.has_raw(e):
        raise Problem(410, "Gone", f"the raw message of {spool_id} was deleted (operator or [retention] raw_days)")
    store = services(request).store

    async def body() -> Any:
        yield e.raw
        async for chunk in store.spool_body_chunks(e):  # a large message: streamed, never joined
            yield chunk
    return StreamingResponse(body(), media_type="message/rfc822", headers={
        "Content-Disposition": f'attachment; filename="{e.id}.eml"', "Content-Length": str(e.size),
        "X-Content-Type-Options": "nosniff", "Cache-Control": "no-store"})


API_HOW = spool_ops.How(replay="POST /api/v1/messages/{id}/replay", delete="DELETE /api/v1/messages/{id}",
                        force='Post again with {{"force": true}}')


class Replayed(BaseModel):
    replayed: str


async def replay_entry(svc: Any, who: Principal, e: SpoolEntry, request: Request) -> None:
    """Replay ``e`` as ``who`` (the spool_ops checks, the audit row in the same transaction, a pipeline
    wake-up); a 409 Problem saying why not. The API and the web UI (gateway/ui) both call this."""
    why = spool_ops.replay_refusal(e)
    row = audit_row(who, "message.replay", e.id, {"state": e.state, "reason": e.reason}, request)
    if not why and not await svc.store.spool_replay(e.id, also=row):
        why = "it changed meanwhile"
    if why:
        raise Problem(409, "Conflict", f"cannot replay {e.id}: {why}")
    svc.wake_pipeline()


@router.post("/messages/{spool_id}/replay", response_model=Replayed, status_code=202, tags=["messages"],
             responses={**PROBLEMS, **NOT_FOUND, **CONFLICT},
             summary="Run the pipeline on the entry again (idempotent: never a second ticket)")
async def replay_message(spool_id: str, request: Request, who: Principal = Depends(principal("admin"))
                         ) -> Replayed:
    e = await _entry(request, who, spool_id)
    await replay_entry(services(request), who, e, request)
    return Replayed(replayed=e.id)


class ReleaseRequest(BaseModel):
    force: bool = Field(False, description="release from the identity check too (the From DMARC evaluated "
                                           "becomes the requester; handled as suspicious mail)")


class Released(BaseModel):
    released: str
    stage: str = Field(description="the stage skipped once")
    by: str
    at: str
    forced: bool


async def release_entry(svc: Any, who: Principal, e: SpoolEntry, force: bool, request: Request,
                        how: spool_ops.How = API_HOW, actor_prefix: str = "api") -> Released:
    """Release ``e`` as ``who``: spool_ops' plan (the same refusals and force rule as the CLI), the audit
    row in the same transaction, a pipeline wake-up; a 409 Problem saying why not (in ``how``'s words)."""
    stage, why = spool_ops.release_plan(e, force, how)
    if stage is None:
        raise Problem(409, "Conflict", f"cannot release {e.id}: {why}")
    now = time.time()
    row = audit_row(who, "message.release", e.id, {"stage": stage, "reason": e.reason,
                                                   "forced": bool(force and stage == "identity")}, request)
    by = f"{actor_prefix}:{who.name}"
    record = await spool_ops.release(svc.store, e, stage, force, by, now, also=row)
    if record is None:
        raise Problem(409, "Conflict", f"cannot release {e.id}: it changed meanwhile (no longer quarantined)")
    svc.wake_pipeline()
    return Released(released=e.id, stage=stage, by=by, at=iso(now) or "", forced=record["forced"])


@router.post("/messages/{spool_id}/release", response_model=Released, status_code=202, tags=["messages"],
             responses={**PROBLEMS, **NOT_FOUND, **CONFLICT},
             summary="Process a quarantined entry as if it had passed the stage that held it")
async def release_message(spool_id: str, request: Request, body: ReleaseRequest | None = None,
                          who: Principal = Depends(principal("admin"))) -> Released:
    e = await _entry(request, who, spool_id)
    return await release_entry(services(request), who, e, bool(body and body.force), request)


class Deleted(BaseModel):
    deleted: str
    by: str


async def delete_entry(svc: Any, who: Principal, e: SpoolEntry, request: Request, actor_prefix: str = "api"
                       ) -> Deleted:
    """Delete the raw message of ``e`` as ``who`` (spool_ops' checks, the audit row in the same
    transaction); a 409 Problem saying why not."""
    why = spool_ops.delete_refusal(e)
    row = audit_row(who, "message.delete", e.id, {"state": e.state, "size": e.size, "message_id": e.message_id},
                    request)
    by = f"{actor_prefix}:{who.name}"
    if not why and not await spool_ops.delete(svc.store, e, by, also=row):
        why = "it changed meanwhile"
    if why:
        raise Problem(409, "Conflict", f"cannot delete {e.id}: {why}")
    return Deleted(deleted=e.id, by=by)


@router.delete("/messages/{spool_id}", response_model=Deleted, tags=["messages"],
               responses={**PROBLEMS, **NOT_FOUND, **CONFLICT},
               summary="Delete the raw message of a quarantined or suppressed entry (the entry and its history "
                       "stay)")
async def delete_message(spool_id: str, request: Request, who: Principal = Depends(principal("admin"))) -> Deleted:
    e = await _entry(request, who, spool_id)
    return await delete_entry(services(request), who, e, request)


async def trace_entries(svc: Any, who: Principal, *, message_id: str = "", sender: str = "", recipient: str = "",
                        since: str | None = None, until: str | None = None, limit: int = 50
                        ) -> list[MessageDetail]:
    """The entries matching every criterion given (at least one; a 422 Problem otherwise), in ``who``'s
    queues, each with its history: ``GET /trace`` and the web UI's trace page."""
    mid = message_id.strip()
    if mid.startswith("<") and mid.endswith(">"):
        mid = mid[1:-1].strip()
    t_since, t_until = parse_when(since, "since"), parse_when(until, "until")
    if not (mid or sender.strip() or recipient.strip() or t_since is not None or t_until is not None):
        raise Problem(422, "Unprocessable Content", "give at least one of message_id, sender, recipient, since, "
                      "until")
    entries = await svc.store.spool_find(SpoolQuery(message_id=mid, mail_from=sender.strip(),
                                                    rcpt=recipient.strip(), since=t_since, until=t_until,
                                                    limit=limit, mailboxes=_scope(svc.cfg, who)))
    return [await message_detail(svc, e) for e in entries]


@router.get("/trace", response_model=TraceResult, tags=["messages"], responses=PROBLEMS,
            summary="Trace a message: entries matching every criterion given, newest first")
async def trace(request: Request, who: Principal = Depends(principal("viewer")),
                message_id: str = Query("", max_length=1000, description="the Message-ID, with or without <>"),
                sender: str = Query("", max_length=320, description="envelope sender or header From address"),
                recipient: str = Query("", max_length=320, description="envelope recipient or the mailbox it "
                                                                       "reached"),
                since: str | None = Query(None, description="received since: 2d, 12h, 90m or an ISO date/time"),
                until: str | None = Query(None, description="received before: 2d, 12h, 90m or an ISO date/time"),
                limit: int = Query(50, ge=1, le=200)) -> TraceResult:
    return TraceResult(items=await trace_entries(services(request), who, message_id=message_id, sender=sender,
                                                 recipient=recipient, since=since, until=until, limit=limit))


# -- relay queue ----------------------------------------------------------------------------------------

class RelayRecipient(BaseModel):
    address: str
    kind: str
    state: str
    code: int | None
    reply: str | None
    host: str | None


class RelayItem(BaseModel):
    id: int
    ticket_id: int | None
    event: str
    mailbox: str
    mail_from: str
    message_id: str
    state: str = Field(description=", ".join(RELAY_STATES))
    attempts: int
    size: int | None
    next_attempt_at: str | None
    lease_owner: str | None
    last_error: str
    last_host: str | None
    created_at: str | None
    sent_at: str | None
    finished_at: str | None
    recipients: list[RelayRecipient]


class RelayQueuePage(BaseModel):
    counts: dict[str, int]
    oldest_age: float = Field(description="seconds since the oldest unfinished notification was queued")
    items: list[RelayItem]


@router.get("/relay/queue", response_model=RelayQueuePage, tags=["relay"], responses=PROBLEMS,
            summary="Outbound notifications, oldest first (admins)")
async def relay_queue(request: Request, who: Principal = Depends(principal("admin")),
                      state: Literal[RELAY_STATES] | None = Query(None),
                      limit: int = Query(100, ge=1, le=1000)) -> RelayQueuePage:
    q = RelayQueue(services(request).store)
    rows = [queue_row_json(r) for r in await q.list(state, limit)]
    return RelayQueuePage(counts=await q.counts(), oldest_age=await q.oldest_age(),
                          items=[RelayItem(**r) for r in rows])


class Retried(BaseModel):
    retried: list[int]


async def relay_retry_entry(svc: Any, who: Principal, mail_id: int, request: Request) -> None:
    """Queue notification ``mail_id`` again as ``who`` (its audit row in the same transaction, a relay
    wake-up); a 404 or 409 Problem saying why not. The API and the web UI call this."""
    row = audit_row(who, "relay.retry", str(mail_id), {}, request)
    now = time.time()

    def fn(conn: Any) -> bool:  # the retry and its audit row, one transaction
        done = relay_retry_in(conn, mail_id, now)
        if done:
            row(conn)
        return done
    if not await svc.store.transaction(fn):
        found = await RelayQueue(svc.store).get(mail_id)
        if found is None:
            raise Problem(404, "Not Found", f"no notification {mail_id}")
        raise Problem(409, "Conflict", f"cannot retry {mail_id}: it is {found['state']} (only dead or deferred "
                      "recipients are retried)")
    svc.wake_relay()


@router.post("/relay/{mail_id}/retry", response_model=Retried, status_code=202, tags=["relay"],
             responses={**PROBLEMS, 404: {"description": "no such notification"}, **CONFLICT},
             summary="Queue a dead or deferred notification again (admins)")
async def relay_retry(mail_id: int, request: Request, who: Principal = Depends(principal("admin"))) -> Retried:
    await relay_retry_entry(services(request), who, mail_id, request)
    return Retried(retried=[mail_id])
