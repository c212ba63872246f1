"""Every SMTP refusal of a message or recipient is logged (one INFO line: client, envelope, code, enhanced
code, reason) and counted in ticketmx_messages_rejected_total by the same call (issue 20 section 2)."""
from __future__ import annotations

import asyncio
import logging

import aiosmtplib
import pytest

from gateway.runtime.logsetup import TextFormatter

from .conftest import simple_message


async def _metrics(port: int) -> str:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    body = await reader.read()
    writer.close()
    return body.decode()


def _count(metrics: str, code: int, reason: str) -> float:
    prefix = f'ticketmx_messages_rejected_total{{code="{code}",reason="{reason}"}} '
    lines = [line for line in metrics.splitlines() if line.startswith(prefix)]
    return float(lines[0].split()[-1]) if lines else 0.0


def _lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "ticketmx.reject"]


async def _client(port: int) -> aiosmtplib.SMTP:
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=10, start_tls=False)
    await client.connect()
    await client.ehlo(hostname="client.test")
    return client


async def test_every_rejection_is_logged_and_counted(start_gateway, caplog):
    caplog.set_level(logging.INFO, logger="ticketmx.reject")
    gw = await start_gateway(smtp={"rate_per_ip": "2/1m"})
    client = await _client(gw.port)

    # 552 for a declared SIZE= over the limit: refused at MAIL, before any data
    with pytest.raises(aiosmtplib.SMTPSenderRefused) as exc:
        await client.mail("big@customer.test", options=[f"SIZE={2 * 1024 * 1024}"])
    assert exc.value.code == 552
    assert _lines(caplog)[-1] == ("rejected client=127.0.0.1 from=<big@customer.test> rcpt=<> code=552 "
                                  "enhanced=5.3.4 reason=too_big: Message size exceeds fixed maximum message size")
    await client.rset()

    # 552 for a streamed message over the limit (no SIZE= declared): the line names the envelope
    await client.mail("stream@customer.test")
    await client.rcpt("support@example.test")
    with pytest.raises(aiosmtplib.SMTPDataError) as exc:
        await client.data(simple_message(body=("x" * 998 + "\r\n") * 1100))
    assert exc.value.code == 552
    assert _lines(caplog)[-1].startswith("rejected client=127.0.0.1 from=<stream@customer.test> "
                                         "rcpt=<support@example.test> code=552 enhanced=5.3.4 reason=too_big")

    # 550 unknown recipient
    await client.mail("alice@customer.test")
    with pytest.raises(aiosmtplib.SMTPRecipientRefused):
        await client.rcpt("nobody@example.test")
    assert _lines(caplog)[-1] == ("rejected client=127.0.0.1 from=<alice@customer.test> rcpt=<nobody@example.test>"
                                  " code=550 enhanced=5.1.1 reason=unknown_recipient: No such mailbox here")
    await client.rset()

    # 501: control bytes in the sender; the line is written escaped
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    await reader.readline()
    writer.write(b"EHLO client.test\r\nMAIL FROM:<evil\x1b[2J@customer.test>\r\n")
    replies = [await reader.readline() for _ in range(8)]  # the EHLO lines, then MAIL's reply
    assert any(r.startswith(b"501 5.1.7") for r in replies), replies
    writer.close()
    record = [r for r in caplog.records if r.name == "ticketmx.reject"][-1]
    assert "reason=bad_sender_syntax" in record.getMessage()
    shown = TextFormatter().format(record)
    assert "\x1b" not in shown and "evil\\x1b[2J@customer.test" in shown

    # 450 rate limit: two messages accepted, the third MAIL is refused
    for _ in range(2):
        await client.sendmail("alice@customer.test", ["support@example.test"], simple_message())
    with pytest.raises(aiosmtplib.SMTPSenderRefused) as exc:
        await client.mail("alice@customer.test")
    assert exc.value.code == 450
    assert _lines(caplog)[-1] == ("rejected client=127.0.0.1 from=<alice@customer.test> rcpt=<> code=450 "
                                  "enhanced=4.7.1 reason=rate_ip: Too many messages from your address, slow down")
    await client.quit()

    metrics = await _metrics(gw.metrics_port)
    for code, reason in ((552, "too_big"), (550, "unknown_recipient"), (501, "bad_sender_syntax"), (450, "rate_ip")):
        expected = 2.0 if reason == "too_big" else 1.0
        assert _count(metrics, code, reason) == expected, (code, reason, metrics)
    # one line per refusal, no more
    assert len(_lines(caplog)) == 5


async def test_many_recipients_are_cut_short_in_the_line(start_gateway, caplog):
    """A refused DATA of a message to many recipients stays one short line."""
    caplog.set_level(logging.INFO, logger="ticketmx.reject")
    gw = await start_gateway()
    client = await _client(gw.port)
    await client.mail("a" * 300 + "@customer.test")
    for i in range(8):
        await client.rcpt(f"support+{i}@example.test")
    with pytest.raises(aiosmtplib.SMTPDataError):
        await client.data(simple_message(body=("x" * 998 + "\r\n") * 1100))
    line = _lines(caplog)[-1]
    assert "(+3 more)" in line and "support+4@example.test" in line and "support+5@" not in line
    assert "a" * 256 + "...@" not in line and "a" * 256 + "..." in line
    await client.quit()
