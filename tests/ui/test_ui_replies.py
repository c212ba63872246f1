"""Reply templates and signatures in a real browser: an admin keeps templates at /ui/admin/templates
(refusals shown in the form), an agent sets a signature, picks a template on a ticket made by a mail sent
over SMTP and sends it — the smarthost sink gets the rendered placeholders, then "-- " and the signature;
a note gets no signature; a template of another queue is neither listed nor loadable by its id; what
users typed (a template, a signature holding <script>) shows as text."""
from __future__ import annotations

import email
import email.policy
import os
import re
from pathlib import Path
from typing import Any

from ..api.conftest import start_api  # noqa: F401 - a fixture
from ..smarthost import sink, wait_for  # noqa: F401 - sink is a fixture
from ..conftest import ROOT
from .conftest import PASSWORD, Ui, user_cli
from .test_ui_agent import ANN, mail_ticket, tui  # noqa: F401 - tui is a fixture

ADMIN = "boss@staff.test"
WELCOME = ("Hello {{ requester.name | default('there', true) }},\n\n"
           "about {{ ticket.number }} ({{ ticket.subject }}): we are on it.\n"
           "{% if ticket.priority == 'high' %}We treat it as urgent.\n{% endif %}"
           "{{ agent.name }}")
SIGNATURE = "Ann Agent\nFirst-line support <script>alert('sig')</script>"
XSS_NAME = "<script>alert('tpl')</script> Sorry"


async def _add_template(page: Any, name: str, body: str, queue: str = "") -> int:
    """Fill and send the admin's "New template" form; the HTTP status of the POST."""
    await page.goto("/ui/admin/templates")
    await page.get_by_label("Name").fill(name)
    await page.get_by_label("For queue").select_option(queue)
    await page.get_by_label("Text", exact=True).fill(body)
    async with page.expect_response(lambda r: r.request.method == "POST") as posted:
        await page.get_by_role("button", name="Add template").click()
    await page.wait_for_load_state()
    return (await posted.value).status


async def _shot(page: Any, name: str, tmp_path: Path) -> None:
    """A screenshot for docs/ui.md (``TICKETMX_SCREENSHOTS=docs/screenshots`` renews docs/screenshots/NAME)."""
    out = Path(os.environ.get("TICKETMX_SCREENSHOTS") or tmp_path)
    out = out if out.is_absolute() else ROOT / out
    out.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(out / name), full_page=True)


async def _template_id(ui: Ui, name: str) -> int:
    rows = await ui.store.query("SELECT id FROM reply_templates WHERE name=?", (name,))
    return int(rows[0][0])


async def test_templates_and_signature_from_admin_to_the_customer(tui: Ui, sink, tmp_path: Path  # noqa: F811
                                                                  ) -> None:
    t = await mail_ticket(tui, "tpl1@customer.test", "Laptop broken", body="The screen is black.\r\n")
    assert t["queue"] == "IT"
    await tui.user(ADMIN, "admin")
    await tui.user(ANN, "agent", "IT")

    # -- the admin: templates, with refusals shown in the form ------------------------------------------
    boss = await tui.page(viewport={"width": 1200, "height": 800})
    await tui.signin(boss, ADMIN)
    await _add_template(boss, "Welcome", WELCOME)
    await boss.get_by_text("Template added.").wait_for()
    preview = await boss.locator("#tpl-preview").inner_text()
    assert "Hello Alice Example," in preview and "about HD-1042 (Printer on fire)" in preview
    await _shot(boss, "admin-template.png", tmp_path)
    await _add_template(boss, "Billing only", "Your invoice {{ ticket.number }} is being checked.", queue="Billing")
    await _add_template(boss, XSS_NAME, "We are sorry <script>alert('body')</script> {{ ticket.number }}")
    for name, body, why in (
            ("Looping", "Hi\n{% for c in ticket.subject %}{{ c }}{% endfor %}",
             "line 2: loops ({% for %}) are not allowed"),
            ("Calling", "{{ ticket.subject.upper() }}", "line 1: calls (name(...)) are not allowed"),
            ("Big", "x" * 20_001, "at most 20,000"),
            ("Unknown", "{{ ticket.assignee }}", "ticket.assignee is not a field"),
            ("Welcome", "Hi", "a template named 'Welcome' exists")):
        assert await _add_template(boss, name, body) == 422
        alert = boss.get_by_role("alert")
        assert why in await alert.inner_text(), (name, await alert.inner_text())
        assert await boss.get_by_label("Name").input_value() == name        # the form keeps what was typed
    names = [r[0] for r in await tui.store.query("SELECT name FROM reply_templates ORDER BY name")]
    assert sorted(names) == sorted(["Welcome", "Billing only", XSS_NAME])
    # an edit and a delete, audited as the admin
    await boss.goto("/ui/admin/templates")
    assert await boss.get_by_role("link", name=XSS_NAME).count() == 1        # the name is text, not markup
    await boss.get_by_role("link", name="Billing only").click()
    await boss.get_by_label("Text", exact=True).fill("Invoice {{ ticket.number }}: checking.")
    await boss.get_by_role("button", name="Save template").click()
    await boss.get_by_text("Template saved.").wait_for()
    await _add_template(boss, "Doomed", "bye")
    await boss.goto("/ui/admin/templates")
    await boss.get_by_role("button", name="Delete template Doomed").click()
    await boss.get_by_text("Template deleted.").wait_for()
    audit = [tuple(r) for r in await tui.store.query("SELECT actor, action, target FROM audit_log")]
    for row in ((ADMIN, "template.add", "Welcome"), (ADMIN, "template.update", "Billing only"),
                (ADMIN, "template.delete", "Doomed")):
        assert row in audit
    billing_id = await _template_id(tui, "Billing only")

    # an agent cannot reach the admin page
    agent = await tui.page(viewport={"width": 1200, "height": 800})
    await tui.signin(agent, ANN)
    r = await agent.goto("/ui/admin/templates")
    assert r.status == 403

    # -- the agent: a signature, refused when too long ----------------------------------------------------
    await agent.goto("/ui/account")
    box = agent.get_by_label("Your signature")
    await box.evaluate("e => e.removeAttribute('maxlength')")
    await box.fill("y" * 2001)
    await agent.get_by_role("button", name="Save signature").click()
    assert "at most 2,000 characters" in await agent.get_by_role("alert").inner_text()
    await agent.get_by_label("Your signature").fill(SIGNATURE)
    await agent.get_by_role("button", name="Save signature").click()
    await agent.get_by_text("Signature saved.").wait_for()
    assert (ANN, "user.signature", ANN) in [tuple(r) for r in await tui.store.query(
        "SELECT actor, action, target FROM audit_log")]

    # -- the ticket: the picker lists the queue's templates and every-queue ones, not another queue's --------
    await agent.goto(f"/ui/tickets/{t['number']}")
    options = await agent.get_by_label("Template").locator("option").all_inner_texts()
    assert "Welcome" in options and "Billing only (Billing only)" not in options
    assert not any("Billing" in o for o in options)
    assert XSS_NAME in options
    preview = agent.locator("#signature-preview")
    assert await preview.inner_text() == "-- \n" + SIGNATURE                  # shown as text
    assert await agent.get_by_label("Add my signature").is_checked()
    await agent.set_viewport_size({"width": 380, "height": 800})              # readable on a phone
    assert await agent.evaluate("document.documentElement.scrollWidth") <= 400
    await agent.set_viewport_size({"width": 1200, "height": 800})
    # another queue's template by its id: refused like one that does not exist, on both paths
    await agent.goto(f"/ui/tickets/{t['number']}?template={billing_id}")
    assert "There is no template" in await agent.get_by_role("alert").inner_text()
    assert "Invoice" not in await agent.get_by_label("Reply to the customer").input_value()
    r = await agent.request.get(f"/ui/tickets/{t['number']}/compose?template={billing_id}")
    assert r.status == 200 and "Invoice" not in await r.text() and "There is no template" in await r.text()
    # htmx: the reply box is swapped in place with the rendered template
    await agent.goto(f"/ui/tickets/{t['number']}")
    await agent.get_by_label("Template").select_option(label="Welcome")
    await agent.get_by_role("button", name="Use template").click()
    reply = agent.get_by_label("Reply to the customer")
    await wait_for_value(reply, "we are on it")
    assert agent.url.endswith(f"/ui/tickets/{t['number']}")                   # swapped, no page load
    await _shot(agent, "reply-template.png", tmp_path)
    text = await reply.input_value()
    assert text.startswith(f"Hello Alice,\n\nabout {t['number']} (Laptop broken): we are on it.\n")
    assert text.rstrip().endswith("Ann")                                      # the configured agent's name
    await wait_for(lambda: any("alice@customer.test" in m[1] for m in sink.messages))  # the ack
    before = len(sink.messages)
    await agent.get_by_role("button", name="Send reply").click()
    await agent.get_by_text("Reply sent.").wait_for()
    await wait_for(lambda: len(sink.messages) > before)
    _f, rcpts, raw = sink.messages[-1]
    assert rcpts == ["alice@customer.test"]
    body = email.message_from_bytes(raw, policy=email.policy.default).get_body(("plain",)).get_content()
    body = body.replace("\r\n", "\n")
    m = re.search(r"Hello Alice,\n\nabout (\S+) \(Laptop broken\): we are on it\.\nAnn\n\n-- \n(.*)", body, re.S)
    assert m is not None, body
    assert m.group(1) == t["number"]
    assert m.group(2).startswith(SIGNATURE)
    got = await tui.store.ticket_get(t["number"])
    stored = got["articles"][-1]
    assert stored["visibility"] == "public" and stored["body_text"].endswith("\n-- \n" + SIGNATURE + "\n")

    # -- a note never gets the signature ------------------------------------------------------------------
    await agent.get_by_label("Reply to the customer").fill("Called them; it was the cable.")
    await agent.get_by_role("button", name="Add internal note").click()
    await agent.get_by_text("Note added.").wait_for()
    note = (await tui.store.ticket_get(t["number"]))["articles"][-1]
    assert note["visibility"] == "internal" and note["body_text"] == "Called them; it was the cable."

    # -- unticked: a reply without the signature ----------------------------------------------------------
    await agent.get_by_label("Reply to the customer").fill("Plain one.")
    await agent.get_by_label("Add my signature").uncheck()
    await agent.get_by_role("button", name="Send reply").click()
    await agent.get_by_text("Reply sent.").wait_for()
    last = (await tui.store.ticket_get(t["number"]))["articles"][-1]
    assert last["body_text"] == "Plain one."
    await wait_for(lambda: any(b"Plain one." in m[2] for m in sink.messages))
    assert not any(b"cable" in m[2] for m in sink.messages)                  # the note was never mailed
    plain = next(m[2] for m in sink.messages if b"Plain one." in m[2])
    assert b"Ann Agent" not in plain

    # the <script> of the template and the signature never ran, nothing left, no CSP report
    await agent.get_by_label("Template").select_option(label=XSS_NAME)
    await agent.get_by_role("button", name="Use template").click()
    await wait_for_value(agent.get_by_label("Reply to the customer"), "We are sorry")
    assert "<script>alert('body')</script>" in await agent.get_by_label("Reply to the customer").input_value()
    g = tui.guard
    assert not g.dialogs and not g.errors and not g.blocked and not g.csp_reports(), g.__dict__
    assert not any("alert" in c for c in g.console), g.console


async def wait_for_value(locator: Any, needle: str) -> None:
    for _ in range(100):
        if needle in await locator.input_value():
            return
        await locator.page.wait_for_timeout(50)
    raise AssertionError(f"{needle!r} never appeared in {await locator.input_value()!r}")


async def test_without_javascript_the_template_link_prefills_the_box(tui: Ui, sink) -> None:  # noqa: F811
    t = await mail_ticket(tui, "tpl2@customer.test", "No script here")
    await tui.user(ADMIN, "admin")
    await tui.user(ANN, "agent", "IT")
    boss = await tui.page()
    await tui.signin(boss, ADMIN)
    await _add_template(boss, "Short", "Dear {{ requester.name }}, re {{ ticket.number }}.")
    page = await tui.page(java_script_enabled=False)
    await tui.signin(page, ANN)
    await page.goto(f"/ui/tickets/{t['number']}")
    await page.get_by_label("Template").select_option(label="Short")
    await page.get_by_role("button", name="Use template").click()             # a plain GET form
    await page.wait_for_url(re.compile(r".*\?template=\d+"))
    assert await page.get_by_label("Reply to the customer").input_value() == f"Dear Alice, re {t['number']}."
    assert await page.get_by_text("You have no signature").count() == 1


async def test_api_lists_the_templates_of_the_token_queues(tui: Ui) -> None:
    await tui.user(ADMIN, "admin")
    boss = await tui.page()
    await tui.signin(boss, ADMIN)
    await _add_template(boss, "Everyone", "hi")
    await _add_template(boss, "IT only", "it", queue="IT")
    await _add_template(boss, "Billing only", "bill", queue="Billing")
    it_token = await tui.api.token("it-agent", "agent", "IT")
    async with tui.api.client(it_token) as c:
        r = await c.get("/api/v1/reply-templates")
        assert r.status_code == 200, r.text
        assert [x["name"] for x in r.json()["items"]] == ["Everyone", "IT only"]
        assert r.json()["items"][0]["queue"] is None
        r = await c.get("/api/v1/reply-templates", params={"queue": "Billing"})
        assert r.json()["items"] == []
    viewer = await tui.api.token("v", "viewer")
    async with tui.api.client(viewer) as c:
        assert (await c.get("/api/v1/reply-templates")).status_code == 403
    async with tui.api.client(await tui.api.token("root", "admin")) as c:
        assert len((await c.get("/api/v1/reply-templates")).json()["items"]) == 3


async def test_user_signature_command(start_api, tmp_path) -> None:  # noqa: F811
    """``ticketmx user signature ADDRESS [--file F | --clear]``: shown, set, refused with the reason, audited."""
    api = await start_api()
    await user_cli(api.config, "add", "--email", ANN, "--role", "agent", stdin=PASSWORD + "\n")
    f = tmp_path / "sig.txt"
    f.write_text("-- \nAnn\nSupport desk\n", encoding="utf-8")
    _, out, _ = await user_cli(api.config, "signature", ANN, "--file", str(f))
    assert "set (16 characters)" in out
    _, out, _ = await user_cli(api.config, "signature", ANN.upper())
    assert out == "Ann\nSupport desk\n"                                   # its own "-- " line was dropped
    _, out, _ = await user_cli(api.config, "signature", ANN, "--file", "-", stdin="Ann (stdin)\n")
    assert (await api.store.query("SELECT signature FROM users"))[0][0] == "Ann (stdin)"
    f.write_text("z" * 2001, encoding="utf-8")
    for args, why in (((ANN, "--file", str(f)), "at most 2,000 characters"),
                      ((ANN, "--file", str(tmp_path / "none.txt")), "--file"),
                      (("nobody@staff.test",), "no user"),
                      ((ANN, "--file", "-", "--clear"), "exclude each other")):
        rc, _, err = await user_cli(api.config, "signature", *args, check=False)
        assert rc == 1 and why in err, (args, err)
    _, out, _ = await user_cli(api.config, "signature", ANN, "--clear")
    assert "removed" in out
    rc, _, err = await user_cli(api.config, "signature", ANN)
    assert rc == 0 and "has no signature" in err
    rows = await api.store.query("SELECT actor, action, target FROM audit_log WHERE action='user.signature'")
    assert len(rows) == 3 and all(r[0].startswith("cli:") and r[2] == ANN for r in rows)
