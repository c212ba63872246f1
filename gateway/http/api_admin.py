"""Admin endpoints under /api/v1: the caller (``/me``), spool messages (list, show, raw, replay,
release, delete, trace), the relay queue and the audit log. docs/api.md describes each."""
from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, Field

from ..store.render import iso
from . import tokens
from .deps import Principal, Problem, principal, services
from .times import parse_when

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
