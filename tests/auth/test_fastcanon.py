"""The fast relaxed body canonicalisation gives dkimpy's exact bytes."""
from __future__ import annotations

import random

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
