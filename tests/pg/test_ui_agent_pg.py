"""The agent pages in a real Chromium on PostgreSQL (they ran only on SQLite before): sign in, a mail sent
over SMTP in the queue view, full-text search, a reply from the UI arriving at the smarthost sink, a note,
status and assignee changes, the Mine view — and the suites of tests/ui/test_ui_agent.py and the inline
cid: image test, unchanged. Only the ``postgres`` backend here (SQLite runs them in tests/ui); without a
server (``$TICKETMX_PG_URL`` or scripts/pg-start) every test skips with the reason."""
from __future__ import annotations

import email
import email.policy

import pytest

from ..api.conftest import start_api  # noqa: F401 - fixtures
from ..smarthost import sink, wait_for  # noqa: F401 - sink is a fixture
from ..ui.conftest import browser, start_ui, ui  # noqa: F401
from ..ui.test_ui_agent import (  # noqa: F401 - collected by pytest
    ANN, mail_ticket, test_keyboard_only_sign_in_and_reply, test_mail_shows_in_queue_and_a_reply_reaches_the_sink,
    test_queue_scope_viewer_and_search, tui)
from ..ui.test_ui_inline_images import test_cid_png_shows_and_nothing_else_does  # noqa: F401


@pytest.fixture(params=("postgres",))
def backend(request: pytest.FixtureRequest) -> str:
    """PostgreSQL only (overrides tests/pg/conftest.py's sqlite + postgres)."""
    return request.param


async def test_agent_flow_on_postgres(tui, sink) -> None:  # noqa: F811
    assert type(tui.store).__name__ == "PostgresStore"
    t = await mail_ticket(tui, "pg1@customer.test", "Scanner jams on page two",
                          body="The scanner jams whenever a duplex page is fed.\r\n")
    other = await mail_ticket(tui, "pg2@customer.test", "Monitor flickers", body="Flicker after lunch.\r\n")
    await tui.user(ANN, "agent", "IT")
    page = await tui.page()
    await tui.signin(page, ANN)
    await page.get_by_role("link", name=t["number"]).wait_for()                 # in the open view
    assert await page.get_by_role("link", name=other["number"]).count() == 1
    # full-text search (PostgreSQL's own search path): finds the one, not the other
    await page.get_by_label("Search").fill("duplex jams")
    await page.get_by_role("button", name="Filter").click()
    await page.wait_for_url("**q=duplex*")
    assert await page.get_by_role("link", name=t["number"]).count() == 1
    assert await page.get_by_role("link", name=other["number"]).count() == 0
    await page.get_by_role("link", name=t["number"]).click()
    await page.get_by_role("heading", name=f"{t['number']}: Scanner jams on page two").wait_for()
    # reply from the UI → the sink
    await wait_for(lambda: any("alice@customer.test" in m[1] for m in sink.messages))   # the acknowledgement
    before = len(sink.messages)
    await page.get_by_label("Reply to the customer").fill("Please try single-sided for now.")
    await page.get_by_role("button", name="Send reply").click()
    await page.get_by_text("Reply sent.").wait_for()
    await wait_for(lambda: len(sink.messages) > before)
    _f, rcpts, raw = sink.messages[-1]
    m = email.message_from_bytes(raw, policy=email.policy.default)
    assert rcpts == ["alice@customer.test"] and m["In-Reply-To"] == "<pg1@customer.test>"
    assert "Please try single-sided for now." in m.get_body(("plain",)).get_content()
    # a note, never mailed
    mailed = len(sink.messages)
    await page.get_by_label("Reply to the customer").fill("Known firmware bug, ticket with vendor.")
    await page.get_by_role("button", name="Add internal note").click()
    await page.get_by_text("Note added.").wait_for()
    # status and assignee
    await page.get_by_label("Status").select_option("pending")
    await page.get_by_label("Assignee").fill(ANN)
    await page.get_by_role("button", name="Save changes").click()
    await page.get_by_text("Ticket updated.").wait_for()
    got = await tui.store.ticket_get(t["number"])
    assert got["status"] == "pending" and got["assignee"] == ANN
    assert [a["visibility"] for a in got["articles"]][-1] == "internal"
    assert "Known firmware bug" in got["articles"][-1]["body_text"]
    audit = {tuple(r) for r in await tui.store.query("SELECT actor, action, target FROM audit_log")}
    assert {(ANN, "ticket.reply", t["number"]), (ANN, "ticket.note", t["number"]),
            (ANN, "ticket.update", t["number"])} <= audit
    # the views follow the change: Mine and Waiting have it, Open not
    for view, n in (("mine", 1), ("waiting", 1), ("open", 0), ("unassigned", 0)):
        await page.goto(f"/ui/tickets?view={view}")
        assert await page.get_by_role("link", name=t["number"]).count() == n, view
    await page.wait_for_timeout(300)
    assert len(sink.messages) == mailed or all(b"Known firmware bug" not in m[2] for m in sink.messages[mailed:])
    g = tui.guard
    assert not g.blocked and not g.csp_reports() and not g.errors, g.__dict__
