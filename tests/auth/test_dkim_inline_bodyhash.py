"""DKIM verification with the body hashed by ``bodyhash`` and dkimpy given only the header section
(``verify_sync(..., body_keys=...)``, the inline path) gives dkimpy's own result on every message."""
from __future__ import annotations

import random

import dkim
import pytest

from gateway.auth import dkimcheck

from .helpers import ed_key, rsa_key

HEADERS = [b"from", b"to", b"subject", b"date", b"message-id"]


def _keys(raw: bytes, txt: str) -> tuple[dkimcheck.Plan, dict]:
    p = dkimcheck.plan(raw, check_arc=False)
    return p, {s.key_name: txt.encode() for s in p.sigs if s.key_name}


def _both(raw: bytes, txt: str) -> tuple[list, list]:
    p, keys = _keys(raw, txt)
    full = dkimcheck.verify_sync(raw, p.sigs, keys, False)
    inline = dkimcheck.verify_sync(raw, p.sigs, keys, False, body_keys=p.body_keys)
    return ([(s.result, s.reason) for s in full["sigs"]], [(s.result, s.reason) for s in inline["sigs"]])


def _random_body(rng: random.Random) -> bytes:
    pieces = [b"word", b" ", b"\t", b"  ", b"\r\n", b"\n", b"\r", b"\r\n\r\n", b".", b"\xc3\xa9", b" \r\n",
              b"\t\r\n", b"x" * 70, b"\r\n\r\n\r\n"]
    return b"".join(rng.choice(pieces) for _ in range(rng.randrange(0, 80)))


def _head(rng: random.Random, sep: bytes) -> bytes:
    lines = [b"From: Alice <alice@example.org>", b"To: help@support.test", b"Subject: test " + str(rng.random()).encode(),
             b"Date: Mon, 01 Jan 2024 10:00:00 +0000", b"Message-ID: <x@example.org>"]
    return sep.join(lines) + sep


@pytest.mark.parametrize("canon", [(b"relaxed", b"relaxed"), (b"simple", b"simple"), (b"relaxed", b"simple"),
                                   (b"simple", b"relaxed")])
def test_same_result_as_dkimpy_on_random_messages(canon) -> None:
    rng = random.Random(hash(canon) & 0xFFFF)
    pem, txt = rsa_key()
    outcomes = set()
    for i in range(120):
        sep = b"\n" if i % 7 == 0 else b"\r\n"  # some messages with bare LF line ends
        msg = _head(rng, sep) + sep + _random_body(rng)
        sig = dkim.sign(msg, b"sel", b"example.org", pem, canonicalize=canon, include_headers=HEADERS,
                        length=bool(i % 5 == 0))
        raw = sig + msg
        variants = [raw, raw + b"appended\r\n", raw.replace(b"word", b"Word", 1), raw + b"\r\n\r\n",
                    raw.replace(b"\r\n", b"\n")]
        for v in variants:
            full, inline = _both(v, txt)
            assert inline == full, v
            outcomes.update(r for r, _ in full)
    assert {"pass", "fail"} <= outcomes  # both outcomes were exercised


def test_same_result_without_a_body_or_blank_line_and_with_ed25519() -> None:
    seed, _pem, txt = ed_key()
    for msg in (b"From: a@example.org\r\nTo: b@example.org\r\n\r\n", b"From: a@example.org\r\nTo: b@example.org\r\n",
                b"From: a@example.org\r\n\r\nbody only\r\n", b"From: a@example.org\n\nlf body\n"):
        sig = dkim.sign(msg, b"sel", b"example.org", seed, signature_algorithm=b"ed25519-sha256",
                        include_headers=[b"from"])
        for raw in (sig + msg, sig + msg + b"more"):
            full, inline = _both(raw, txt)
            assert inline == full, raw


def test_two_signatures_with_different_canonicalisations() -> None:
    pem, txt = rsa_key()
    msg = _head(random.Random(1), b"\r\n") + b"\r\nHello  there \r\n\r\n"
    raw = msg
    for canon in ((b"simple", b"simple"), (b"relaxed", b"relaxed")):
        raw = dkim.sign(raw, b"sel", b"example.org", pem, canonicalize=canon, include_headers=HEADERS) + raw
    p, _ = _keys(raw, txt)
    assert len(p.body_keys) == 2
    full, inline = _both(raw, txt)
    assert inline == full == [("pass", ""), ("pass", "")]
    full, inline = _both(raw.replace(b"Hello  there", b"Hello there"), txt)  # relaxed still passes
    assert inline == full and [r for r, _ in full] == ["pass", "fail"]


def test_tag_list_cache_is_transparent() -> None:
    """dkimpy's parse_tag_value, remembered per value: equal results, a fresh dict per call, and a
    malformed list raises every time (never cached)."""
    import dkim.util
    from dkim.util import InvalidTagValueList
    cached = dkim.parse_tag_value
    assert getattr(cached, "_ticketmx_cached", False) and dkimcheck.parse_tag_value is cached
    orig = dkim.util.parse_tag_value
    for value in (b"v=DKIM1; k=rsa; p=MIIB", b" v=1; a=rsa-sha256;\r\n d=example.org; s=x; b=abc\r\n", b"a=1"):
        first, again = cached(value), cached(value)
        assert first == again == orig(value) and first is not again
        first[b"p"] = b"changed"
        assert cached(value) == orig(value)
    for _ in range(2):
        with pytest.raises(InvalidTagValueList):
            cached(b"a=1; a=2")  # duplicate tag
