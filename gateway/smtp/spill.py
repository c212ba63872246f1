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
import re
import tempfile
from typing import IO

from gateway.auth.headers import body_start


_STUFFED = re.compile(rb"\r\n\.\.")


def _cut(buf: bytearray) -> int:
    """Where to split ``buf``: keep the last 4 bytes (a terminator may be starting there) and
    never split a ``CRLF ".."`` occurrence."""
    return _cut_at(buf, len(buf) - 4)


def _cut_at(buf: bytearray, cut: int) -> int:
    """``cut``, or the start of a ``CRLF ".."`` that would straddle it."""
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

    PIECE = 256 * 1024       # bytes copied out of the read buffer at a time
    HEAD_SCAN = 256 * 1024   # the header section's end is looked for in this much of the stream first

    @classmethod
    async def start(cls, buf: bytearray, directory: str | None) -> "DataSpill | None":
        """Begin spilling ``buf`` (which starts with the reader's virtual CRLF). None when the
        header section does not end within it: the caller tries again as more arrives, and refuses
        the message (552 5.6.0) once ``buf`` holds more than ``[smtp] max_header_size`` without an end.

        Only the header section is copied whole; the body goes to the file piece by piece
        (:meth:`_write_region`). Copying ``buf`` whole, unstuffing and slicing it held the 1 MiB
        read buffer four more times at once (issue 18 item 9: +3.3 MB for a 1 MB message)."""
        cut = _cut(buf)
        head_len, body_at = cls._header_end(buf, cut)
        if head_len < 0:
            return None
        loop = asyncio.get_running_loop()
        file = await loop.run_in_executor(None, lambda: tempfile.TemporaryFile("w+b", dir=directory))
        with memoryview(buf) as view:
            head = bytes(view[:body_at]).replace(b"\r\n..", b"\r\n.")[2:]
        if len(head) != head_len:  # cannot happen (the mapping above); never spill a wrong split
            await loop.run_in_executor(None, file.close)
            return None
        spill = cls(file, head)
        try:
            await spill._write_region(buf, body_at, cut)
        except BaseException:
            spill.close()
            raise
        del buf[:cut]
        spill.consumed = cut
        return spill

    @classmethod
    def _header_end(cls, buf: bytearray, cut: int) -> tuple[int, int]:
        """(length of the unstuffed header section, where the body starts in ``buf``); (-1, -1) when
        the header section does not end before ``cut``.

        Where it ends is decided by the one function every reader uses (dkimpy's and the email
        parser's rule: LF LF, LF CRLF and CRLF CRLF all end it), on the unstuffed stream, as before.
        The file holds exactly what DKIM hashes as the body; anything before it is header, never
        body. A prefix is enough when the end lies in it (the first empty line of a prefix is the
        first of the whole); only a header section longer than HEAD_SCAN needs the whole buffer."""
        scan = _cut_at(buf, cls.HEAD_SCAN + 2) if cut > cls.HEAD_SCAN + 2 else cut
        while True:
            with memoryview(buf) as view:
                data = bytes(view[:scan]).replace(b"\r\n..", b"\r\n.")[2:]
            head_len = body_start(data)
            if head_len < len(data):
                break
            if scan >= cut:
                return -1, -1
            scan = cut
        # The body starts after head_len unstuffed bytes: map back to the stuffed buffer, one byte
        # further for every dot removed before it (a stuffed dot is the second byte of "\r\n..").
        at = head_len + 2
        for m in _STUFFED.finditer(buf, 0, scan):
            if m.start() + 3 >= at:  # the dot removed from this line lies past the header section
                break
            at += 1
        return head_len, at

    async def flush(self, buf: bytearray, final: bool = False) -> None:
        """Move what can safely be moved from ``buf`` to the file (all of it when ``final``: the
        caller has cut ``buf`` right after the message's last CRLF)."""
        cut = len(buf) if final else _cut(buf)
        if cut <= 0:
            return
        await self._write_region(buf, 0, cut)
        del buf[:cut]
        self.consumed += cut

    async def _write_region(self, buf: bytearray, start: int, end: int) -> None:
        """Unstuff ``buf[start:end]`` into the file, PIECE bytes at a time. A piece never ends inside a
        ``CRLF ".."``; it is unstuffed with the two bytes before it, so a stuffed dot at its very
        start (the body's first line, after the header section's empty line) is seen too."""
        while start < end:
            stop = end if end - start <= self.PIECE else _cut_at(buf, start + self.PIECE)
            if stop <= start:
                stop = end
            with memoryview(buf) as view:
                if start >= 2:
                    piece = bytes(view[start - 2:stop])
                    if b"\r\n.." in piece:
                        piece = piece.replace(b"\r\n..", b"\r\n.")
                    data: bytes | memoryview = memoryview(piece)[2:]
                else:
                    piece = bytes(view[start:stop])
                    data = piece.replace(b"\r\n..", b"\r\n.") if b"\r\n.." in piece else piece
            await self._write(data)
            del piece, data
            start = stop

    async def _write(self, data: bytes | memoryview) -> None:
        if data:
            await asyncio.get_running_loop().run_in_executor(None, self.file.write, data)
            self.size += len(data)

    def close(self) -> None:
        try:
            self.file.close()
        except OSError:
            pass
