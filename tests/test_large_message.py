"""Large messages end to end: DATA spilled to a temporary file, DKIM body hashes streamed from it,
the spool row plus chunk rows, and the worker decoding the big attachment without parsing it whole.

``spill_threshold`` is set to its minimum (64 KiB) so a message of a few hundred KB takes the path
a 50 MB one takes in production; the spool's chunk size (1 MiB) makes the bigger ones multi-chunk.
"""
from __future__ import annotations

import base64
import hashlib
import random
import sqlite3

import aiosmtplib
import dkim
import pytest

from .conftest import queued_id
from .test_auth_smtp import rsa_key  # noqa: F401 - the module-scoped signing key fixture
from .test_auth_smtp import send as send_as

SPILL = {"spill_threshold": "64KiB", "max_message_size": "10MiB"}


def big_message(attachment: bytes, text_lines: int = 3000, seed: int = 1) -> bytes:
    """multipart/mixed: a text part full of lines that need dot-stuffing, then a base64 attachment."""
    rng = random.Random(seed)
    words = ["printer", "fire", ".", "..", ".hidden", "  spaced\t", "toner", "x" * 90]
    lines = []
    for i in range(text_lines):
        line = " ".join(rng.choice(words) for _ in range(rng.randint(0, 8)))
        lines.append(("." + line) if i % 7 == 0 else line)  # many lines start with a dot
    text = "\r\n".join(lines) + "\r\n.\r\n..\r\n"
    att = base64.encodebytes(attachment).replace(b"\n", b"\r\n")
    return (b"From: Alice <alice@customer.test>\r\nTo: support@example.test\r\n"
            b"Subject: logs attached\r\nMessage-ID: <big-" + str(seed).encode() + b"@customer.test>\r\n"
            b"Date: Sun, 22 Nov 2026 10:00:00 +0000\r\nMIME-Version: 1.0\r\n"
            b"Content-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n--b1\r\n"
            b"Content-Type: text/plain; charset=utf-8\r\n\r\n" + text.encode() +
            b"--b1\r\nContent-Type: application/gzip; name=\"logs.tar.gz\"\r\n"
            b"Content-Disposition: attachment; filename=\"logs.tar.gz\"\r\n"
            b"Content-Transfer-Encoding: base64\r\n\r\n" + att + b"--b1--\r\n")


def sign(msg: bytes, pem: bytes, canon: tuple[bytes, bytes]) -> bytes:
    return dkim.sign(msg, b"sel", b"customer.test", pem, canonicalize=canon,
                     include_headers=[b"from", b"to", b"subject", b"content-type"])


async def send(port: int, msg: bytes) -> str:
    return await send_as(port, msg, "alice@customer.test")


def zone(txt: str) -> dict:
    return {"customer.test": [("TXT", "v=spf1 -all")],  # SPF fails: DKIM alone must carry DMARC
            "sel._domainkey.customer.test": [("TXT", txt)],
            "_dmarc.customer.test": [("TXT", "v=DMARC1; p=reject")]}


async def test_large_signed_message_is_spooled_in_chunks_verified_and_ticketed(start_gateway, dns_server, rsa_key):
    pem, txt = rsa_key
    dns_server.set_zone(zone(txt))
    gw = await start_gateway(smtp=SPILL)
    attachment = random.Random(7).randbytes(1_800_000)
    msg = big_message(attachment)
    signed = sign(msg, pem, (b"relaxed", b"relaxed")) + sign(msg, pem, (b"simple", b"simple")) + msg
    sid = await send(gw.port, signed)
    entry = await gw.wait_done(sid, timeout=30)
    assert entry.state == "ticket_created", (entry.reason, entry.last_error)
    stored = await gw.store.spool_get(sid)
    assert stored.chunks >= 2 and stored.size == len(await gw.store.spool_full_raw(stored))
    # both signatures verified from the streamed body; DMARC passes on DKIM alone
    assert [d["result"] for d in entry.auth["dkim"]] == ["pass", "pass"], entry.auth["dkim"]
    assert entry.auth["dmarc"]["result"] == "pass"
    # the spooled message is the original, byte for byte, after our Received and A-R fields
    full = await gw.store.spool_full_raw(stored)
    assert full.endswith(signed)
    assert full[:len(full) - len(signed)].count(b"Authentication-Results:") == 1
    # the attachment reached the ticket intact
    art = (await gw.store.ticket_get("HD-1000"))["articles"][0]
    (att,) = art["attachments"]
    assert att["filename"] == "logs.tar.gz" and att["size"] == len(attachment)
    assert att["sha256"] == hashlib.sha256(attachment).hexdigest()
    assert await gw.store.blob_get(att["sha256"]) == attachment
    assert ".hidden" in art["body_text"]
    # the chunk rows are really there
    conn = sqlite3.connect(gw.gw.cfg.sqlite_path())
    n, total = conn.execute("SELECT COUNT(*), SUM(length(data)) FROM spool_chunks WHERE spool_id=?",
                            (sid,)).fetchone()
    conn.close()
    assert n == stored.chunks and total == stored.body_size


async def test_large_message_with_altered_body_fails_dkim(start_gateway, dns_server, rsa_key):
    pem, txt = rsa_key
    dns_server.set_zone(zone(txt))
    gw = await start_gateway(smtp=SPILL)
    msg = big_message(random.Random(8).randbytes(400_000), seed=2)
    sig = sign(msg, pem, (b"relaxed", b"relaxed"))
    tampered = msg.replace(b"--b1--\r\n", b"--b1--\r\nappended after signing\r\n")
    with pytest.raises(aiosmtplib.SMTPDataError) as exc:   # p=reject and DKIM fails: refused
        await send(gw.port, sig + tampered)
    assert exc.value.code == 550 and exc.value.message.startswith("5.7.1")
    assert await gw.store.spool_list() == []


async def test_large_message_over_the_size_limit_is_refused_and_the_session_goes_on(start_gateway, dns_server):
    dns_server.set_zone({"customer.test": [("TXT", "v=spf1 ip4:127.0.0.1 -all")]})
    gw = await start_gateway(smtp={**SPILL, "max_message_size": "200KiB"})
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=gw.port, timeout=30, start_tls=False)
    await client.connect()
    await client.ehlo(hostname="mta.customer.test")
    await client.mail("alice@customer.test")
    await client.rcpt("support@example.test")
    with pytest.raises(aiosmtplib.SMTPDataError) as exc:
        await client.data(big_message(random.Random(9).randbytes(300_000), seed=3))
    assert exc.value.code == 552 and exc.value.message.startswith("5.3.4")
    small = big_message(random.Random(10).randbytes(90_000), text_lines=100, seed=4)  # spills, fits
    await client.mail("alice@customer.test")
    await client.rcpt("support@example.test")
    _c, text = await client.data(small)
    await client.quit()
    entry = await gw.wait_done(queued_id(text), timeout=30)
    assert entry.state == "ticket_created"
    assert (await gw.store.spool_full_raw(await gw.store.spool_get(entry.id))).endswith(small)
    assert len(await gw.store.spool_list()) == 1


async def test_dot_stuffing_survives_every_flush_boundary(start_gateway, dns_server):
    """Random bodies made mostly of dots and line breaks, several per connection: what is spooled
    is exactly what was sent, wherever the reads and flushes fall."""
    dns_server.set_zone({"customer.test": [("TXT", "v=spf1 ip4:127.0.0.1 -all")]})
    gw = await start_gateway(smtp=SPILL)
    rng = random.Random(11)
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=gw.port, timeout=30, start_tls=False)
    await client.connect()
    await client.ehlo(hostname="mta.customer.test")
    sent = {}
    for i in range(4):
        body = b"".join(rng.choice([b".", b"..", b"\r\n", b"\r\n.", b"x", b" "]) for _ in range(200_000))
        msg = (b"From: alice@customer.test\r\nTo: support@example.test\r\nSubject: dots " + str(i).encode() +
               b"\r\n\r\n" + body + b"\r\n")
        await client.mail("alice@customer.test")
        await client.rcpt("support@example.test")
        _c, text = await client.data(msg)
        sent[queued_id(text)] = msg
    await client.quit()
    for sid, msg in sent.items():
        entry = await gw.store.spool_get(sid)
        assert entry.chunks >= 1
        assert (await gw.store.spool_full_raw(entry)).endswith(msg), sid


async def test_large_message_encrypted_at_rest_chunk_by_chunk(start_gateway, dns_server, tmp_path):
    from gateway.store.crypto import generate_key
    keyfile = tmp_path / "store.key"
    keyfile.write_text(generate_key() + "\n")
    keyfile.chmod(0o600)  # secret files others can read are refused
    dns_server.set_zone({"customer.test": [("TXT", "v=spf1 ip4:127.0.0.1 -all")]})
    gw = await start_gateway(smtp=SPILL, store={"encryption_key_file": str(keyfile)})
    attachment = b"TOPSECRETBLOB" * 100_000
    msg = big_message(attachment, seed=5).replace(b"printer", b"hunter2")
    sid = await send(gw.port, msg)
    entry = await gw.wait_done(sid, timeout=30)
    assert entry.state == "ticket_created"
    conn = sqlite3.connect(gw.gw.cfg.sqlite_path())
    rows = [bytes(r[0]) for r in conn.execute("SELECT data FROM spool_chunks WHERE spool_id=?", (sid,))]
    conn.close()
    assert rows and all(r.startswith(b"ENC1:") for r in rows)
    assert not any(b"hunter2" in r or base64.b64encode(b"TOPSECRETBLOB")[:12] in r for r in rows)
    stored = await gw.store.spool_get(sid)
    assert (await gw.store.spool_full_raw(stored)).endswith(msg)
    art = (await gw.store.ticket_get("HD-1000"))["articles"][0]
    assert await gw.store.blob_get(art["attachments"][0]["sha256"]) == attachment
