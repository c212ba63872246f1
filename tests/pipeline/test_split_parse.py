"""Parsing through bigmime's split (text parts too) gives exactly the ParsedMessage of a plain parse.

``parse_message`` splits every message of ``SPLIT_MIN`` bytes or more before the email package sees it
(a speed-up, nothing else). Here the split is forced at several part sizes on every corpus mail and on
the generated messages of the bigmime tests, and the result must equal ``mime._parse`` of the original
bytes field for field: bodies, attachments (bytes, names, types, hashes), headers and defects.
"""
from __future__ import annotations

import random

import pytest

from gateway.pipeline.parse import mime
from gateway.pipeline.parse.bigmime import split_large_parts
from tests.conftest import CORPORA
from tests.pipeline.test_bigmime import BUILDERS, CRLF, LF, b64, blob, qp

MAILS = sorted((CORPORA / "mail").rglob("*.eml")) if (CORPORA / "mail").is_dir() else []


def _split_parse(raw: bytes, min_part: int):
    skeleton, parts = split_large_parts((raw,), min_part, text_parts=True)
    n = len(parts)  # counted first: the parse consumes the dict
    return mime._parse(skeleton, parts), n


def _same(raw: bytes, min_part: int) -> int:
    direct = mime._parse(raw)
    via, n = _split_parse(raw, min_part)
    assert via == direct
    return n


@pytest.mark.parametrize("min_part", [1, 64, mime.SPLIT_PART])
def test_corpus_mails_parse_the_same(min_part: int) -> None:
    if not MAILS:
        pytest.skip(f"mail corpus not found under {CORPORA} (set TICKETMX_CORPORA)")
    elided = 0
    for path in MAILS:
        raw = path.read_bytes()
        try:
            elided += _same(raw, min_part)
        except AssertionError as exc:
            raise AssertionError(f"{path.name}: {exc}") from None
    if min_part <= 64:  # corpus mails are small: only the low thresholds take bodies out of most of them
        assert elided > len(MAILS) // 2


@pytest.mark.parametrize("eol", [CRLF, LF], ids=["crlf", "lf"])
@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_generated_messages_parse_the_same(name: str, eol: bytes) -> None:
    raw = BUILDERS[name](eol, 5000)
    assert _same(raw, 64) >= 1 or name in ("kept",)


def _text_message(rng: random.Random, eol: bytes) -> bytes:
    """multipart/alternative (text + HTML, random charsets and encodings) plus an attachment."""
    words = ["Grüße", "printer", "fire", "naïve", "=", "€", "line", "  ", "\t", "<b>x</b>", "ok."]
    text = " ".join(rng.choice(words) for _ in range(rng.randrange(50, 1500))).encode("utf-8")
    text = eol.join(text[i:i + 70] for i in range(0, len(text), 70)) + eol
    charset = rng.choice(["utf-8", "iso-8859-1", None])
    body, cte = rng.choice([(text, "8bit"), (qp(text, eol), "quoted-printable"), (b64(text, eol) + eol, "base64")])
    ct = "text/plain" + (f"; charset={charset}" if charset else "")
    html = b"<html><body>" + text.replace(eol, b"<br>" + eol) + b"</body></html>" + eol
    att = b64(blob(rng.randrange(100, 6000), rng.randrange(1000)), eol)
    parts = [
        b"--outer" + eol + b'Content-Type: multipart/alternative; boundary="alt"' + eol + eol,
        b"--alt" + eol + f"Content-Type: {ct}".encode() + eol + f"Content-Transfer-Encoding: {cte}".encode()
        + eol + eol + body,
        b"--alt" + eol + b"Content-Type: text/html; charset=utf-8" + eol + b"Content-Transfer-Encoding: 8bit"
        + eol + eol + html,
        b"--alt--" + eol,
        b"--outer" + eol + b"Content-Type: application/pdf; name=a.pdf" + eol
        + b"Content-Disposition: attachment; filename=a.pdf" + eol + b"Content-Transfer-Encoding: base64"
        + eol + eol + att + eol,
        b"--outer--" + eol,
    ]
    head = eol.join([b"From: A <a@example.org>", b"To: b@example.org", b"Subject: test", b"MIME-Version: 1.0",
                     b'Content-Type: multipart/mixed; boundary="outer"']) + eol + eol
    return head + b"".join(parts)


def test_random_text_messages_parse_the_same() -> None:
    rng = random.Random(7)
    elided = 0
    for i in range(150):
        raw = _text_message(rng, LF if i % 4 == 0 else CRLF)
        elided += _same(raw, rng.choice([1, 256, mime.SPLIT_PART]))
    assert elided > 150


def test_parse_message_uses_the_split_from_split_min() -> None:
    rng = random.Random(3)
    raw = _text_message(rng, CRLF)
    while len(raw) < mime.SPLIT_MIN:
        raw = _text_message(rng, CRLF)
    assert mime.parse_message(raw) == mime._parse(raw)
    _, n = _split_parse(raw, mime.SPLIT_PART)
    assert n >= 2  # text and HTML (and the attachment when large enough) were taken out
