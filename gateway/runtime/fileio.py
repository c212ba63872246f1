"""Reading a spilled message body back in bounded pieces."""
from __future__ import annotations

from typing import IO, Iterator

CHUNK = 1024 * 1024


def read_chunks(f: IO[bytes], size: int, chunk: int = CHUNK) -> Iterator[bytes]:
    """``size`` bytes of ``f`` from offset 0, ``chunk`` bytes at a time; an early end is an error
    (the file was truncated under us: never spool a shortened message)."""
    f.seek(0)
    remaining = size
    while remaining > 0:
        data = f.read(min(chunk, remaining))
        if not data:
            raise OSError(f"body file ended {remaining} bytes early")
        remaining -= len(data)
        yield data
