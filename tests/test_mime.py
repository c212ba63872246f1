"""Tests for gateway.pipeline.parse.mime.parse_message (no network)."""
from __future__ import annotations

import base64
import hashlib
import pickle
import random
from pathlib import Path

import pytest

from gateway.pipeline.parse.mime import parse_message
from gateway.pipeline.parse.model import ParsedMessage

from .conftest import CORPORA

CORPUS = CORPORA / "mail"
CORPUS_FILES = sorted(CORPUS.rglob("*.eml")) if CORPUS.is_dir() else []


def msg(*lines: str | bytes, body: bytes = b"") -> bytes:
    """Build a raw message: header lines joined with CRLF, blank line, body."""
    head = b"".join((ln if isinstance(ln, bytes) else ln.encode("ascii")) + b"\r\n" for ln in lines)
    return head + b"\r\n" + body


def check_invariants(pm: ParsedMessage) -> None:
    assert isinstance(pm, ParsedMessage)
    assert isinstance(pm.subject, str) and isinstance(pm.body_text, str) and isinstance(pm.body_html, str)
    assert "\r" not in pm.body_text
    for att in pm.attachments:
        assert isinstance(att.content, bytes)
        assert att.sha256 == hashlib.sha256(att.content).hexdigest()
    for name, value in pm.headers:
        assert isinstance(name, str) and isinstance(value, str)
        assert "\n" not in value and "\r" not in value
    # Nothing downstream should ever meet a lone surrogate (would break UTF-8 storage).
    for text in (pm.subject, pm.body_text, pm.body_html, pm.from_name,
                 *(v for _, v in pm.headers), *(a.filename for a in pm.attachments)):
        text.encode("utf-8")
    assert pickle.loads(pickle.dumps(pm)) == pm


# --------------------------------------------------------------------------- #
# Corpus
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize(
    "path",
    CORPUS_FILES or [None],
    ids=[str(p.relative_to(CORPUS)) for p in CORPUS_FILES] or ["corpus-absent"],
)
def test_corpus_message_parses(path: Path | None) -> None:
    if path is None:
        pytest.skip(f"mail corpus absent: {CORPUS} not found")
    pm = parse_message(path.read_bytes())
    check_invariants(pm)


# --------------------------------------------------------------------------- #
# Headers
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("encoded, expected", [
    ("=?UTF-8?B?w4RwZmVsIHVuZCBCaXJuZW4=?=", "Äpfel und Birnen"),
    ("=?utf-8?Q?caf=C3=A9_cr=C3=A8me?=", "café crème"),
    ("=?ISO-2022-JP?B?" + base64.b64encode("日本語の件名".encode("iso2022_jp")).decode() + "?=", "日本語の件名"),
    ("Re: =?utf-8?q?a?= =?utf-8?q?b?=  tail", "Re: ab tail"),          # space between words dropped
    ("=?utf-8?B?5pel?=\r\n =?utf-8?B?5pys?=", "日本"),                   # folded
    ("=?iso-8859-1?q?na=EFve?=   and\r\n\t  more", "naïve and more"),   # whitespace collapsed
    ("=?X-UNKNOWN?Q?caf=C3=A9?=", "café"),                               # unknown charset -> utf-8
    ("=?utf-8?B?" + base64.b64encode("café".encode()).decode().rstrip("=") + "?=", "café"),  # no padding
])
def test_subject_rfc2047(encoded: str, expected: str) -> None:
    pm = parse_message(msg("From: a@example.com", f"Subject: {encoded}", body=b"x"))
    assert pm.subject == expected


def test_subject_split_multibyte_across_words() -> None:
    data = "Grüße".encode()
    w1, w2 = base64.b64encode(data[:3]).decode(), base64.b64encode(data[3:]).decode()
    pm = parse_message(msg(f"Subject: =?utf-8?B?{w1}?= =?utf-8?B?{w2}?=", body=b"x"))
    assert pm.subject == "Grüße"


@pytest.mark.parametrize("raw_subject, expected", [
    ("Grüße aus Köln".encode("utf-8"), "Grüße aus Köln"),
    ("Grüße aus Köln".encode("latin-1"), "Grüße aus Köln"),
])
def test_subject_raw_8bit(raw_subject: bytes, expected: str) -> None:
    pm = parse_message(msg(b"Subject: " + raw_subject, "From: a@example.com", body=b"x"))
    assert pm.subject == expected
    assert pm.header("subject") == expected
    assert "header-8bit" in pm.defects


def test_raw_8bit_header_uses_body_charset() -> None:
    subject = "件名テスト"
    pm = parse_message(msg(b"Subject: " + subject.encode("shift_jis"),
                           "Content-Type: text/plain; charset=Shift_JIS",
                           body="本文".encode("shift_jis")))
    assert pm.subject == subject
    assert pm.body_text == "本文"


def test_headers_all_in_order_and_decoded() -> None:
    raw = msg("Received: from a\r\n\tby b", "X-Test: =?utf-8?q?=E2=9C=93?=", "Subject: s",
              "X-Inject: =?utf-8?q?a=0D=0Ab?=", "X-Test: second", body=b"x")
    pm = parse_message(raw)
    assert [n for n, _ in pm.headers] == ["Received", "X-Test", "Subject", "X-Inject", "X-Test"]
    assert pm.header("received") == "from a\tby b"
    assert pm.header("x-test") == "✓"
    assert pm.header_all("X-Test") == ["✓", "second"]
    assert pm.header("X-Inject") == "a  b"         # no CR/LF smuggled into a header value


def test_addresses() -> None:
    raw = msg(
        "From: =?utf-8?q?J=C3=BCrgen_M=C3=BCller?= <Juergen.Mueller@Example.DE>",
        'To: "Doe, John" <John.Doe@Example.COM>, plain@EXAMPLE.org',
        "Cc: Support Team <support@example.net>",
        "Reply-To: replies@Example.com",
        body=b"x",
    )
    pm = parse_message(raw)
    assert pm.from_name == "Jürgen Müller"
    assert pm.from_addr == "Juergen.Mueller@example.de"
    assert pm.from_count == 1
    assert pm.to == ("John.Doe@example.com", "plain@example.org")
    assert pm.cc == ("support@example.net",)
    assert pm.reply_to == ("replies@example.com",)


def test_multiple_from_addresses_counted() -> None:
    pm = parse_message(msg("From: Alice <alice@a.example>, bob@b.example", body=b"x"))
    assert (pm.from_count, pm.from_addr, pm.from_name) == (2, "alice@a.example", "Alice")
    pm = parse_message(msg("From: alice@a.example", "From: Bob <bob@b.example>", body=b"x"))
    assert pm.from_count == 2


@pytest.mark.parametrize("value", [
    "undisclosed-recipients:;",
    "<<<@@@>>>",
    '"unterminated <a@b.example>',
    "(comment only)",
    "a@b@c.example",
    "Group: x@y.example, (c) z@w.example;",
    "=?utf-8?q?Doe,_John?= <john@example.com>",
])
def test_malformed_addresses_do_not_raise(value: str) -> None:
    pm = parse_message(msg(f"From: {value}", f"To: {value}", f"Cc: {value}", body=b"x"))
    check_invariants(pm)
    assert all("@" in a for a in pm.to)


def test_address_in_display_name_and_comments() -> None:
    pm = parse_message(msg("From: john@example.com <attacker@evil.example>",
                           "To: Group: x@y.example, (c) z@w.example;", body=b"x"))
    # From is read by the SMTP side's reader (gateway.auth.fromfield): two mailboxes, the first is the
    # requester, and DMARC evaluated both domains (issue 20: one reading of From on both sides).
    assert (pm.from_addr, pm.from_count) == ("john@example.com", 2)
    assert pm.to == ("x@y.example", "z@w.example")


def test_message_ids() -> None:
    raw = msg(
        "Message-ID: <Abc.123@Example.com>",
        "In-Reply-To: <parent@x.example> (Bob's message of Monday)",
        "References: <root@x.example> <mid@x.example>\r\n <parent@x.example>, <broken.\r\n  id@x.example>",
        body=b"x",
    )
    pm = parse_message(raw)
    assert pm.message_id == "Abc.123@Example.com"
    assert pm.in_reply_to == ("parent@x.example",)
    assert pm.references == ("root@x.example", "mid@x.example", "parent@x.example", "broken.id@x.example")


def test_message_id_garbage() -> None:
    pm = parse_message(msg("Message-ID: not an id", "References: <> junk <<", "In-Reply-To:", body=b"x"))
    assert (pm.message_id, pm.references, pm.in_reply_to) == ("", (), ())
    pm = parse_message(msg("Message-ID: bare@id.example", body=b"x"))
    assert pm.message_id == "bare@id.example"


# --------------------------------------------------------------------------- #
# Bodies and charsets
# --------------------------------------------------------------------------- #
def text_msg(body: bytes, content_type: str, cte: str = "8bit") -> bytes:
    return msg("From: a@example.com", "Subject: t", "MIME-Version: 1.0",
               f"Content-Type: {content_type}", f"Content-Transfer-Encoding: {cte}", body=body)


def test_iso_2022_jp_body() -> None:
    text = "こんにちは、世界。\r\nテストです。\r\n"
    pm = parse_message(text_msg(text.encode("iso2022_jp"), "text/plain; charset=ISO-2022-JP", "7bit"))
    assert pm.body_text == "こんにちは、世界。\nテストです。\n"


def test_gb18030_body() -> None:
    text = "中文测试，欧元符号 € 和 𠀀"
    pm = parse_message(text_msg(text.encode("gb18030"), "text/plain; charset=GB18030"))
    assert pm.body_text == text


def test_gb2312_label_decoded_as_superset() -> None:
    text = "测试 € 镕"          # € and 镕 are not in GB2312
    pm = parse_message(text_msg(text.encode("gb18030"), 'text/plain; charset="gb2312"'))
    assert pm.body_text == text
    assert not any(d.startswith("charset-") for d in pm.defects)


@pytest.mark.parametrize("charset, codec", [
    ("Shift_JIS", "cp932"), ("ks_c_5601-1987", "cp949"), ("EUC-KR", "cp949"), ("windows-1251", "cp1251"),
])
def test_legacy_charsets(charset: str, codec: str) -> None:
    text = {"cp932": "①テスト", "cp949": "한국어 똠방각하", "cp1251": "Привет"}[codec]
    pm = parse_message(text_msg(text.encode(codec), f"text/plain; charset={charset}"))
    assert pm.body_text == text


def test_x_unknown_charset() -> None:
    pm = parse_message(text_msg("Grüße".encode("utf-8"), "text/plain; charset=X-UNKNOWN"))
    assert pm.body_text == "Grüße"
    assert "charset-unknown:X-UNKNOWN" in pm.defects


def test_declared_utf8_but_latin1_bytes() -> None:
    pm = parse_message(text_msg("Grüße aus Köln, 5 €".encode("cp1252"), "text/plain; charset=utf-8"))
    assert pm.body_text == "Grüße aus Köln, 5 €"
    assert any(d.startswith("charset-fallback") for d in pm.defects)


def test_declared_ascii_but_utf8_bytes() -> None:
    pm = parse_message(text_msg("naïve".encode(), "text/plain; charset=us-ascii"))
    assert pm.body_text == "naïve"


def test_missing_charset_and_qp_base64() -> None:
    pm = parse_message(text_msg(b"caf=C3=A9=\r\n ok", "text/plain", "quoted-printable"))
    assert pm.body_text == "café ok"
    pm = parse_message(text_msg(base64.b64encode("Line1\r\nLine2\rLine3".encode()), "text/plain", "base64"))
    assert pm.body_text == "Line1\nLine2\nLine3"


ALT = msg(
    "From: a@example.com", "Subject: alt", "MIME-Version: 1.0",
    'Content-Type: multipart/alternative; boundary="b1"',
    body=b"--b1\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nPlain version\r\n"
         b"--b1\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<p>HTML <b>version</b></p>\r\n--b1--\r\n",
)


def test_alternative_prefers_plain() -> None:
    pm = parse_message(ALT)
    assert pm.body_text == "Plain version"
    assert "<b>version</b>" in pm.body_html
    assert pm.attachments == ()


def test_html_only_rendered() -> None:
    pm = parse_message(text_msg(b"<p>Hello</p><ul><li>one</li><li>two</li></ul>", "text/html; charset=utf-8"))
    assert "Hello" in pm.body_text and "one" in pm.body_text and "two" in pm.body_text
    assert "<" not in pm.body_text
    assert pm.body_html == "<p>Hello</p><ul><li>one</li><li>two</li></ul>"


def test_html_meta_charset_used_when_mime_has_none() -> None:
    html = '<html><head><meta charset="windows-1252"></head><body>Caf\xe9</body></html>'.encode("latin-1")
    pm = parse_message(text_msg(html, "text/html"))
    assert "Café" in pm.body_text


def test_empty_plain_alternative_falls_back_to_html() -> None:
    raw = msg('Content-Type: multipart/alternative; boundary="b"',
              body=b"--b\r\nContent-Type: text/plain\r\n\r\n \r\n--b\r\nContent-Type: text/html\r\n\r\n"
                   b"<div>Only here</div>\r\n--b--\r\n")
    assert "Only here" in parse_message(raw).body_text


def test_mixed_concatenates_inline_plain_and_attachment_plain_is_not_body() -> None:
    raw = msg(
        'Content-Type: multipart/mixed; boundary="m"',
        body=b"--m\r\nContent-Type: text/plain\r\n\r\nFirst\r\n"
             b"--m\r\nContent-Type: text/plain\r\nContent-Disposition: attachment; filename=log.txt\r\n\r\nLOG\r\n"
             b"--m\r\nContent-Type: text/plain\r\nContent-Disposition: inline\r\n\r\nFooter\r\n--m--\r\n",
    )
    pm = parse_message(raw)
    assert "First" in pm.body_text and "Footer" in pm.body_text and "LOG" not in pm.body_text
    (att,) = pm.attachments
    assert (att.filename, att.content_type, att.content) == ("log.txt", "text/plain", b"LOG")


def test_multipart_missing_boundary_treated_as_text() -> None:
    raw = msg("Content-Type: multipart/mixed", body=b"just some text\r\nmore\r\n")
    pm = parse_message(raw)
    check_invariants(pm)
    assert "just some text" in pm.body_text
    assert "NoBoundaryInMultipartDefect" in pm.defects
    assert "multipart-as-text" in pm.defects


def test_multipart_boundary_not_found_treated_as_text() -> None:
    raw = msg('Content-Type: multipart/mixed; boundary="nope"', body=b"--other\r\n\r\nbody text\r\n--other--\r\n")
    pm = parse_message(raw)
    assert "body text" in pm.body_text
    assert "StartBoundaryNotFoundDefect" in pm.defects


def test_outlook_unquoted_boundary_repaired() -> None:
    b = b"----=_NextPart_000_0093_01C81419.EB75E850"
    raw = msg("Content-Type: multipart/alternative; boundary=" + b.decode(),
              body=b"--" + b + b"\r\nContent-Type: text/plain\r\n\r\nPlain\r\n--" + b
                   + b"\r\nContent-Type: text/html\r\n\r\n<p>Html</p>\r\n--" + b + b"--\r\n")
    pm = parse_message(raw)
    assert pm.body_text == "Plain"
    assert pm.body_html == "<p>Html</p>"
    assert "boundary-repaired" in pm.defects


# --------------------------------------------------------------------------- #
# Attachments
# --------------------------------------------------------------------------- #
PDF = b"%PDF-1.4 fake\x00\xff"


def attachment_msg(disposition: str | bytes, ctype: str = "application/pdf", content: bytes = PDF) -> bytes:
    if isinstance(disposition, str):
        disposition = disposition.encode("ascii")
    return msg(
        'Content-Type: multipart/mixed; boundary="m"',
        body=b"--m\r\nContent-Type: text/plain\r\n\r\nSee attached\r\n--m\r\n"
             + f"Content-Type: {ctype}\r\n".encode() + b"Content-Disposition: " + disposition + b"\r\n"
             + b"Content-Transfer-Encoding: base64\r\n\r\n" + base64.encodebytes(content) + b"--m--\r\n",
    )


@pytest.mark.parametrize("disposition, expected", [
    ("attachment; filename*=UTF-8''%E2%82%AC%20rates.pdf", "€ rates.pdf"),
    ("attachment; filename*0*=UTF-8''%E2%82%AC; filename*1=\" rates.pdf\"", "€ rates.pdf"),
    ("attachment; filename=\"=?UTF-8?B?4oKsIHJhdGVzLnBkZg==?=\"", "€ rates.pdf"),
    ("attachment; filename=\"plain.pdf\"; filename*=utf-8''%E2%82%AC%20rates.pdf", "€ rates.pdf"),
    ("attachment; filename*=iso-8859-1'de'Gr%FC%DFe.pdf", "Grüße.pdf"),
])
def test_attachment_filename_decoding(disposition: str, expected: str) -> None:
    pm = parse_message(attachment_msg(disposition))
    (att,) = pm.attachments
    assert att.filename == expected
    assert att.content == PDF
    assert att.sha256 == hashlib.sha256(PDF).hexdigest()
    assert (att.content_type, att.inline) == ("application/pdf", False)
    assert pm.body_text == "See attached"


def test_attachment_raw_utf8_filename_and_empty_content() -> None:
    pm = parse_message(attachment_msg('attachment; filename="Übersicht.pdf"'.encode(), content=b""))
    (att,) = pm.attachments
    assert att.filename == "Übersicht.pdf" and att.content == b"" and att.size == 0


def test_message_rfc822_attachment() -> None:
    inner = b"From: inner@example.com\r\nSubject: inner subject\r\n\r\nInner body\r\n"
    raw = msg(
        'Content-Type: multipart/mixed; boundary="m"',
        body=b"--m\r\nContent-Type: text/plain\r\n\r\nOuter body\r\n--m\r\n"
             b"Content-Type: message/rfc822\r\n\r\n" + inner + b"--m--\r\n",
    )
    pm = parse_message(raw)
    assert pm.body_text == "Outer body"
    (att,) = pm.attachments
    assert att.content_type == "message/rfc822"
    assert att.filename == "inner subject.eml"      # named after its Subject (issue 20)
    assert att.content.startswith(b"From: inner@example.com\r\nSubject: inner subject\r\n\r\nInner body")
    assert att.sha256 == hashlib.sha256(att.content).hexdigest()
    assert parse_message(att.content).subject == "inner subject"


def test_inline_image_with_content_id() -> None:
    png = b"\x89PNG\r\n\x1a\nfake"
    raw = msg(
        'Content-Type: multipart/related; boundary="r"',
        body=b'--r\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<p>Logo: <img src="cid:logo@x"></p>\r\n'
             b"--r\r\nContent-Type: image/png; name=logo.png\r\nContent-Transfer-Encoding: base64\r\n"
             b"Content-ID: <logo@x>\r\nContent-Disposition: inline\r\n\r\n"
             + base64.encodebytes(png) + b"--r--\r\n",
    )
    pm = parse_message(raw)
    (att,) = pm.attachments
    assert (att.filename, att.content_type, att.inline, att.content_id) == ("logo.png", "image/png", True, "logo@x")
    assert att.content == png
    assert "Logo" in pm.body_text and 'cid:logo@x' in pm.body_html


def test_nested_alternative_inside_mixed() -> None:
    raw = msg(
        'Content-Type: multipart/mixed; boundary="m"',
        body=b'--m\r\nContent-Type: multipart/alternative; boundary="a"\r\n\r\n'
             b"--a\r\nContent-Type: text/plain\r\n\r\nHello plain\r\n"
             b"--a\r\nContent-Type: text/html\r\n\r\n<p>Hello html</p>\r\n--a--\r\n"
             b"--m\r\nContent-Type: application/zip; name=a.zip\r\n\r\nPK\r\n--m--\r\n",
    )
    pm = parse_message(raw)
    assert pm.body_text == "Hello plain"
    assert pm.body_html == "<p>Hello html</p>"
    assert [a.filename for a in pm.attachments] == ["a.zip"]


# --------------------------------------------------------------------------- #
# Robustness
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("raw", [
    b"",
    b"\r\n\r\n",
    b"no headers at all, just text",
    b"Subject: only headers",
    b"\x00\xff\xfe" * 100,
    b"Content-Type: text/plain; charset=\"\x00\"\r\n\r\nx",
    b"Content-Type: text/plain; charset=unicode_escape\r\n\r\n\\x41\\",
    b"Content-Type: text/plain; charset=utf-16\r\n\r\n\xff",
    b"Content-Type: message/rfc822\r\nContent-Transfer-Encoding: base64\r\n\r\n!!!notbase64",
    b"Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\nQUJD=\r\nRA",
    b"Content-Type: text/html\r\n\r\n<!-- only a comment -->",
    b"Content-Type: text/html\r\n\r\n" + b"<div>" * 5000,
    b"Content-Disposition: attachment; filename*0*=bogus'%ZZ; filename*x=\"\r\n\r\n",
    b"Subject: =?utf-8?B?####?= =?unknown?Q?=ZZ?= =?utf-8?q?\r\n\r\nx",
    b"Content-Type: multipart/mixed; boundary=\"=?x\"\r\n\r\n--=?x\r\n\r\n--=?x--",
])
def test_never_raises(raw: bytes) -> None:
    check_invariants(parse_message(raw))


def test_deeply_nested_multipart() -> None:
    depth = 3000
    head = b"".join(b'Content-Type: multipart/mixed; boundary="b%d"\r\n\r\n--b%d\r\n' % (i, i) for i in range(depth))
    pm = parse_message(head + b"Content-Type: text/plain\r\n\r\ndeep\r\n")
    check_invariants(pm)


def test_non_bytes_input_does_not_raise() -> None:
    assert parse_message(bytearray(b"Subject: hi\r\n\r\nbody")).subject == "hi"
    check_invariants(parse_message(None))  # type: ignore[arg-type]


def test_random_mutations_of_a_real_message_never_raise() -> None:
    rng = random.Random(1234)
    seed = ALT + attachment_msg("attachment; filename*=UTF-8''%E2%82%AC.pdf")
    for _ in range(200):
        data = bytearray(seed)
        for _ in range(rng.randint(1, 20)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        cut = rng.randrange(len(data))
        check_invariants(parse_message(bytes(data[:cut])))


def test_header_cache_gives_the_same_parse_and_stays_bounded() -> None:
    """The parser's header cache (speed) must not change any result, nor keep huge values."""
    import email.policy

    from gateway.pipeline.parse import mime
    long_to = ", ".join(f"user{i}@example.test" for i in range(200))
    raw = (f"From: A <a@example.test>\r\nTo: {long_to}\r\nSubject: =?utf-8?q?caf=C3=A9?=\r\n"
           "MIME-Version: 1.0\r\nContent-Type: multipart/alternative; boundary=b\r\n\r\n"
           "--b\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nhello\r\n--b\r\n"
           "Content-Type: text/html; charset=utf-8\r\n\r\n<p>hello</p>\r\n--b--\r\n").encode()
    first, second = parse_message(raw), parse_message(raw)
    assert first == second
    assert first.subject == "café" and len(first.to) == 200
    registry = mime._POLICY.header_factory
    assert all(len(v) <= 2000 for (_, v) in registry._cache)
    saved = mime._POLICY
    try:
        mime._POLICY = email.policy.default
        assert parse_message(raw) == first
    finally:
        mime._POLICY = saved


def test_header_lookups_use_an_index_that_replace_never_copies():
    """ParsedMessage.header/header_all answer from an index built on first use: case-insensitive, every
    value in order; a dataclasses.replace() copy with other headers answers from its own headers; the
    index plays no part in equality or pickling."""
    import dataclasses
    import pickle

    from gateway.pipeline.parse.model import ParsedMessage
    p = ParsedMessage("s", "", "", 0, (), (), (), "", (), (), "", "", "",
                      headers=(("From", "a@example.org"), ("X-Tag", "1"), ("x-tag", "2")))
    assert p.header("X-TAG") == "1" and p.header_all("x-Tag") == ["1", "2"]
    assert p.header("Missing") is None and p.header_all("Missing") == []
    p.header_all("x-tag").append("3")  # a caller's list is its own
    assert p.header_all("x-tag") == ["1", "2"]
    q = dataclasses.replace(p, headers=(("X-Tag", "9"),))
    assert q.header_all("x-tag") == ["9"] and p.header_all("x-tag") == ["1", "2"]
    r = pickle.loads(pickle.dumps(p))
    assert r == p and r.header("from") == "a@example.org"
    assert p == dataclasses.replace(p)  # the built index does not make copies unequal
