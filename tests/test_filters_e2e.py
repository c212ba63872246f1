"""Pipeline I end to end over SMTP: automatic mail, bounces, spam rules, sender policy, attachments, HTML."""
from __future__ import annotations

import json
from email.message import EmailMessage

import pytest

from .conftest import CORPORA, simple_message
from .test_pipeline import send


async def test_auto_reply_is_suppressed_with_the_deciding_stage_recorded(gateway):
    sid = await send(gateway.port, simple_message(subject="Out of office", message_id="ooo@customer.test",
                                                  extra="Auto-Submitted: auto-replied\r\n"))
    e = await gateway.wait_done(sid)
    assert e.state == "suppressed" and e.reason.startswith("automatic:")
    assert e.history[-1]["stage"] == "automatic" and e.history[-1]["action"] == "drop"
    assert await gateway.store.tickets_list() == []


async def test_auto_submitted_no_is_a_person(gateway):
    e = await gateway.wait_done(await send(gateway.port, simple_message(extra="Auto-Submitted: no\r\n")))
    assert e.state == "ticket_created"


async def test_automatic_mail_as_internal_note_never_reopens(start_gateway):
    gateway = await start_gateway(pipeline={"automatic": {"action": "note"}})
    first = await send(gateway.port, simple_message(message_id="t1@customer.test"))
    assert (await gateway.wait_done(first)).state == "ticket_created"
    ooo = simple_message(subject="Re: Printer on fire", message_id="ooo2@customer.test",
                         extra="Auto-Submitted: auto-replied\r\nIn-Reply-To: <t1@customer.test>\r\n")
    e = await gateway.wait_done(await send(gateway.port, ooo))
    assert e.state == "article_added"
    arts = (await gateway.store.ticket_get("HD-1000"))["articles"]
    assert [a["visibility"] for a in arts] == ["public", "internal"] and arts[1]["kind"] == "note"
    stray = simple_message(subject="Away", message_id="ooo3@customer.test", extra="Auto-Submitted: auto-replied\r\n")
    e = await gateway.wait_done(await send(gateway.port, stray))
    assert e.state == "suppressed"  # answers no ticket: never opens one
    assert len(await gateway.store.tickets_list()) == 1


async def test_bounce_about_mail_we_did_not_send_is_suppressed_and_marks_nobody(gateway):
    """A DSN counts only for one of our notifications (tests/test_delivery_status_e2e.py); this one
    reports on the customer's own message: anyone could send it to make a contact undeliverable."""
    first = await send(gateway.port, simple_message(sender="gone@customer.test", message_id="n1@customer.test"))
    assert (await gateway.wait_done(first)).state == "ticket_created"
    dsn = (
        "From: MAILER-DAEMON@customer.test\r\nTo: support@example.test\r\nSubject: Undelivered Mail Returned\r\n"
        "Message-ID: <dsn1@customer.test>\r\nMIME-Version: 1.0\r\n"
        "Content-Type: multipart/report; report-type=delivery-status; boundary=\"B\"\r\n\r\n"
        "--B\r\nContent-Type: text/plain\r\n\r\nThe mail could not be delivered.\r\n"
        "--B\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.customer.test\r\n\r\n"
        "Final-Recipient: rfc822; gone@customer.test\r\nAction: failed\r\nStatus: 5.1.1\r\n\r\n"
        "--B\r\nContent-Type: text/rfc822-headers\r\n\r\nMessage-ID: <n1@customer.test>\r\n"
        "From: support@example.test\r\nTo: gone@customer.test\r\n\r\n--B--\r\n").encode()
    e = await gateway.wait_done(await send(gateway.port, dsn, sender=""))
    assert e.state == "suppressed" and "gone@customer.test" in e.reason
    contact = await gateway.store.contact_get("gone@customer.test")
    assert contact["undeliverable"] is False
    ticket = await gateway.store.ticket_get("HD-1000")
    assert len(ticket["articles"]) == 1 and ticket["participants"][0]["undeliverable"] is False


async def test_corpus_dsns_are_suppressed_as_bounces(gateway):
    reports = sorted((CORPORA / "mail" / "multipart_report_emails").glob("*.eml"))
    if not reports:
        pytest.skip(f"mail corpus absent at {CORPORA / 'mail'}")
    for path in reports:
        e = await gateway.wait_done(await send(gateway.port, path.read_bytes(), sender=""))
        assert e.state == "suppressed", (path.name, e.reason)
    assert await gateway.store.tickets_list() == []


async def test_spam_rule_drop_and_tag(start_gateway):
    gateway = await start_gateway(pipeline={"spam": {"rule": [
        {"name": "pills", "match": "any", "action": "drop",
         "conditions": [{"field": "subject", "op": "contains", "value": "cheap pills"}]},
        {"name": "crypto", "match": "all", "action": "tag",
         "conditions": [{"field": "body", "op": "regex", "value": "bitcoin|btc"}]},
    ]}})
    e = await gateway.wait_done(await send(gateway.port, simple_message(subject="CHEAP PILLS now")))
    assert e.state == "suppressed" and "pills" in e.reason
    e = await gateway.wait_done(await send(gateway.port, simple_message(body="pay in bitcoin\r\n",
                                                                         message_id="b@customer.test")))
    assert e.state == "ticket_created"
    assert "crypto" in (await gateway.store.ticket_get("HD-1000"))["flags"]


async def test_replies_only_mailbox_and_denied_sender(start_gateway):
    gateway = await start_gateway(pipeline={"sender_policy": {"deny_domains": ["evil.test"], "replies_only": True}})
    e = await gateway.wait_done(await send(gateway.port, simple_message(sender="x@evil.test"), sender="x@evil.test"))
    assert e.state == "suppressed" and "denied" in e.reason
    e = await gateway.wait_done(await send(gateway.port, simple_message(message_id="new@customer.test")))
    assert e.state in ("suppressed", "quarantined") and "replies only" in e.reason
    assert await gateway.store.tickets_list() == []


async def test_dangerous_attachment_stripped_and_html_sanitised(gateway):
    msg = EmailMessage()
    msg["From"] = "Carol <carol@customer.test>"
    msg["To"] = "support@example.test"
    msg["Subject"] = "invoice"
    msg.set_content("see attached")
    msg.add_alternative('<p onclick="steal()">Hi<script>alert(1)</script><a href="javascript:x()">x</a>'
                        '<img src="http://tracker.test/p.gif"></p>', subtype="html")
    msg.add_attachment(b"MZ\x90\x00" + b"\x00" * 200, maintype="application", subtype="octet-stream",
                       filename="invoice\u202efdp.exe")
    msg.add_attachment(b"%PDF-1.4\n%ok\n", maintype="application", subtype="pdf", filename="ok.pdf")
    e = await gateway.wait_done(await send(gateway.port, msg.as_bytes(), sender="carol@customer.test"))
    assert e.state == "ticket_created"
    art = (await gateway.store.ticket_get("HD-1000"))["articles"][0]
    assert [a["filename"] for a in art["attachments"]] == ["ok.pdf"]
    (stripped,) = art["stripped_attachments"]
    assert stripped["reason"] and "\u202e" not in stripped["filename"]
    html = art["body_html"]
    for bad in ("<script", "onclick", "javascript:", "tracker.test"):
        assert bad not in html, bad
    assert "Hi" in html
    # the raw original is still in the spool
    assert b"<script>" in (await gateway.store.spool_get(e.id)).raw
    assert json.dumps(art)  # JSON-able as the CLI prints it
