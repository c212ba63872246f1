"""``POST /api/v1/inbound/{mailbox}``: mail forwarded by a hosted inbound service (docs/api.md, "HTTP inbound").

A thin route: the body and two request headers go to gateway/ingress/service.py, which authenticates,
reads, checks and spools; every refusal comes back as an :class:`InboundError` and leaves as
problem+json. No API token here: each mailbox is authenticated by its service's own mechanism
(``[[http.inbound]] auth``).
"""
from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from gateway.ingress.http_inbound import InboundError
from gateway.ingress.service import RETRY_AFTER, InboundService
from gateway.http.deps import Problem, client_address, services

router = APIRouter(tags=["inbound"])


class InboundAccepted(BaseModel):
    """The post is durably spooled (or was already: ``duplicate``); the pipeline makes the ticket."""

    spool_id: str = Field(description="The spool entry (also the trace id); the same for a repeated post.")
    duplicate: bool = Field(description="True when this post repeats one already spooled: nothing new was stored.")
    mailbox: str = Field(description="The mailbox address the message was spooled for.")
    format: str = Field(description="mime | postmark | mailgun | sendgrid (what the post was read as).")


_PROBLEM = {"content": {"application/problem+json": {}}}
_BODY_TYPES = ("message/rfc822", "text/plain", "application/json", "multipart/form-data",
               "application/x-www-form-urlencoded")


def inbound_service(request: Request) -> InboundService:
    """The running gateway's inbound service, rebuilt when a reload replaced the config (new secrets and
    checks; the Mailgun replay memory is kept so a reload cannot reopen its window)."""
    svc = services(request)
    state = request.app.state
    current: InboundService | None = getattr(state, "inbound", None)
    if current is None or current.cfg is not svc.cfg:
        state.inbound = InboundService(svc.cfg, svc.store, svc.spool, svc.metrics, executor=svc.executor,
                                       resolver=svc.resolver, guard=current.guard if current is not None else None)
        if current is not None:
            current.close()
    return state.inbound


@router.post(
    "/inbound/{mailbox}", response_model=InboundAccepted, summary="Mail from a hosted inbound service",
    description="Raw MIME, Postmark inbound JSON, a Mailgun route forward or a SendGrid Inbound Parse post, "
                "authenticated by the mailbox's `[[http.inbound]] auth`. 200 only once the message is durably "
                "spooled; a repeated post answers 200 with the same `spool_id`.",
    responses={401: {"description": "Missing or wrong service authentication; nothing spooled", **_PROBLEM},
               404: {"description": "No `[[http.inbound]]` of that name", **_PROBLEM},
               413: {"description": "Over the mailbox's size limit", **_PROBLEM},
               400: {"description": "Malformed JSON", **_PROBLEM},
               422: {"description": "Unreadable post, or a message SMTP would refuse (5xx)", **_PROBLEM},
               503: {"description": "Try again later (what SMTP answers 4xx); has Retry-After", **_PROBLEM}},
    openapi_extra={"requestBody": {"required": True, "content": {t: {} for t in _BODY_TYPES}}})
async def post_inbound(mailbox: str, request: Request) -> Any:
    svc = inbound_service(request)
    try:
        svc.find(mailbox)  # 404 before reading a body for nobody
        body = await request.body()
        result = await svc.accept(mailbox, content_type=request.headers.get("content-type", ""),
                                  authorization=request.headers.get("authorization", ""), body=body,
                                  client_ip=client_address(request))
    except InboundError as exc:
        headers = {"Retry-After": str(RETRY_AFTER)} if exc.status == 503 else {}
        if exc.status == 401:
            headers["WWW-Authenticate"] = _challenge(svc, mailbox)
        raise Problem(exc.status, exc.title, exc.detail, headers=headers) from None
    if not result.duplicate:
        services(request).wake_pipeline()
    return InboundAccepted(spool_id=result.spool_id, duplicate=result.duplicate, mailbox=result.mailbox,
                           format=result.format)


def _challenge(svc: InboundService, name: str) -> str:
    try:
        kind = svc.find(name).auth
    except InboundError:
        return 'Bearer realm="ticketmx inbound"'
    return {"basic": 'Basic realm="ticketmx inbound"', "bearer": 'Bearer realm="ticketmx inbound"'}.get(
        kind, 'Mailgun-Signature realm="ticketmx inbound"')
