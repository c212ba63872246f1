"""Byte-level helpers for the RFC 5322 header section.

Everything here works on the raw message bytes as received (CRLF or bare LF line endings), never
re-serialises a parsed message, and leaves every byte it does not mean to change untouched.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = [
    "HeaderField",
    "split_message",
    "header_section_end",
    "body_start",
    "header_fields",
    "header_values",
    "strip_forged_authres",
    "prepend_header",
    "fold_header",
    "authserv_id_of",
    "HeaderSectionProblem",
    "header_section_problem",
    "mbox_line_end",
    "normalise_header_section",
    "read_header_section",
]

_FIELD_START = re.compile(rb"^([!-9;-~]+)[ \t]*:", re.M)  # a field name at the start of a line


@dataclass(frozen=True, slots=True)
class HeaderField:
    """One header field: its name, its raw bytes (all physical lines, line endings included),
    and its byte span in the message."""

    name: bytes
    raw: bytes
    start: int
    end: int

    @property
    def value(self) -> bytes:
        """The field body with line endings removed (unfolded, RFC 5322 2.2.3), not stripped."""
        body = self.raw.split(b":", 1)[1] if b":" in self.raw else b""
        return body.replace(b"\r\n", b"").replace(b"\n", b"").replace(b"\r", b"")

    def text(self) -> str:
        """Unfolded value decoded as UTF-8 (RFC 6532) with undecodable bytes replaced, stripped."""
        return self.value.decode("utf-8", "replace").strip()


def header_section_end(raw: bytes) -> int:
    """Offset where the header section ends: the start of its empty line (not included).

    The one decision every reader makes the same way (SMTP checks, DKIM/ARC, the spill path that
    streams a large body to a file, the audit log): the header section ends at the first empty
    line, where a line ends with LF or CRLF -- exactly dkimpy's ``rfc822_parse`` (``\\r?\\n``)
    and the email parser for every line ending other than a bare CR. So ``LF LF``, ``LF CRLF``
    and ``CRLF CRLF`` all end it, and a message that starts with an empty line has no header
    fields. A bare CR is never a line ending here (the SMTP-time policy on bare CR in the header
    section is decided at DATA). Returns len(raw) when there is no empty line.
    """
    if raw.startswith(b"\r\n") or raw.startswith(b"\n"):
        return 0
    crlf = raw.find(b"\n\r\n")
    lf = raw.find(b"\n\n", 0, crlf + 1 if crlf >= 0 else len(raw))  # only an earlier one matters
    if lf >= 0:
        return lf + 1
    return crlf + 1 if crlf >= 0 else len(raw)


_header_end = header_section_end  # the name the module's own readers and older tests use


def body_start(raw: bytes) -> int:
    """Offset of the body: just after the empty line that :func:`header_section_end` found (len(raw)
    when there is none)."""
    end = header_section_end(raw)
    if end >= len(raw):
        return len(raw)
    return end + (2 if raw.startswith(b"\r\n", end) else 1)


# an mbox separator ("From sender[ date]") as the first line: "From ", a sender without ":" or white space
_MBOX_LINE = re.compile(rb"From [^ \t:\r\n]+(?:[ \t][^\n]*)?\r?\n")
_BARE_CR = re.compile(rb"\r(?!\n)")
_FIELD_OR_CONTINUATION = re.compile(rb"[!-9;-~]+:|[ \t]")
# The start of a line (after its LF) that is neither ``name:`` (no white space before the colon) nor a
# continuation (SP or HT). Searching for the LF is 3x faster than a multi-line ``^`` tried at every byte.
_NOT_A_FIELD_AFTER_LF = re.compile(rb"\n(?![!-9;-~]+:|[ \t]|\Z)")
_OBS_NAME = re.compile(rb"[!-9;-~]+[ \t]+:")


def mbox_line_end(raw: bytes) -> int:
    """Length of a leading mbox ``From sender date`` line (0 if none). Every reader ignores it (the email
    package as the "unix from", dkimpy skips it, :func:`header_fields` drops lines before the first field)."""
    m = _MBOX_LINE.match(raw)
    return m.end() if m else 0


@dataclass(frozen=True, slots=True)
class HeaderSectionProblem:
    """Why a header section is refused: ``what`` for the SMTP reply (no sender bytes in it)."""

    what: str
    line: int   # 1-based line number in the header section, 0 when not about one line


def _head(raw: bytes) -> tuple[int, bytes]:
    start = mbox_line_end(raw)
    return start, raw[start:start + _header_end(raw[start:])] if start else raw[:_header_end(raw)]


def _not_field_lines(head: bytes) -> list[int]:
    """Offsets of the lines of ``head`` that are neither a field nor a continuation line."""
    out = [0] if head and not _FIELD_OR_CONTINUATION.match(head) else []
    out += [m.start() + 1 for m in _NOT_A_FIELD_AFTER_LF.finditer(head)]
    return out


def read_header_section(raw: bytes) -> tuple[HeaderSectionProblem | None, bytes]:
    """The one reading of a header section: (why it is refused, or None; the message as every reader must
    then see it). See :func:`header_section_problem` and :func:`normalise_header_section`; this does both
    in one pass for the SMTP-time check."""
    start, head = _head(raw)
    if b"\0" in head:
        return HeaderSectionProblem("NUL byte in the header section", _line_of(head, head.find(b"\0"))), raw
    m = _BARE_CR.search(head)
    if m is not None:
        return HeaderSectionProblem("bare CR (a CR not followed by LF) in the header section",
                                    _line_of(head, m.start())), raw
    if head[:1] in (b" ", b"\t"):
        return HeaderSectionProblem("the header section starts with a continuation line", 1), raw
    cuts = _not_field_lines(head)
    for c in cuts:
        if _OBS_NAME.match(head, c):
            return HeaderSectionProblem("white space before the colon of a header field name (obsolete syntax)",
                                        _line_of(head, c)), raw
    if cuts and cuts[0] == 0:
        return HeaderSectionProblem("the header section does not start with a header field", 1), raw
    lowered = head.lower()
    froms = lowered.count(b"\nfrom:") + lowered.startswith(b"from:")
    if froms > 1:
        return HeaderSectionProblem(f"{froms} From header fields (RFC 5322 allows exactly one)", 0), raw
    if not cuts:
        return None, raw[start:] if start else raw
    out, pos = [], 0
    for c in cuts:
        out += [head[pos:c], b" "]
        pos = c
    out += [head[pos:], raw[start + len(head):]]
    return None, b"".join(out)


def header_section_problem(raw: bytes) -> HeaderSectionProblem | None:
    """The one reading of a header section, made strict where readers could disagree.

    The SMTP-time readers (this module, DKIM, DMARC), dkimpy and the pipeline's email parser split the
    header section differently on exactly these byte patterns, so each is refused instead of being read
    one way here and another way later (docs/security.md, "One reading"):

    * a NUL byte, or a CR not followed by LF (the email package ends a line there; we do not);
    * white space between a field name and its colon (``From :``, obsolete syntax: dkimpy skips the
      line, the email package reads "From " and we read From);
    * a first line that is a continuation line or not a field at all (nothing to continue);
    * more than one From field (RFC 5322 3.6: exactly one; readers differ in which one counts).

    Lines that are not fields further down are not refused but made continuation lines by
    :func:`normalise_header_section`, which every reader then reads alike. A leading mbox ``From `` line
    is allowed (see :func:`mbox_line_end`). A few linear scans of the header section; the body is never
    looked at."""
    return read_header_section(raw)[0]


def normalise_header_section(raw: bytes) -> bytes:
    """``raw`` as every reader must see it (after :func:`header_section_problem` found nothing):
    without a leading mbox ``From `` line, and with each line that is not a field (a broken fold, a
    misplaced mbox line) turned into a continuation line by a leading SP. That is how
    :func:`header_fields` already read such a line (part of the field above it); the email package would
    instead end the header section there, and dkimpy would refuse the message. Returns ``raw`` itself
    when nothing changes."""
    problem, out = read_header_section(raw)
    if problem is not None:
        raise ValueError(f"header section refused: {problem.what}")
    return out


def _line_of(head: bytes, offset: int) -> int:
    return head.count(b"\n", 0, offset) + 1


def split_message(raw: bytes) -> tuple[bytes, bytes]:
    """(header section, rest): the rest starts with the empty separator line, if there is one."""
    end = header_section_end(raw)
    return raw[:end], raw[end:]


_RECENT_FIELDS: dict[int, tuple[bytes, tuple[HeaderField, ...]]] = {}
_RECENT_MAX = 16
_RECENT_LARGE: list[tuple[bytes, tuple[HeaderField, ...]] | None] = [None]


def header_fields(raw: bytes) -> list[HeaderField]:
    """The header fields of a message, in order. Lines that are neither a field nor a
    continuation (garbage before the first field, say) are kept attached to the previous
    field, or ignored when there is none; nothing raises.

    The SMTP-time checks ask this of the same message three times (DKIM plan, header values,
    forged A-R removal), and concurrent sessions interleave on the loop: the answers for the
    last 16 ``bytes`` objects are kept (immutable, so the same object means the same content;
    the entry holds the object, so its id cannot be reused meanwhile); messages over 256 KiB are
    not kept, so at most 4 MiB stay alive here."""
    if type(raw) is not bytes:
        return _header_fields(raw)
    hit = _RECENT_FIELDS.get(id(raw))
    if hit is not None and hit[0] is raw:
        return list(hit[1])
    if len(raw) > 256 * 1024:  # one large message at most is kept alive (the one being checked):
        hit = _RECENT_LARGE[0]  # 100,000 header fields cost ~40 ms a reading, read 5 times
        if hit is not None and hit[0] is raw:
            return list(hit[1])
    fields = _header_fields(raw)
    if len(raw) <= 256 * 1024:  # never keeps a large message alive
        if len(_RECENT_FIELDS) >= _RECENT_MAX:
            del _RECENT_FIELDS[next(iter(_RECENT_FIELDS))]  # the oldest
        _RECENT_FIELDS[id(raw)] = (raw, tuple(fields))
    else:
        _RECENT_LARGE[0] = (raw, tuple(fields))
    return fields


def _header_fields(raw: bytes) -> list[HeaderField]:
    """A field starts at each line that begins with ``name:``; it runs to the next such line, so its
    continuation lines and any junk line after it belong to it; lines before the first field are
    dropped (one regex scan in C instead of a Python loop over the lines)."""
    end = _header_end(raw)
    starts = [(m.start(), m.group(1)) for m in _FIELD_START.finditer(raw, 0, end)]
    fields: list[HeaderField] = []
    for k, (start, name) in enumerate(starts):
        stop = starts[k + 1][0] if k + 1 < len(starts) else end
        fields.append(HeaderField(name, raw[start:stop], start, stop))
    return fields


def header_values(raw: bytes, name: str) -> list[HeaderField]:
    """All fields called ``name`` (case-insensitive), in order."""
    lname = name.lower().encode("ascii")
    return [f for f in header_fields(raw) if f.name.lower() == lname]


def _skip_cfws(s: str, i: int) -> int:
    n = len(s)
    while i < n:
        c = s[i]
        if c in " \t\r\n":
            i += 1
        elif c == "(":
            depth = 0
            while i < n:
                c = s[i]
                if c == "\\":
                    i += 2
                    continue
                if c == "(":
                    depth += 1
                elif c == ")":
                    depth -= 1
                    if depth == 0:
                        i += 1
                        break
                i += 1
        else:
            break
    return i


def authserv_id_of(value: str) -> str | None:
    """The authserv-id of an Authentication-Results value (RFC 8601 2.2), or None if unparsable.

    Handles leading CFWS and a quoted-string authserv-id."""
    i = _skip_cfws(value, 0)
    if i >= len(value):
        return None
    if value[i] == '"':
        out = []
        i += 1
        while i < len(value):
            c = value[i]
            if c == "\\" and i + 1 < len(value):
                out.append(value[i + 1])
                i += 2
                continue
            if c == '"':
                return "".join(out)
            out.append(c)
            i += 1
        return None
    m = re.match(r"[^\s;()\"]+", value[i:])
    return m.group(0) if m else None


# RFC 2045 token: printable US-ASCII except SPACE and tspecials ()<>@,;:\"/[]?=
_AUTHSERV_TOKEN = re.compile(r"[!#$%&'*+\-.0-9A-Z^_`a-z{|}~]+")


def strip_forged_authres(raw: bytes, hostname: str) -> bytes:
    """Remove every Authentication-Results field whose authserv-id is ``hostname``
    (case-insensitive, RFC 8601 5), touching nothing else: the header section is edited
    field by field and the body is never looked at."""
    want = hostname.strip().rstrip(".").lower()
    drop: list[HeaderField] = []
    for f in header_fields(raw):
        if f.name.lower() != b"authentication-results":
            continue
        aid = authserv_id_of(f.value.decode("utf-8", "replace"))
        if aid is None or not _AUTHSERV_TOKEN.fullmatch(aid) or aid.rstrip(".").lower() == want:
            # An unparsable A-R cannot be proved not to be ours: drop it too. So is an id that is
            # not an RFC 2045 token (RFC 8601 2.2): an RFC 2047 encoded word ("=?us-ascii?q?<our
            # id>?=", which readers that decode unstructured fields - Python's email default policy,
            # MUAs - show as our id), a NUL or other control, non-ASCII, an address.
            drop.append(f)
    if not drop:
        return raw
    out = []
    pos = 0
    for f in drop:
        out.append(raw[pos:f.start])
        pos = f.end
    out.append(raw[pos:])
    return b"".join(out)


def line_ending(raw: bytes) -> bytes:
    """The message's own line ending: CRLF unless its first line ends in a bare LF."""
    j = raw.find(b"\n")
    if j > 0 and raw[j - 1:j] == b"\r":
        return b"\r\n"
    if j >= 0:
        return b"\n"
    return b"\r\n"


_AR_SPECIAL = re.compile(r'[\\"();]')


def _split_top_level(value: str) -> list[str]:
    """Split an A-R value after each top-level ';' (outside comments and quoted strings).
    Only the characters that matter are visited (a regex finds them), not every character."""
    parts: list[str] = []
    depth = 0
    quoted = False
    start = 0
    escaped_until = -1
    for m in _AR_SPECIAL.finditer(value):
        i = m.start()
        if i < escaped_until:
            continue
        c = value[i]
        if c == "\\":
            escaped_until = i + 2
        elif quoted:
            if c == '"':
                quoted = False
        elif c == '"':
            quoted = True
        elif c == "(":
            depth += 1
        elif c == ")" and depth:
            depth -= 1
        elif c == ";" and depth == 0:
            parts.append(value[start:i + 1])
            start = i + 1
    parts.append(value[start:])
    return [p.strip() for p in parts if p.strip()]


def fold_header(name: str, value: str, eol: bytes = b"\r\n") -> bytes:
    """``Name: value`` folded before each top-level resinfo (``;``) so no line is needlessly
    long; the value must already be free of CR and LF."""
    if "\r" in value or "\n" in value:
        raise ValueError("header value contains a line break")
    parts = _split_top_level(value)
    text = eol.decode("ascii").join([f"{name}: {parts[0]}"] + ["\t" + p for p in parts[1:]]) if parts else f"{name}: "
    return text.encode("utf-8") + eol


def prepend_header(raw: bytes, name: str, value: str) -> bytes:
    """Return ``raw`` with ``Name: value`` added as the first header field, using the message's
    own line ending (CRLF unless the message uses bare LF)."""
    if not re.fullmatch(r"[!-9;-~]+", name):
        raise ValueError(f"invalid header field name {name!r}")
    return fold_header(name, value, line_ending(raw)) + raw
