"""Throughput of the streaming DKIM body hash (gateway.auth.bodyhash) vs dkimpy on one bytes object.

For a body of realistic text (words, some double spaces, trailing WSP, tab indents, empty
lines) and one of base64 lines, prints MB/s of:

* dkimpy: its own canonicalisation (``Simple.canonicalize_body`` / the module functions its
  ``Relaxed.canonicalize_body`` composes, not fastcanon) + hashlib, the body as one object;
* fastcanon: ``fastcanon.relaxed_body`` + hashlib (what the gateway runs today);
* BodyHasher over 1 MiB chunks (as read from a spool file);
* for scale, dkimpy's ``rfc822_parse`` of the same message, which verify runs before it
  canonicalises (its ``re.split(b"\\r?\\n")``: the bare-LF normalisation BodyHasher also does).

Usage: python bench/bench_bodyhash.py [--mb 50] [--reps 3]
"""
from __future__ import annotations

import argparse
import base64
import hashlib
import os
import random
import shlex
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import dkim  # noqa: E402
from dkim import canonicalization as canon  # noqa: E402

from gateway.auth import fastcanon  # noqa: E402
from gateway.auth.bodyhash import BodyHasher  # noqa: E402

CHUNK = 1 << 20


def text_body(size: int) -> bytes:
    rng = random.Random(1)
    words = [w.encode() for w in ("the ticket was updated by the support team please reply to this "
                                  "message with any further details regarding your request thanks "
                                  "invoice order number attached kind regards").split()]
    lines, total = [], 0
    while total < size:
        r = rng.random()
        if r < 0.08:
            line = b""
        else:
            line = b" ".join(rng.choice(words) for _ in range(rng.randrange(6, 14)))
            if r < 0.2:
                line = line.replace(b". ", b".  ").replace(b" the ", b"  the ")
            if r > 0.9:
                line += b" " * rng.randrange(1, 3)
            if 0.85 < r < 0.9:
                line = b"\t" + line
        lines.append(line)
        total += len(line) + 2
    return b"\r\n".join(lines)[:size] + b"\r\n"


def base64_body(size: int) -> bytes:
    raw = random.Random(2).randbytes(size * 3 // 4)
    b = base64.encodebytes(raw).replace(b"\n", b"\r\n")
    return b[:size - size % 78]


def dkimpy_relaxed(body: bytes) -> bytes:
    return canon.correct_empty_body(canon.strip_trailing_lines(
        canon.compress_whitespace(canon.strip_trailing_whitespace(body))))


def best(fn, reps: int) -> float:
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=int, default=50)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    print("$ python " + " ".join(shlex.quote(a) for a in sys.argv))
    size = args.mb * 1_000_000
    for name, body in (("text", text_body(size)), ("base64", base64_body(size))):
        mb = len(body) / 1e6
        chunks = [body[i:i + CHUNK] for i in range(0, len(body), CHUNK)]

        def streamed(c: bytes) -> bytes:
            h = BodyHasher(c, b"rsa-sha256")
            for chunk in chunks:
                h.update(chunk)
            return h.digest()

        runs = {
            "simple  dkimpy": lambda: hashlib.sha256(canon.Simple.canonicalize_body(body)).digest(),
            "simple  BodyHasher": lambda: streamed(b"simple"),
            "relaxed dkimpy": lambda: hashlib.sha256(dkimpy_relaxed(body)).digest(),
            "relaxed fastcanon": lambda: hashlib.sha256(fastcanon.relaxed_body(body)).digest(),
            "relaxed BodyHasher": lambda: streamed(b"relaxed"),
            "dkimpy rfc822_parse": lambda: dkim.rfc822_parse(b"Subject: x\r\n\r\n" + body),
        }
        assert runs["simple  dkimpy"]() == runs["simple  BodyHasher"]()
        assert runs["relaxed dkimpy"]() == runs["relaxed BodyHasher"]() == runs["relaxed fastcanon"]()
        lines = body.count(b"\r\n")
        print(f"{name}: {mb:.1f} MB, {lines} lines, 1 MiB chunks, best of {args.reps}")
        for label, fn in runs.items():
            secs = best(fn, args.reps)
            print(f"  {label:20s} {mb / secs:8.0f} MB/s  ({secs * 1000:.0f} ms)")


if __name__ == "__main__":
    main()
