"""The streaming body hash gives dkimpy's exact bh= for any chunking of any body.

The reference is dkimpy itself: a pristine copy of ``dkim/canonicalization.py`` (loaded under
another name, so ``fastcanon.install()`` done by other imports cannot have swapped its
``Relaxed.canonicalize_body``), applied as ``verify_sig_process`` does to the body
``dkim.rfc822_parse`` returns, then sliced to l= and hashed with ``dkim.HASH_ALGORITHMS``.
"""
from __future__ import annotations

import base64
import importlib.util
import os
import random
import re
from pathlib import Path
from typing import Iterator

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from dkim import canonicalization as canon
from dkim.util import parse_tag_value

from gateway.auth import bodyhash, fastcanon
from gateway.auth.bodyhash import BodyHasher, body_hashes

# Same lookup as tests/conftest.py's CORPORA, kept here so this file does not need the app.
CORPORA = next((Path(p) for p in (os.environ.get("TICKETMX_CORPORA"),
                                  Path(__file__).resolve().parents[3] / "shared" / "corpora",
                                  "/work/shared/corpora") if p and Path(p).is_dir()),
               Path("/work/shared/corpora"))


def _pristine_canonicalization():
    spec = importlib.util.spec_from_file_location("_pristine_dkim_canonicalization", canon.__file__)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


PRISTINE = _pristine_canonicalization()
CANONS = (b"simple", b"relaxed")
ALGS = (b"rsa-sha256", b"rsa-sha1", b"ed25519-sha256")
MiB = 1 << 20


def parsed_body(raw_body: bytes) -> bytes:
    """What dkimpy's ``self.body`` is for a message whose bytes after the separator are raw_body."""
    return dkim.rfc822_parse(b"X: y\r\n\r\n" + raw_body)[1]


def ref_canonical(c: bytes, raw_body: bytes) -> bytes:
    policy = PRISTINE.CanonicalizationPolicy.from_c_value(b"simple/" + c)
    return policy.canonicalize_body(parsed_body(raw_body))


def ref_digest(c: bytes, alg: bytes, length: int | None, raw_body: bytes) -> tuple[bytes, int]:
    body = ref_canonical(c, raw_body)
    full = len(body)
    if length is not None:
        body = body[:length]
    h = dkim.HASH_ALGORITHMS[alg]()
    h.update(body)
    return h.digest(), full


def random_chunks(data: bytes, rng: random.Random, max_size: int) -> Iterator[bytes]:
    pos = 0
    while pos < len(data):
        size = 1 if rng.random() < 0.3 else rng.randint(0, max_size)  # 0: empty update calls too
        yield data[pos:pos + size]
        pos += size


def streamed(c: bytes, alg: bytes, length: int | None, chunks) -> tuple[bytes, int]:
    h = BodyHasher(c, alg, length)
    for chunk in chunks:
        h.update(chunk)
    return h.digest(), h.canonical_length


EDGE = [b"", b"\r\n", b"\r\n\r\n", b"\r\n\r\n\r\n", b" ", b"  \t ", b"\t\r\n", b" \r\n \r\n",
        b"a", b"a  ", b"a \t", b"a\r\n", b"a \r\n", b"a\r\n\r\n", b"a\r\n \r\n\t\r\n", b"a\r\n\r\nb",
        b"\r", b"a\r", b"a \r", b"\r\r\n", b"a\r\r\n\r\n", b"\n", b"a\n", b"a\n\n", b"\n\r\n", b"\r\n\n",
        b"a \n", b"\r\r\r", b"a\rb\r\n", b"\r \n", b" \r \r\n", b"\r\n\r\n  ", b"\r\n\r\na",
        b"a  b\t\tc \t d\r\n", b"\x00 \xff\r\n", b"\t lead\r\n\r\n", b"x\r\n\t\r\n\r\n", b"\r\n \r\n x"]


@pytest.mark.parametrize("body", EDGE)
@pytest.mark.parametrize("c", CANONS)
def test_edge_cases_every_split(c: bytes, body: bytes) -> None:
    """Whole, 1-byte chunks, and every 2- and 3-way split point."""
    want = ref_digest(c, b"rsa-sha256", None, body)
    assert streamed(c, b"rsa-sha256", None, [body]) == want
    assert streamed(c, b"rsa-sha256", None, [body[i:i + 1] for i in range(len(body))]) == want
    for i in range(len(body) + 1):
        for j in range(i, len(body) + 1):
            assert streamed(c, b"rsa-sha256", None, [body[:i], body[i:j], body[j:]]) == want, (i, j)


@pytest.mark.parametrize("c, body, canonical", [
    (b"simple", b"", b"\r\n"),  # simple: an empty body is one CRLF
    (b"relaxed", b"", b""),  # relaxed: an empty body stays empty (correct_empty_body)
    (b"relaxed", b" \r\n\t\r\n", b""),  # ... and so does one of only blank lines
    (b"simple", b" \r\n\r\n", b" \r\n"),  # simple: WSP lines are not empty
    (b"simple", b"a", b"a\r\n"),  # a missing final CRLF is added
    (b"relaxed", b"a  ", b"a \r\n"),  # relaxed keeps WSP on a last line without CRLF (as one SP)
    (b"relaxed", b"a  \r\n", b"a\r\n"),  # ... but not before a CRLF
    (b"relaxed", b"  ", b" \r\n"),
    (b"simple", b"a\n\nb\n", b"a\r\n\r\nb\r\n"),  # rfc822_parse turns bare LF into CRLF
    (b"simple", b"a\rb\r", b"a\rb\r\r\n"),  # a bare CR stays content
    (b"relaxed", b"a\r\n\r\n\r\n", b"a\r\n"),  # trailing empty lines dropped
    (b"relaxed", b"\r\n\r\nx", b"\r\n\r\nx\r\n"),  # leading ones are kept
])
def test_dkimpy_quirks(c: bytes, body: bytes, canonical: bytes) -> None:
    """Pins the dkimpy behaviour we reproduce, and our canonical length for it."""
    assert ref_canonical(c, body) == canonical
    h = BodyHasher(c, b"rsa-sha256")
    for i in range(len(body)):
        h.update(body[i:i + 1])
    assert (h.digest(), h.canonical_length) == (dkim.HASH_ALGORITHMS[b"rsa-sha256"](canonical).digest(),
                                                 len(canonical))


def test_bare_lf_follows_rfc822_parse_not_canonicalize_body() -> None:
    """dkimpy's canonicalize_body alone keeps a bare LF, but verify hashes rfc822_parse's
    body, where it is CRLF; we must match verify."""
    body = b"line one\nline two \n\n"
    assert PRISTINE.Simple.canonicalize_body(body) != ref_canonical(b"simple", body)
    for c in CANONS:
        assert streamed(c, b"rsa-sha256", None, [body]) == ref_digest(c, b"rsa-sha256", None, body)


def test_random_bodies() -> None:
    rng = random.Random(6376)
    alphabet = [b" ", b"\t", b"\r", b"\n", b"\r\n", b"a", b"\x00", b"\xff", b"  ", b"\r\n\r\n", b"bc", b" \t "]
    for n in range(4000):
        body = b"".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 80)))
        if n % 3 == 0:  # also bodies with no bare LF, where rfc822_parse changes nothing
            body = body.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        for c in CANONS:
            full = len(ref_canonical(c, body))
            lengths = (None, 0, 1, rng.randrange(0, full + 1), full, full + rng.randrange(1, 5))
            alg = rng.choice((b"rsa-sha256", b"rsa-sha1"))
            length = rng.choice(lengths)
            assert streamed(c, alg, length, random_chunks(body, rng, 9)) == ref_digest(c, alg, length, body), \
                (c, alg, length, body)
            if c == b"relaxed" and b"\n" not in body.replace(b"\r\n", b""):
                assert fastcanon.relaxed_body(body) == ref_canonical(c, body)  # same reference
            wants = [(c, a, ln) for a in (b"rsa-sha256", b"rsa-sha1") for ln in lengths]
            got = body_hashes(random_chunks(body, rng, 7), wants)
            for want in wants:
                assert got[want] == ref_digest(*want, body), (want, body)


def test_body_hashes_mixed_canons_and_sharing(monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[bytes] = []

    def counting(alg: bytes):
        orig = dkim.HASH_ALGORITHMS[alg]

        def ctor(*a):
            made.append(alg)
            return orig(*a)
        return ctor

    for alg in ALGS:
        monkeypatch.setitem(dkim.HASH_ALGORITHMS, alg, counting(alg))
    body = b"Hi  there,\r\n\r\n\tsee  below \r\n\r\n \r\n"
    wants = [(b"relaxed", b"rsa-sha256", None), (b"simple", b"rsa-sha256", None),
             (b"relaxed", b"rsa-sha256", None), (b"relaxed", b"ed25519-sha256", 5), (b"simple", b"rsa-sha1", 3),
             (b"relaxed", b"ed25519-sha256", 5)]
    got = body_hashes(iter([body[:7], body[7:8], body[8:]]), wants)
    assert len(made) == 4  # the 6 wants hold 4 distinct triples
    monkeypatch.undo()
    assert set(got) == set(wants)
    for want in wants:
        assert got[want] == ref_digest(*want, body)
    assert body_hashes(iter([body]), []) == {}


def test_buffer_types_and_errors() -> None:
    body = b"a \r\nb\t\r\n\r\n"
    want = ref_digest(b"relaxed", b"rsa-sha256", None, body)
    assert streamed(b"relaxed", b"rsa-sha256", None, [bytearray(body[:3]), memoryview(body)[3:]]) == want
    for bad in [(b"nofws", b"rsa-sha256", None), (b"Relaxed", b"rsa-sha256", None), ("relaxed", b"rsa-sha256", None),
                (b"simple", b"rsa-md5", None), (b"simple", b"sha256", None), (b"simple", b"rsa-sha256", -1)]:
        with pytest.raises(ValueError):
            BodyHasher(*bad)
        with pytest.raises(ValueError):
            body_hashes([body], [bad])
    h = BodyHasher(b"simple", b"rsa-sha256")
    h.update(body)
    with pytest.raises(RuntimeError):
        h.canonical_length
    assert h.digest() == h.digest() == ref_digest(b"simple", b"rsa-sha256", None, body)[0]
    with pytest.raises(RuntimeError):
        h.update(b"more")


_FIRST_EMPTY_LINE = re.compile(rb"\A\r?\n|\n\r?\n")


def test_corpus_bodies() -> None:
    root = CORPORA / "mail"
    mails = sorted(root.rglob("*.eml")) if root.is_dir() else []
    if not mails:
        reason = f"mail corpus not found under {CORPORA} (set TICKETMX_CORPORA)"
        print(reason)
        pytest.skip(reason)
    rng = random.Random(8617)
    checked = 0
    for path in mails:
        raw = path.read_bytes()
        try:
            body = dkim.rfc822_parse(raw)[1]
        except dkim.MessageFormatError:
            continue  # dkimpy cannot parse it, so there is no dkimpy bh= to match
        m = _FIRST_EMPTY_LINE.search(raw)
        raw_body = raw[m.end():] if m else b""
        assert parsed_body(raw_body) == body, path.name  # our split is rfc822_parse's
        for c in CANONS:
            want = ref_digest(c, b"rsa-sha256", None, body)
            assert streamed(c, b"rsa-sha256", None, [raw_body]) == want, path.name
            assert streamed(c, b"rsa-sha256", None, random_chunks(raw_body, rng, 300)) == want, path.name
            assert streamed(c, b"rsa-sha256", None, random_chunks(body, rng, 4096)) == want, path.name
        if b"\n" not in body.replace(b"\r\n", b""):
            assert fastcanon.relaxed_body(body) == ref_canonical(b"relaxed", body), path.name
        checked += 1
    print(f"{checked}/{len(mails)} corpus messages compared")
    assert checked >= len(mails) * 0.9


def _rsa_pem() -> bytes:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                             serialization.NoEncryption())


def _ed_seed() -> bytes:
    key = ed25519.Ed25519PrivateKey.generate()
    return base64.b64encode(key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                              serialization.NoEncryption()))


def test_end_to_end_against_dkim_sign() -> None:
    """bh= (and l=) written by dkimpy's signer; with l= the message then gets a footer appended."""
    keys = {b"rsa-sha256": _rsa_pem(), b"ed25519-sha256": _ed_seed()}
    keys[b"rsa-sha1"] = keys[b"rsa-sha256"]
    bodies = [b"Hello,\r\n\r\nthis  is\ta test. \r\n\r\n\r\n", b"", b"no final newline  ",
              b"bare\nLF  lines\n\n", b"\r\n\r\n\t \r\nx\r\n" * 50, b" ".join([b"word"] * 3000) + b"\r\n"]
    checked = 0
    for body in bodies:
        msg = (b"From: Alice <alice@example.org>\r\nTo: help@support.test\r\nSubject: test\r\n"
               b"Date: Mon, 01 Jan 2024 10:00:00 +0000\r\n\r\n" + body)
        for c in (b"relaxed/relaxed", b"simple/simple", b"relaxed/simple", b"simple/relaxed"):
            for alg, key in keys.items():
                for length in (False, True):
                    sig = dkim.sign(msg, b"sel", b"example.org", key, canonicalize=tuple(c.split(b"/")),
                                    signature_algorithm=alg, include_headers=[b"from", b"subject"],
                                    length=length)
                    tags = parse_tag_value(re.sub(rb"\s+", b"", sig.split(b":", 1)[1]))
                    assert tags[b"c"] == c and tags[b"a"] == alg
                    bh = base64.b64decode(tags[b"bh"])
                    l_tag = int(tags[b"l"]) if length else None
                    body_c = c.split(b"/")[1]
                    # a footer appended in transit (only after a complete line: appending to an
                    # unterminated last line would change that line, i.e. the signed content)
                    extra = b"\r\n-- \r\nfooter added in transit\r\n" if length and body[-1:] in (b"", b"\n") else b""
                    got = streamed(body_c, alg, l_tag, random_chunks(body + extra, random.Random(checked), 64))
                    assert got[0] == bh, (c, alg, length, body)
                    if extra:
                        assert l_tag < got[1]  # the policy's "l= shorter than the body" is visible
                    assert body_hashes([body + extra], [(body_c, alg, l_tag)])[(body_c, alg, l_tag)][0] == bh
                    checked += 1
    assert checked == len(bodies) * 4 * 3 * 2


def _tile(pieces: list[bytes], seed: int, size: int) -> bytes:
    """A random block of about 100 kB (odd length, so 1 MiB chunk edges fall everywhere in it), repeated."""
    rng = random.Random(seed)
    block = b"".join(rng.choice(pieces) for _ in range(12_000))[:99_991]
    return (block * (size // len(block) + 1))[:size]


def _one_line(size: int) -> bytes:
    words = [w + s for w in (b"word", b"x", b"\xe2\x82\xac", b"a\rb", b"\r", b"\t")
             for s in (b" ", b"  ", b"\t", b" \t \t", b"")]
    return _tile(words, 1, size - 5) + b"end \t"  # trailing WSP without CRLF: kept as one SP (relaxed)


def _whitespace_lines(size: int) -> bytes:
    pieces = [b"  indented\tline  \r\n", b"\t\t\r\n", b"\r\n", b"text with  many   runs \t of\t\tspace\r\n",
              b" \r\n", b"plain line\r\n", b"bare cr\r at end \r\r\n", b"bare lf\n", b"long " * 40]
    return _tile(pieces, 2, size - 32) + b"last\r\n \t\r\n\r\n\t\r\n\r\n  \r\n"  # trailing (blank) lines


@pytest.mark.parametrize("make", [_one_line, _whitespace_lines], ids=["one-line", "whitespace-lines"])
def test_large_body_in_1mib_chunks(make) -> None:
    body = make(20_000_000)
    for c in CANONS:
        canonical = ref_canonical(c, body)
        h = BodyHasher(c, b"rsa-sha256")
        for i in range(0, len(body), MiB):
            h.update(body[i:i + MiB])
            assert len(h._canon.carry) <= 2  # the carry stays bounded whatever the line length
        assert (h.digest(), h.canonical_length) == (dkim.HASH_ALGORITHMS[b"rsa-sha256"](canonical).digest(),
                                                     len(canonical)), c
        if c == b"relaxed":
            assert fastcanon.relaxed_body(parsed_body(body)) == canonical


def test_many_trailing_empty_lines() -> None:
    """Held-back empty lines are counted, not stored, and hashed in pieces when content follows."""
    for tail in (b"", b"x", b" "):
        body = b"a\r\n" + b"\r\n" * 300_000 + b" \t\r\n" * 1000 + tail
        for c in CANONS:
            for length in (None, 7, 100_001):
                assert streamed(c, b"rsa-sha256", length, (body[i:i + 65_537] for i in range(0, len(body), 65_537))) \
                    == ref_digest(c, b"rsa-sha256", length, body), (c, tail, length)
    assert bodyhash._trailing_crlfs(b"\n\r\n\r\n") == 2 and bodyhash._trailing_crlfs(b"\r\n\n\r\n") == 1
