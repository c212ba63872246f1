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


def _split_reference(value: str) -> list[str]:
    """The straightforward character-by-character splitter the fast one must agree with."""
    parts, depth, quoted, start, i = [], 0, False, 0, 0
    while i < len(value):
        c = value[i]
        if c == "\\":
            i += 2
            continue
        if quoted:
            quoted = c != '"'
        elif c == '"':
            quoted = True
        elif c == "(":
            depth += 1
        elif c == ")" and depth:
            depth -= 1
        elif c == ";" and depth == 0:
            parts.append(value[start:i + 1])
            start = i + 1
        i += 1
    parts.append(value[start:])
    return [p.strip() for p in parts if p.strip()]


def test_split_top_level_agrees_with_the_reference() -> None:
    import random

    from gateway.auth.headers import _split_top_level
    rng = random.Random(3)
    alphabet = list('ab ;();"\\\\x=.')
    for _ in range(5000):
        value = "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 40)))
        assert _split_top_level(value) == _split_reference(value), value


def test_clean_comment_and_reason() -> None:
    import random

    from gateway.auth.authenticator import _clean_comment, _clean_reason
    rng = random.Random(4)
    alphabet = list('ab (;)\\"@\t\n\x00é€ ')
    for _ in range(3000):
        s = "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 30)))
        ref_c = " ".join("".join(c if 32 <= ord(c) < 127 and c not in "()\\;" else " " for c in s).split())
        ref_r = " ".join("".join(c if 32 <= ord(c) < 127 and c not in "\"\\@" else " " for c in s).split())
        assert _clean_comment(s) == ref_c[:120]
        assert _clean_reason(s) == ref_r[:120]


def test_header_fields_cache_with_interleaved_messages() -> None:
    """Concurrent sessions ask for several messages in turn: each gets its own fields, always fresh
    lists (a caller may change its list), and more messages than the cache holds still parse right."""
    from gateway.auth.headers import _RECENT_MAX, header_fields
    msgs = [f"From: a{i}@example.org\r\nSubject: s{i}\r\n\r\nbody {i}\r\n".encode() for i in range(_RECENT_MAX + 5)]
    for _ in range(3):
        for i, raw in enumerate(msgs):
            fields = header_fields(raw)
            assert [f.name for f in fields] == [b"From", b"Subject"]
            assert fields[0].value.strip() == f"a{i}@example.org".encode()
            fields.clear()
            assert len(header_fields(raw)) == 2
    big = b"From: x@example.org\r\n\r\n" + b"x" * (300 * 1024)
    assert [f.name for f in header_fields(big)] == [b"From"]


def _reference_fields(raw: bytes) -> list[tuple[bytes, bytes, int, int]]:
    """The line-by-line splitter header_fields replaced (kept here as the specification)."""
    import re
    name_re = re.compile(rb"([!-9;-~]+)[ \t]*:")
    if raw.startswith(b"\r\n") or raw.startswith(b"\n"):
        end = 0
    else:
        end, i = len(raw), 0
        while i < len(raw):
            j = raw.find(b"\n", i)
            if j < 0:
                break
            if raw.startswith(b"\r\n", j + 1) or raw.startswith(b"\n", j + 1):
                end = j + 1
                break
            i = j + 1
    out, i, cur, cur_name = [], 0, -1, b""
    while i < end:
        j = raw.find(b"\n", i, end)
        line_end = end if j < 0 else j + 1
        if raw[i:i + 1] in (b" ", b"\t") or cur >= 0 and not name_re.match(raw, i):
            i = line_end
            continue
        m = name_re.match(raw, i)
        if cur >= 0:
            out.append((cur_name, raw[cur:i], cur, i))
            cur = -1
        if m:
            cur_name, cur = m.group(1), i
        i = line_end
    if cur >= 0:
        out.append((cur_name, raw[cur:end], cur, end))
    return out


def test_header_fields_match_the_line_by_line_splitter() -> None:
    import random

    from gateway.auth import headers as mod
    rng = random.Random(5322)
    pieces = [b"From: a@example.org", b"Subject:x", b"X-A \t: y", b" cont", b"\tcont", b"junk line", b"",
              b"Bad Name: z", b":colon", b"To:", b"\r", b"K:v\r"]
    for _ in range(5000):
        sep = rng.choice([b"\r\n", b"\n"])
        lines = [rng.choice(pieces) for _ in range(rng.randrange(0, 9))]
        raw = sep.join(lines) + rng.choice([b"", sep, sep + sep + b"body", sep + b"\n" + b"x"])
        mod._RECENT_FIELDS.clear()
        got = [(f.name, f.raw, f.start, f.end) for f in mod.header_fields(raw)]
        assert got == _reference_fields(raw), raw
        assert mod._header_end(raw) == len(mod.split_message(raw)[0])


def test_checks_header_end_is_the_first_blank_line_of_either_kind() -> None:
    """gateway.smtp.checks.header_end, the spill's split (``body_start``) and DKIM's split all follow
    ``header_section_end``, which is dkimpy's ``rfc822_parse`` rule: the first empty line, a line
    ending in LF or CRLF (so LF LF, LF CRLF and CRLF CRLF all count; a bare CR never ends a line).
    Tested against splitting the message into lines the way dkimpy does."""
    import random
    import re

    from gateway.auth.headers import body_start, header_section_end
    from gateway.smtp.checks import header_end
    rng = random.Random(2822)
    for _ in range(50000):
        raw = b"".join(rng.choice([b"a", b"\r", b"\n", b"\r\n", b"\n\n", b"\r\n\r\n", b":", b" "])
                       for _ in range(rng.randrange(0, 12)))
        want, pos = len(raw), 0
        for m in re.finditer(rb"\r?\n", raw):  # rfc822_parse: lines split on \r?\n
            if m.start() == pos:  # an empty line
                want = pos
                break
            pos = m.end()
        assert header_section_end(raw) == want, raw
        start = body_start(raw)
        assert start == (len(raw) if want == len(raw) else re.compile(rb"\r?\n").match(raw, want).end()), raw
        end = header_end(raw)
        assert raw[end:want] in (b"", b"\n", b"\r\n") and (want in (0, len(raw)) or end < want), raw
