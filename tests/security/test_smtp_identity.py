"""The identity we authenticate is the identity we act on, through SMTP (issue 18, classes 1-2).

An attacker with a domain of their own (evil.test: SPF pass from 127.0.0.1, so ``dmarc=pass`` for it) tries to
get a ticket whose requester is at reject.test (DMARC p=reject) by making the SMTP-time reader and the
pipeline's parser read From differently. Each way the issue reports is refused at DATA or quarantined.
"""
from __future__ import annotations

import asyncio

import pytest

from ..conftest import queued_id

ZONE = {
    "evil.test": [("TXT", "v=spf1 ip4:127.0.0.1 -all")],
    "_dmarc.evil.test": [("TXT", "v=DMARC1; p=none")],
    "reject.test": [("TXT", "v=spf1 ip4:192.0.2.1 -all")],
    "_dmarc.reject.test": [("TXT", "v=DMARC1; p=reject")],
}


async def deliver(port: int, raw: bytes, sender: str = "me@evil.test") -> tuple[int, str]:
    """One transaction on a raw socket: SMTP client libraries rewrite bare CR and LF, an attacker does not."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)

    async def reply() -> tuple[int, str]:
        lines = []
        while True:
            line = (await asyncio.wait_for(reader.readline(), 10)).decode()
            lines.append(line[4:].strip())
            if line[3:4] != "-":
                return int(line[:3]), " ".join(lines)

    try:
        await reply()
        for cmd in (b"EHLO client.test", b"MAIL FROM:<" + sender.encode() + b">", b"RCPT TO:<support@example.test>",
                    b"DATA"):
            writer.write(cmd + b"\r\n")
            code, text = await reply()
            if code >= 400:
                return code, text
        body = raw.replace(b"\r\n.", b"\r\n..")
        writer.write(body + (b"" if body.endswith(b"\r\n") else b"\r\n") + b".\r\n")
        code, text = await reply()
        writer.write(b"QUIT\r\n")
        return code, text
    finally:
        writer.close()


def msg(head: bytes, n: int) -> bytes:
    return head + b"To: support@example.test\r\nSubject: id " + str(n).encode() + b"\r\nMessage-ID: <id" + \
        str(n).encode() + b"@evil.test>\r\n\r\nPlease reset my password.\r\n"


@pytest.fixture
async def gw(start_gateway, dns_server):
    dns_server.set_zone(ZONE)
    return await start_gateway()


@pytest.mark.parametrize("head,what", [
    (b"X-Note: a\rFrom: Victim <victim@reject.test>\r\nFrom: Me <me@evil.test>\r\n", "bare CR"),
    (b"From : Victim <victim@reject.test>\r\nSender: me@evil.test\r\n", "white space before the colon"),
    (b"From: Me <me@evil.test>\r\nFrom: Victim <victim@reject.test>\r\n", "2 From header fields"),
    (b"From: Me <me@evil.test>\r\nX-Null: a\x00b\r\n", "NUL byte"),
    (b"junk line\r\nFrom: Victim <victim@reject.test>\r\n", "does not start with a header field"),
])
async def test_ambiguous_header_sections_are_refused_at_data(gw, head, what):
    code, text = await deliver(gw.port, msg(head, 1))
    assert code == 550 and text.startswith("5.6.0") and what in text, (code, text)


async def test_a_line_that_is_not_a_field_before_from_cannot_hide_it(gw):
    """Once a line without a colon made the email package end the header section early, so the pipeline saw
    no From and took MAIL FROM. Now that line is a continuation line for every reader."""
    code, text = await deliver(gw.port, msg(b"Subject: x\r\nthis line has no colon\r\nFrom: Me <me@evil.test>\r\n", 2),
                               sender="victim@reject.test")
    assert code == 250, text
    e = await gw.wait_done(queued_id(f"250 {text}"))
    assert e.state == "ticket_created"
    assert e.auth["from"]["addresses"] == ["me@evil.test"] and e.auth["dmarc"]["header_from"] == "evil.test"
    assert (await gw.store.ticket_get(str(e.ticket_id)))["requester"] == "me@evil.test"  # not MAIL FROM


async def test_encoded_word_address_is_refused_or_quarantined_never_the_requester(start_gateway, dns_server):
    dns_server.set_zone(ZONE)
    head = b"From: =?utf-8?q?Victim?= <=?utf-8?q?victim=40reject.test?=>\r\n"
    gw = await start_gateway()
    code, text = await deliver(gw.port, msg(head, 4))
    assert code == 550 and text.startswith("5.7.1")  # DMARC cannot evaluate a From without a domain
    gw2 = await start_gateway(auth={"malformed_from": "tag"})  # a site that accepts what DMARC cannot judge
    code, text = await deliver(gw2.port, msg(head, 5))
    assert code == 250
    e = await gw2.wait_done(queued_id(f"250 {text}"))
    assert e.state == "quarantined" and e.reason.startswith("sender identity: From read two ways"), e.reason
    assert not await gw2.store.tickets_list()


async def test_a_from_without_an_address_never_falls_back_to_mail_from(start_gateway, dns_server):
    dns_server.set_zone(ZONE)
    gw = await start_gateway(auth={"malformed_from": "tag"})
    code, text = await deliver(gw.port, msg(b"From: undisclosed-recipients:;\r\n", 6), sender="victim@reject.test")
    assert code == 250
    e = await gw.wait_done(queued_id(f"250 {text}"))
    assert e.state == "quarantined" and "From header field cannot be read" in e.reason, e.reason


async def test_a_message_without_from_may_use_the_envelope(start_gateway, dns_server):
    dns_server.set_zone(ZONE)
    gw = await start_gateway(auth={"malformed_from": "tag"})
    code, text = await deliver(gw.port, msg(b"Date: Sun, 6 Dec 2026 10:00:00 +0000\r\n", 7))
    assert code == 250
    e = await gw.wait_done(queued_id(f"250 {text}"))
    assert e.state == "ticket_created"
    assert (await gw.store.ticket_get(str(e.ticket_id)))["requester"] == "me@evil.test"
