"""The agent's pages in a real browser: a mail sent over SMTP shows in the queue, the ticket view, a reply
from the UI reaches the smarthost sink, notes and field changes, keyboard-only use."""
from __future__ import annotations

import email
import email.policy
from typing import Any

import pytest

from ..conftest import simple_message
from ..smarthost import sink, wait_for  # noqa: F401 - sink is a fixture
from ..test_pipeline import send
from .conftest import PASSWORD, Ui

ZONE = {
    "customer.test": [("TXT", "v=spf1 ip4:127.0.0.1 -all")],
    "_dmarc.customer.test": [("TXT", "v=DMARC1; p=none")],
}
ANN = "ann@staff.test"


def config(port: int) -> dict[str, Any]:
    return {"relay": {"from": "Support <support@example.test>", "retry": "1s, 2s*3",
                      "smarthost": [{"name": "sink", "host": "127.0.0.1", "port": port, "tls": "none",
                                     "auth": "none", "timeout": "5s"}]},
            "agent": [{"address": ANN, "name": "Ann"}],
            "queue": [{"name": "IT"}, {"name": "Billing"}]}


@pytest.fixture
async def tui(start_ui, dns_server, sink) -> Ui:  # noqa: F811
    dns_server.set_zone(ZONE)
    return await start_ui(**config(sink.port))


async def mail_ticket(ui: Ui, mid: str, subject: str, body: str = "It is on fire.\r\n",
                      sender: str = "alice@customer.test", raw: bytes | None = None) -> dict[str, Any]:
    msg = raw or simple_message(subject=subject, message_id=mid, body=body, sender=sender)
    e = await ui.api.gw.wait_done(await send(ui.api.gw.port, msg, sender=sender))
    assert e.state == "ticket_created", e.reason
    return await ui.store.ticket_get(str(e.ticket_id))


async def test_mail_shows_in_queue_and_a_reply_reaches_the_sink(tui: Ui, sink) -> None:  # noqa: F811
    t = await mail_ticket(tui, "q1@customer.test", "Printer on fire",
                          body="Help, it burns.\r\n\r\nOn Monday Bob wrote:\r\n> old quoted text\r\n")
    await tui.user(ANN, "agent", "IT")
    page = await tui.page()
    await tui.signin(page, ANN)
    link = page.get_by_role("link", name=t["number"])
    await link.wait_for()                                    # the mail sent over SMTP is in the open view
    assert await page.get_by_role("cell", name="Printer on fire").count() == 1
    await link.click()
    await page.get_by_role("heading", name=f"{t['number']}: Printer on fire").wait_for()
    assert await page.get_by_text("verified sender").count() == 1       # DMARC pass in plain words
    assert await page.locator("details summary", has_text="Quoted history").count() == 1
    assert not await page.locator("details pre", has_text="old quoted text").is_visible()  # folded
    await wait_for(lambda: any("alice@customer.test" in m[1] for m in sink.messages))  # the ack
    before = len(sink.messages)
    await page.get_by_label("Reply to the customer").fill("Unplug it, we are on our way.")
    await page.get_by_role("button", name="Send reply").click()
    await page.get_by_text("Reply sent.").wait_for()
    await wait_for(lambda: len(sink.messages) > before)
    _f, rcpts, raw = sink.messages[-1]
    m = email.message_from_bytes(raw, policy=email.policy.default)
    assert rcpts == ["alice@customer.test"]
    assert "Unplug it, we are on our way." in m.get_body(("plain",)).get_content()
    assert m["In-Reply-To"] == "<q1@customer.test>"
    audit = [tuple(r) for r in await tui.store.query("SELECT actor, role, action, target FROM audit_log")]
    assert (ANN, "agent", "ticket.reply", t["number"]) in audit
    # a note (never mailed) and a status change, through the API's own code
    await page.get_by_label("Reply to the customer").fill("Called them, all fine.")
    await page.get_by_role("button", name="Add internal note").click()
    await page.get_by_text("Note added.").wait_for()
    await page.get_by_label("Status").select_option("pending")
    await page.get_by_role("button", name="Save changes").click()
    await page.get_by_text("Ticket updated.").wait_for()
    got = await tui.store.ticket_get(t["number"])
    assert got["status"] == "pending"
    assert [a["visibility"] for a in got["articles"]][-1] == "internal"
    audit = [tuple(r) for r in await tui.store.query("SELECT actor, action FROM audit_log")]
    assert (ANN, "ticket.note") in audit and (ANN, "ticket.update") in audit
    # the waiting view now has it, the open view not
    await page.goto("/ui/tickets?view=waiting")
    assert await page.get_by_role("link", name=t["number"]).count() == 1
    await page.goto("/ui/tickets?view=open")
    assert await page.get_by_role("link", name=t["number"]).count() == 0
    assert not tui.guard.blocked and not tui.guard.csp_reports() and not tui.guard.errors, tui.guard.__dict__


async def test_queue_scope_viewer_and_search(tui: Ui) -> None:
    t1 = await mail_ticket(tui, "s1@customer.test", "Invoice 77 wrong", body="The invoice total is wrong.\r\n")
    t2 = await mail_ticket(tui, "s2@customer.test", "VPN down", body="Cannot connect since Monday.\r\n")
    await tui.store.ticket_update(t2["id"], {"queue": "Billing"}, "test", 0.0)
    await tui.user("viewer@staff.test", "viewer", "IT")
    page = await tui.page()
    await tui.signin(page, "viewer@staff.test")
    assert await page.get_by_role("link", name=t1["number"]).count() == 1
    assert await page.get_by_role("link", name=t2["number"]).count() == 0      # another queue: not shown
    r = await page.goto(f"/ui/tickets/{t2['number']}")
    assert r.status == 404                                                   # as if it did not exist
    await page.goto(f"/ui/tickets/{t1['number']}")
    assert await page.get_by_role("button", name="Send reply").count() == 0  # a viewer cannot write
    # a forged POST with the right session but without the CSRF token is refused
    r = await page.request.post(f"/ui/tickets/{t1['number']}/note", form={"text": "x"})
    assert r.status == 403
    await page.goto("/ui/tickets?view=all")
    await page.get_by_label("Search").fill("invoice total")
    await page.get_by_role("button", name="Filter").click()
    await page.wait_for_url("**q=invoice*")
    assert await page.get_by_role("link", name=t1["number"]).count() == 1


async def test_keyboard_only_sign_in_and_reply(tui: Ui, sink) -> None:  # noqa: F811
    t = await mail_ticket(tui, "k1@customer.test", "Keyboard only")
    await tui.user(ANN, "agent")
    page = await tui.page()
    await page.goto("/ui/signin")
    focused = await page.evaluate("document.activeElement.id")
    assert focused == "email"                                   # autofocus on the first field
    await page.keyboard.type(ANN)
    await page.keyboard.press("Tab")
    await page.keyboard.type(PASSWORD)
    await page.keyboard.press("Enter")
    await page.wait_for_url("**/ui/tickets")
    # Tab from the top of the page to the ticket's link, then Enter
    for _ in range(40):
        await page.keyboard.press("Tab")
        if await page.evaluate("document.activeElement.textContent") == t["number"]:
            break
    else:
        raise AssertionError("the ticket link is not reachable with Tab")
    await page.keyboard.press("Enter")
    await page.wait_for_url(f"**/ui/tickets/{t['number']}")
    for _ in range(60):
        await page.keyboard.press("Tab")
        if await page.evaluate("document.activeElement.id") == "reply-text":
            break
    else:
        raise AssertionError("the reply box is not reachable with Tab")
    await page.keyboard.type("Typed without a mouse.")
    await page.keyboard.press("Tab")                            # to "Send reply"
    assert await page.evaluate("document.activeElement.textContent") == "Send reply"
    await wait_for(lambda: any("alice@customer.test" in m[1] for m in sink.messages))
    before = len(sink.messages)
    await page.keyboard.press("Enter")
    await page.get_by_text("Reply sent.").wait_for()
    await wait_for(lambda: len(sink.messages) > before)
    assert b"Typed without a mouse." in sink.messages[-1][2]
