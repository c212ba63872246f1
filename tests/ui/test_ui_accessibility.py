"""Every page, as an admin sees it (the most controls), checked in the browser for what the issue asks of
the UI besides looks: "keyboard-usable, labelled forms, readable on a phone".

Per page: every visible form control has an accessible name (a <label>, aria-label or aria-labelledby),
every link and button has a name and is reachable with Tab, ids are unique (a label's ``for`` must point
at one control), there is one <h1>, a <title> and ``lang``; at 375 px wide nothing scrolls sideways.
The list of pages comes from the app's own routes, so a page added later is checked or the test says
which one it does not know how to open."""
from __future__ import annotations

from typing import Any

from gateway.http import reply_templates
from gateway.http.deps import Principal, Services
from gateway.http.server import build_app

from .conftest import Ui
from ..conftest import simple_message
from ..smarthost import sink  # noqa: F401 - a fixture tui needs
from ..test_pipeline import send
from .test_ui_agent import tui  # noqa: F401 - tui is a fixture

AUDIT_JS = """() => {
  const problems = [];
  const text = el => (el.textContent || '').replace(/\\s+/g, ' ').trim();
  const byId = id => document.getElementById(id);
  const nameOf = el => {
    if (el.labels && el.labels.length) return [...el.labels].map(text).join(' ');
    if (el.getAttribute('aria-label')) return el.getAttribute('aria-label');
    const lb = el.getAttribute('aria-labelledby');
    if (lb) return lb.split(/\\s+/).map(i => byId(i) ? text(byId(i)) : '').join(' ');
    if (['submit', 'button', 'reset'].includes(el.type)) return el.value || text(el);
    return '';
  };
  const visible = el => !!(el.offsetWidth || el.offsetHeight || el.getClientRects().length);
  for (const el of document.querySelectorAll('input, select, textarea')) {
    if (el.type === 'hidden' || !visible(el)) continue;
    if (!nameOf(el).trim()) problems.push('control without a label: ' + el.outerHTML.slice(0, 160));
  }
  for (const el of document.querySelectorAll('a[href], button, summary')) {
    if (!visible(el)) continue;
    const name = text(el) || el.getAttribute('aria-label') || el.getAttribute('title') ||
                 [...el.querySelectorAll('img[alt]')].map(i => i.alt).join(' ');
    if (!name.trim()) problems.push('link or button without a name: ' + el.outerHTML.slice(0, 160));
    // a second link to the same place may leave the Tab order (the queue's subject beside its number)
    const twin = el.href && [...document.querySelectorAll('a[href]')].some(a => a !== el && a.href === el.href
                                                                             && a.tabIndex >= 0);
    if (el.tabIndex < 0 && !twin) problems.push('not reachable with Tab: ' + el.outerHTML.slice(0, 160));
  }
  const ids = {};
  for (const el of document.querySelectorAll('[id]')) ids[el.id] = (ids[el.id] || 0) + 1;
  for (const [id, n] of Object.entries(ids)) if (n > 1) problems.push(`id "${id}" used ${n} times`);
  if (document.querySelectorAll('h1').length !== 1) problems.push(`${document.querySelectorAll('h1').length} h1`);
  if (!document.title.trim()) problems.push('no <title>');
  if (!document.documentElement.lang) problems.push('no lang on <html>');
  return problems;
}"""

WIDE_JS = "() => document.documentElement.scrollWidth - window.innerWidth"

# paths not to visit as pages: not HTML pages (frames, downloads, raw text) or redirects
NOT_PAGES = ("/", "/ui", "/ui/", "/ui/signin", "/ui/tickets/{number}/articles/{article_id}/html",
             "/ui/tickets/{number}/attachments/{attachment_id}", "/ui/admin/messages/{spool_id}/raw",
             "/ui/admin/sources/oauth/callback", "/ui/tickets/{number}/compose")


def _ui_pages(app: Any) -> set[str]:
    """Every GET path of the UI the app serves."""
    out = set()
    routes = []
    for route in app.routes:  # FastAPI 0.16x keeps an included router whole (its routes: original_router)
        inner = getattr(route, "original_router", None)
        routes += inner.routes if inner is not None else [route]   # the UI's routers have no prefix
    for route in routes:
        path = getattr(route, "path", "")
        if path.startswith("/ui") and "GET" in (getattr(route, "methods", None) or ()) and \
                not path.startswith("/ui/static"):
            out.add(path)
    return out - set(NOT_PAGES)


async def _audit(page: Any, path: str) -> list[str]:
    resp = await page.goto(path)
    assert resp is not None and resp.status == 200, f"{path}: {resp.status if resp else 'no response'}"
    return [f"{path}: {p}" for p in await page.evaluate(AUDIT_JS)]


async def test_every_page_is_labelled_keyboard_reachable_and_fits_a_phone(tui: Ui) -> None:  # noqa: F811
    sid = await send(tui.api.gw.port, simple_message(subject="Screen reader check", message_id="a11y@customer.test",
                                                     sender="alice@customer.test"), sender="alice@customer.test")
    entry = await tui.api.gw.wait_done(sid)
    assert entry.state == "ticket_created", entry.reason
    t = await tui.store.ticket_get(str(entry.ticket_id))
    admin = await tui.user("root@staff.test", "admin")
    tpl = await reply_templates.save(tui.store, Principal(admin, "admin"), "127.0.0.1", None, "Thanks",
                                     None, "Hello {{ requester.name }},\n\nthank you.")
    known = {"/ui/admin/templates/{template_id}": f"/ui/admin/templates/{tpl.id}",
             "/ui/tickets/{number}": f"/ui/tickets/{t['number']}", "/ui/admin/messages/{spool_id}":
             f"/ui/admin/messages/{sid}"}
    routes = _ui_pages(build_app(Services(tui.api.gw.gw)))   # the app as the gateway builds it
    assert {"/ui/tickets", "/ui/admin", "/ui/admin/quarantine"} <= routes, routes
    paths = sorted(known.get(r) or r for r in routes)
    unknown = [p for p in paths if "{" in p]
    assert not unknown, f"add a way to open these pages to the test: {unknown}"

    problems: list[str] = []
    desk = await tui.page()
    await tui.signin(desk, admin)
    for path in paths:
        problems += await _audit(desk, path)
    phone = await tui.page(viewport={"width": 375, "height": 740}, is_mobile=True, has_touch=True)
    await tui.signin(phone, admin)
    for path in paths:
        await phone.goto(path)
        over = await phone.evaluate(WIDE_JS)
        if over > 1:
            problems.append(f"{path}: {over} px wider than a 375 px phone screen")
    assert not problems, "\n".join(problems)
    assert not tui.guard.errors and not tui.guard.csp_reports(), (tui.guard.errors, tui.guard.csp_reports())
