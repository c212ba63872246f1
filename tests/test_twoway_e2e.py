"""Pipeline II end to end over SMTP: threading, quotes, tokens, agents, commands, reopen, forwards."""
from __future__ import annotations

import time

import pytest

from .conftest import simple_message
from .test_pipeline import send

ZONE = {
    "customer.test": [("TXT", "v=spf1 ip4:127.0.0.1 -all")],
    "_dmarc.customer.test": [("TXT", "v=DMARC1; p=none")],
    "agents.test": [("TXT", "v=spf1 ip4:127.0.0.1 -all")],           # real agents: SPF pass, DMARC pass
    "_dmarc.agents.test": [("TXT", "v=DMARC1; p=reject")],
    "spoofed.test": [("TXT", "v=spf1 ip4:192.0.2.1 -all")],          # someone else's servers: DMARC fails
    "_dmarc.spoofed.test": [("TXT", "v=DMARC1; p=none")],
}
TWOWAY = {
    "agent": [{"address": "ann@agents.test", "name": "Ann"}, {"address": "boss@spoofed.test"}],
    "threading": {"reopen_days": 7},
}


@pytest.fixture
async def gw(start_gateway, dns_server):
    dns_server.set_zone(ZONE)
    return await start_gateway(**TWOWAY)


async def open_ticket(gw, mid="t1@customer.test", sender="alice@customer.test"):
    e = await gw.wait_done(await send(gw.port, simple_message(sender=sender, message_id=mid), sender=sender))
    assert e.state == "ticket_created"
    return await gw.store.ticket_get(str(e.ticket_id))


OUTLOOK_REPLY = ("Yes, it is still on fire.\r\n\r\n________________________________\r\n"
                 "From: Support <support@example.test>\r\nSent: Sunday, November 22, 2026 10:00\r\n"
                 "To: Alice <alice@customer.test>\r\nSubject: RE: Printer on fire\r\n\r\nDid you try water?\r\n")
GMAIL_REPLY = ("Now it is out.\r\n\r\nOn Sun, Nov 22, 2026 at 10:05 AM Support <support@example.test> wrote:\r\n"
               "> Did you try water?\r\n>\r\n")


async def test_reply_chain_with_quote_stripping(gw):
    t = await open_ticket(gw)
    r1 = simple_message(subject="RE: Printer on fire", message_id="r1@customer.test", body=OUTLOOK_REPLY,
                        extra="In-Reply-To: <t1@customer.test>\r\n")
    assert (await gw.wait_done(await send(gw.port, r1))).state == "article_added"
    r2 = simple_message(subject="Re: RE: Printer on fire", message_id="r2@customer.test", body=GMAIL_REPLY,
                        extra="References: <t1@customer.test> <r1@customer.test>\r\n")  # only References
    assert (await gw.wait_done(await send(gw.port, r2))).state == "article_added"
    arts = (await gw.store.ticket_get(t["number"]))["articles"]
    assert [a["new_text"].strip() for a in arts[1:]] == ["Yes, it is still on fire.", "Now it is out."]
    assert "Did you try water?" in arts[1]["body_text"]  # the full body is kept
    assert all(a["visibility"] == "public" for a in arts)


async def test_subject_token_threads_participants_only(gw):
    t = await open_ticket(gw)
    mine = simple_message(subject=f"Re: [{t['number']}] Printer", message_id="tok1@customer.test")
    assert (await gw.wait_done(await send(gw.port, mine))).state == "article_added"
    hijack = simple_message(subject=f"Re: [{t['number']}] Printer", sender="mallory@customer.test",
                            message_id="tok2@customer.test", body="Please send me the password\r\n")
    e = await gw.wait_done(await send(gw.port, hijack, sender="mallory@customer.test"))
    assert e.state == "ticket_created"  # a ticket of its own, linked to the one it named
    new = await gw.store.ticket_get(str(e.ticket_id))
    assert new["linked_ticket_id"] == t["id"] and new["requester"] == "mallory@customer.test"
    assert len((await gw.store.ticket_get(t["number"]))["articles"]) == 2


async def test_agent_commands_need_dmarc_pass(gw):
    t = await open_ticket(gw)
    spoof = simple_message(subject=f"Re: [{t['number']}] x", sender="boss@spoofed.test", message_id="c1@x.test",
                           body="$Status=Closed$\r\n$Priority=High$\r\n")
    e = await gw.wait_done(await send(gw.port, spoof, sender="boss@spoofed.test"))
    assert e.auth["dmarc"]["result"] == "fail"
    ticket = await gw.store.ticket_get(t["number"])
    assert ticket["status"] == "new" and ticket["priority"] == "normal"  # nothing applied
    real = simple_message(subject=f"Re: [{t['number']}] x", sender="ann@agents.test", message_id="c2@agents.test",
                          body="Fixed it.\r\n$Status=Closed$\r\n$Priority=High$\r\n$Colour=Red$\r\n")
    e = await gw.wait_done(await send(gw.port, real, sender="ann@agents.test"))
    assert e.state == "article_added" and e.auth["dmarc"]["result"] == "pass"
    ticket = await gw.store.ticket_get(t["number"])
    assert ticket["status"] == "closed" and ticket["priority"] == "high"
    actions = [h["action"] for h in ticket["history"]]
    assert "command" in actions and "command_refused" in actions  # $Colour$ is not a field
    applied = next(h for h in ticket["history"] if h["action"] == "command")
    assert applied["actor"] == "ann@agents.test"


async def test_reply_to_closed_ticket_reopens_inside_window_else_links(gw):
    t = await open_ticket(gw)
    close = simple_message(subject=f"[{t['number']}]", sender="ann@agents.test", message_id="cl@agents.test",
                           body="$Status=Closed$\r\n")
    await gw.wait_done(await send(gw.port, close, sender="ann@agents.test"))
    again = simple_message(subject=f"Re: [{t['number']}]", message_id="again@customer.test", body="Back again\r\n")
    e = await gw.wait_done(await send(gw.port, again))
    assert e.state == "article_added"
    ticket = await gw.store.ticket_get(t["number"])
    assert ticket["status"] == "open" and any(h["action"] == "reopened" for h in ticket["history"])
    # close again, then pretend 8 days passed (reopen window is 7)
    close2 = simple_message(subject=f"[{t['number']}]", sender="ann@agents.test", message_id="cl2@agents.test",
                            body="$Status=Closed$\r\n")
    await gw.wait_done(await send(gw.port, close2, sender="ann@agents.test"))

    def age(conn):
        conn.execute("UPDATE tickets SET closed_at=? WHERE id=?", (time.time() - 8 * 86400, t["id"]))
    await gw.store.transaction(age)
    late = simple_message(subject=f"Re: [{t['number']}]", message_id="late@customer.test", body="Still me\r\n")
    e = await gw.wait_done(await send(gw.port, late))
    assert e.state == "ticket_created"
    assert (await gw.store.ticket_get(str(e.ticket_id)))["linked_ticket_id"] == t["id"]


async def test_agent_forward_makes_the_customer_the_requester(gw):
    fwd = simple_message(subject="Fwd: cannot print", sender="ann@agents.test", message_id="f1@agents.test",
                         body="Please look at this.\r\n\r\n---------- Forwarded message ---------\r\n"
                              "From: Dave Customer <dave@customer.test>\r\nDate: Sun, 22 Nov 2026 09:00\r\n"
                              "Subject: cannot print\r\nTo: <ann@agents.test>\r\n\r\nMy printer says PC LOAD LETTER.\r\n")
    e = await gw.wait_done(await send(gw.port, fwd, sender="ann@agents.test"))
    assert e.state == "ticket_created"
    t = await gw.store.ticket_get(str(e.ticket_id))
    assert t["requester"] == "dave@customer.test" and t["subject"] == "cannot print"
    assert "PC LOAD LETTER" in t["articles"][0]["body_text"]
    assert {"email": "ann@agents.test", "role": "agent"}.items() <= next(
        p for p in t["participants"] if p["email"] == "ann@agents.test").items()


async def test_agent_comment_address_is_an_internal_note_and_cc_become_participants(gw):
    t = await open_ticket(gw)
    note = simple_message(subject=f"[{t['number']}] note", sender="ann@agents.test", message_id="n@agents.test",
                          to="support+comment@example.test", body="Customer is on the VIP list.\r\n")
    e = await gw.wait_done(await send(gw.port, note, rcpts=("support+comment@example.test",),
                                      sender="ann@agents.test"))
    assert e.state == "article_added"
    cc = simple_message(subject=f"Re: [{t['number']}]", message_id="cc@customer.test",
                        extra="Cc: Bob <bob@customer.test>\r\n")
    await gw.wait_done(await send(gw.port, cc))
    ticket = await gw.store.ticket_get(t["number"])
    assert [a["visibility"] for a in ticket["articles"]] == ["public", "internal", "public"]
    assert "bob@customer.test" in [p["email"] for p in ticket["participants"]]


async def test_card_numbers_are_redacted_in_stored_text(gw):
    msg = simple_message(message_id="card@customer.test", body="my card is 4111 1111 1111 1111, thanks\r\n")
    e = await gw.wait_done(await send(gw.port, msg))
    art = (await gw.store.ticket_get(str(e.ticket_id)))["articles"][0]
    assert "4111 1111 1111 1111" not in art["body_text"] and "[card redacted]" in art["body_text"]
    assert b"4111 1111 1111 1111" in (await gw.store.spool_get(e.id)).raw  # the original stays in the spool


async def test_mailbox_ticket_template_maps_fields_and_attaches_the_original(start_gateway):
    template = {"attach_original": True, "fields": [
        {"name": "customer_id", "source": "header:X-Customer-Id", "type": "int", "required": True},
        {"name": "urgency", "source": "importance", "type": "choice", "choices": ["low", "normal", "high"]},
        {"name": "channel", "type": "str", "default": "email"},
    ]}
    gw = await start_gateway(mailbox=[{"address": "support@example.test", "queue": "IT", "template": template}])
    ok = simple_message(message_id="tpl1@customer.test", extra="X-Customer-Id: 4711\r\nImportance: high\r\n")
    e = await gw.wait_done(await send(gw.port, ok))
    t = await gw.store.ticket_get(str(e.ticket_id))
    assert t["fields"] == {"customer_id": 4711, "urgency": "high", "channel": "email"}
    original = [a for a in t["articles"][0]["attachments"] if a["filename"] == "original.eml"]
    assert original and original[0]["content_type"] == "message/rfc822"
    missing = simple_message(message_id="tpl2@customer.test")
    e = await gw.wait_done(await send(gw.port, missing))
    assert e.state == "quarantined" and "customer_id" in e.reason


def test_ticket_template_config_errors_name_the_key(tmp_path):
    from .test_config_cli import write
    from gateway.config.load import load_config
    from gateway.config.errors import ConfigErrors
    path = write(tmp_path, '[[mailbox]]\naddress = "a@x.test"\n[mailbox.template]\n'
                           'fields = [{ name = "n", type = "float" }]\n')
    with pytest.raises(ConfigErrors) as exc:
        load_config(path)
    assert "mailbox[0].template.fields[0].type" in str(exc.value)
