"""Issue 19 parts 2 and 5 end to end over SMTP, behind a trusted front MTA (127.0.0.1 in
``[auth] trusted_relays``; the senders' own hops are in Received, as the front MTA writes them):
the customer gets one clean mail threaded on their own message; every automatic mail carries
In-Reply-To/References; our Message-IDs are MAC-signed and a forged one threads nothing; a DSN from
the front MTA for an acknowledgement (our own domain at p=reject) marks it bounced, shows on the
ticket and marks the contact; a read receipt is recorded."""
from __future__ import annotations

import asyncio
import email
import email.policy
import time

import aiosmtplib
import pytest

from gateway.pipeline.stages.tokens import verify_message_id
from gateway.pipeline.stages.twoway import thread_keys
from relay.cli import relay_queue

from .conftest import simple_message
from .smarthost import sink, wait_for  # noqa: F401 - sink is a fixture
from .test_pipeline import send

ZONE = {
    "customer.test": [("TXT", "v=spf1 ip4:192.0.2.10 -all")],
    "_dmarc.customer.test": [("TXT", "v=DMARC1; p=none")],
    "agents.test": [("TXT", "v=spf1 ip4:192.0.2.20 -all")],
    "_dmarc.agents.test": [("TXT", "v=DMARC1; p=reject")],
    "_dmarc.example.test": [("TXT", "v=DMARC1; p=reject")],      # the helpdesk's own domain
}
FRONT = "mx-front.example.test"


def hop(name: str, ip: str) -> str:
    """The Received field the front MTA writes for a client it took the mail from."""
    return f"Received: from {name} ({name} [{ip}]) by {FRONT} (Postfix) with ESMTPS id 4AbC1; Sun, 22 Nov 2026\r\n"


CUSTOMER_HOP = hop("mail.customer.test", "192.0.2.10")
AGENT_HOP = hop("mail.agents.test", "192.0.2.20")


def mail(raw: bytes) -> email.message.EmailMessage:
    return email.message_from_bytes(raw, policy=email.policy.default)


def ids(value: str | None) -> list[str]:
    return [x.strip("<>") for x in (value or "").split()]


@pytest.fixture
async def gw(start_gateway, dns_server, sink):
    dns_server.set_zone(ZONE)
    return await start_gateway(
        auth={"trusted_relays": ["127.0.0.1/32"]},
        relay={"from": "Support <support@example.test>", "retry": "1s, 2s*3",
               "smarthost": [{"name": "sink", "host": "127.0.0.1", "port": sink.port, "tls": "none",
                              "auth": "none", "timeout": "5s"}]},
        agent=[{"address": "ann@agents.test", "name": "Ann"}],
        queue=[{"name": "IT", "first_response": "1h", "escalation": ["team@example.test"]}])


async def customer_ticket(gw, sink, mid="q1@customer.test"):
    e = await gw.wait_done(await send(gw.port, (CUSTOMER_HOP + simple_message(message_id=mid).decode()).encode()))
    assert e.state == "ticket_created" and e.auth["dmarc"]["result"] == "pass"
    await wait_for(lambda: any(m[1] == ["alice@customer.test"] for m in sink.messages))
    ack = mail(next(m[2] for m in sink.messages if m[1] == ["alice@customer.test"]))
    return await gw.store.ticket_get(str(e.ticket_id)), ack


async def test_one_clean_mail_threaded_on_the_customers_message(gw, sink):
    ticket, ack = await customer_ticket(gw, sink)
    keys = await thread_keys(gw.gw.cfg.twoway, gw.store)
    # our Message-IDs carry the MAC: <t{ticket id}.k{mac}.r{random}@host>, verified by the key
    assert ack["Message-ID"].startswith(f"<t{ticket['id']}.k")
    assert verify_message_id(ack["Message-ID"], keys) == str(ticket["id"])
    assert ack["In-Reply-To"] == "<q1@customer.test>" and ids(ack["References"]) == ["q1@customer.test"]
    # the customer answers the acknowledgement (no token in the subject: threads by our Message-ID)
    reply = (CUSTOMER_HOP + simple_message(subject="Re: printer", message_id="q2@customer.test",
                                           body="It smells of smoke now.\r\n",
                                           extra=f"In-Reply-To: {ack['Message-ID']}\r\n"
                                                 f"References: <q1@customer.test> {ack['Message-ID']}\r\n").decode())
    assert (await gw.wait_done(await send(gw.port, reply.encode()))).state == "article_added"
    before = len(sink.messages)
    # the agent answers the customer's reply from a mail client, closing the ticket in the same mail
    agent = (AGENT_HOP + simple_message(
        subject=f"Re: [{ticket['number']}] printer", sender="ann@agents.test", message_id="a1@agents.test",
        body="Please unplug it and step away.\r\n$Status=Closed$\r\n$Priority=High$ $Assignee=ann@agents.test$\r\n",
        extra="In-Reply-To: <q2@customer.test>\r\n").decode())
    e = await gw.wait_done(await send(gw.port, agent.encode(), sender="ann@agents.test"))
    assert e.state == "article_added"
    await wait_for(lambda: any(m[1] == ["alice@customer.test"] for m in sink.messages[before:]))
    await asyncio.sleep(1.0)  # nothing else may follow
    to_alice = [mail(m[2]) for m in sink.messages[before:] if m[1] == ["alice@customer.test"]]
    assert len(to_alice) == 1
    out = to_alice[0]
    text = out.get_body(("plain",)).get_content()
    html = out.get_body(("html",)).get_content()
    assert "Please unplug it" in text and "is now closed" in text
    for part in (text, html):
        assert "$" not in part and "Status=" not in part and "Assignee" not in part
    assert out["In-Reply-To"] == "<q2@customer.test>"
    assert ids(out["References"]) == ["q1@customer.test", ack["Message-ID"].strip("<>"), "q2@customer.test"]
    assert verify_message_id(out["Message-ID"], keys) == str(ticket["id"])
    assert (await gw.store.ticket_get(ticket["number"]))["status"] == "closed"


async def test_every_automatic_mail_carries_threading_headers(gw, sink):
    from email.message import EmailMessage

    from relay.sla import run_once
    from relay.notify import Notifier
    msg = EmailMessage()
    msg["From"] = "Alice <alice@customer.test>"
    msg["To"] = "support@example.test"
    msg["Subject"] = "with a program"
    msg["Message-ID"] = "<s1@customer.test>"
    msg.set_content("see attached")
    msg.add_attachment(b"MZ\x90\x00" + b"\x00" * 100, maintype="application", subtype="octet-stream",
                       filename="setup.exe")
    e = await gw.wait_done(await send(gw.port, CUSTOMER_HOP.encode() + msg.as_bytes()))
    number = e.ticket_id and (await gw.store.ticket_get(str(e.ticket_id)))["number"]
    notifier = Notifier(gw.gw.cfg.relay, hostname="mx.example.test")  # past the first-response target
    assert await run_once(gw.store, gw.gw.cfg, notifier, now=time.time() + 3700) == 1
    cmd = AGENT_HOP.encode() + simple_message(subject=f"Re: [{number}] x", sender="ann@agents.test",
                                              message_id="k@agents.test", body="$Status=Pending$\r\n$Colour=Red$\r\n")
    await gw.wait_done(await send(gw.port, cmd, sender="ann@agents.test"))
    gw.gw.relay.wake()
    await wait_for(lambda: len(sink.messages) == 5)
    keys = await thread_keys(gw.gw.cfg.twoway, gw.store)
    kinds = {}
    for _f, rcpts, raw in sink.messages:
        m = mail(raw)
        kinds[m["Subject"]] = m
        assert m["In-Reply-To"] and m["References"], m["Subject"]
        assert ids(m["References"])[-1] == m["In-Reply-To"].strip("<>")
        assert verify_message_id(m["Message-ID"], keys) == str(e.ticket_id)
    subjects = " | ".join(kinds)
    for what in ("Attachments removed", "Result of your email commands", "is now pending", "SLA"):
        assert what.lower() in subjects.lower(), (what, subjects)
    result = next(m for s, m in kinds.items() if "Result of your email commands" in s)
    assert result["In-Reply-To"] == "<k@agents.test>"
    for s, m in kinds.items():
        if "Result" not in s:
            assert m["In-Reply-To"] == "<s1@customer.test>", s


async def test_a_forged_message_id_threads_nothing(gw, sink):
    ticket, ack = await customer_ticket(gw, sink)
    host = ack["Message-ID"].strip("<>").rpartition("@")[2]
    forged = f"<t{ticket['id']}.kaaaaaaaaaaaaaaaa.rabcdefgh@{host}>"
    for sender, mid in (("mallory@customer.test", "f1@customer.test"), ("alice@customer.test", "f2@customer.test")):
        m = CUSTOMER_HOP + simple_message(subject="hello again", sender=sender, message_id=mid,
                                          extra=f"In-Reply-To: {forged}\r\n").decode()
        e = await gw.wait_done(await send(gw.port, m.encode(), sender=sender))
        assert e.state == "ticket_created", sender
        assert (await gw.store.ticket_get(str(e.ticket_id)))["linked_ticket_id"] is None
    # a real one knowing only our Message-ID is not enough for a non-participant either
    m = CUSTOMER_HOP + simple_message(subject="hello", sender="mallory@customer.test", message_id="f3@customer.test",
                                      extra=f"In-Reply-To: {ack['Message-ID']}\r\n").decode()
    e = await gw.wait_done(await send(gw.port, m.encode(), sender="mallory@customer.test"))
    assert e.state == "ticket_created" and e.ticket_id != ticket["id"]
    # the MAC is what threads the requester's reply: it needs no stored id
    await gw.store.transaction(lambda conn: conn.execute("DELETE FROM message_ids WHERE ticket_id=?", (ticket["id"],)))
    m = CUSTOMER_HOP + simple_message(subject="hello", message_id="f4@customer.test",
                                      extra=f"In-Reply-To: {ack['Message-ID']}\r\n").decode()
    e = await gw.wait_done(await send(gw.port, m.encode()))
    assert e.state == "article_added" and e.ticket_id == ticket["id"]


def dsn(original_id: str, received: str = f"Received: by {FRONT} (Postfix) id 4XyZ; Sun, 22 Nov 2026\r\n") -> bytes:
    return (
        f"{received}From: MAILER-DAEMON@{FRONT} (Mail Delivery System)\r\nTo: support@example.test\r\n"
        "Subject: Undelivered Mail Returned to Sender\r\nMessage-ID: <dsn1@mx-front.example.test>\r\n"
        "Auto-Submitted: auto-replied\r\nMIME-Version: 1.0\r\n"
        "Content-Type: multipart/report; report-type=delivery-status; boundary=\"B\"\r\n\r\n"
        "--B\r\nContent-Type: text/plain\r\n\r\nI'm sorry to have to inform you that your message could not\r\n"
        "be delivered to one or more recipients.\r\n"
        f"--B\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; {FRONT}\r\n\r\n"
        "Final-Recipient: rfc822; alice@customer.test\r\nAction: failed\r\nStatus: 5.1.1\r\n"
        "Diagnostic-Code: smtp; 550 5.1.1 <alice@customer.test>: Recipient address rejected: User unknown\r\n\r\n"
        f"--B\r\nContent-Type: text/rfc822-headers\r\n\r\nMessage-ID: {original_id}\r\n"
        "From: Support <support@example.test>\r\nTo: alice@customer.test\r\n\r\n--B--\r\n").encode()


async def test_dsn_from_the_trusted_front_mta_shows_on_ticket_queue_and_contact(gw, sink):
    ticket, ack = await customer_ticket(gw, sink)
    e = await gw.wait_done(await send(gw.port, dsn(ack["Message-ID"]), sender=""))
    # our own domain is at p=reject and the DSN is unsigned: refused before; now accepted, not acted on
    assert e.state == "suppressed" and e.auth["dmarc"]["result"] == "fail"
    assert "trusted relay" in e.auth["dmarc"]["policy_not_applied"]
    lines: list[str] = []
    await relay_queue(gw.store, json_out=True, out=lines.append)
    import json
    (row,) = [r for r in json.loads(lines[0]) if r["event"] == "ack"]
    assert row["state"] == "bounced" and row["recipients"][0]["state"] == "bounced"
    assert "5.1.1" in row["recipients"][0]["reply"]
    history = (await gw.store.ticket_get(ticket["number"]))["history"]
    (failed,) = [h for h in history if h["action"] == "delivery_failed"]
    assert failed["detail"]["text"].startswith("delivery to alice@customer.test failed: 5.1.1")
    assert (await gw.store.contact_get("alice@customer.test"))["undeliverable"] is True
    # replayed: nothing twice
    assert await gw.store.spool_replay(e.id)
    await gw.wait_done(e.id)
    history = (await gw.store.ticket_get(ticket["number"]))["history"]
    assert len([h for h in history if h["action"] == "delivery_failed"]) == 1


async def test_an_outsider_through_the_front_mta_is_still_judged_by_dmarc(gw, sink):
    ticket, ack = await customer_ticket(gw, sink)
    for received in (hop("evil.example", "203.0.113.5"),                       # an untrusted hop
                     f"Received: from evil.example by {FRONT} (Postfix); Sun, 22 Nov 2026\r\n",  # no address
                     f"Received: by {FRONT} (Postfix) id 4XyZ; Sun, 22 Nov 2026\r\n" * 21):  # too many to read
        with pytest.raises(aiosmtplib.SMTPDataError) as exc:
            await send(gw.port, dsn(ack["Message-ID"], received), sender="")
        assert exc.value.code == 550 and "5.7.1" in exc.value.message
    assert (await gw.store.contact_get("alice@customer.test"))["undeliverable"] is False


async def test_read_receipt_is_recorded_on_the_ticket(gw, sink):
    ticket, ack = await customer_ticket(gw, sink)
    mdn = (CUSTOMER_HOP + "From: Alice <alice@customer.test>\r\nTo: support@example.test\r\n"
           "Subject: Read: Printer on fire\r\nMessage-ID: <mdn1@customer.test>\r\n"
           "Date: Sun, 22 Nov 2026 11:30:00 +0000\r\nMIME-Version: 1.0\r\n"
           "Content-Type: multipart/report; report-type=disposition-notification; boundary=\"R\"\r\n\r\n"
           "--R\r\nContent-Type: text/plain\r\n\r\nYour message was displayed.\r\n"
           "--R\r\nContent-Type: message/disposition-notification\r\n\r\nReporting-UA: customer.test; Thunderbird\r\n"
           "Final-Recipient: rfc822;alice@customer.test\r\n"
           f"Original-Message-ID: {ack['Message-ID']}\r\n"
           "Disposition: manual-action/MDN-sent-manually; displayed\r\n\r\n--R--\r\n").encode()
    e = await gw.wait_done(await send(gw.port, mdn))
    assert e.state == "suppressed" and e.reason.startswith("read receipt")
    history = (await gw.store.ticket_get(ticket["number"]))["history"]
    (read,) = [h for h in history if h["action"] == "read_receipt"]
    assert read["detail"]["text"] == "read by alice@customer.test at 2026-11-22 11:30 UTC"
    assert read["detail"]["event"] == "ack"
    assert len((await gw.store.ticket_get(ticket["number"]))["articles"]) == 1  # no ticket, no article
