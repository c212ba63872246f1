"""Reply templates (canned responses) for admins: /ui/admin/templates lists, adds, edits and deletes them
(docs/ui.md, "Reply templates"). The rules — what a template may contain, the size caps, the store and
the audit rows ``template.add`` / ``template.update`` / ``template.delete`` — are gateway/http/
reply_templates.py's, the module behind ``GET /api/v1/reply-templates`` too; a refused template comes
back in its form with the reason and the line.
"""
from __future__ import annotations

from typing import Any

from fastapi import Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from gateway.http import api_tickets, reply_templates as rt
from gateway.http.deps import Problem, client_address, services
from gateway.ui.admin import ADMIN_NAV, show
from gateway.ui.web import SECURITY_HEADERS, Page, page, router_for

router = router_for()
HERE = "/ui/admin/templates"
ADMIN_NAV.insert(max(0, len(ADMIN_NAV) - 2), (HERE, "Reply templates"))   # before Configuration and Audit

SAMPLE_TICKET = {"number": "HD-1042", "subject": "Printer on fire", "status": "open", "priority": "normal",
                 "queue": "IT", "requester_name": "Alice Example", "requester": "alice@example.com"}
DONE = {"add": "Template added.", "update": "Template saved.", "delete": "Template deleted."}


def _queues(request: Request, current: str | None = None) -> list[str]:
    qs = set(api_tickets._queues(services(request).cfg))
    if current:
        qs.add(current)          # a queue no longer configured stays visible on its template
    return sorted(qs)


async def _list_page(request: Request, p: Page, status: int = 200, form: dict[str, Any] | None = None,
                     error: str = "", notice: str = "") -> HTMLResponse:
    items = await rt.list_for(services(request).store, None)
    return show(request, "admin/templates.html", p, "Reply templates", HERE, status=status, items=items,
                form=form or {"id": None, "name": "", "queue": "", "body": ""}, queues=_queues(request),
                fields=rt.FIELDS, filters=rt.FILTERS, max_template=rt.MAX_TEMPLATE, error=error, notice=notice,
                preview="")


async def _edit_page(request: Request, p: Page, form: dict[str, Any], status: int = 200, error: str = "",
                     notice: str = "") -> HTMLResponse:
    preview = ""
    if not error:
        try:
            preview = rt.render(form["body"], rt.context(SAMPLE_TICKET, p.user.name or p.user.email, p.user.email))
        except rt.TemplateError as exc:
            error = f"This template cannot be used as stored: {exc}"
    return show(request, "admin/template_edit.html", p, f"Reply template: {form['name']}", HERE, status=status,
                form=form, queues=_queues(request, form.get("queue")), fields=rt.FIELDS, filters=rt.FILTERS,
                max_template=rt.MAX_TEMPLATE, error=error, notice=notice, preview=preview)


def _form_of(t: rt.ReplyTemplate) -> dict[str, Any]:
    return {"id": t.id, "name": t.name, "queue": t.queue or "", "body": t.body, "updated": t.updated,
            "updated_by": t.updated_by}


@router.get(HERE)
async def templates(request: Request, p: Page = Depends(page("admin")), done: str = "") -> HTMLResponse:
    return await _list_page(request, p, notice=DONE.get(done, ""))


@router.get(HERE + "/{template_id}")
async def edit(request: Request, template_id: int, p: Page = Depends(page("admin")), done: str = ""
               ) -> HTMLResponse:
    t = await rt.get(services(request).store, template_id)
    if t is None:
        raise Problem(404, "Not Found", f"no template {template_id}")
    return await _edit_page(request, p, _form_of(t), notice=DONE.get(done, ""))


async def _save(request: Request, p: Page, template_id: int | None) -> Response:
    form = await request.form()
    raw = {"id": template_id, "name": str(form.get("name", ""))[:1000],
           "queue": str(form.get("queue", "")).strip(), "body": str(form.get("body", ""))[:rt.MAX_TEMPLATE * 2]}
    try:
        name = rt.clean_name(raw["name"])
        queue = raw["queue"] or None
        if queue is not None and queue not in _queues(request):
            raise rt.TemplateError(f"{queue!r} is not a configured queue")
        if len(str(form.get("body", ""))) > rt.MAX_TEMPLATE:
            raise rt.TemplateError(f"the template has {len(str(form.get('body', ''))):,} characters; "
                                   f"at most {rt.MAX_TEMPLATE:,}")
        body = rt.clean_body(raw["body"])
        saved = await rt.save(services(request).store, p.who, client_address(request), template_id, name, queue, body)
    except rt.TemplateError as exc:
        error = f"Not saved: {exc}."
        if template_id is None:
            return await _list_page(request, p, status=422, form=raw, error=error)
        return await _edit_page(request, p, raw, status=422, error=error)
    return RedirectResponse(f"{HERE}/{saved.id}?done={'add' if template_id is None else 'update'}",
                            status_code=303, headers=SECURITY_HEADERS)


@router.post(HERE)
async def add(request: Request, p: Page = Depends(page("admin"))) -> Response:
    return await _save(request, p, None)


@router.post(HERE + "/{template_id}")
async def update(request: Request, template_id: int, p: Page = Depends(page("admin"))) -> Response:
    if await rt.get(services(request).store, template_id) is None:
        raise Problem(404, "Not Found", f"no template {template_id}")
    return await _save(request, p, template_id)


@router.post(HERE + "/{template_id}/delete")
async def delete(request: Request, template_id: int, p: Page = Depends(page("admin"))) -> Response:
    gone = await rt.delete(services(request).store, p.who, client_address(request), template_id)
    if gone is None:
        raise Problem(404, "Not Found", f"no template {template_id}")
    return RedirectResponse(f"{HERE}?done=delete", status_code=303, headers=SECURITY_HEADERS)


__all__ = ["router"]
