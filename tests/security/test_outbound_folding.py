"""Issue 18 item 7: notifications are folded - no line over 998 octets reaches a smarthost.

Through the whole gateway: a customer's 20,000-character Subject (legitimately folded inbound, as
RFC 2047 encoded words) becomes a ticket, and the acknowledgement that quotes it reaches a real
aiosmtpd smarthost (which itself answers 500 to a line over 1,000 octets) with every line within
the limit, every encoded word <= 75 characters, and a Subject that decodes to the original
(truncated to ``relay.notify.MAX_SUBJECT`` characters, the ticket token kept).
"""
from __future__ import annotations

import email
import email.policy
import re

import pytest

from relay.notify import MAX_SUBJECT, encoded_words
from tests.conftest import simple_message
from tests.smarthost import sink, wait_for  # noqa: F401 - sink is a fixture
from tests.test_pipeline import send

ENCODED_WORD = re.compile(rb"=\?[^?\s]+\?[bBqQ]\?[^?\s]*\?=")


def _fold_inbound(words: str) -> str:
    """A Subject value as a client would send it: encoded words, one per folded line."""
    return encoded_words(words).replace(" ", "\r\n ")


SUBJECTS = {
    "one long word": "x" * 20_000,
    "non-ascii": "Grüße aus Köln, 日本語 😀 " * 800,
    "words": ("printer on fire " * 1300).strip(),
    "looks encoded": "=?utf-8?q?not_an_encoded_word?= " * 700,
}


@pytest.mark.parametrize("kind", list(SUBJECTS))
async def test_long_customer_subject_acknowledged_within_998_octets(start_gateway, dns_server, sink, kind):
    dns_server.set_zone({"customer.test": [("TXT", "v=spf1 ip4:127.0.0.1 -all")],
                         "_dmarc.customer.test": [("TXT", "v=DMARC1; p=reject")]})
    gw = await start_gateway(relay={"from": "Support <support@example.test>", "retry": "1s, 2s*3",
                                    "smarthost": [{"name": "sink", "host": "127.0.0.1", "port": sink.port,
                                                   "tls": "none", "auth": "none", "timeout": "5s"}]})
    original = SUBJECTS[kind]
    raw = simple_message(subject=_fold_inbound(original), message_id=f"long-{kind.replace(' ', '-')}@customer.test")
    assert max(len(line) for line in raw.split(b"\r\n")) <= 998      # the inbound mail is well-formed
    await gw.wait_done(await send(gw.port, raw))
    await wait_for(lambda: len(sink.messages) == 1)
    out = sink.messages[0][2]
    lines = out.split(b"\r\n")
    assert max(len(line) for line in lines) <= 998
    header = out.split(b"\r\n\r\n", 1)[0]
    # folded as RFC 5322 2.1.1 recommends: no line over 78 octets unless it is one token that cannot be
    # folded (a List-Unsubscribe URI, after its field name)
    long_lines = [line for line in header.split(b"\r\n") if len(line) > 78]
    assert all(len(line.split(b": ", 1)[-1].split()) == 1 for line in long_lines), long_lines
    assert all(len(w) <= 75 for w in ENCODED_WORD.findall(header))     # RFC 2047 2
    subject = str(email.message_from_bytes(out, policy=email.policy.default)["Subject"])
    expected = ("Re: " + " ".join(original.split()))[:MAX_SUBJECT].rstrip() + "… [HD-1000]"
    assert subject == expected


async def test_short_subject_unchanged(start_gateway, dns_server, sink):
    dns_server.set_zone({"customer.test": [("TXT", "v=spf1 ip4:127.0.0.1 -all")],
                         "_dmarc.customer.test": [("TXT", "v=DMARC1; p=reject")]})
    gw = await start_gateway(relay={"from": "Support <support@example.test>",
                                    "smarthost": [{"name": "sink", "host": "127.0.0.1", "port": sink.port,
                                                   "tls": "none", "auth": "none"}]})
    await gw.wait_done(await send(gw.port, simple_message(subject="Printer on fire")))
    await wait_for(lambda: len(sink.messages) == 1)
    assert b"\r\nSubject: Re: Printer on fire [HD-1000]\r\n" in sink.messages[0][2]
