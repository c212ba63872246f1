"""The fast relaxed body canonicalisation gives dkimpy's exact bytes."""
from __future__ import annotations

import random
import re

import pytest
from dkim import canonicalization as canon

from gateway.auth import fastcanon
from tests.conftest import CORPORA


def dkimpy_relaxed(body: bytes) -> bytes:
    """dkimpy's own composition (its module functions are not patched, only the class method)."""
    return canon.correct_empty_body(canon.strip_trailing_lines(
        canon.compress_whitespace(canon.strip_trailing_whitespace(body))))


EDGE = [b"", b"\r\n", b"\r\n\r\n", b" \r\n", b"\t", b"a", b"a \r\n", b"a\t \t\r\n\r\n \r\n",
        b"a  b\tc \t d\r\n", b" lead\r\n", b"x\r\n\t\r\n", b"no crlf at end  ", b"bare\nlf  \n",
        b"a\r \r\n", b"  \t  ", b"\r\n\r\nx"]


@pytest.mark.parametrize("body", EDGE)
def test_edge_cases_identical(body: bytes) -> None:
    assert fastcanon.relaxed_body(body) == dkimpy_relaxed(body)


def test_random_bodies_identical() -> None:
    rng = random.Random(9)
    alphabet = [b" ", b"\t", b"\r\n", b"\r", b"\n", b"a", b"b", b".", b"  ", b"\xe2\x82\xac"]
    for _ in range(3000):
        body = b"".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 60)))
        assert fastcanon.relaxed_body(body) == dkimpy_relaxed(body), body


def test_corpus_bodies_identical() -> None:
    mails = sorted((CORPORA / "mail").rglob("*.eml")) if (CORPORA / "mail").is_dir() else []
    if not mails:
        pytest.skip(f"mail corpus not found under {CORPORA} (set TICKETMX_CORPORA)")
    for path in mails:
        raw = path.read_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        body = raw.split(b"\r\n\r\n", 1)[-1]
        assert fastcanon.relaxed_body(body) == dkimpy_relaxed(body), path.name


def test_installed_in_dkimpy() -> None:
    import gateway.auth.dkimcheck  # noqa: F401 - installs on import
    assert canon.Relaxed.canonicalize_body(b"a  b \r\n\r\n") == b"a b\r\n"
    assert canon.Relaxed.__dict__["canonicalize_body"].__func__ is fastcanon.relaxed_body


# dkimpy's own definitions, kept here as the reference (install() replaces them in the dkim module).
_FWS = rb"(?:(?:\s*\r?\n)?\s+)?"
DKIMPY_BTAG = re.compile(rb"([;\s]b" + _FWS + rb"=)(?:" + _FWS + rb"[a-zA-Z0-9+/=])*(?:\r?\n\Z)?")


def dkimpy_relaxed_headers(headers):
    return [(x[0].lower().rstrip(), canon.compress_whitespace(canon.unfold_header_value(x[1])).strip() + b"\r\n")
            for x in headers]


def test_installed_everywhere_dkimpy_looks() -> None:
    import dkim
    fastcanon.install()
    assert dkim.RE_BTAG is fastcanon.RE_BTAG
    assert canon.Relaxed.canonicalize_headers is fastcanon.relaxed_headers
    assert canon.Relaxed.canonicalize_body is fastcanon.relaxed_body


def test_btag_blanking_identical_on_random_values() -> None:
    rng = random.Random(5)
    alphabet = [b" ", b"\t", b"\r\n", b"\r", b"\n", b"b", b"=", b";", b"a", b"Z", b"9", b"+", b"/", b"-",
                b"\r\n ", b" b=", b";b=", b"b =", b"\x00", b"\xc3\xa9", b"\x0b", b"\x0c"]
    for _ in range(50_000):
        v = b"".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 30)))
        assert fastcanon.RE_BTAG.sub(b"\\1", v) == DKIMPY_BTAG.sub(b"\\1", v), v


def test_btag_blanking_identical_on_real_signatures() -> None:
    import dkim
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    key = rsa.generate_private_key(public_exponent=65537, key_size=1024).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption())
    msg = b"From: a@example.org\r\nTo: b@example.org\r\nSubject: hi\r\n\r\nbody\r\n"
    for canon_ in (b"relaxed/relaxed", b"simple/simple"):
        for length in (False, True):
            sig = dkim.sign(msg, b"s", b"example.org", key, canonicalize=tuple(canon_.split(b"/")), length=length)
            value = sig.split(b":", 1)[1]
            out = fastcanon.RE_BTAG.sub(b"\\1", value)
            assert out == DKIMPY_BTAG.sub(b"\\1", value)
            assert re.search(rb"[;\s]b=\s*(;|$)", out), out  # the b= value is blanked, nothing else


def test_relaxed_headers_identical_on_random_fields() -> None:
    rng = random.Random(3)
    alphabet = [b" ", b"\t", b"\r\n", b"\r", b"\n", b"a", b"B", b"\r\n ", b"\r\n\t", b"  ", b"\x0b", b"\x0c",
                b"\xc3\xa9", b":"]
    for _ in range(30_000):
        headers = [(b"".join(rng.choice([b"X-A", b"Sub", b" ", b"\t", b"B"]) for _ in range(rng.randrange(1, 4))),
                    b"".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 25))))
                   for _ in range(rng.randrange(0, 4))]
        assert fastcanon.relaxed_headers(headers) == dkimpy_relaxed_headers(headers), headers
