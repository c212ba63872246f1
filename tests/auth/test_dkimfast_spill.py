"""DKIM on spilled mail is plain dkimpy's verdict (issue 18, item 4).

A message over ``[smtp] spill_threshold`` keeps its header section in memory and streams its body
into a file (``gateway/smtp/spill.py``); DKIM body hashes are then computed from the file
(``dkimcheck.file_body_hashes``) and the signatures checked on the header section alone (dkimfast,
or dkimpy with the streamed hashes). Every byte pattern around the header/body boundary must give
the same verdict as plain dkimpy (``dkim.DKIM(...).verify``, run in a process of its own so none of
our patches to dkimpy are in the reference: ``plain_dkimpy.py``) on the same bytes.

A few base messages are signed (signing is slow); the 10,000+ cases are derived from them by
rewriting the bytes around the boundary (bare LF, LF CRLF, CR CRLF, CRLF LF, whitespace-only
lines, text inserted before the signed body, a field inserted after signing, all CRLF turned into
LF), and each one is pushed through the real ``DataSpill`` the way ``smtpd`` does (dot-stuffed,
in random-sized reads, a threshold just past the header section, small flushes). The in-memory
path (``verify_sync`` with ``body_keys``) is checked against the spilled one too.
"""
from __future__ import annotations

import asyncio
import pickle
import random
import subprocess
import sys
from pathlib import Path

import dkim

from gateway.auth import dkimcheck
from gateway.auth.headers import body_start
from gateway.smtp.spill import DataSpill

from .helpers import ed_key, rsa_key

N_MESSAGES = 11_500  # at least 10,000 of them spilled (asserted)
INSERTED = b"Wire the money today -- the CEO"
# Boundaries between the last header line and the body, replacing the signed CRLF CRLF.
BOUNDARIES = [
    b"\r\n\r\n", b"\n\n", b"\n\r\n", b"\r\n\n", b"\r\r\n\r\n", b"\r\n\r\r\n", b"\r\r\n", b"\r\n \r\n\r\n",
    b"\r\n\t\r\n\r\n", b"\n \n\n", b"\r\n \r\n", b"\n\r\n" + INSERTED + b"\r\n\r\n", b"\n\n" + INSERTED + b"\r\n\r\n",
    b"\r\n\r\n" + INSERTED + b"\r\n\r\n", b"\r\n\r" + INSERTED + b"\r\n\r\n", b"\r\n\r\n\r\n", b"\r\n \r\n" + INSERTED
    + b"\r\n\r\n", b"\r\nX-Late: 1\r\n\r\n", b"\r\n" + INSERTED + b"\r\n\r\n", b"\n\r\n\r\n", b"\r\n\n\r\n",
    b"\r\r\n" + INSERTED + b"\r\n\r\n", b"\n\r\r\n\r\n",
]
TOKENS = [b"\r\n", b"\n", b"\r", b" ", b"\t", b"\r\n\r\n", b"\n\r\n", INSERTED, b"X-Late: 1", b"."]


def _body(rng: random.Random) -> bytes:
    words = [b"printer", b"on", b"fire", b"  ", b"\t", b".", b"..", b"x" * 70, b"-- ", b"\xc3\xa9"]
    lines = [b" ".join(rng.choice(words) for _ in range(rng.randrange(0, 9))) for _ in range(rng.randrange(5, 40))]
    lines.insert(rng.randrange(len(lines)), b"padding " * 60)  # the spill starts reads before the end
    return b"\r\n".join(lines) + rng.choice([b"\r\n", b"\r\n\r\n\r\n", b"  \r\n"])


def _bases(rng: random.Random) -> tuple[list[bytes], dict[bytes, bytes]]:
    """Signed messages: both canonicalisations, rsa and ed25519, one or two signatures, l= on some."""
    pem, rsa_txt = rsa_key()
    seed, _pem, ed_txt = ed_key()
    keys = {b"r._domainkey.example.org.": rsa_txt.encode(), b"ed._domainkey.example.org.": ed_txt.encode()}
    bases = []
    for i in range(12):
        msg = (b"From: Alice <alice@example.org>\r\nTo: help@support.test\r\nSubject: base " + str(i).encode() +
               b"\r\nDate: Mon, 01 Jan 2024 10:00:00 +0000\r\nMessage-ID: <m" + str(i).encode() + b"@example.org>"
               b"\r\nContent-Type: text/plain\r\n\r\n" + _body(rng))
        raw = msg
        for sel, key, algo in [(b"r", pem, b"rsa-sha256"), (b"ed", seed, b"ed25519-sha256")][:1 + i % 2]:
            canon = ([b"relaxed", b"simple"][i % 3 == 0], [b"relaxed", b"simple"][i % 4 == 1])
            raw = dkim.sign(raw, sel, b"example.org", key, signature_algorithm=algo, canonicalize=canon,
                            include_headers=[b"from", b"to", b"subject", b"date", b"content-type"],
                            length=i % 5 == 2) + raw
        bases.append(raw)
    return bases, keys


def _variant(rng: random.Random, base: bytes, n: int) -> bytes:
    head, _sep, body = base.partition(b"\r\n\r\n")
    if n < len(BOUNDARIES) * 40:  # every curated boundary many times, then random ones
        sep = BOUNDARIES[n % len(BOUNDARIES)]
    else:
        sep = b"".join(rng.choice(TOKENS) for _ in range(rng.randrange(1, 6)))
    kind = rng.randrange(10)
    if kind == 0:
        head = head.replace(b"\r\n", b"\n")  # the header section in bare LF (dkimpy reads it the same)
    elif kind == 1:
        body = INSERTED + b"\r\n" + body  # text before the signed body, the boundary left alone
    elif kind == 2:
        body = body + b"appended\r\n"  # after the signed body: l= signatures stay dkimpy-valid
    elif kind == 3:
        body = body.replace(b"\r\n", b"\n")  # bare LF in the body: dkimpy reads it as CRLF
    elif kind == 4:
        head = head + b"\r\nFrom: mallory@example.net"  # a second From after signing
    raw = head + sep + body
    if kind == 5:
        raw = raw.replace(b"\r\n", b"\n")
    return raw if raw.endswith(b"\r\n") else raw + b"\r\n"  # the SMTP stream ends the last line


async def _spill(stream: bytes, threshold: int, rng: random.Random) -> DataSpill | None:
    """``smtpd``'s DATA loop, as far as the spill goes: random-sized reads into a buffer that starts
    with the virtual CRLF, spill past ``threshold``, flush at ``FLUSH_AT``, cut at the terminator."""
    buf, spill, may_spill, pos = bytearray(b"\r\n"), None, True, 0
    while True:
        n = rng.randrange(1, 300)
        chunk, pos = stream[pos:pos + n], pos + n
        assert chunk, "the terminator was not found"
        scan = max(0, len(buf) - 4)
        buf += chunk
        if (idx := buf.find(b"\r\n.\r\n", scan)) >= 0:
            break
        if spill is None and may_spill and len(buf) > threshold:
            spill = await DataSpill.start(buf, None)
            may_spill = spill is not None
        elif spill is not None and len(buf) >= DataSpill.FLUSH_AT:
            await spill.flush(buf)
    if spill is not None:
        del buf[idx + 2:]
        await spill.flush(buf, final=True)
    return spill


def _ours_ok(sp) -> bool:  # noqa: ANN001 - a SigPlan
    """What dkimpy calls True: a pass, or our ``policy`` for an l= shorter than the body (dkimpy
    accepts those; we verify them and then refuse to count them)."""
    return sp.result == "pass" or (sp.result == "policy" and "covers only part" in sp.reason)


def test_spilled_dkim_is_plain_dkimpy_on_10000_boundary_variants(monkeypatch) -> None:
    monkeypatch.setattr(DataSpill, "FLUSH_AT", 512)  # many flushes even on small bodies
    rng = random.Random(18004)
    bases, keys = _bases(rng)
    messages = [_variant(rng, bases[n % len(bases)], n) for n in range(N_MESSAGES)]
    worker = Path(__file__).with_name("plain_dkimpy.py")
    ref_proc = subprocess.Popen([sys.executable, str(worker)], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    ref_input = pickle.dumps((keys, messages))

    odd_splits: list[bytes] = []  # spilled elsewhere than body_start, or not spilled without a reason

    async def ours() -> tuple[list[list], int]:
        out, in_memory = [], 0
        for raw in messages:
            stream = (b"." if raw.startswith(b".") else b"") + raw.replace(b"\r\n.", b"\r\n..") + b".\r\n"
            start = body_start(raw)  # past the header section, and before the end of the stream
            spill = await _spill(stream, start + rng.randrange(8, 100), rng)
            full = dkimcheck.plan(raw, check_arc=False)
            memory = dkimcheck.verify_sync(raw, full.sigs, keys, False, body_keys=full.body_keys)["sigs"]
            if spill is None:  # as in smtpd: no empty line before the read that carried the terminator
                in_memory += 1
                if len(raw) - start >= 400:
                    odd_splits.append(raw)
                out.append(memory)
                continue
            try:
                spill.file.seek(0)
                assert spill.head + spill.file.read() == raw  # lossless
                if len(spill.head) != start:
                    odd_splits.append(raw)
                p = dkimcheck.plan(spill.head, check_arc=False)
                hashes = dkimcheck.file_body_hashes(spill.head, spill.file, spill.size)
                spilled = dkimcheck.verify_sync(spill.head, p.sigs, keys, False, hashes)["sigs"]
            finally:
                spill.close()
            if [(s.result, s.reason) for s in spilled] != [(s.result, s.reason) for s in memory]:
                odd_splits.append(raw)
            out.append(spilled)
        return out, in_memory

    # the reference runs in its own process while we work (writes to the pipe in a thread: no deadlock)
    import threading
    feeder = threading.Thread(target=lambda: (ref_proc.stdin.write(ref_input), ref_proc.stdin.close()))
    feeder.start()
    got, in_memory = asyncio.run(ours())
    ref = pickle.loads(ref_proc.stdout.read())
    feeder.join()
    assert ref_proc.wait() == 0
    disagreements, passes, fails, attacks = [], 0, 0, 0
    for raw, ours_sigs, theirs in zip(messages, got, ref):
        for idx in range(max(len(ours_sigs), len(theirs))):
            mine = idx < len(ours_sigs) and _ours_ok(ours_sigs[idx])
            want = idx < len(theirs) and theirs[idx]
            if mine != want:
                disagreements.append((raw, idx, ours_sigs[idx] if idx < len(ours_sigs) else None, want))
            passes += want
            fails += not want
        if b"\n\r\n" + INSERTED in raw and raw.count(b"\r\n\r\n") >= 1:
            attacks += 1
            if any(_ours_ok(s) for s in ours_sigs):  # the report's case: never a pass
                disagreements.append((raw, "inserted text passed", ours_sigs, theirs))
    assert not disagreements, (len(disagreements), disagreements[:3])
    assert not odd_splits, (len(odd_splits), odd_splits[:3])  # one reading: spilled == in memory
    assert len(got) == N_MESSAGES and N_MESSAGES - in_memory >= 10_000  # took the spill path
    assert passes > 800 and fails > 5000 and attacks > 300, (passes, fails, attacks)
