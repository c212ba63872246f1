"""LargePartSplitter: the skeleton plus the decoded parts must tell the email package's story.

Every check compares against ``email.message_from_bytes(..., policy=email.policy.default)``
on the same bytes (plus the worker's re-split of Outlook-style unquoted boundaries, see
``parse``): the skeleton parses to the same leaves with the same headers, small and
text parts are byte-identical, an elided part's decoded bytes equal
``part.get_payload(decode=True)``, and putting each part's original encoded body back in
place of its marker gives the original message byte for byte. Malformed input must come
back unchanged with nothing elided.
"""
from __future__ import annotations

import base64
import binascii
import email
import email.policy
import random
import tracemalloc
from collections.abc import Callable, Iterator
from email.message import Message
from pathlib import Path

import pytest

from gateway.pipeline.parse.bigmime import MARKER_PREFIX, LargePartSplitter, is_marker, split_large_parts
from tests.conftest import CORPORA

MiB = 1 << 20
CRLF, LF = b"\r\n", b"\n"
SMALL = 64                      # min_part for the byte-by-byte runs
DEFAULT = 256 * 1024
KNOWN_CTE = {"", "base64", "quoted-printable", "7bit", "8bit", "binary"}


# --------------------------------------------------------------------------- #
# Building messages (raw bytes, so line widths and line ends are under control)
# --------------------------------------------------------------------------- #
def blob(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


def b64(data: bytes, eol: bytes = CRLF, width: int = 76) -> bytes:
    enc = base64.b64encode(data)
    return eol.join(enc[i:i + width] for i in range(0, len(enc), width))


def qp(data: bytes, eol: bytes) -> bytes:
    """Quoted-printable with soft line breaks in the message's line end."""
    return binascii.b2a_qp(data, istext=False).replace(b"=\n", b"=" + eol)


def text_blob(size: int, seed: int, eol: bytes) -> bytes:
    """Text-like data (CSV lines, '=' signs, trailing blanks, 8-bit bytes) for QP parts."""
    rng = random.Random(seed)
    words = [b"alpha", b"b=c", b"caf\xe9", b"tab\there", b"x" * 90, b"end ", b"--not-a-boundary", b"=3D"]
    out = bytearray()
    while len(out) < size:
        out += b";".join(rng.choice(words) for _ in range(rng.randint(1, 12))) + eol
    return bytes(out[:size])


def part(eol: bytes, headers: list[str], body: bytes) -> bytes:
    head = b"".join(h.encode("latin-1") + eol for h in headers)
    return head + eol + body


def multipart(eol: bytes, boundary: str, parts: list[bytes], preamble: bytes | None = None,
              epilogue: bytes | None = None, closed: bool = True) -> bytes:
    b = boundary.encode("latin-1")
    out = preamble + eol if preamble is not None else b""
    for p in parts:
        out += b"--" + b + eol + p + eol
    if not closed:
        return out[:-len(eol)]
    out += b"--" + b + b"--"
    if epilogue is not None:
        out += eol + epilogue
    return out


TOP = ["From: Alice <alice@example.org>", "To: support@example.test", "Subject: big one",
       "Message-ID: <big@example.org>", "MIME-Version: 1.0"]


def message(eol: bytes, ctype: str, body: bytes, extra: list[str] | None = None) -> bytes:
    return part(eol, TOP + (extra or []) + [f"Content-Type: {ctype}"], body)


def att(eol: bytes, ctype: str, body: bytes, cte: str | None = "base64", name: str = "f.bin",
        extra: list[str] | None = None) -> bytes:
    headers = [f"Content-Type: {ctype}; name=\"{name}\""]
    if cte is not None:
        headers.append(f"Content-Transfer-Encoding: {cte}")
    headers.append(f"Content-Disposition: attachment; filename=\"{name}\"")
    return part(eol, headers + (extra or []), body)


def alternative(eol: bytes, boundary: str = "alt-b") -> bytes:
    plain = part(eol, ["Content-Type: text/plain; charset=utf-8", "Content-Transfer-Encoding: quoted-printable"],
                 qp("Hello,\nplease find the files attached. Gr\u00fc\u00dfe =)\n".encode(), eol))
    html = part(eol, ["Content-Type: text/html; charset=utf-8"], b"<p>Hello, <b>files</b> attached.</p>")
    return part(eol, [f"Content-Type: multipart/alternative; boundary=\"{boundary}\""],
                multipart(eol, boundary, [plain, html]))


# Each builder: (eol, big) -> raw message; big = decoded size of the large parts.
def m_mixed(eol: bytes, big: int) -> bytes:
    parts = [alternative(eol),
             att(eol, "application/pdf", b64(blob(big, 1), eol), name="a.pdf"),
             att(eol, "image/png", b64(blob(big // 2 + 1, 2), eol), name="b.png"),          # padding ==
             att(eol, "text/plain", b64(blob(big // 3 + 2, 3), eol), name="c.txt"),         # text, attachment
             att(eol, "application/zip", b64(blob(big + 57 * 3, 4), eol, 64), name="d.zip")]
    return message(eol, "multipart/mixed; boundary=\"==mix==\"",
                   multipart(eol, "==mix==", parts, preamble=b"This is a multi-part message in MIME format.",
                             epilogue=b"epilogue text" + eol))


def m_qp(eol: bytes, big: int) -> bytes:
    parts = [part(eol, ["Content-Type: text/plain"], b"see attachments"),
             att(eol, "text/csv", qp(text_blob(big, 5, eol), eol), "quoted-printable", "t.csv"),
             att(eol, "application/octet-stream", qp(blob(big // 2, 6), eol), "Quoted-Printable", "b.bin")]
    return message(eol, "multipart/mixed; boundary=qp-boundary", multipart(eol, "qp-boundary", parts))


def m_8bit(eol: bytes, big: int) -> bytes:
    rng = random.Random(7)
    chunks = [blob(97, 8), b"\r\n--qp-boundary\r\n", b"\n--8b\tx\n", b"\r--", eol + b"--8b-" + eol, b"\x00\xff"]
    data = b"".join(rng.choice(chunks) for _ in range(big // 20))
    parts = [part(eol, ["Content-Type: text/plain; charset=latin-1", "Content-Transfer-Encoding: 8bit"],
                  b"caf\xe9 ol\xe9" + eol),
             att(eol, "application/octet-stream", data, "8bit", "raw.bin"),
             att(eol, "application/x-thing", data[::-1], "binary", "rev.bin"),
             att(eol, "application/x-none", blob(big // 2, 9).replace(b"-", b"+"), None, "none.bin")]
    return message(eol, "multipart/mixed; boundary=\"8b\"", multipart(eol, "8b", parts, epilogue=b""))


def m_nested(eol: bytes, big: int) -> bytes:
    inline = part(eol, ["Content-Type: image/gif", "Content-Transfer-Encoding: base64", "Content-ID: <g1>"],
                  b64(blob(big, 10), eol))
    related = part(eol, ["Content-Type: multipart/related;", "\tboundary=\"abc-1\"; type=\"multipart/alternative\""],
                   multipart(eol, "abc-1", [alternative(eol, "abc-1-2"), inline], epilogue=b"inner epilogue"))
    deep = att(eol, "application/octet-stream", b64(blob(big // 3, 11), eol, 72), name="deep.bin")
    level2 = part(eol, ["Content-Type: multipart/mixed; boundary=abc"],      # prefix of the others
                  multipart(eol, "abc", [deep, part(eol, [], b"no headers at all")]))
    parts = [related, level2, att(eol, "audio/ogg", b64(blob(big // 2, 12), eol), name="s.ogg")]
    return message(eol, "multipart/mixed; boundary=\"abc-0\"", multipart(eol, "abc-0", parts))


def m_outlook(eol: bytes, big: int) -> bytes:
    b0, b1 = "----=_NextPart_000_0001_01D9ABCD.12345678", "----=_NextPart_001_0002_01D9ABCD.12345678"
    alt = part(eol, [f"Content-Type: multipart/alternative;{eol.decode()}\tboundary={b1}"],
               multipart(eol, b1, [part(eol, ["Content-Type: text/plain"], b"hi"),
                                   part(eol, ["Content-Type: text/html"], b"<p>hi</p>")], preamble=b""))
    doc = att(eol, "application/vnd.ms-excel", b64(blob(big, 13), eol), name="x.xls")
    return message(eol, f"multipart/mixed;{eol.decode()}\tboundary={b0}",
                   multipart(eol, b0, [alt, doc], preamble=b"This is a multipart message in MIME format."),
                   extra=["X-Mailer: Microsoft Outlook 16.0"])


def m_toplevel(eol: bytes, big: int) -> bytes:
    return message(eol, "application/octet-stream; name=\"only.bin\"", b64(blob(big, 14), eol) + eol,
                   extra=["Content-Transfer-Encoding: base64"])


def m_no_trailing_eol(eol: bytes, big: int) -> bytes:
    parts = [part(eol, ["Content-Type: text/plain"], b"x"),
             att(eol, "application/pdf", b64(blob(big, 15), eol), name="last.pdf")]
    return message(eol, "multipart/mixed; boundary=\"last\"", multipart(eol, "last", parts))   # ends "--last--"


def m_b64_variants(eol: bytes, big: int) -> bytes:
    nopad = b64(blob(big + 1, 16), eol).rstrip(b"=")
    full_last = b64(blob(57 * (big // 57 + 1) - 1, 17), eol)              # last line full width, one '='
    single = base64.b64encode(blob(big, 18))                              # no line breaks at all
    trailer = b64(blob(big, 19), eol) + eol + eol                         # blank lines before the boundary
    leading = eol + eol + b64(blob(big, 35), eol)                         # blank lines after the headers
    odd_bits = b64(blob(big - 2, 20), eol)[:-4] + b"QR=="                 # non-zero padding bits
    parts = [att(eol, "application/a", nopad), att(eol, "application/b", full_last),
             att(eol, "application/c", single), att(eol, "application/d", trailer),
             att(eol, "application/d2", leading),
             att(eol, "application/e", odd_bits, cte="BASE64"),
             part(eol, ["content-type: APPLICATION/F", "content-transfer-encoding: base64"],
                  b64(blob(big, 21), eol, 4))]                             # narrowest lines
    return message(eol, "multipart/mixed; BOUNDARY=\"v\"", multipart(eol, "v", parts))


def m_kept(eol: bytes, big: int) -> bytes:
    """Parts that must stay in the skeleton (marked X-Test: keep) next to one that goes."""
    keep = ["X-Test: keep"]
    irregular = b64(blob(big, 22), eol)
    cut = len(irregular) * 2 // 3
    irregular = irregular[:cut] + eol + irregular[cut:]                  # one short line in the middle
    junk = b64(blob(big, 23), eol)
    junk = junk[:len(junk) * 3 // 4] + b"!" + junk[len(junk) * 3 // 4:]
    odd_len = b64(blob(big, 24), eol) + b"Q"                             # 4n+1 chars: email keeps it raw
    spaced = b64(blob(big, 25), eol).replace(eol, b" " + eol)
    mixed_eol = b64(blob(big, 26), CRLF).replace(CRLF, LF, 3)
    inner = message(eol, "multipart/mixed; boundary=inner",
                    multipart(eol, "inner", [att(eol, "application/pdf", b64(blob(big, 27), eol))]))
    parts = [att(eol, "application/a", irregular, extra=keep), att(eol, "application/b", junk, extra=keep),
             att(eol, "application/c", odd_len, extra=keep), att(eol, "application/d", spaced, extra=keep),
             att(eol, "application/e", mixed_eol, extra=keep),
             att(eol, "application/f", b64(blob(big, 28), eol), "x-uuencode", extra=keep),
             att(eol, "application/g", b64(blob(big, 29), eol), "base64 ", extra=keep),
             part(eol, ["Content-Type: text/plain", "Content-Transfer-Encoding: base64"], b64(blob(big, 30), eol)),
             part(eol, ["Content-Type: text/html"], b"<p>" * (big // 3)),
             part(eol, ["Content-Type: message/rfc822"], inner),
             att(eol, "application/h", b64(blob(big, 31), eol), extra=["Content-Type: application/dup"] + keep),
             att(eol, "application/ok", b64(blob(big, 32), eol))]
    return message(eol, "multipart/mixed; boundary=\"k\"", multipart(eol, "k", parts))


def m_digest(eol: bytes, big: int) -> bytes:
    inner = part(eol, ["Subject: inner", "Content-Type: application/pdf", "Content-Transfer-Encoding: base64"],
                 b64(blob(big, 33), eol))
    parts = [part(eol, ["Content-Disposition: attachment"], inner),       # defaults to message/rfc822
             att(eol, "application/pdf", b64(blob(big, 34), eol))]
    return message(eol, "multipart/digest; boundary=dg", multipart(eol, "dg", parts))


BUILDERS: dict[str, Callable[[bytes, int], bytes]] = {
    "mixed": m_mixed, "qp": m_qp, "8bit": m_8bit, "nested": m_nested, "outlook": m_outlook,
    "toplevel": m_toplevel, "no_trailing_eol": m_no_trailing_eol, "b64_variants": m_b64_variants,
    "kept": m_kept, "digest": m_digest,
}


# --------------------------------------------------------------------------- #
# Checking against the email package
# --------------------------------------------------------------------------- #
def parse(raw: bytes) -> Message:
    """The email package's view as the worker gets it.

    policy.default truncates an unquoted boundary at its first tspecial (Outlook's
    ``boundary=----=_NextPart_...`` becomes ``----``), so such a multipart arrives unsplit
    and the worker re-splits its body with the whole boundary (mime.py _repair_boundary).
    The reference does the same, with compat32's reading of the boundary.
    """
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    _resplit(msg)
    return msg


def _resplit(node: Message) -> None:
    if node.is_multipart():
        for sub in node.get_payload():
            _resplit(sub)
        return
    if node.get_content_maintype() != "multipart" or not isinstance(node._payload, str):
        return
    compat = Message()
    for name, value in node.raw_items():
        if name.lower() == "content-type":
            compat["Content-Type"] = value
            break
    boundary = compat.get_boundary()
    if not boundary or "--" + boundary not in node._payload:
        return
    quoted = boundary.replace("\\", "\\\\").replace('"', '\\"')
    head = f'Content-Type: {node.get_content_type()}; boundary="{quoted}"\r\n\r\n'
    sub = email.message_from_bytes(head.encode("utf-8", "surrogateescape") + raw_payload(node),
                                   policy=email.policy.default)
    if sub.is_multipart():
        node._payload = sub.get_payload()
        _resplit(node)


def leaves(msg: Message) -> list[tuple[Message, bool]]:
    """Leaf parts in order, with 'inside a message/* part' (those are never elided)."""
    found: list[tuple[Message, bool]] = []

    def walk(node: Message, inside: bool) -> None:
        if node.is_multipart():
            inner = inside or node.get_content_maintype() == "message"
            for sub in node.get_payload():
                walk(sub, inner)
        else:
            found.append((node, inside))

    walk(msg, False)
    return found


def raw_payload(node: Message) -> bytes:
    """The part's undecoded body bytes exactly as parsed (the str holds bytes via surrogateescape)."""
    payload = node._payload                 # get_payload() would re-decode 8-bit bytes lossily
    return payload.encode("ascii", "surrogateescape") if isinstance(payload, str) else b""


def decoded(node: Message) -> object:
    try:
        return node.get_payload(decode=True)
    except Exception as exc:                # noqa: BLE001 - compare failures too
        return type(exc)


def elidable(node: Message, inside: bool, min_part: int) -> bool:
    """The rule the splitter implements, for well-formed generated messages."""
    if inside or "keep" in node.get_all("X-Test", []):
        return False
    maintype = node.get_content_maintype()
    if maintype in ("multipart", "message"):
        return False
    if maintype == "text" and node.get_content_disposition() != "attachment":
        return False
    cte = str(node.get("content-transfer-encoding", "")).lower()
    return cte in KNOWN_CTE and len(raw_payload(node)) >= min_part


def check(raw: bytes, skeleton: bytes, parts: dict[bytes, bytearray], min_part: int,
          expect_all: bool = False) -> int:
    """Assert equivalence; returns the number of elided parts."""
    if not parts:
        assert skeleton == raw
        return 0
    original, skel = leaves(parse(raw)), leaves(parse(skeleton))
    assert len(original) == len(skel)
    seen: set[bytes] = set()
    rebuilt = skeleton
    for (orig, inside), (node, _) in zip(original, skel):
        assert node.get_content_type() == orig.get_content_type()
        assert list(node.raw_items()) == list(orig.raw_items())
        payload, body = raw_payload(node), raw_payload(orig)
        if is_marker(payload):
            marker = payload.strip()
            assert payload == marker and marker in parts and marker not in seen
            seen.add(marker)
            assert not inside and orig.get_content_maintype() not in ("multipart", "message")
            assert orig.get_content_maintype() != "text" or orig.get_content_disposition() == "attachment"
            assert len(body) >= min_part                                  # small parts untouched
            assert bytes(parts[marker]) == orig.get_payload(decode=True)  # decoded as email does
            assert rebuilt.count(marker) == 1
            rebuilt = rebuilt.replace(marker, body)
        else:
            assert payload == body
            assert not (expect_all and elidable(orig, inside, min_part)), orig.get_content_type()
    assert seen == set(parts)
    assert rebuilt == raw                   # markers back to the original bodies: byte for byte
    return len(parts)


def expected_count(raw: bytes, min_part: int) -> int:
    return sum(elidable(node, inside, min_part) for node, inside in leaves(parse(raw)))


def cut_points(raw: bytes, rng: random.Random) -> list[int]:
    """Split just around every '\\n--' (boundary lines) and at random spots (inside base64 groups)."""
    cuts: set[int] = set()
    pos = raw.find(b"\n--")
    while pos >= 0:
        cuts.update(pos + d for d in (-1, 0, 1, 2, 3, 5))
        pos = raw.find(b"\n--", pos + 1)
    cuts.update(rng.randrange(len(raw)) for _ in range(50))
    return sorted(c for c in cuts if 0 < c < len(raw))


def chunkings(raw: bytes, seed: int, bytewise: bool) -> Iterator[tuple[str, list[bytes]]]:
    rng = random.Random(seed)
    yield "whole", [raw]
    yield "1MiB", [raw[i:i + MiB] for i in range(0, len(raw), MiB)]
    sizes, pos = [], 0
    while pos < len(raw):
        sizes.append(rng.choice((1, 2, 3, rng.randint(1, 300), rng.randint(1, 70000))))
        pos += sizes[-1]
    pos, chunks = 0, []
    for size in sizes:
        chunks.append(raw[pos:pos + size])
        pos += size
    yield "random", chunks
    cuts = [0] + cut_points(raw, rng) + [len(raw)]
    yield "cuts", [raw[a:b] for a, b in zip(cuts, cuts[1:])]
    if bytewise:
        yield "bytes", [raw[i:i + 1] for i in range(len(raw))]


def run(raw: bytes, min_part: int, bytewise: bool = False, expect_all: bool = True, seed: int = 0) -> int:
    """Split under every chunking; all must agree with the email package. Returns parts elided."""
    counts = set()
    for name, chunks in chunkings(raw, seed, bytewise):
        assert b"".join(chunks) == raw
        skeleton, parts = split_large_parts(chunks, min_part)
        try:
            counts.add(check(raw, skeleton, parts, min_part, expect_all))
        except AssertionError as exc:
            raise AssertionError(f"chunking {name!r}: {exc}") from exc
    assert len(counts) == 1, counts            # chunking never changes the result
    return counts.pop()


# --------------------------------------------------------------------------- #
# Round trips on generated messages
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("eol", [CRLF, LF], ids=["crlf", "lf"])
@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_round_trip_small_parts_bytewise(name: str, eol: bytes) -> None:
    """min_part=64 with a few hundred bytes per part: every chunking down to 1 byte."""
    raw = BUILDERS[name](eol, 700)
    expected = expected_count(raw, SMALL)
    assert expected >= 1
    assert run(raw, SMALL, bytewise=True) == expected


@pytest.mark.parametrize("eol", [CRLF, LF], ids=["crlf", "lf"])
@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_round_trip_default_min_part(name: str, eol: bytes) -> None:
    """Real sizes (parts of 300-700 KB around the 256 KiB default), streaming decode engaged."""
    raw = BUILDERS[name](eol, 520_000)
    expected = expected_count(raw, DEFAULT)
    assert expected >= 1
    assert run(raw, DEFAULT, seed=1) == expected


def exact_b64_body(target: int, eol: bytes) -> bytes:
    """A canonical base64 body of exactly ``target`` bytes (width, padding, blank line chosen to fit)."""
    for trailer in (b"", eol, eol + eol):
        for width in (76, 64, 72, 60, 52, 48, 40, 36, 32, 28, 24, 20, 16, 12, 8, 4):
            guess = (target - len(trailer)) * width // (width + len(eol)) * 3 // 4
            for size in range(max(1, guess - 60), guess + 60):
                chars = -(-size // 3) * 4
                for pads in (0, (3 - size % 3) % 3):
                    lines = -(-(chars - pads) // width)
                    if chars - pads + (lines - 1) * len(eol) + len(trailer) == target:
                        body = b64(blob(size, target), eol, width)
                        return (body[:len(body) - pads] if pads else body) + trailer
    raise AssertionError(f"no body of {target} bytes")


@pytest.mark.parametrize("eol", [CRLF, LF], ids=["crlf", "lf"])
@pytest.mark.parametrize("min_part", [SMALL, 1000, DEFAULT])
def test_threshold_is_encoded_body_size(min_part: int, eol: bytes) -> None:
    """Encoded bodies of min_part-1 stay, min_part and min_part+1 go (8bit and base64)."""
    sizes = (min_part - 1, min_part, min_part + 1)
    parts = [att(eol, "application/octet-stream", blob(size, size).replace(b"\n", b"."), "8bit", f"{size}.bin")
             for size in sizes]
    parts += [att(eol, "application/pdf", exact_b64_body(size, eol), name=f"{size}.pdf") for size in sizes]
    raw = message(eol, "multipart/mixed; boundary=t", multipart(eol, "t", parts))
    skeleton, elided = split_large_parts([raw[i:i + 4096] for i in range(0, len(raw), 4096)], min_part)
    assert check(raw, skeleton, elided, min_part, expect_all=True) == 4
    kept = [raw_payload(node) for node, _ in leaves(parse(skeleton)) if not is_marker(raw_payload(node))]
    assert sorted(len(body) for body in kept) == [min_part - 1, min_part - 1]


def test_skeleton_layout_and_markers() -> None:
    """The body of an elided part is just the marker; headers and the delimiter's line end stay."""
    data = blob(5000, 40)
    body = b64(data)
    raw = message(CRLF, "multipart/mixed; boundary=s", multipart(CRLF, "s", [att(CRLF, "application/pdf", body)]))
    splitter = LargePartSplitter(min_part=100)
    for i in range(0, len(raw), 333):
        splitter.feed(raw[i:i + 333])
    skeleton, parts = splitter.finish()
    (marker, content), = parts.items()
    assert content == data and type(content) is bytes
    assert skeleton == raw.replace(body, marker)
    assert marker.startswith(MARKER_PREFIX + b"0-") and len(marker) == len(MARKER_PREFIX) + 2 + 16
    assert is_marker(marker) and is_marker(b"\r\n " + marker + b"\r\n")
    assert not is_marker(MARKER_PREFIX + b"0-xyz") and not is_marker(b"ticketmx") and not is_marker(body)
    with pytest.raises(RuntimeError):
        splitter.feed(b"more")
    other, _ = split_large_parts([raw], 100)
    assert other != skeleton                     # a fresh random token per splitter


@pytest.mark.parametrize("cte", ["8bit", "quoted-printable", "base64", None])
def test_top_level_leaf_body_runs_to_the_end(cte: str | None) -> None:
    """Not multipart: the body (final line end included) is the part; an mbox From line is fine."""
    data = text_blob(3000, 42, CRLF)
    body = {"8bit": data, "quoted-printable": qp(data, CRLF), "base64": b64(data) + CRLF, None: data}[cte]
    extra = [f"Content-Transfer-Encoding: {cte}"] if cte else []
    raw = b"From alice@example.org Mon Jan  1 10:00:00 2024\r\n" + message(CRLF, "application/x-csv", body, extra)
    assert run(raw, 1000, bytewise=True) == 1
    skeleton, parts = split_large_parts([raw], 1000)
    assert bytes(next(iter(parts.values()))) == data
    assert run(raw, len(body) + 1) == 0          # one byte short of the threshold: untouched


def test_forged_marker_in_small_part_is_not_in_dict() -> None:
    forged = MARKER_PREFIX + b"0-0123456789abcdef"
    raw = message(CRLF, "multipart/mixed; boundary=f",
                  multipart(CRLF, "f", [part(CRLF, ["Content-Type: application/x"], forged),
                                        att(CRLF, "application/pdf", b64(blob(3000, 41)))]))
    skeleton, parts = split_large_parts([raw], 1000)
    assert forged in skeleton and forged not in parts and len(parts) == 1


# --------------------------------------------------------------------------- #
# Malformed or ambiguous input: original bytes, nothing elided
# --------------------------------------------------------------------------- #
def _big_parts(eol: bytes, size: int) -> list[bytes]:
    return [part(eol, ["Content-Type: text/plain"], b"hello"),
            att(eol, "application/pdf", b64(blob(size, 50), eol)),
            att(eol, "text/csv", qp(text_blob(size, 51, eol), eol), "quoted-printable"),
            att(eol, "application/octet-stream", blob(size, 52).replace(b"-", b"_"), "8bit")]


def _malformed(eol: bytes, size: int) -> dict[str, bytes]:
    parts = _big_parts(eol, size)
    whole = message(eol, "multipart/mixed; boundary=m", multipart(eol, "m", parts))
    nested_open = message(eol, "multipart/mixed; boundary=o", multipart(eol, "o", [
        part(eol, ["Content-Type: multipart/mixed; boundary=i"], multipart(eol, "i", parts))], closed=False))
    deep = att(eol, "application/pdf", b64(blob(size, 53), eol))
    for level in range(21):
        deep = part(eol, [f"Content-Type: multipart/mixed; boundary=n{level}"], multipart(eol, f"n{level}", [deep]))
    return {
        "never_closed": message(eol, "multipart/mixed; boundary=m", multipart(eol, "m", parts, closed=False)),
        "never_closed_nested": nested_open,
        "truncated_in_attachment": whole[:len(whole) * 2 // 3],
        "truncated_in_boundary": whole[:whole.rfind(b"--m--") + 3],
        "missing_header_end": part(eol, TOP, b"")[:-len(eol)] + b"Content-Type: application/pdf",
        "no_blank_line": b"".join(h.encode() + eol for h in TOP + ["Content-Type: application/pdf"]) + b"not a header",
        "garbage": blob(size, 54),
        "garbage_lines": eol.join(blob(60, i) for i in range(size // 60)),
        "no_boundary_param": message(eol, "multipart/mixed", multipart(eol, "m", parts)),
        "close_before_first": message(eol, "multipart/mixed; boundary=m",
                                      b"--m--" + eol + multipart(eol, "m", parts)),
        "double_delimiter": message(eol, "multipart/mixed; boundary=m",
                                    multipart(eol, "m", parts).replace(b"--m" + eol, b"--m" + eol + b"--m" + eol, 1)),
        "bare_cr_before_boundary": message(eol, "multipart/mixed; boundary=m",
                                           multipart(eol, "m", parts).replace(eol + b"--m--", b"\r--m--")),
        "huge_part_header": message(eol, "multipart/mixed; boundary=m", multipart(eol, "m", [
            part(eol, ["X-Big: " + "y" * 70_000, "Content-Type: application/pdf", "Content-Transfer-Encoding: base64"],
                 b64(blob(size, 55), eol))])),
        "too_deep": message(eol, "multipart/mixed; boundary=top", multipart(eol, "top", [deep])),
        "boundary_quoted_escape": message(eol, "multipart/mixed; boundary=\"m\\\\\"", multipart(eol, "m\\", parts)),
        "boundary_with_space": message(eol, "multipart/mixed; boundary=m x", multipart(eol, "m x", parts)),
        "outlook_shadow_line": message(eol, "multipart/mixed; boundary=----=_NextPart_000_01", multipart(
            eol, "----=_NextPart_000_01", [part(eol, ["Content-Type: text/plain"], b"sig" + eol + b"------" + eol + b"x")]
            + parts)),
        "top_header_space_colon": part(eol, TOP + ["Content-Type : application/pdf",
                                                   "Content-Transfer-Encoding: base64"], b64(blob(size, 56), eol)),
    }


MALFORMED = sorted(_malformed(CRLF, 10))


@pytest.mark.parametrize("eol", [CRLF, LF], ids=["crlf", "lf"])
@pytest.mark.parametrize("name", MALFORMED)
def test_malformed_input_comes_back_unchanged(name: str, eol: bytes) -> None:
    for size, min_part in ((700, SMALL), (400_000, DEFAULT)):
        raw = _malformed(eol, size)[name]
        for label, chunks in chunkings(raw, 2, bytewise=size < 1000):
            skeleton, parts = split_large_parts(chunks, min_part)
            assert parts == {}, (label, size)
            assert skeleton == raw, (label, size)


def test_inner_multipart_ended_by_outer_boundary_is_restored() -> None:
    """Only the never-closed inner multipart's region is restored; the outer attachment still goes."""
    inner = part(CRLF, ["Content-Type: multipart/mixed; boundary=in"],
                 multipart(CRLF, "in", [att(CRLF, "application/pdf", b64(blob(3000, 60)))], closed=False))
    outer_att = att(CRLF, "application/zip", b64(blob(3000, 61)))
    raw = message(CRLF, "multipart/mixed; boundary=out", multipart(CRLF, "out", [inner, outer_att]))
    for _, chunks in chunkings(raw, 3, bytewise=True):
        skeleton, parts = split_large_parts(chunks, SMALL)
        assert check(raw, skeleton, parts, SMALL) == 1
        assert bytes(next(iter(parts.values()))) == blob(3000, 61)


def test_undo_rebuilds_streamed_base64_exactly() -> None:
    """Streamed (elided) then the boundary never closes: the rebuilt bytes are the original ones."""
    for width in (76, 64, 4):
        for eol in (CRLF, LF):
            body = b64(blob(300_000, 62 + width), eol, width) + eol + eol
            raw = message(eol, "multipart/mixed; boundary=u",
                          multipart(eol, "u", [att(eol, "application/pdf", body),
                                               att(eol, "application/zip", b64(blob(5000, 63), eol))], closed=False))
            skeleton, parts = split_large_parts([raw[i:i + 65536] for i in range(0, len(raw), 65536)], 1000)
            assert parts == {} and skeleton == raw


def test_irregular_base64_after_streaming_started_is_kept() -> None:
    """Deviation far into the body (the part was already streaming): raw body restored on the spot."""
    body = b64(blob(400_000, 64))
    for bad in (body[:300_000] + b"\r\n" + body[300_000:], body[:300_001] + b"*" + body[300_001:],
                body + b"=", body[:-2] + b" \r\n", body.replace(b"\r\n", b"\n", 1)):
        raw = message(CRLF, "multipart/mixed; boundary=r", multipart(CRLF, "r", [
            att(CRLF, "application/pdf", bad), att(CRLF, "application/zip", b64(blob(1000, 65)))]))
        skeleton, parts = split_large_parts([raw[i:i + MiB // 4] for i in range(0, len(raw), MiB // 4)], 512)
        assert check(raw, skeleton, parts, 512) == 1
        assert bytes(next(iter(parts.values()))) == blob(1000, 65)


def _mutations(raw: bytes, rng: random.Random) -> Iterator[bytes]:
    lines = raw.split(b"\n")
    for _ in range(12):
        choice = rng.randrange(6)
        if choice == 0:
            yield raw[:rng.randrange(len(raw))]
        elif choice == 1:
            pos = rng.randrange(len(raw))
            yield raw[:pos] + bytes([rng.choice(b"\r\n-=:; \tA\x00")]) + raw[pos + 1:]
        elif choice == 2:
            i = rng.randrange(len(lines))
            yield b"\n".join(lines[:i] + lines[i + 1:])
        elif choice == 3:
            i, j = rng.randrange(len(lines)), rng.randrange(len(lines))
            yield b"\n".join(lines[:i] + [lines[j]] + lines[i:])
        elif choice == 4:
            pos = rng.randrange(len(raw))
            yield raw[:pos] + b"\r\n" + raw[pos:]
        else:
            pos = rng.randrange(len(raw))
            yield raw[:pos] + raw[pos + rng.randint(1, 40):]


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_mutated_messages_never_disagree_with_email(name: str) -> None:
    """Random damage: never an exception, and either full equivalence or the original bytes."""
    rng = random.Random(name)
    for eol in (CRLF, LF):
        raw = BUILDERS[name](eol, 300)
        for mutated in _mutations(raw, rng):
            if not mutated:
                continue
            for _, chunks in chunkings(mutated, rng.randrange(1 << 30), bytewise=False):
                skeleton, parts = split_large_parts(chunks, SMALL)
                check(mutated, skeleton, parts, SMALL)


# --------------------------------------------------------------------------- #
# Memory
# --------------------------------------------------------------------------- #
def test_memory_stays_near_the_decoded_size() -> None:
    decoded_size = 15_000_000
    data = blob(decoded_size, 70)
    raw = message(CRLF, "multipart/mixed; boundary=mem", multipart(CRLF, "mem", [
        part(CRLF, ["Content-Type: text/plain"], b"see attached"),
        att(CRLF, "application/octet-stream", b64(data), name="big.bin")]))
    assert len(raw) > 20_000_000
    tracemalloc.start()
    try:
        splitter = LargePartSplitter()
        for i in range(0, len(raw), MiB):
            splitter.feed(raw[i:i + MiB])
        skeleton, parts = splitter.finish()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(skeleton) < 1000 and bytes(next(iter(parts.values()))) == data
    assert peak < 1.2 * decoded_size + 4 * MiB, f"peak {peak / MiB:.1f} MiB"


# --------------------------------------------------------------------------- #
# Corpus of real and broken mail
# --------------------------------------------------------------------------- #
def test_corpus_agrees_with_email_package() -> None:
    corpus = CORPORA / "mail"
    if not corpus.is_dir():
        pytest.skip(f"mail corpus not found at {corpus} (set TICKETMX_CORPORA)")
    files = sorted(corpus.rglob("*.eml"))
    assert files
    elided = 0
    for path in files:
        raw = path.read_bytes()
        try:
            elided += run(raw, SMALL, bytewise=len(raw) <= 16_384, expect_all=False, seed=len(raw))
        except AssertionError as exc:
            raise AssertionError(f"{path.relative_to(corpus)}: {exc}") from exc
    assert elided >= 15                     # the corpus has attachments: the test is not vacuous


def _corpus_path(*parts: str) -> Path:
    return CORPORA.joinpath("mail", *parts)


def test_corpus_attachment_is_elided() -> None:
    path = _corpus_path("attachment_emails", "attachment_pdf.eml")
    if not path.is_file():
        pytest.skip(f"mail corpus not found at {path.parent}")
    raw = path.read_bytes()
    skeleton, parts = split_large_parts([raw[i:i + 100] for i in range(0, len(raw), 100)], 1024)
    assert check(raw, skeleton, parts, 1024) >= 1
    assert len(skeleton) < len(raw) - 1000


def test_email_boundary_is_what_the_feed_parser_reads() -> None:
    """``_email_boundary`` sets the one header line the way the feed parser does; on random
    Content-Type values it reads the boundary a full ``message_from_bytes`` parse reads."""
    import email
    import random

    from gateway.pipeline.parse import bigmime
    from gateway.pipeline.parse.mime import _POLICY
    rng = random.Random(2046)
    atoms = [b"multipart/mixed", b"multipart/alternative", b";", b" ", b"\t", b"boundary=", b"boundary*=",
             b"boundary*0=", b"boundary*1=", b'"', b"abc", b"=_Part_1", b"----=_NextPart_000", b"(c)", b"\\",
             b"utf-8''%41", b"x=y", b"'", b"==", b"a b"]
    for _ in range(3000):
        value = b"".join(rng.choice(atoms) for _ in range(rng.randrange(1, 10)))
        try:
            found = email.message_from_bytes(b"Content-Type: " + value + b"\n\n", policy=_POLICY).get_boundary()
            want = found.encode("ascii") if found is not None else None
        except Exception:  # noqa: BLE001 - the reference gives up: so must we
            want = None
        assert bigmime._email_boundary(value) == want, value


def test_a_split_attachment_reaches_the_parsed_message_without_a_copy() -> None:
    """The decoded body leaves the splitter as ``bytes`` sharing the decoder's buffer, and the parser
    takes it as it is: parsing the skeleton allocates nothing near the attachment's size (it used to
    copy it once, so a 38 MB attachment was held twice at the worker's peak)."""
    from gateway.pipeline.parse.mime import parse_message
    data = blob(8_000_000, 41)
    raw = message(CRLF, "multipart/mixed; boundary=s", multipart(CRLF, "s", [
        (b"Content-Type: text/plain\r\n\r\nsee attached\r\n"), att(CRLF, "application/octet-stream", b64(data))]))
    skeleton, parts = split_large_parts([raw], 64 * 1024)
    (decoded,) = parts.values()
    assert type(decoded) is bytes and decoded == data
    del decoded
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        parsed = parse_message(skeleton, parts)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    (attachment,) = parsed.attachments
    assert attachment.content == data and not parts  # handed on, not kept twice
    assert peak - before < len(data) // 4, (peak - before, len(data))
