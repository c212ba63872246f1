"""DATA of a large message, streamed into an anonymous temporary file as it arrives.

Why: held in memory, a 50 MB message cost the SMTP process several copies of itself (the read
buffer, the bytes of the message, the copy for the spool row, SQLite's own copy). Here only the
header section stays in memory — every SMTP-time check reads headers only, and DKIM/ARC body
hashes are computed from the file in chunks — and the spool copies the file into chunk rows one
MiB at a time.

The split between the header section (in memory) and the body (in the file) is
``gateway.auth.headers.body_start``: the same decision as every other reader of the message.

Dot-unstuffing (RFC 5321 4.5.2) is done per flushed region. A region never ends inside a
``CRLF ".."`` sequence, so a stuffed dot is never split from the line break before it.
"""
from __future__ import annotations

import asyncio
import tempfile
from typing import IO

from .auth.headers import body_start


def _cut(buf: bytearray) -> int:
    """Where to split ``buf``: keep the last 4 bytes (a terminator may be starting there) and
    never split a ``CRLF ".."`` occurrence."""
    cut = len(buf) - 4
    if cut <= 0:
        return 0
    j = buf.find(b"\r\n..", max(0, cut - 3), cut + 3)
    return j if 0 <= j < cut else cut


class DataSpill:
    """The body of one message in a temporary file (unlinked at creation: nothing is left behind,
    even after a crash), plus its header section in memory."""

    FLUSH_AT = 1024 * 1024  # write to the file whenever this much is buffered

    def __init__(self, file: IO[bytes], head: bytes) -> None:
        self.file = file
        self.head = head
        self.size = 0       # body bytes in the file (unstuffed)
        self.consumed = 0   # stream bytes taken from the read buffer (stuffed; the virtual CRLF included)

    @classmethod
    async def start(cls, buf: bytearray, directory: str | None) -> "DataSpill | None":
        """Begin spilling ``buf`` (which starts with the reader's virtual CRLF). None when the
        header section does not end within it: the caller tries again as more arrives, and refuses
        the message (552 5.6.0) once ``buf`` holds more than ``[smtp] max_header_size`` without an end."""
        cut = _cut(buf)
        data = bytes(buf[:cut]).replace(b"\r\n..", b"\r\n.")[2:]
        # Where the header section ends is decided by the one function every reader uses (dkimpy's
        # and the email parser's rule: LF LF, LF CRLF and CRLF CRLF all end it). The file holds
        # exactly what DKIM hashes as the body; anything before it is header, never body.
        head_len = body_start(data)
        if head_len >= len(data):
            return None
        loop = asyncio.get_running_loop()
        file = await loop.run_in_executor(None, lambda: tempfile.TemporaryFile("w+b", dir=directory))
        spill = cls(file, data[:head_len])
        try:
            await spill._write(data[head_len:])
        except BaseException:
            spill.close()
            raise
        del buf[:cut]
        spill.consumed = cut
        return spill

    async def flush(self, buf: bytearray, final: bool = False) -> None:
        """Move what can safely be moved from ``buf`` to the file (all of it when ``final``: the
        caller has cut ``buf`` right after the message's last CRLF)."""
        cut = len(buf) if final else _cut(buf)
        if cut <= 0:
            return
        data = bytes(buf[:cut])
        del buf[:cut]
        self.consumed += cut
        if b"\r\n.." in data:
            data = data.replace(b"\r\n..", b"\r\n.")
        await self._write(data)

    async def _write(self, data: bytes) -> None:
        if data:
            await asyncio.get_running_loop().run_in_executor(None, self.file.write, data)
            self.size += len(data)

    def close(self) -> None:
        try:
            self.file.close()
        except OSError:
            pass
