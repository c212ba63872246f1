#!/usr/bin/env python3
"""bigmime benchmark: split a ~50 MB message (short text + one 38 MB base64 attachment).

Usage:  python bench/bench_bigmime.py [--decoded-mb 38] [--chunk-kib 1024] [--runs 3] [--email]

Prints the wall time of ``split_large_parts`` over 1 MiB chunks (best of --runs, without
tracemalloc), then one more run under tracemalloc for the peak traced memory, relative to
the message size. ``--email`` also measures ``email.message_from_bytes`` + decoding the
attachment for comparison (slow, several hundred MB).

Nothing here is a test: it prints figures and the command line that produced them.
"""
from __future__ import annotations

import argparse
import base64
import email
import email.policy
import os
import sys
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gateway.pipeline.parse.bigmime import split_large_parts  # noqa: E402

MB = 1_000_000
MiB = 1 << 20


def build(decoded_size: int) -> tuple[bytes, bytes]:
    """(raw message, attachment bytes): CRLF, 76-char base64 lines, as mail clients send."""
    data = os.urandom(decoded_size)
    enc = base64.b64encode(data)
    body = b"\r\n".join(enc[i:i + 76] for i in range(0, len(enc), 76))
    head = (b"From: Alice <alice@example.org>\r\nTo: support@example.test\r\nSubject: big attachment\r\n"
            b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"==b==\"\r\n\r\n"
            b"--==b==\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nPlease see the attached file.\r\n"
            b"--==b==\r\nContent-Type: application/pdf; name=\"big.pdf\"\r\nContent-Transfer-Encoding: base64\r\n"
            b"Content-Disposition: attachment; filename=\"big.pdf\"\r\n\r\n")
    return head + body + b"\r\n--==b==--\r\n", data


def split(raw: bytes, chunk: int) -> tuple[bytes, dict[bytes, bytearray]]:
    return split_large_parts(raw[i:i + chunk] for i in range(0, len(raw), chunk))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--decoded-mb", type=float, default=38.0, help="attachment size before base64 (MB)")
    ap.add_argument("--chunk-kib", type=int, default=1024)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--email", action="store_true", help="also measure email.message_from_bytes")
    args = ap.parse_args()
    raw, data = build(int(args.decoded_mb * MB))
    chunk = args.chunk_kib * 1024
    print(f"command: python bench/bench_bigmime.py --decoded-mb {args.decoded_mb:g} --chunk-kib {args.chunk_kib}"
          f" --runs {args.runs}{' --email' if args.email else ''}")
    print(f"message: {len(raw) / MB:.1f} MB, attachment {len(data) / MB:.1f} MB decoded, "
          f"chunks of {chunk // 1024} KiB, Python {sys.version.split()[0]}")

    times = []
    for _ in range(args.runs):
        start = time.perf_counter()
        skeleton, parts = split(raw, chunk)
        times.append(time.perf_counter() - start)
        assert len(parts) == 1 and next(iter(parts.values())) == data
        del parts
    print(f"split:   best {min(times) * 1000:.0f} ms, median {sorted(times)[len(times) // 2] * 1000:.0f} ms "
          f"({len(raw) / MB / min(times):.0f} MB/s); skeleton {len(skeleton)} bytes")

    tracemalloc.start()
    skeleton, parts = split(raw, chunk)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    del skeleton, parts
    print(f"memory:  peak traced {peak / MB:.1f} MB = {peak / len(raw):.2f}x the message "
          f"({peak / len(data):.2f}x the decoded attachment); the input itself is not counted")

    if args.email:
        tracemalloc.start()
        start = time.perf_counter()
        msg = email.message_from_bytes(raw, policy=email.policy.default)
        payloads = [p.get_payload(decode=True) for p in msg.walk() if not p.is_multipart()]
        elapsed = time.perf_counter() - start
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert payloads[-1] == data
        print(f"email:   {elapsed * 1000:.0f} ms, peak traced {peak / MB:.1f} MB = {peak / len(raw):.2f}x the message")


if __name__ == "__main__":
    main()
