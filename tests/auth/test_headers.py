from __future__ import annotations

import pytest

from gateway.auth import prepend_header, strip_forged_authres
from gateway.auth.headers import authserv_id_of, header_fields

MSG = (b"Received: from a by b; Mon, 1 Jan 2024 00:00:00 +0000\r\n"
       b"Authentication-Results: mx.support.test; dkim=pass\r\n\theader.d=evil.example\r\n"
       b"Authentication-Results: other.example; spf=pass\r\n"
       b"authentication-results  :   (comment) MX.Support.Test. ; dmarc=pass\r\n"
       b"Authentication-Results: \"mx.support.test\"; arc=pass\r\n"
       b"From: a@example.org\r\n"
       b"\r\n"
       b"Authentication-Results: mx.support.test; body text is not a header\r\n")


def test_strip_only_our_authserv_id_byte_exact():
    out = strip_forged_authres(MSG, "mx.support.test")
    assert out == (b"Received: from a by b; Mon, 1 Jan 2024 00:00:00 +0000\r\n"
                   b"Authentication-Results: other.example; spf=pass\r\n"
                   b"From: a@example.org\r\n"
                   b"\r\n"
                   b"Authentication-Results: mx.support.test; body text is not a header\r\n")


def test_strip_noop_returns_same_bytes():
    raw = b"From: a@example.org\nSubject: x\n\nbody\n"
    assert strip_forged_authres(raw, "mx.support.test") is raw


def test_authserv_id_parsing():
    assert authserv_id_of(" example.com; spf=pass") == "example.com"
    assert authserv_id_of(" (c) example.com 1; none") == "example.com"
    assert authserv_id_of(' "quoted.example"; none') == "quoted.example"
    assert authserv_id_of("example.com") == "example.com"
    assert authserv_id_of("   ") is None


def test_prepend_header_folds_and_keeps_line_endings():
    v = "mx.support.test; spf=pass (a; b) smtp.mailfrom=a@example.org; dkim=pass header.d=example.org"
    crlf = prepend_header(b"From: a@b.example\r\n\r\nx\r\n", "Authentication-Results", v)
    assert crlf == (b"Authentication-Results: mx.support.test;\r\n\tspf=pass (a; b) smtp.mailfrom=a@example.org;\r\n"
                    b"\tdkim=pass header.d=example.org\r\nFrom: a@b.example\r\n\r\nx\r\n")
    lf = prepend_header(b"From: a@b.example\n\nx\n", "X-Test", "one")
    assert lf == b"X-Test: one\nFrom: a@b.example\n\nx\n"
    with pytest.raises(ValueError):
        prepend_header(b"", "X-Test", "a\r\nInjected: yes")


def test_header_fields_tolerates_garbage():
    raw = b"not a header line\r\nFrom: a@b\r\n cont\r\nX: y\r\n\r\nbody"
    names = [f.name for f in header_fields(raw)]
    assert names == [b"From", b"X"]
    assert header_fields(raw)[0].value == b" a@b cont"
