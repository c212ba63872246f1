"""One reading of the header section (issue 18, class 1): what the SMTP side accepts, every reader reads alike.

Three readers look at the same header bytes: ours (``gateway.auth.headers``, used by DKIM/DMARC/ARC and the
SMTP-time checks), dkimpy's ``rfc822_parse`` (the reference DKIM verifier) and the email package with the
pipeline's policy (the MIME parser). On generated header sections built from the byte patterns where they
used to differ (bare CR, NUL, LF CRLF, whitespace-only lines, lines that are not fields, mbox lines,
``From :``, several From fields), every section the DATA check lets through, once normalised, gives the
same field names, the same From value and the same body in all three.
"""
from __future__ import annotations

import email
import random

import dkim

from gateway.auth.headers import header_fields, header_section_problem, normalise_header_section, split_message
from gateway.pipeline.parse.mime import _POLICY

# Fragments every reader must agree on once accepted, and the ones the DATA check refuses.
EVERYDAY = [
    b"Subject: hi", b"To: support@example.test", b" folded", b"\tfolded", b"   ", b"junk line",
    b"From mallory@evil.test Mon Dec  7 10:00:00 2026", b":empty name", b"X-A:", b"Received: from x by y",
    b"Subject: =?utf-8?q?caf=C3=A9?=", b"Bad Name: x", b"\xc3\xa9t\xc3\xa9: 8-bit name", b"X-D: 8-bit \xc3\xa9 value",
    b"something@bar.net>", b"X-E: a:b:c", b"Fro m: x@y.test",
]
HOSTILE = [
    b"From: Alice <alice@customer.test>", b"from:bob@customer.test", b"From :victim@reject.test",
    b"From\t: victim@reject.test", b"X-B: a\rFrom: v@r.test", b"X-C: nul\x00here",
]
ENDINGS = [b"\r\n", b"\r\n", b"\n", b"\r\n", b"\n", b"\r\r\n"]
SEPARATORS = [b"\r\n", b"\n", b" \r\n", b"\t\n", b""]


def generate(rng: random.Random) -> bytes:
    lines = [rng.choice(HOSTILE if rng.random() < 0.08 else EVERYDAY) + rng.choice(ENDINGS[:-1] if rng.random() < 0.9
             else ENDINGS) for _ in range(rng.randint(1, 7))]
    lines.insert(rng.randint(0, len(lines)), b"From: Alice <alice@customer.test>" + rng.choice(ENDINGS[:-1]))
    if rng.random() < 0.5:  # the first line must be a field (or an mbox line): put one there half the time
        lines.insert(0, b"Received: from a by b" + rng.choice(ENDINGS[:-1]))
    return b"".join(lines) + rng.choice(SEPARATORS) + b"Body line\r\nFrom: not a header\r\n"


def ours(raw: bytes) -> tuple[list[bytes], bytes | None, bytes]:
    fields = header_fields(raw)
    names = [f.name.lower() for f in fields]
    frm = next((f.value.strip() for f in fields if f.name.lower() == b"from"), None)
    _head, rest = split_message(raw)
    body = rest[2:] if rest.startswith(b"\r\n") else rest[1:] if rest.startswith(b"\n") else rest
    return names, frm, body


def dkimpy(raw: bytes) -> tuple[list[bytes], bytes | None, bytes]:
    headers, body = dkim.rfc822_parse(raw)
    names = [bytes(h[0]).lower() for h in headers]
    frm = next((h[1].replace(b"\r\n", b"").strip() for h in headers if h[0].lower() == b"from"), None)
    return names, frm, body


def stdlib(raw: bytes) -> tuple[list[bytes], bytes | None, list]:
    msg = email.message_from_bytes(raw, policy=_POLICY)
    items = list(msg.raw_items())
    names = [k.lower().encode("utf-8", "surrogateescape") for k, _v in items]
    frm = next((v for k, v in items if k.lower() == "from"), None)
    return names, (frm.encode("utf-8", "surrogateescape").replace(b"\r\n", b"").replace(b"\n", b"").strip()
                   if frm is not None else None), list(msg.defects)


def _canon(body: bytes) -> bytes:
    return body.replace(b"\r\n", b"\n")


def test_every_accepted_header_section_is_read_alike_by_all_three_readers() -> None:
    rng = random.Random(18)
    accepted = refused = normalised = 0
    disagreements: list[tuple[bytes, str]] = []
    for _ in range(20_000):
        raw = generate(rng)
        if header_section_problem(raw) is not None:
            refused += 1
            continue
        accepted += 1
        fixed = normalise_header_section(raw)
        normalised += fixed is not raw
        o_names, o_from, o_body = ours(fixed)
        try:
            d_names, d_from, d_body = dkimpy(fixed)
        except dkim.MessageFormatError as exc:
            disagreements.append((raw, f"dkimpy refused: {exc}"))
            continue
        s_names, s_from, s_defects = stdlib(fixed)
        if not (o_names == d_names == s_names):
            disagreements.append((raw, f"names {o_names} / {d_names} / {s_names}"))
        elif not (o_from == d_from == s_from):
            disagreements.append((raw, f"From {o_from!r} / {d_from!r} / {s_from!r}"))
        elif _canon(o_body) != _canon(d_body):
            disagreements.append((raw, f"body {o_body[:40]!r} / {d_body[:40]!r}"))
    print(f"\none reading: {accepted} accepted ({normalised} normalised), {refused} refused, "
          f"{len(disagreements)} disagreements")
    assert accepted > 3_000 and refused > 3_000, "the generator must exercise both sides"
    assert not disagreements, disagreements[:5]


def test_the_reported_smuggling_patterns_are_refused() -> None:
    cases = {
        b"X-A: a\rFrom: victim@reject.test\r\nFrom: me@evil.test\r\n\r\nbody": "bare CR",
        b"From : victim@reject.test\r\nSubject: x\r\n\r\nbody": "white space before the colon",
        b"From: me@evil.test\r\nFrom: victim@reject.test\r\n\r\nbody": "2 From header fields",
        b"From: me@evil.test\r\nX: \x00\r\n\r\nbody": "NUL byte",
        b"junk\r\nFrom: me@evil.test\r\n\r\nbody": "does not start with a header field",
        b" folded\r\nFrom: me@evil.test\r\n\r\nbody": "starts with a continuation line",
    }
    for raw, what in cases.items():
        problem = header_section_problem(raw)
        assert problem is not None and what in problem.what, (raw, problem)


def test_a_line_that_is_not_a_field_becomes_a_continuation_for_every_reader() -> None:
    raw = b"Subject: hello\r\nnot a field\r\nFrom: Alice <alice@customer.test>\r\n\r\nbody\r\nnot a field\r\n"
    assert header_section_problem(raw) is None
    fixed = normalise_header_section(raw)
    assert fixed == b"Subject: hello\r\n not a field\r\nFrom: Alice <alice@customer.test>\r\n\r\nbody\r\nnot a field\r\n"
    assert ours(fixed)[0] == dkimpy(fixed)[0] == stdlib(fixed)[0] == [b"subject", b"from"]


def test_cost_is_linear_in_the_header_section() -> None:
    """One regex scan per rule: 4x the lines costs about 4x (CPU time, generous margin)."""
    import time

    def cost(n: int) -> float:
        raw = b"".join(b"X-H%d: v\r\n not a field\r\nnot a field\r\n" % i for i in range(n)) + b"\r\nbody"
        t = time.process_time()
        for _ in range(5):
            header_section_problem(raw)
            normalise_header_section(raw)
        return time.process_time() - t

    small, big = cost(20_000), cost(80_000)
    assert big < small * 8, (small, big)
