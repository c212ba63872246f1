"""Adversarial: text inserted before a signed body of a spilled message (issue 18, item 4).

A message over ``[smtp] spill_threshold`` keeps its header section in memory and streams its body
into a file; DKIM body hashes are computed from that file. Where the header section ends must be
decided the way dkimpy and the email parser decide it (``gateway.auth.headers.header_section_end``):
a last header line ended by a bare LF followed by an empty CRLF line ends the header section. If the
spill path looked for the *next* CRLF CRLF instead, text placed between the two would be outside the
hashed body yet shown as the body, and a message held by anyone would keep ``dkim=pass``.
"""
from __future__ import annotations

import asyncio
import random

import pytest

from .test_auth_smtp import rsa_key  # noqa: F401 - the module-scoped signing key fixture
from .conftest import queued_id
from .test_large_message import SPILL, big_message, sign

INSERTED = b"URGENT: wire the payment to IBAN XX00 0000 today. -- the CEO"


def zone(txt: str, policy: str) -> dict:
    return {"customer.test": [("TXT", "v=spf1 -all")],  # SPF fails: only DKIM can carry DMARC
            "sel._domainkey.customer.test": [("TXT", txt)],
            "_dmarc.customer.test": [("TXT", f"v=DMARC1; p={policy}")]}


async def send_raw(port: int, msg: bytes) -> tuple[int, str]:
    """One transaction over a plain socket, the message bytes exactly as given (an SMTP client
    library would turn the bare LFs this test is about into CRLF). Returns the DATA reply."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)

    async def reply() -> tuple[int, str]:
        while True:
            line = await asyncio.wait_for(reader.readline(), 30)
            if line[3:4] != b"-":
                return int(line[:3]), line[4:].decode().strip()

    try:
        await reply()
        for cmd in (b"EHLO mta.sender.test", b"MAIL FROM:<alice@customer.test>", b"RCPT TO:<support@example.test>",
                    b"DATA"):
            writer.write(cmd + b"\r\n")
            code, text = await reply()
            assert code in (250, 354), (cmd, code, text)
        stuffed = (b"." if msg.startswith(b".") else b"") + msg.replace(b"\r\n.", b"\r\n..")
        writer.write(stuffed + (b"" if stuffed.endswith(b"\r\n") else b"\r\n") + b".\r\n")
        result = await reply()
        writer.write(b"QUIT\r\n")
        await reply()
        return result
    finally:
        writer.close()


def insert_before_body(signed: bytes, sep: bytes) -> bytes:
    """End the last header line with ``sep`` (a bare LF, or LF plus whitespace-only bits) and put
    the attacker's text where readers disagree: between that and the original CRLF CRLF."""
    head, _s, body = signed.partition(b"\r\n\r\n")
    return head + sep + INSERTED + b"\r\n\r\n" + body


@pytest.mark.parametrize("sep", [b"\n\r\n", b"\n\n"])
async def test_text_inserted_before_a_spilled_signed_body_is_not_dkim_pass(start_gateway, dns_server, rsa_key, sep):
    pem, txt = rsa_key
    dns_server.set_zone(zone(txt, "none"))
    gw = await start_gateway(smtp=SPILL)
    msg = big_message(random.Random(21).randbytes(200_000), seed=21)
    signed = sign(msg, pem, (b"relaxed", b"relaxed")) + msg
    code, text = await send_raw(gw.port, insert_before_body(signed, sep))
    assert code == 250, text
    sid = queued_id(text)
    entry = await gw.wait_done(sid, timeout=30)
    stored = await gw.store.spool_get(sid)
    assert stored.chunks >= 1  # it did take the spill path
    assert [d["result"] for d in entry.auth["dkim"]] == ["fail"], entry.auth["dkim"]
    assert entry.auth["dmarc"]["result"] == "fail"
    assert "dkim=pass" not in entry.auth_header and "dmarc=pass" not in entry.auth_header


async def test_inserted_text_under_p_reject_is_refused(start_gateway, dns_server, rsa_key):
    pem, txt = rsa_key
    dns_server.set_zone(zone(txt, "reject"))
    gw = await start_gateway(smtp=SPILL)
    msg = big_message(random.Random(22).randbytes(200_000), seed=22)
    signed = sign(msg, pem, (b"simple", b"simple")) + msg
    code, text = await send_raw(gw.port, insert_before_body(signed, b"\n\r\n"))
    assert code == 550 and text.startswith("5.7.1"), text
    assert await gw.store.spool_list() == []
    # the unaltered message still passes on the same path
    code, text = await send_raw(gw.port, signed)
    assert code == 250, text
    sid = queued_id(text)
    entry = await gw.wait_done(sid, timeout=30)
    assert [d["result"] for d in entry.auth["dkim"]] == ["pass"] and entry.auth["dmarc"]["result"] == "pass"


async def test_the_read_that_crosses_the_threshold_may_carry_the_terminator(start_gateway, dns_server):
    """The read that takes DATA past ``spill_threshold`` also holds the final ``CRLF . CRLF`` (a
    sender that paused just before its last segment): the spill must not cut into the terminator,
    or the server waits for an end that already came."""
    dns_server.set_zone({"customer.test": [("TXT", "v=spf1 ip4:127.0.0.1 -all")]})
    gw = await start_gateway(smtp=SPILL)
    msg = (b"From: alice@customer.test\r\nTo: support@example.test\r\nSubject: edge\r\n\r\n" +
           b"".join(b"line %05d of the body\r\n" % i for i in range(3000)))
    assert 64 * 1024 < len(msg) < 128 * 1024
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    try:
        await reader.readline()
        for cmd in (b"EHLO mta.sender.test", b"MAIL FROM:<alice@customer.test>", b"RCPT TO:<support@example.test>",
                    b"DATA"):
            writer.write(cmd + b"\r\n")
            while (line := await reader.readline())[3:4] == b"-":
                pass
        first = 60_000  # under the threshold: no spill yet
        writer.write(msg[:first])
        await writer.drain()
        await asyncio.sleep(0.3)  # the server has read it all
        writer.write(msg[first:] + b".\r\n")  # one read: past the threshold, terminator included
        line = await asyncio.wait_for(reader.readline(), 10)
        assert line.startswith(b"250 "), line
        sid = queued_id(line.decode())
    finally:
        writer.close()
    stored = await gw.store.spool_get(sid)
    assert (await gw.store.spool_full_raw(stored)).endswith(msg)
