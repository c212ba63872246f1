"""Reply templates (canned responses): kept in the store, checked, rendered; ``GET /api/v1/reply-templates``.

Admins keep them (the UI's /ui/admin/templates); agents pick one in the reply form of a ticket of their
queues. A template is Jinja2 text rendered in a ``SandboxedEnvironment`` over a small fixed context
(``ticket``, ``requester``, ``agent``). The sandbox alone stops unsafe attribute access, not cost, so a
template is also *checked* — on every save and again before every render — against a whitelist of
syntax: output expressions, the known fields, constants, ``if``/``elif``/``else`` (and the inline
``a if b else c``), comparisons, ``and``/``or``/``not``, ``~`` and five filters. No loop, call, macro,
``set``, include, import or arithmetic gets through, so a render costs about the template's size times
the size of the fields; the output is capped as well (:data:`MAX_RENDERED`).

No FastAPI in the store functions: the UI (gateway/ui/admin_templates.py, agent.py) calls them with the
signed-in user as actor; each write and its audit row (``template.add`` / ``template.update`` /
``template.delete``) commit in one transaction.
"""
from __future__ import annotations

import time
import unicodedata
from dataclasses import dataclass
from typing import Any

import jinja2
from fastapi import APIRouter, Depends, Query, Request
from jinja2 import nodes
from jinja2.sandbox import SandboxedEnvironment
from pydantic import BaseModel, Field

from gateway.http.api_admin import PROBLEMS
from gateway.http.deps import Principal, principal, services
from gateway.http.tokens import write_audit
from gateway.store.render import iso

router = APIRouter(tags=["tickets"])

MAX_NAME = 100
MAX_TEMPLATE = 20_000         # characters of a template's source
MAX_RENDERED = 50_000         # characters of a rendered template (a reply holds 100,000 with the signature)
MAX_TEMPLATES = 1_000         # per store: the picker lists them all
FILTERS = ("default", "upper", "lower", "title", "trim")
# What a template may name: each object's fields (the context holds these and nothing else).
FIELDS: dict[str, tuple[str, ...]] = {
    "ticket": ("number", "subject", "status", "priority", "queue"),
    "requester": ("name", "email"),
    "agent": ("name", "email"),
}
_COMPARE_OPS = frozenset({"eq", "ne"})


class TemplateError(ValueError):
    """A template refused on save or a render that failed: the message is for the form (it names the line)."""


def _sandbox() -> SandboxedEnvironment:
    env = SandboxedEnvironment(autoescape=False, undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    env.filters = {k: env.filters[k] for k in FILTERS}   # the allow-list, also at compile time
    env.tests = {}
    env.globals = {}
    return env


_ENV = _sandbox()

_FORBIDDEN = {
    nodes.For: "loops ({% for %}) are", nodes.Macro: "macros are", nodes.CallBlock: "{% call %} blocks are",
    nodes.Call: "calls (name(...)) are", nodes.Assign: "{% set %} is", nodes.AssignBlock: "{% set %} is",
    nodes.Include: "{% include %} is", nodes.Import: "{% import %} is", nodes.FromImport: "{% from … import %} is",
    nodes.Extends: "{% extends %} is", nodes.Block: "{% block %} is", nodes.FilterBlock: "{% filter %} blocks are",
    nodes.With: "{% with %} is", nodes.Getitem: "subscripts ([…]; write ticket.number) are",
    nodes.Slice: "slices are",
    nodes.Test: "tests (is …) are", nodes.BinExpr: "arithmetic is", nodes.UnaryExpr: "arithmetic is",
    nodes.List: "lists are", nodes.Dict: "dicts are", nodes.Tuple: "tuples are",
}


def _line(node: nodes.Node) -> int:
    return getattr(node, "lineno", 0) or 0


def _fail(node: nodes.Node, what: str) -> TemplateError:
    return TemplateError(f"line {_line(node)}: {what}")


def _check_expr(node: nodes.Node) -> None:
    """An expression: a known field, a constant, a filter of the allow-list, a comparison, a condition."""
    if isinstance(node, nodes.Getattr):
        if not isinstance(node.node, nodes.Name):
            raise _fail(node, "only one level of fields: ticket.number, requester.name, agent.email")
        obj = node.node.name
        if obj not in FIELDS:
            raise _fail(node, f"unknown name {obj!r}; use {', '.join(FIELDS)}")
        if node.attr not in FIELDS[obj]:
            raise _fail(node, f"{obj}.{node.attr} is not a field; {obj} has {', '.join(FIELDS[obj])}")
        return
    if isinstance(node, nodes.Name):
        raise _fail(node, f"{node.name!r} alone is not a value; use a field such as "
                          f"{next(iter(FIELDS))}.{FIELDS['ticket'][0]}" if node.name in FIELDS
                    else f"unknown name {node.name!r}; use {', '.join(FIELDS)} with a field")
    if isinstance(node, nodes.Const):
        if isinstance(node.value, str) and len(node.value) > MAX_TEMPLATE:
            raise _fail(node, "constant too long")
        return
    if isinstance(node, nodes.TemplateData):
        return
    if isinstance(node, nodes.Filter):
        if node.name not in FILTERS:
            raise _fail(node, f"filter {node.name!r} is not allowed; allowed: {', '.join(FILTERS)}")
        if node.kwargs or node.dyn_args or node.dyn_kwargs:
            raise _fail(node, f"filter {node.name!r}: only plain constant arguments")
        for arg in node.args:
            if not isinstance(arg, nodes.Const):
                raise _fail(node, f"filter {node.name!r}: arguments must be constants such as \"there\"")
        if node.node is not None:
            _check_expr(node.node)
        return
    if isinstance(node, nodes.CondExpr):
        for child in (node.test, node.expr1, node.expr2):
            if child is not None:
                _check_expr(child)
        return
    if isinstance(node, (nodes.And, nodes.Or)):
        _check_expr(node.left)
        _check_expr(node.right)
        return
    if isinstance(node, nodes.Not):
        _check_expr(node.node)
        return
    if isinstance(node, nodes.Concat):
        for child in node.nodes:
            _check_expr(child)
        return
    if isinstance(node, nodes.Compare):
        _check_expr(node.expr)
        for op in node.ops:
            if op.op not in _COMPARE_OPS:
                raise _fail(node, f"only == and != compare (not {op.op})")
            _check_expr(op.expr)
        return
    for kind, what in _FORBIDDEN.items():
        if isinstance(node, kind):
            raise _fail(node, f"{what} not allowed in a reply template")
    raise _fail(node, f"{type(node).__name__} is not allowed in a reply template")


def _check_stmt(node: nodes.Node) -> None:
    if isinstance(node, nodes.Output):
        for child in node.nodes:
            _check_expr(child)
        return
    if isinstance(node, nodes.If):
        _check_expr(node.test)
        for child in node.body + node.elif_ + node.else_:
            _check_stmt(child)
        return
    _check_expr(node)


def check(source: str) -> jinja2.Template:
    """The compiled template, or :class:`TemplateError` saying what is refused and on which line."""
    if len(source) > MAX_TEMPLATE:
        raise TemplateError(f"the template has {len(source):,} characters; at most {MAX_TEMPLATE:,}")
    try:
        try:
            tree = _ENV.parse(source)
        except jinja2.TemplateSyntaxError as exc:
            raise TemplateError(f"line {exc.lineno}: {exc.message}") from None
        for stmt in tree.body:
            _check_stmt(stmt)
        try:
            return _ENV.from_string(tree)
        except jinja2.TemplateError as exc:              # e.g. an unknown filter: already refused above
            raise TemplateError(str(exc)) from None
    except RecursionError:
        raise TemplateError("the template is nested too deeply") from None


def context(ticket: dict[str, Any], agent_name: str, agent_email: str) -> dict[str, dict[str, str]]:
    """The whole context a template sees: strings only."""
    return {"ticket": {k: str(ticket.get(k) or "") for k in FIELDS["ticket"]},
            "requester": {"name": str(ticket.get("requester_name") or ""), "email": str(ticket.get("requester") or "")},
            "agent": {"name": agent_name, "email": agent_email}}


def render(source: str, ctx: dict[str, dict[str, str]]) -> str:
    """The rendered text (checked again first: a row written around the checks is refused the same way);
    :class:`TemplateError` when it is refused, fails or grows over :data:`MAX_RENDERED`."""
    tpl = check(source)
    out: list[str] = []
    size = 0
    try:
        for chunk in tpl.generate(ctx):
            size += len(chunk)
            if size > MAX_RENDERED:
                raise TemplateError(f"the rendered template is over {MAX_RENDERED:,} characters")
            out.append(chunk)
    except jinja2.TemplateError as exc:
        raise TemplateError(f"the template could not be rendered: {exc}") from None
    except (TypeError, ValueError, AttributeError) as exc:
        raise TemplateError(f"the template could not be rendered: {exc}") from None
    return "".join(out)


# -- the store ------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ReplyTemplate:
    id: int
    name: str
    queue: str | None        # None: every queue
    body: str
    created: float
    created_by: str
    updated: float
    updated_by: str


_COLS = "id, name, queue, body, created, created_by, updated, updated_by"


def _row(r: Any) -> ReplyTemplate:
    """From a row of :data:`_COLS` (by position: a transaction's sqlite3 cursor gives plain tuples)."""
    return ReplyTemplate(id=int(r[0]), name=r[1], queue=r[2], body=r[3], created=r[4], created_by=r[5],
                         updated=r[6], updated_by=r[7])


def clean_name(name: str) -> str:
    name = " ".join(name.split())
    if not name:
        raise TemplateError("the name is empty")
    if len(name) > MAX_NAME:
        raise TemplateError(f"the name has {len(name)} characters; at most {MAX_NAME}")
    if any(unicodedata.category(c) in ("Cc", "Cf") for c in name):
        raise TemplateError("the name has control characters")
    return name


def clean_body(body: str) -> str:
    """Line ends made \\n, then checked (:func:`check`)."""
    body = body.replace("\r\n", "\n").replace("\r", "\n")
    if not body.strip():
        raise TemplateError("the template is empty")
    check(body)
    return body


async def list_for(store: Any, queues: tuple[str, ...] | None) -> list[ReplyTemplate]:
    """Templates by name; ``queues`` None: all of them, else those for every queue or one of ``queues``."""
    if queues is None:
        rows = await store.query(f"SELECT {_COLS} FROM reply_templates ORDER BY name")
    else:
        marks = ",".join("?" * len(queues))
        cond = f"queue IS NULL OR queue IN ({marks})" if queues else "queue IS NULL"
        rows = await store.query(f"SELECT {_COLS} FROM reply_templates WHERE {cond} ORDER BY name", tuple(queues))
    return [_row(r) for r in rows]


async def choices_for(store: Any, queue: str) -> list[tuple[int, str, str | None]]:
    """(id, name, queue) of the templates usable on a ticket of ``queue``, by name: the picker's list,
    without the bodies (up to :data:`MAX_TEMPLATES` of them are read on every ticket page)."""
    rows = await store.query("SELECT id, name, queue FROM reply_templates WHERE queue IS NULL OR queue=?"
                             " ORDER BY name", (queue,))
    return [(int(r[0]), r[1], r[2]) for r in rows]


async def get(store: Any, template_id: int) -> ReplyTemplate | None:
    if not 1 <= template_id < 2 ** 63:
        return None
    rows = await store.query(f"SELECT {_COLS} FROM reply_templates WHERE id=?", (template_id,))
    return _row(rows[0]) if rows else None


async def get_for_queue(store: Any, template_id: int, queue: str) -> ReplyTemplate | None:
    """The template when it may be used on a ticket of ``queue`` (for every queue, or that one), else None."""
    t = await get(store, template_id)
    return t if t is not None and (t.queue is None or t.queue == queue) else None


async def save(store: Any, who: Principal, client: str, template_id: int | None, name: str, queue: str | None,
               body: str) -> ReplyTemplate:
    """Add (``template_id`` None) or update a template and its audit row in one transaction.
    ``name`` and ``body`` must have been cleaned (:func:`clean_name`, :func:`clean_body`)."""
    now = time.time()

    def fn(conn: Any) -> int:
        same = conn.execute("SELECT id FROM reply_templates WHERE name=?", (name,)).fetchone()
        if same is not None and same[0] != template_id:
            raise TemplateError(f"a template named {name!r} exists; pick another name or edit that one")
        if template_id is None:
            if conn.execute("SELECT COUNT(*) FROM reply_templates").fetchone()[0] >= MAX_TEMPLATES:
                raise TemplateError(f"there are {MAX_TEMPLATES} templates already; delete some first")
            new = conn.execute("INSERT INTO reply_templates (name, queue, body, created, created_by, updated,"
                               " updated_by) VALUES (?,?,?,?,?,?,?) RETURNING id",
                               (name, queue, body, now, who.name, now, who.name)).fetchone()[0]
            write_audit(conn, now, who.name, who.role, "template.add", name,
                        {"id": new, "queue": queue, "size": len(body)}, client)
            return int(new)
        old = conn.execute("SELECT name, queue, body FROM reply_templates WHERE id=?", (template_id,)).fetchone()
        if old is None:
            raise TemplateError(f"no template {template_id} (deleted meanwhile?)")
        conn.execute("UPDATE reply_templates SET name=?, queue=?, body=?, updated=?, updated_by=? WHERE id=?",
                     (name, queue, body, now, who.name, template_id))
        changed = {k: {"old": o, "new": n} for k, o, n in (("name", old[0], name), ("queue", old[1], queue))
                   if o != n}
        write_audit(conn, now, who.name, who.role, "template.update", name,
                    {"id": template_id, **changed, "body_changed": old[2] != body, "size": len(body)}, client)
        return template_id
    tid = await store.transaction(fn)
    got = await get(store, tid)
    assert got is not None
    return got


async def delete(store: Any, who: Principal, client: str, template_id: int) -> ReplyTemplate | None:
    """Delete and audit (``template.delete``, with the body, so the audit keeps what was said); None when absent."""
    now = time.time()

    def fn(conn: Any) -> ReplyTemplate | None:
        r = conn.execute(f"SELECT {_COLS} FROM reply_templates WHERE id=?", (template_id,)).fetchone()
        if r is None:
            return None
        conn.execute("DELETE FROM reply_templates WHERE id=?", (template_id,))
        t = _row(r)
        write_audit(conn, now, who.name, who.role, "template.delete", t.name,
                    {"id": t.id, "queue": t.queue, "body": t.body}, client)
        return t
    return await store.transaction(fn)


# -- the API ----------------------------------------------------------------------------------------------
class TemplateOut(BaseModel):
    id: int
    name: str
    queue: str | None = Field(description="the queue it is for; null = every queue")
    body: str = Field(description="Jinja2 source (see docs/ui.md, \"Reply templates\")")
    updated_at: str = Field(description="RFC 3339 UTC")
    updated_by: str


class TemplateList(BaseModel):
    items: list[TemplateOut] = Field(description="by name")


@router.get("/reply-templates", response_model=TemplateList, responses=PROBLEMS,
            summary="Reply templates the caller may use: for every queue or one of the caller's queues")
async def list_templates(request: Request, who: Principal = Depends(principal("agent")),
                         queue: str = Query("", max_length=200, description="only those usable on a ticket of "
                                                                            "this queue")) -> TemplateList:
    if queue and not who.can_write(queue):
        return TemplateList(items=[])
    scope: tuple[str, ...] | None = (queue,) if queue else (None if who.role == "admin" else who.queues or None)
    items = await list_for(services(request).store, scope)
    return TemplateList(items=[TemplateOut(id=t.id, name=t.name, queue=t.queue, body=t.body,
                                           updated_at=iso(t.updated), updated_by=t.updated_by) for t in items])


__all__ = ["FIELDS", "FILTERS", "MAX_RENDERED", "MAX_TEMPLATE", "ReplyTemplate", "TemplateError", "check",
           "clean_body", "clean_name", "context", "delete", "get", "get_for_queue", "list_for", "render", "router",
           "save"]
