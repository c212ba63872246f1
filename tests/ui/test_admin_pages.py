"""The mail-admin pages in a real browser against a real gateway: mail over real SMTP, quarantined by the
real pipeline; release, bulk delete, trace, the configuration page's secrets, the role check, and
screenshots of the dashboard, quarantine and trace pages (to a temporary folder; with
TICKETMX_SCREENSHOTS=docs/screenshots they replace the ones docs/ui.md shows)."""
from __future__ import annotations

import os
from pathlib import Path

from ..api.test_api_messages import CUSTOMER, SENDERS, send
from ..conftest import ROOT, simple_message
from .conftest import Ui



async def _quarantined(ui: Ui, dns_server, n: int = 1) -> list[str]:
    dns_server.set_zone(CUSTOMER)
    ids = []
    for i in range(n):
        sid = await send(ui.api.gw.port, simple_message(f"offer {i}", sender="mallory@other.test",
                                                        message_id=f"q{i}@other.test"), "mallory@other.test")
        ids.append(sid)
    for sid in ids:
        e = await ui.api.gw.wait_done(sid)
        assert e.state == "quarantined", e
    return ids


async def _admin(ui: Ui, next_path: str = "/ui/admin") -> object:
    await ui.user("admin@example.test", "admin")
    page = await ui.page()
    await ui.signin(page, "admin@example.test", next_path=next_path)
    return page


def _clean(ui: Ui) -> None:
    g = ui.guard
    assert not g.blocked and not g.csp_reports() and not g.errors and not g.dialogs, g.__dict__


async def test_release_a_quarantined_mail_and_see_its_ticket(start_ui, dns_server) -> None:
    ui = await start_ui(pipeline=SENDERS)
    (sid,) = await _quarantined(ui, dns_server)
    page = await _admin(ui, "/ui/admin/quarantine")
    row = page.get_by_role("row").filter(has_text="mallory@other.test")
    await row.wait_for()
    assert "SPF" in await row.inner_text() and "DMARC" in await row.inner_text()
    await row.get_by_role("link").first.click()
    await page.get_by_role("heading", name=f"Message {sid}", exact=False).first.wait_for()
    assert "Message-ID: &lt;q0@other.test&gt;" in await page.content()      # raw headers, escaped
    await page.get_by_text("sender_policy", exact=False).first.wait_for()  # the stage that held it
    await page.get_by_role("button", name="Release").click()
    await page.get_by_text("released past sender_policy").first.wait_for()
    e = await ui.api.gw.wait_done(sid)
    assert e.state == "ticket_created", e
    t = await ui.store.ticket_get(str(e.ticket_id))
    await page.goto(f"/ui/admin/messages/{sid}")
    link = page.locator("a.ticket-link")
    assert await link.inner_text() == t["number"]
    await page.goto("/ui/tickets?view=all")
    await page.get_by_role("link", name=t["number"]).first.wait_for()
    # the audit row names the user; a second release is refused with the API's reason
    rows = await ui.store.query("SELECT actor, action, target FROM audit_log WHERE action='message.release'")
    assert [tuple(r) for r in rows] == [("admin@example.test", "message.release", sid)]
    _clean(ui)


async def test_bulk_delete_selected_rows(start_ui, dns_server) -> None:
    ui = await start_ui(pipeline=SENDERS)
    ids = await _quarantined(ui, dns_server, 3)
    page = await _admin(ui, "/ui/admin/quarantine")
    for sid in ids[:2]:
        await page.get_by_label(f"Select message {sid}", exact=False).check()
    await page.get_by_role("button", name="Delete…").click()
    await page.get_by_text("Delete the raw message of 2 quarantined entries").wait_for()
    await page.get_by_role("button", name="Delete 2").click()
    await page.get_by_text("delete: 2 of 2 done").wait_for()
    for sid in ids[:2]:
        e = await ui.store.spool_get(sid)
        assert e.state == "quarantined" and not e.raw and e.chunks == 0   # raw gone, entry and history stay
    kept = await ui.store.spool_get(ids[2])
    assert kept.raw                                                       # the unselected one is untouched
    rows = await ui.store.query("SELECT target FROM audit_log WHERE action='message.delete' ORDER BY id")
    assert sorted(r[0] for r in rows) == sorted(ids[:2])
    # a second delete of the same entries is refused by spool_ops, and says why
    await page.goto("/ui/admin/quarantine")
    await page.get_by_label(f"Select message {ids[0]}", exact=False).check()
    await page.get_by_role("button", name="Delete…").click()
    await page.get_by_role("button", name="Delete 1").click()
    await page.get_by_text("its raw message is already deleted").wait_for()
    _clean(ui)


async def test_trace_finds_a_mail_by_message_id_and_shows_its_stages(start_ui, dns_server) -> None:
    ui = await start_ui(pipeline=SENDERS)
    dns_server.set_zone(CUSTOMER)
    sid = await send(ui.api.gw.port, simple_message("printer", message_id="trace-me@customer.test"),
                     "alice@customer.test")
    await ui.api.gw.wait_done(sid)
    await _quarantined(ui, dns_server)                   # another message that must not match
    page = await _admin(ui, "/ui/admin/trace")
    await page.get_by_label("Message-ID").fill("<trace-me@customer.test>")
    await page.get_by_role("button", name="Trace").click()
    await page.get_by_text("1 message found.").wait_for()
    text = await page.locator("main").inner_text()
    assert sid in text and "alice@customer.test" in text and "q0@other.test" not in text
    stages = await page.locator("ol.stages li").all_inner_texts()
    assert any(s.startswith("ticket: ticket") for s in stages), stages
    assert any(s.startswith("sender_policy") for s in stages), stages
    assert "127.0.0.1" in text and "HELO client.test" in text      # the SMTP session
    assert "SPF" in text and "DMARC" in text                        # authentication
    assert await page.locator("a.ticket-link").count() == 1         # the ticket
    await page.get_by_label("Since").fill("not a time")
    await page.get_by_role("button", name="Trace").click()
    await page.get_by_text("since: 'not a time' is neither").wait_for()
    _clean(ui)


async def test_config_page_shows_no_secret(start_ui, tmp_path: Path, monkeypatch) -> None:
    secrets = {"relay": "relay-pass-9f3c1e77", "webhook": "whsec-4b1d2c9a8e7f", "rspamd": "rspamd-ctl-7e2a91",
               "mac": "thread-mac-key-0123456789abcdef"}
    files = {}
    for name in ("relay", "webhook"):
        f = tmp_path / f"{name}.secret"
        f.write_text(secrets[name])
        os.chmod(f, 0o600)
        files[name] = str(f)
    ui = await start_ui(
        relay={"from": "Helpdesk <helpdesk@example.test>",
               "smarthost": [{"name": "main", "host": "127.0.0.1", "port": 9, "tls": "none", "auth": "login",
                              "username": "relay", "allow_insecure_auth": True, "password_file": files["relay"]}]},
        webhook=[{"name": "desk", "url": "https://desk.example.test/hook", "events": ["ticket.created"],
                  "secret_file": files["webhook"]}],
        pipeline={"rspamd": {"enabled": False, "password": secrets["rspamd"]}},
        threading={"keys": [secrets["mac"]]})
    page = await _admin(ui, "/ui/admin/config")
    await page.get_by_role("heading", name="Configuration").wait_for()
    html, text = await page.content(), await page.locator("body").inner_text()
    for name, value in secrets.items():
        assert value not in html and value not in text, f"the {name} secret is on the config page"
    assert files["webhook"] in text      # the file it comes from is shown (the relay's: test_admin_data.py)
    assert "•••••• (hidden)" in text and "mx.example.test" in text
    await page.get_by_label("Filter keys").fill("webhook")
    await page.get_by_role("button", name="Filter").click()
    await page.get_by_text("webhooks[0].secret_file").wait_for()
    assert "smtp.hostname" not in await page.locator("main").inner_text()
    _clean(ui)


async def test_admin_pages_refuse_agents_and_viewers(ui: Ui) -> None:
    await ui.user("agent@example.test", "agent")
    page = await ui.page()
    await ui.signin(page, "agent@example.test", next_path="/ui/tickets")
    for path in ("/ui/admin", "/ui/admin/quarantine", "/ui/admin/trace", "/ui/admin/config", "/ui/admin/audit",
                 "/ui/admin/outbound", "/ui/admin/sources"):
        resp = await page.goto(path)
        assert resp.status == 403, (path, resp.status)
    assert await page.get_by_role("link", name="Admin").count() == 0   # not in the agent's navigation


async def test_dashboard_outbound_audit_and_screenshots(start_ui, dns_server, tmp_path: Path) -> None:
    ui = await start_ui(pipeline=SENDERS)
    dns_server.set_zone(CUSTOMER)
    for i in range(3):
        sid = await send(ui.api.gw.port, simple_message(f"hello {i}", message_id=f"ok{i}@customer.test"),
                         "alice@customer.test")
        await ui.api.gw.wait_done(sid)
    ids = await _quarantined(ui, dns_server, 2)
    page = await _admin(ui, "/ui/admin")
    await page.set_viewport_size({"width": 1200, "height": 900})
    await page.get_by_role("heading", name="Dashboard").wait_for()
    cap = await page.locator("#c-accepted-cap").inner_text()
    assert "total 5" in cap, cap
    assert await page.locator("svg.chart-svg").count() == 6
    shots = Path(os.environ.get("TICKETMX_SCREENSHOTS") or tmp_path)
    shots = shots if shots.is_absolute() else ROOT / shots
    shots.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(shots / "admin-dashboard.png"), full_page=True)
    await page.goto("/ui/admin/quarantine")
    await page.screenshot(path=str(shots / "admin-quarantine.png"), full_page=True)
    await page.goto(f"/ui/admin/messages/{ids[0]}")
    await page.get_by_role("button", name="Replay").click()
    await page.get_by_text("replayed: the pipeline runs it again").first.wait_for()
    await page.goto("/ui/admin/trace?message_id=ok0%40customer.test")
    await page.get_by_text("1 message found.").wait_for()
    await page.screenshot(path=str(shots / "admin-trace.png"), full_page=True)
    await page.goto("/ui/admin/outbound")
    await page.get_by_role("heading", name="Relay queue (notifications)").wait_for()
    await page.goto("/ui/admin/audit")
    await page.get_by_label("Action").select_option("message.replay")
    await page.get_by_role("button", name="Filter").click()
    await page.wait_for_url("**action=message.replay**")
    await page.locator("table.list tbody tr").first.wait_for()
    cells = await page.locator("table.list tbody tr").all_inner_texts()
    assert len(cells) == 1 and "admin@example.test" in cells[0] and ids[0] in cells[0], cells
    # phone width: no horizontal scrolling of the page itself
    await page.set_viewport_size({"width": 380, "height": 800})
    await page.goto("/ui/admin/quarantine")
    width = await page.evaluate("document.documentElement.scrollWidth")
    assert width <= 400, width
    _clean(ui)


async def test_sources_page_and_test_connection_on_a_dovecot_source(start_ui, tmp_path: Path) -> None:
    """A Test Connection against a real Dovecot (tests/sources/dovecot.py) shows every step of the
    connection."""
    from ..sources.conftest import source_table
    from ..sources.dovecot import Dovecot
    d = Dovecot(tmp_path / "dovecot", {"support@example.test": "s3cret"}).start()
    try:
        ui = await start_ui(source=[source_table(d, tmp_path)])
        page = await _admin(ui, "/ui/admin/sources")
        row = page.get_by_role("row").filter(has_text="inbox")
        await row.get_by_text("Active").first.wait_for()
        await row.get_by_role("button", name="Test Connection").click()
        await page.get_by_text("Test Connection: inbox — passed").wait_for()
        steps = await page.locator("ol.steps li").all_inner_texts()
        assert len(steps) >= 3 and all(s.startswith("ok") for s in steps), steps
        assert "s3cret" not in await page.content()
        await page.goto("/ui/admin/sources")
        await page.get_by_role("button", name="Pause inbox").click()
        await page.get_by_text("inbox: paused").wait_for()
        await page.get_by_role("button", name="Resume inbox").wait_for()
        await page.get_by_role("button", name="Resume inbox").click()
        await page.get_by_text("inbox: fetching again").wait_for()
        rows = await ui.store.query("SELECT actor, action FROM audit_log WHERE target='inbox' ORDER BY id")
        assert [tuple(r) for r in rows] == [("admin@example.test", a) for a in ("source.test", "source.pause",
                                                                                "source.resume")], rows
        _clean(ui)
    finally:
        d.stop()


async def test_quarantine_release_by_keyboard_only(start_ui, dns_server) -> None:
    ui = await start_ui(pipeline=SENDERS)
    (sid,) = await _quarantined(ui, dns_server)
    page = await _admin(ui, "/ui/admin/quarantine")
    box = page.get_by_label(f"Select message {sid}", exact=False)
    await box.focus()
    await page.keyboard.press("Space")
    assert await box.is_checked()
    for _ in range(6):                                   # force checkbox, then Release
        await page.keyboard.press("Tab")
        label = await page.evaluate("document.activeElement.textContent.trim()")
        if label == "Release":
            break
    assert label == "Release"
    await page.keyboard.press("Enter")
    await page.get_by_text("release: 1 of 1 done").wait_for()
    assert (await ui.api.gw.wait_done(sid)).state == "ticket_created"
    _clean(ui)


async def test_outbound_retry_of_a_dead_notification_and_a_dead_webhook_event(ui: Ui) -> None:
    now = __import__("time").time()

    def fill(conn) -> None:
        conn.execute("INSERT INTO relay_queue (id, event, mail_from, message, message_id, state, attempts, last_error,"
                     " created_at, lifetime_from, finished_at) VALUES (7, 'ack', 'h@example.test', x'00', 'n7@x',"
                     " 'dead', 5, '550 5.1.1 no such user', ?, ?, ?)", (now - 60, now - 60, now - 30))
        conn.execute("INSERT INTO relay_recipients (notification_id, address, state) VALUES (7, 'c@customer.test',"
                     " 'dead')")
        conn.execute("INSERT INTO webhook_outbox (id, event_id, webhook, event, payload, state, attempts, last_status,"
                     " last_error, created_at, lifetime_from, finished_at) VALUES (9, 'e9', 'desk', 'ticket.created',"
                     " '{}', 'dead', 12, 500, 'HTTP 500', ?, ?, ?)", (now - 60, now - 60, now - 30))
    await ui.store.transaction(fill)
    page = await _admin(ui, "/ui/admin/outbound")
    row = page.get_by_role("row").filter(has_text="550 5.1.1 no such user")
    assert "c@customer.test" in await row.inner_text()
    await page.get_by_role("button", name="Retry notification 7").click()
    await page.get_by_text("notification 7 queued again").wait_for()
    await page.get_by_role("button", name="Retry webhook event 9").click()
    await page.get_by_text("webhook event 9 queued again").wait_for()
    assert [tuple(r) for r in await ui.store.query("SELECT state FROM relay_queue WHERE id=7")] == [("queued",)]
    assert [tuple(r) for r in await ui.store.query("SELECT state FROM webhook_outbox WHERE id=9")] == [("queued",)]
    rows = await ui.store.query("SELECT actor, action, target FROM audit_log ORDER BY id")
    assert [tuple(r) for r in rows if r[1] in ("relay.retry", "webhook.retry")] == [
        ("admin@example.test", "relay.retry", "7"), ("admin@example.test", "webhook.retry", "9")]
    # a form without the CSRF token changes nothing
    resp = await page.request.post(f"{ui.base}/ui/admin/relay/7/retry", form={"x": "1"})
    assert resp.status == 403
    resp = await page.request.post(f"{ui.base}/ui/admin/quarantine/bulk", form={"action": "delete", "ids": "x",
                                                                                "confirm": "1"})
    assert resp.status == 403
    assert len([r for r in await ui.store.query("SELECT action FROM audit_log") if r[0].endswith(".retry")]) == 2
    _clean(ui)


async def test_hostile_headers_are_text_on_the_admin_pages(start_ui, dns_server) -> None:
    """What a sender controls (header fields, the Message-ID, the reason naming the sender) is shown as text
    on the quarantine, message and trace pages: no script runs, no dialog, nothing is fetched."""
    ui = await start_ui(pipeline=SENDERS)
    dns_server.set_zone(CUSTOMER)
    evil = "<img src=http://evil.test/x.png onerror=alert(1)>"
    msg = (f'From: "{evil}" <mallory@other.test>\r\nTo: support@example.test\r\n'
           "Subject: <script>alert(2)</script>\r\n"
           f'Message-ID: <x"{evil}"@other.test>\r\nX-Note: <svg onload=alert(3)>\r\n'
           "Date: Sun, 22 Nov 2026 10:00:00 +0000\r\n\r\nhello\r\n").encode()
    sid = await send(ui.api.gw.port, msg, "mallory@other.test")
    assert (await ui.api.gw.wait_done(sid)).state == "quarantined"
    page = await _admin(ui, "/ui/admin/quarantine")
    await page.get_by_role("row").filter(has_text="mallory@other.test").wait_for()
    await page.goto(f"/ui/admin/messages/{sid}")
    raw = await page.locator("#raw-headers").inner_text()
    assert "<script>alert(2)</script>" in raw and "<svg onload=alert(3)>" in raw   # shown as text
    assert await page.locator("main img, main svg:not(.chart-svg), main script").count() == 0
    await page.goto("/ui/admin/trace?sender=mallory%40other.test")
    await page.get_by_text("1 message found.").wait_for()
    assert await page.locator("main img, main script").count() == 0
    _clean(ui)
