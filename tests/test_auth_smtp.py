"""Authentication end to end: SMTP conversations against zones served by a real DNS server on 127.0.0.1."""
from __future__ import annotations

import base64

import aiosmtplib
import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from .conftest import queued_id, simple_message


@pytest.fixture(scope="module")
def rsa_key():
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                            serialization.NoEncryption())
    pub = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return pem, f"v=DKIM1; k=rsa; p={base64.b64encode(pub).decode()}"


async def send(port: int, msg: bytes, sender: str) -> str:
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=15, start_tls=False)
    await client.connect()
    await client.ehlo(hostname="mta.sender.test")
    await client.mail(sender)
    await client.rcpt("support@example.test")
    try:
        _c, text = await client.data(msg)
    finally:
        await client.quit()
    return queued_id(text)


async def test_dkim_signed_aligned_mail_passes_and_results_are_stored(start_gateway, dns_server, rsa_key):
    pem, txt = rsa_key
    dns_server.set_zone({
        "customer.test": [("TXT", "v=spf1 -all")],                # SPF fails: DKIM alone must carry DMARC
        "sel._domainkey.customer.test": [("TXT", txt)],
        "_dmarc.customer.test": [("TXT", "v=DMARC1; p=reject")],
    })
    gw = await start_gateway()
    msg = simple_message(message_id="signed@customer.test")
    signed = dkim.sign(msg, b"sel", b"customer.test", pem, include_headers=[b"from", b"to", b"subject"]) + msg
    forged = b"Authentication-Results: mx.example.test; dmarc=pass header.from=customer.test\r\n"
    sid = await send(gw.port, forged + signed, "alice@customer.test")
    entry = await gw.wait_done(sid)
    assert entry.state == "ticket_created"
    assert "dkim=pass" in entry.auth_header and "dmarc=pass" in entry.auth_header
    assert entry.auth["dmarc"]["result"] == "pass"
    assert any(d["result"] == "pass" and d["d"] == "customer.test" for d in entry.auth["dkim"])
    head = entry.raw.split(b"\r\n\r\n", 1)[0]
    assert head.count(b"Authentication-Results: mx.example.test") == 1  # the forged one is gone, ours is there
    ticket = await gw.store.ticket_get("HD-1000")
    assert ticket["articles"][0]["authentication_results"] == entry.auth_header
    assert ticket["flags"] == []


async def test_dmarc_reject_failure_is_refused_at_data(start_gateway, dns_server):
    dns_server.set_zone({
        "evil.test": [("TXT", "v=spf1 ip4:192.0.2.1 -all")],
        "_dmarc.evil.test": [("TXT", "v=DMARC1; p=reject")],
    })
    gw = await start_gateway()
    with pytest.raises(aiosmtplib.SMTPDataError) as exc:
        await send(gw.port, simple_message(sender="ceo@evil.test"), "ceo@evil.test")
    assert exc.value.code == 550 and exc.value.message.startswith("5.7.1")
    assert await gw.store.spool_list() == []
    body = gw.gw.metrics.render().decode()
    assert 'ticketmx_messages_rejected_total{code="550",reason="auth_dmarc"} 1.0' in body


async def test_dmarc_quarantine_failure_is_accepted_flagged_and_cannot_append(start_gateway, dns_server):
    dns_server.set_zone({
        "customer.test": [("TXT", "v=spf1 ip4:127.0.0.1 -all")],
        "_dmarc.customer.test": [("TXT", "v=DMARC1; p=quarantine")],
        "spoof.test": [("TXT", "v=spf1 ip4:192.0.2.1 -all")],
        "_dmarc.spoof.test": [("TXT", "v=DMARC1; p=quarantine")],
    })
    gw = await start_gateway()
    first = await send(gw.port, simple_message(sender="bob@spoof.test", message_id="orig@spoof.test"),
                       "bob@spoof.test")
    assert (await gw.wait_done(first)).state == "ticket_created"
    ticket = await gw.store.ticket_get("HD-1000")
    assert ticket["flags"] == ["suspicious"]
    # even a reply referencing the ticket from the same (failing) address opens its own ticket
    reply = simple_message(sender="bob@spoof.test", message_id="r@spoof.test",
                           extra="In-Reply-To: <orig@spoof.test>\r\n")
    e = await gw.wait_done(await send(gw.port, reply, "bob@spoof.test"))
    assert e.state == "ticket_created" and "suspicious" in e.flags


async def test_dns_timeout_defers_never_rejects(start_gateway, dns_server):
    dns_server.set_zone({
        "slow.test": [("TIMEOUT", None)],
        "_dmarc.slow.test": [("TIMEOUT", None)],
    })
    gw = await start_gateway(dns={"timeout": "300ms"})
    with pytest.raises(aiosmtplib.SMTPDataError) as exc:
        await send(gw.port, simple_message(sender="x@slow.test"), "x@slow.test")
    assert exc.value.code == 451 and exc.value.message.startswith("4.7.")
