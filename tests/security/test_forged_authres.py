"""Issue 18 (RFC 8601 5): Authentication-Results fields claiming our authserv-id are removed on
arrival, in every spelling; others' fields and ARC-Authentication-Results are kept.

Through real SMTP into the spool: the stored message is read back both as bytes and with the
pipeline's email parser, for a small message and for one above ``[smtp] spill_threshold``.
"""
from __future__ import annotations

import email
import email.policy

import aiosmtplib
import pytest

from gateway.auth.headers import authserv_id_of
from tests.conftest import queued_id

OURS = "mx.example.test"

# (name, header bytes); every one claims our authserv-id and must be gone from the spooled message
FORGED = [
    ("plain", b"Authentication-Results: mx.example.test; dmarc=pass header.from=victim.test"),
    ("upper-case id", b"Authentication-Results: MX.EXAMPLE.TEST; dmarc=pass"),
    ("upper-case name", b"AUTHENTICATION-RESULTS: mx.example.test; dmarc=pass"),
    ("comment before id", b"Authentication-Results: (checked) mx.example.test; dmarc=pass"),
    ("nested comment", b"Authentication-Results: (a (b) c)mx.example.test; dmarc=pass"),
    ("quoted id", b'Authentication-Results: "mx.example.test"; dmarc=pass'),
    ("quoted escaped id", b'Authentication-Results: "mx.\\example.test"; dmarc=pass'),
    ("folded", b"Authentication-Results:\r\n\tmx.example.test;\r\n dmarc=pass"),
    ("trailing dot", b"Authentication-Results: mx.example.test.; dmarc=pass"),
    ("version", b"Authentication-Results: mx.example.test 1; dmarc=pass"),
    ("comment after id", b"Authentication-Results: mx.example.test(x); dmarc=pass"),
    ("no space after colon", b"Authentication-Results:mx.example.test;dmarc=pass"),
    ("no results", b"Authentication-Results: mx.example.test; none"),
    ("unparsable", b"Authentication-Results: ;;; dmarc=pass"),
    # one that survived: an id that is not a token, read as ours by decoding readers
    ("encoded-word id", b"Authentication-Results: =?us-ascii?q?mx.example.test?=; dmarc=pass"),
    ("encoded-word id, b", b"Authentication-Results: =?utf-8?b?bXguZXhhbXBsZS50ZXN0?=; dmarc=pass"),
    ("bare CR inside", b"X-Junk: a\rAuthentication-Results: mx.example.test; dmarc=pass"),
]
# Variants the DATA check refuses outright (the one reading of the header section, docs/security.md):
# the whole message gets 550 5.6.0, so nothing of it is spooled.
REFUSED = [
    ("space before colon", b"Authentication-Results : mx.example.test; dmarc=pass"),
    ("tab before colon", b"Authentication-Results\t: mx.example.test; dmarc=pass"),
    ("NUL in id", b"Authentication-Results: mx.example.test\x00; dmarc=pass"),
]
KEPT = [
    b"ARC-Authentication-Results: i=1; mx.example.test; dmarc=pass",
    b"Authentication-Results: mx.other.test; dmarc=pass header.from=victim.test",
    b"X-Authentication-Results: mx.example.test; dmarc=pass",
]


def _message(size: int) -> bytes:
    head = b"\r\n".join(h for _, h in FORGED) + b"\r\n" + b"\r\n".join(KEPT) + b"\r\n"
    body = b"It is on fire.\r\n" + b"filler line of text\r\n" * (size // 21)
    return (head + b"From: Alice <alice@customer.test>\r\nTo: support@example.test\r\nSubject: forged A-R\r\n"
            b"Message-ID: <forged@customer.test>\r\nDate: Sun, 22 Nov 2026 10:00:00 +0000\r\n\r\n" + body)


async def _send(port: int, msg: bytes) -> str:
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=15, start_tls=False)
    await client.connect()
    await client.ehlo(hostname="mta.customer.test")
    await client.mail("alice@customer.test")
    await client.rcpt("support@example.test")
    try:
        _c, text = await client.data(msg)
    finally:
        await client.quit()
    return queued_id(text)


@pytest.mark.parametrize("size", [0, 200_000], ids=["small", "spilled"])
async def test_no_forged_authentication_results_survives(start_gateway, dns_server, size):
    dns_server.set_zone({"customer.test": [("TXT", "v=spf1 ip4:127.0.0.1 -all")],
                         "_dmarc.customer.test": [("TXT", "v=DMARC1; p=none")]})
    gw = await start_gateway(smtp={"spill_threshold": "64KiB", "max_message_size": "10MiB"})
    entry = await gw.wait_done(await _send(gw.port, _message(size)), timeout=30)
    raw = entry.raw
    head = raw.split(b"\r\n\r\n", 1)[0]
    # bytes: exactly one field of ours (the one we prepended, first), none of the forged ones
    ours = [ln for ln in head.split(b"\r\n") if ln.lower().startswith(b"authentication-results")]
    assert len(ours) == 2 and ours[0].startswith(b"Authentication-Results: mx.example.test;"), ours
    assert ours[1] == KEPT[1]
    assert b"dmarc=pass header.from=victim.test" not in ours[0]
    for kept in KEPT:
        assert head.count(kept) == 1, kept
    # the pipeline's reading: the same fields
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    ids = [authserv_id_of(str(v)) for v in msg.get_all("Authentication-Results")]   # RFC 2047 decoded
    assert [i.lower().rstrip(".") for i in ids] == [OURS, "mx.other.test"], ids
    legacy = email.message_from_bytes(raw, policy=email.policy.compat32)
    assert len(legacy.get_all("Authentication-Results")) == 2
    assert msg.get_all("ARC-Authentication-Results") and msg.get_all("X-Authentication-Results")


@pytest.mark.parametrize("name,field", REFUSED, ids=[n for n, _ in REFUSED])
async def test_header_sections_no_reader_agrees_on_are_refused(start_gateway, dns_server, name, field):
    dns_server.set_zone({"customer.test": [("TXT", "v=spf1 ip4:127.0.0.1 -all")]})
    gw = await start_gateway()
    msg = field + b"\r\nFrom: Alice <alice@customer.test>\r\nTo: support@example.test\r\nSubject: x\r\n\r\nbody\r\n"
    with pytest.raises(aiosmtplib.SMTPDataError) as err:
        await _send(gw.port, msg)
    assert err.value.code == 550 and err.value.message.startswith("5.6.0"), err.value
