"""``/api/v1/sources``: the pulled mailboxes (docs/sources.md, docs/api.md "Sources").

``GET`` lists them as `ticketmx source list --json` does (admins: it names servers and accounts);
``POST .../{name}/test`` runs `ticketmx source test` and returns the step trace (admins; it may create the
target folders); ``POST .../{name}/pause`` and ``/resume`` (admins, audited) act on the running manager at
once and on the store (kept across restarts).
"""
from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field

from gateway.http.api_admin import PROBLEMS
from gateway.http.deps import Principal, Problem, audit, principal, services
from gateway.ingress.sources.cli import rows
from gateway.ingress.sources.manager import build_source, pause_source, resume_source
from gateway.store.render import iso

router = APIRouter()
NOT_FOUND = {**PROBLEMS, 404: {"description": "no [[source]] of that name (problem+json)"}}


class SourceOut(BaseModel):
    name: str
    kind: str | None
    mailbox: str | None
    status: str = Field(description="active | draft | paused | removed (state kept of a source no longer configured)")
    configured_status: str | None
    paused_reason: str
    folder: str | None
    server: str | None
    last_success: str | None
    last_error: str
    last_error_kind: str
    last_error_at: str | None
    failures: int = Field(description="failures in a row")
    backlog: int = Field(description="messages in the folder not yet imported, at the last cycle")
    imported: int
    pending: int = Field(description="imported, waiting for the pipeline's outcome or their move")


class StepOut(BaseModel):
    name: str
    ok: bool
    detail: str


class TestOut(BaseModel):
    source: str
    kind: str
    ok: bool
    steps: list[StepOut]


class Toggled(BaseModel):
    source: str
    status: str


def _out(r: dict[str, Any]) -> SourceOut:
    return SourceOut(**{**r, "last_success": iso(r["last_success"]), "last_error_at": iso(r["last_error_at"])})


def _find(request: Request, name: str) -> Any:
    sc = next((s for s in services(request).cfg.sources if s.name == name), None)
    if sc is None:
        raise Problem(404, "Not Found", f"no [[source]] named {name!r}")
    return sc


@router.get("/sources", response_model=list[SourceOut], tags=["sources"], responses=PROBLEMS,
            summary="The pulled mailboxes: status, last success, last error, backlog (admins)")
async def list_sources(request: Request, who: Principal = Depends(principal("admin"))) -> list[SourceOut]:
    svc = services(request)
    return [_out(r) for r in await rows(svc.cfg, svc.store)]


@router.post("/sources/{name}/test", response_model=TestOut, tags=["sources"], responses=NOT_FOUND,
             summary="Every step of a connection to the source, with the server's answers (secrets masked)")
async def test_source(name: str, request: Request, who: Principal = Depends(principal("admin"))) -> TestOut:
    sc = _find(request, name)
    steps = await build_source(sc).test()
    await audit(who, "source.test", sc.name, {"ok": all(s.ok for s in steps)}, request)
    return TestOut(source=sc.name, kind=sc.kind, ok=bool(steps) and all(s.ok for s in steps),
                   steps=[StepOut(name=s.name, ok=s.ok, detail=s.detail) for s in steps])


@router.post("/sources/{name}/pause", response_model=Toggled, tags=["sources"], responses=NOT_FOUND,
             summary="Stop fetching from a source (kept across restarts; audited)")
async def pause(name: str, request: Request, who: Principal = Depends(principal("admin"))) -> Toggled:
    sc = _find(request, name)
    svc = services(request)
    reason = f"paused over the API by {who.name}"
    if svc.sources is not None:
        await svc.sources.pause(sc.name, reason)
    else:
        await pause_source(svc.store, sc.name, reason)
    await audit(who, "source.pause", sc.name, {}, request)
    return Toggled(source=sc.name, status="paused")


@router.post("/sources/{name}/resume", response_model=Toggled, tags=["sources"], responses=NOT_FOUND,
             summary="Fetch again, also after stop_after_failures paused the source (audited)")
async def resume(name: str, request: Request, who: Principal = Depends(principal("admin"))) -> Toggled:
    sc = _find(request, name)
    svc = services(request)
    if svc.sources is not None:
        await svc.sources.resume(sc.name)
    else:
        await resume_source(svc.store, sc.name)
    await audit(who, "source.resume", sc.name, {}, request)
    return Toggled(source=sc.name, status=sc.status)
