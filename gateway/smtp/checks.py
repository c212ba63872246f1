"""SMTP-time checks run at end of DATA, before the spool commit.

Each check is a small class with a unique ``name`` and one async ``run``
returning a :class:`CheckResult`; the first reject/defer wins and is answered
by the server. Checks must be cheap and bounded: the client is waiting.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import IO, Any, Protocol

from gateway.auth.headers import header_section_end, read_header_section
from gateway.smtp.replies import LOOP_DETECTED, TOO_MANY_HOPS, Reply

CONTINUE = "continue"
REJECT = "reject"
DEFER = "defer"


@dataclass(slots=True)
class DataContext:
    """What an SMTP-time check sees: the envelope, the peer and the raw message."""

    peer_ip: str
    helo: str
    mail_from: str
    rcpt_tos: list[str]
    mailboxes: list[Any]          # MailboxConfig of each accepted recipient, in RCPT order
    raw: bytes
    header_end: int               # offset of the blank line ending the header section (len(raw) if none)
    prepended: list[bytes] = field(default_factory=list)  # header fields checks put on top, topmost first
    # A large message (over [smtp] spill_threshold): ``raw`` is only its header section, the body
    # is in this anonymous temporary file (``body_size`` bytes from offset 0). Read it in chunks.
    body: IO[bytes] | None = None
    body_size: int = 0

    @property
    def size(self) -> int:
        """Size of the message as received (header section and body)."""
        return len(self.raw) + self.body_size

    def message(self) -> bytes:
        """The message as it would be spooled now: prepended fields, then ``raw`` (and the body of a
        large message). Builds a copy: for checks that must hand the whole message on (rspamd,
        below its size limit), not for reading headers."""
        parts = [*self.prepended, self.raw]
        if self.body is not None:
            self.body.seek(0)
            parts.append(self.body.read(self.body_size))
        return b"".join(parts) if len(parts) > 1 else self.raw


@dataclass(slots=True)
class CheckResult:
    action: str = CONTINUE
    reply: Reply | None = None
    headers: list[tuple[str, str]] = field(default_factory=list)   # to prepend to the spooled message
    auth_header: str | None = None
    auth: dict[str, Any] | None = None
    flags: list[str] = field(default_factory=list)
    raw: bytes | None = None      # a check may return a rewritten message (e.g. forged headers removed)
    prepend: bytes = b""          # complete header field(s) to put on top, e.g. Authentication-Results.
                                  # Kept apart from raw so a large message is not copied once per check.


class DataCheck(Protocol):
    name: str

    async def run(self, ctx: DataContext) -> CheckResult: ...


def header_end(raw: bytes) -> int:
    """Offset of the line break that ends the last header line (0 when the message starts with its
    empty line, len(raw) when it has none): ``raw[:header_end(raw) + 2]`` covers the header section.

    Derived from :func:`gateway.auth.headers.header_section_end`, the one place that decides where
    the header section ends, so no SMTP-time reader can draw the line elsewhere."""
    end = header_section_end(raw)
    if end <= 0 or end >= len(raw):
        return end
    return end - 2 if raw.startswith(b"\r\n", end - 2) else end - 1


class HeaderSectionCheck:
    """The one reading of the header section (docs/security.md): ``550 5.6.0`` for the byte patterns that
    readers would split differently (bare CR, NUL, ``From :``, two From fields); a leading mbox ``From ``
    line is removed and a line that is not a field becomes a continuation line, so what is spooled is read
    alike by every reader. Runs first: every
    later check, the spool and the pipeline see only header sections that all readers agree on."""

    name = "header_section"

    async def run(self, ctx: DataContext) -> CheckResult:
        problem, raw = read_header_section(ctx.raw)
        if problem is not None:
            where = f" (line {problem.line})" if problem.line else ""
            return CheckResult(REJECT, Reply(550, "5.6.0", f"Message refused: {problem.what}{where}",
                                             "header_syntax"))
        return CheckResult(raw=raw) if raw is not ctx.raw else CheckResult()


class LoopCheck:
    """554 5.4.6 for too many Received headers or our own loop marker (RFC 5321 6.3)."""

    name = "loop"

    def __init__(self, hostname: str, marker: str, max_received: int) -> None:
        self.max_received = max_received
        self._received = re.compile(rb"(?im)^received[ \t]*:")
        self._marker = re.compile(rb"(?im)^" + re.escape(marker.encode()) + rb"[ \t]*:[ \t]*"
                                  + re.escape(hostname.encode()) + rb"[ \t]*\r?$")

    async def run(self, ctx: DataContext) -> CheckResult:
        head = ctx.raw[:ctx.header_end + 2]
        if self._marker.search(head):
            return CheckResult(REJECT, LOOP_DETECTED)
        if len(self._received.findall(head)) > self.max_received:
            return CheckResult(REJECT, TOO_MANY_HOPS)
        return CheckResult()
