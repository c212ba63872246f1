"""The SMTP listener over real sockets: extensions, recipients, limits, loops, codes, TLS."""
from __future__ import annotations

import asyncio
import re
import smtplib
import ssl

import aiosmtplib
import pytest
import trustme

from .conftest import queued_id, simple_message

ENHANCED = re.compile(r"^[245]\.\d{1,3}\.\d{1,3} ")


async def connect(port: int) -> aiosmtplib.SMTP:
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=10, start_tls=False)
    await client.connect()
    return client


async def test_ehlo_advertises_extensions(gateway):
    client = await connect(gateway.port)
    code, _ = await client.ehlo(hostname="client.test")
    assert code == 250
    for ext in ("size", "8bitmime", "smtputf8", "pipelining", "enhancedstatuscodes"):
        assert client.supports_extension(ext), ext
    assert client.esmtp_extensions["size"] == str(1024 * 1024)
    assert not client.supports_extension("starttls")  # no certificate configured
    await client.quit()


async def test_accepts_known_mailbox_and_spools(gateway):
    client = await connect(gateway.port)
    await client.ehlo(hostname="client.test")
    resp = await client.sendmail("alice@customer.test", ["support@example.test"], simple_message())
    _errors, text = resp
    assert text.startswith("2.0.0 Ok: queued as ")
    entry = await gateway.store.spool_get(queued_id(text))
    assert entry is not None
    assert entry.mail_from == "alice@customer.test"
    assert entry.rcpt_tos == ("support@example.test",)
    assert entry.peer_ip == "127.0.0.1" and entry.helo == "client.test"
    assert entry.raw.startswith(b"Received: from client.test ([127.0.0.1])")
    assert b"It is on fire." in entry.raw
    await client.quit()


@pytest.mark.parametrize("rcpt, ok", [
    ("support@example.test", True),
    ("SUPPORT@Example.TEST", True),
    ("help@example.test", True),            # alias
    ("support+urgent@example.test", True),  # subaddress tag
    ("billing+x@EXAMPLE.test", True),
    ("nobody@example.test", False),
    ("support@example.test.evil", False),
    ("victim@elsewhere.test", False),       # never relay
    ("support@sub.example.test", False),
])
async def test_rcpt_mapping(gateway, rcpt, ok):
    client = await connect(gateway.port)
    await client.ehlo(hostname="client.test")
    await client.mail("alice@customer.test")
    if ok:
        code, msg = await client.rcpt(rcpt)
        assert code == 250 and msg.startswith("2.1.5")
    else:
        with pytest.raises(aiosmtplib.SMTPRecipientRefused) as exc:
            await client.rcpt(rcpt)
        assert exc.value.code == 550 and exc.value.message.startswith("5.1.1")
    await client.quit()


async def test_too_many_recipients(start_gateway):
    gw = await start_gateway(smtp={"max_recipients": 2})
    client = await connect(gw.port)
    await client.ehlo(hostname="c.test")
    await client.mail("a@customer.test")
    await client.rcpt("support@example.test")
    await client.rcpt("help@example.test")
    with pytest.raises(aiosmtplib.SMTPRecipientRefused) as exc:
        await client.rcpt("billing@example.test")
    assert exc.value.code == 452 and exc.value.message.startswith("4.5.3")
    await client.quit()


async def test_size_declared_too_big(gateway):
    client = await connect(gateway.port)
    await client.ehlo(hostname="c.test")
    with pytest.raises(aiosmtplib.SMTPSenderRefused) as exc:
        await client.mail("a@customer.test", options=[f"SIZE={2 * 1024 * 1024}"])
    assert exc.value.code == 552 and exc.value.message.startswith("5.3.4")
    await client.quit()


async def test_size_enforced_on_stream_and_session_survives(gateway):
    client = await connect(gateway.port)
    await client.ehlo(hostname="c.test")
    big = simple_message(body=("x" * 998 + "\r\n") * 1100)  # ~1.1 MB, limit is 1 MiB, no SIZE given
    await client.mail("a@customer.test")  # no SIZE= declared: the limit must hold on the stream
    await client.rcpt("support@example.test")
    with pytest.raises(aiosmtplib.SMTPDataError) as exc:
        await client.data(big)
    assert exc.value.code == 552 and exc.value.message.startswith("5.3.4")
    # the session is still usable and nothing was spooled
    _e, text = await client.sendmail("a@customer.test", ["support@example.test"], simple_message())
    assert "queued as" in text
    assert len(await gateway.store.spool_list()) == 1
    await client.quit()


async def test_loop_by_received_count(gateway):
    client = await connect(gateway.port)
    await client.ehlo(hostname="c.test")
    hops = "".join(f"Received: from hop{i}.test by hop{i+1}.test; Sun, 22 Nov 2026 10:00:00 +0000\r\n"
                   for i in range(31))
    msg = hops.encode() + simple_message()
    with pytest.raises(aiosmtplib.SMTPDataError) as exc:
        await client.sendmail("a@customer.test", ["support@example.test"], msg)
    assert exc.value.code == 554 and exc.value.message.startswith("5.4.6")
    # 30 hops is still fine
    msg30 = "".join(hops.splitlines(keepends=True)[:30]).encode() + simple_message()
    _e, text = await client.sendmail("a@customer.test", ["support@example.test"], msg30)
    assert "queued as" in text
    await client.quit()


async def test_loop_by_our_marker(gateway):
    client = await connect(gateway.port)
    await client.ehlo(hostname="c.test")
    msg = simple_message(extra="X-Ticketmx-Loop: mx.example.test\r\n")
    with pytest.raises(aiosmtplib.SMTPDataError) as exc:
        await client.sendmail("a@customer.test", ["support@example.test"], msg)
    assert exc.value.code == 554 and exc.value.message.startswith("5.4.6")
    # another ticketmx's marker is not our loop
    _e, text = await client.sendmail("a@customer.test", ["support@example.test"],
                                     simple_message(extra="X-Ticketmx-Loop: mx.other.test\r\n"))
    assert "queued as" in text
    await client.quit()


async def test_every_reply_has_an_enhanced_code(gateway):
    """Drive a session with smtplib and check every reply except the greeting and EHLO lines."""
    await asyncio.get_running_loop().run_in_executor(None, _drive_session, gateway.port)


def _drive_session(port: int) -> None:
    s = smtplib.SMTP("127.0.0.1", port, timeout=10)
    try:
        replies = []
        s.ehlo("c.test")
        replies.append(s.docmd("NOOP"))
        replies.append(s.docmd("RSET"))
        replies.append(s.docmd("VRFY", "support@example.test"))
        replies.append(s.docmd("BOGUS"))
        replies.append(s.docmd("RCPT", "TO:<support@example.test>"))   # bad sequence
        replies.append(s.docmd("MAIL", "FROM:<a@customer.test>"))
        replies.append(s.docmd("MAIL", "FROM:<a@customer.test>"))      # nested
        replies.append(s.docmd("RCPT", "TO:<nobody@example.test>"))
        replies.append(s.docmd("RCPT", "TO:<support@example.test>"))
        replies.append(s.docmd("MAIL", "FROM:bad syntax"))
        replies.append(s.docmd("HELP"))
        for code, text in replies:
            assert code // 100 in (2, 4, 5), (code, text)
            assert ENHANCED.match(text.decode()), (code, text)
        code, text = s.docmd("QUIT")
        assert code == 221 and ENHANCED.match(text.decode())
    finally:
        s.close()


async def test_per_ip_session_limit(start_gateway):
    gw = await start_gateway(smtp={"max_sessions_per_ip": 2})
    a = await connect(gw.port)
    b = await connect(gw.port)
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    line = await asyncio.wait_for(reader.readline(), 5)
    assert line.startswith(b"421 4.7.0"), line
    assert await asyncio.wait_for(reader.read(), 5) == b""  # closed by the server
    writer.close()
    await a.quit()
    await b.quit()
    await asyncio.sleep(0.1)
    c = await connect(gw.port)  # a slot is free again
    await c.quit()


async def test_idle_timeout_answers_421(start_gateway):
    gw = await start_gateway(smtp={"idle_timeout": "300ms"})
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    greeting = await asyncio.wait_for(reader.readline(), 5)
    assert greeting.startswith(b"220 ")
    line = await asyncio.wait_for(reader.readline(), 5)
    assert line.startswith(b"421 4.4.2"), line
    writer.close()


async def test_starttls_with_certificate(start_gateway, tmp_path):
    ca = trustme.CA()
    cert = ca.issue_cert("mx.example.test")
    cert.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "key.pem"))
    (tmp_path / "key.pem").chmod(0o600)
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
    gw = await start_gateway(smtp={"tls_cert": str(tmp_path / "cert.pem"), "tls_key": str(tmp_path / "key.pem")})
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=gw.port, timeout=10, start_tls=False,
                             tls_context=client_ctx)
    await client.connect()
    await client.ehlo(hostname="c.test")
    assert client.supports_extension("starttls")
    await client.starttls(server_hostname="mx.example.test")
    await client.ehlo(hostname="c.test")
    assert not client.supports_extension("auth")  # an MX takes no AUTH, even over TLS
    _e, text = await client.sendmail("a@customer.test", ["support@example.test"], simple_message())
    entry = await gw.store.spool_get(queued_id(text))
    assert entry.tls and entry.tls["version"].startswith("TLSv1.")
    assert b"with ESMTPS" in entry.raw.split(b"\r\n\r\n")[0]
    await client.quit()


async def test_shutdown_refuses_new_sessions_with_421(start_gateway):
    gw = await start_gateway()
    busy = await connect(gw.port)
    await busy.ehlo(hostname="c.test")
    await busy.mail("a@customer.test")
    await busy.rcpt("support@example.test")
    stopping = asyncio.create_task(gw.gw.stop(grace=5))
    await asyncio.sleep(0.1)
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    line = await asyncio.wait_for(reader.readline(), 5)
    assert line.startswith(b"421 4.3.2"), line
    writer.close()
    # the transaction in flight still completes
    code, text = await busy.data(simple_message())
    assert code == 250 and "queued as" in text
    await stopping
    entry_count = len(await _spool_after_restart(gw))
    assert entry_count == 1


async def _spool_after_restart(gw):
    await gw.store.open()
    try:
        return await gw.store.spool_list()
    finally:
        await gw.store.close()


async def test_rate_limits_per_sender_and_per_ip(start_gateway):
    gw = await start_gateway(smtp={"rate_per_sender": "2/1m", "rate_per_ip": "3/1m"})
    client = await connect(gw.port)
    await client.ehlo(hostname="c.test")
    for _ in range(2):
        _e, text = await client.sendmail("flood@customer.test", ["support@example.test"], simple_message())
        assert "queued as" in text
    with pytest.raises(aiosmtplib.SMTPSenderRefused) as exc:
        await client.mail("flood@customer.test")
    assert exc.value.code == 450 and exc.value.message.startswith("4.7.1")
    _e, text = await client.sendmail("other@customer.test", ["support@example.test"], simple_message())
    assert "queued as" in text  # another sender is fine, until the IP's budget (3) is spent
    with pytest.raises(aiosmtplib.SMTPSenderRefused) as exc:
        await client.mail("third@customer.test")
    assert exc.value.code == 450 and "address" in exc.value.message
    await client.quit()


async def _raw_session(port: int, payload: bytes) -> list[bytes]:
    """Send ``payload`` in one write after EHLO (pipelined) and collect reply lines until QUIT's 221."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    await reader.readline()
    writer.write(b"EHLO c.test\r\n")
    while (await reader.readline())[3:4] == b"-":
        pass
    writer.write(payload)
    lines = []
    while True:
        line = await asyncio.wait_for(reader.readline(), 10)
        lines.append(line)
        if not line or line.startswith(b"221"):
            break
    writer.close()
    return lines


async def test_data_dot_stuffing_pipelining_and_split_terminator(gateway):
    txn = b"MAIL FROM:<a@customer.test>\r\nRCPT TO:<support@example.test>\r\nDATA\r\n"
    body = (b"From: a@customer.test\r\nSubject: dots\r\n\r\n..leading dot\r\n...two\r\n.\r\n")
    # two transactions and QUIT in one write: the second starts right after the first's terminator
    second = b"From: a@customer.test\r\nSubject: x\r\n\r\nsecond\r\n.\r\n"
    lines = await _raw_session(gateway.port, txn + body + txn + second + b"QUIT\r\n")
    queued = [ln for ln in lines if b"queued as" in ln]
    assert len(queued) == 2, lines
    first = await gateway.store.spool_get(queued[0].split(b"queued as ")[1].strip().decode())
    assert first.raw.endswith(b"\r\n.leading dot\r\n..two\r\n")  # one dot removed per line (RFC 5321 4.5.2)
    # the terminator split over two TCP writes
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    await reader.readline()
    writer.write(b"EHLO c.test\r\n" + txn)
    while not (await reader.readline()).startswith(b"354"):
        pass
    writer.write(b"From: a@customer.test\r\nSubject: split\r\n\r\nbody\r\n")
    await writer.drain()
    await asyncio.sleep(0.05)
    writer.write(b".")
    await writer.drain()
    await asyncio.sleep(0.05)
    writer.write(b"\r\n")
    line = await asyncio.wait_for(reader.readline(), 10)
    assert line.startswith(b"250 2.0.0"), line
    writer.close()


async def test_empty_message_and_size_limit_on_stream_keep_the_session(gateway):
    txn = b"MAIL FROM:<a@customer.test>\r\nRCPT TO:<support@example.test>\r\nDATA\r\n"
    big = b"From: a@customer.test\r\n\r\n" + (b"y" * 998 + b"\r\n") * 1100 + b".\r\n"  # > 1 MiB limit
    ok = b"From: a@customer.test\r\nSubject: ok\r\n\r\nok\r\n.\r\n"
    lines = await _raw_session(gateway.port, txn + b".\r\n" + txn + big + txn + ok + b"QUIT\r\n")
    finals = [ln[:9] for ln in lines if ln[:3] in (b"250", b"550", b"552") and b"Sender" not in ln
              and b"Recipient" not in ln]
    # the empty message has no From: refused by authentication (RFC 7489 6.6.1); the big one 552;
    # the session survives both and the third is queued
    assert finals == [b"550 5.7.1", b"552 5.3.4", b"250 2.0.0"], lines


async def test_proxy_protocol_from_trusted_balancer_only(start_gateway):
    gw = await start_gateway(smtp={"proxy_protocol": True, "trusted_proxies": ["127.0.0.0/8"]})
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    writer.write(b"PROXY TCP4 203.0.113.7 127.0.0.1 40000 25\r\n")
    assert (await asyncio.wait_for(reader.readline(), 5)).startswith(b"220 ")
    writer.write(b"EHLO c.test\r\nMAIL FROM:<a@customer.test>\r\nRCPT TO:<support@example.test>\r\nDATA\r\n")
    while not (await reader.readline()).startswith(b"354"):
        pass
    writer.write(b"From: a@customer.test\r\nSubject: via lb\r\n\r\nhi\r\n.\r\n")
    line = await asyncio.wait_for(reader.readline(), 5)
    assert b"queued as" in line, line
    writer.close()
    entry = await gw.store.spool_get(line.split(b"queued as ")[1].strip().decode())
    assert entry.peer_ip == "203.0.113.7" and b"[203.0.113.7]" in entry.raw[:300]


async def test_proxy_header_from_untrusted_source_is_refused(start_gateway):
    gw = await start_gateway(smtp={"proxy_protocol": True, "trusted_proxies": ["10.9.9.0/24"]})
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    writer.write(b"PROXY TCP4 203.0.113.7 127.0.0.1 40000 25\r\n")
    assert await asyncio.wait_for(reader.read(), 5) == b""  # closed without a greeting
    writer.close()
