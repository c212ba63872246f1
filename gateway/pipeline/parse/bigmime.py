"""Split a raw message into a small skeleton plus the decoded bodies of its large parts.

Why: ``email.message_from_bytes`` on a 50 MB message with one big base64 attachment
costs about nine times the message size (str copies, a line list, the decoded copy).
:class:`LargePartSplitter` reads the raw message as a stream of byte chunks (any
split points) and produces

* a *skeleton*: the original bytes, except that the body of every large "elidable"
  leaf part is replaced by a short marker (``MARKER_PREFIX`` + index + random token);
* ``{marker: decoded body}`` for those parts, decoded exactly as
  ``part.get_payload(decode=True)`` would decode them.

The worker parses the small skeleton with the normal MIME parser and, where a leaf's
payload is a marker, takes the decoded body from the dict.

Design notes (why it looks the way it does):

* It is deliberately conservative. The splitter must never disagree with the email
  package about where a part ends, so it only recognises structure that the email
  package would read the same way (strict ``Content-Type`` grammar, boundary lines as
  the feed parser matches them). Anything it does not understand is copied verbatim,
  and the email package does the work as before: slower, but never wrong.
* An elision is provisional until every enclosing multipart has been closed by its own
  close delimiter. A multipart that is never closed (or a structural ambiguity seen
  later) undoes the elisions inside it, so the skeleton holds the original bytes
  there. To undo without keeping the raw input, base64 bodies are only streamed when
  they have the canonical layout (fixed-length lines, one kind of line end, nothing
  but the alphabet): those can be rebuilt byte for byte from the decoded bytes. Any
  other base64 body gives up at the first deviation and stays in the skeleton.
  7bit/8bit/binary bodies are their own decoded form. Quoted-printable cannot be
  re-encoded exactly, so its raw body is kept until the elision is final and is
  decoded then.
* Outlook's unquoted ``boundary=----=_NextPart_...`` is read by policy.default as
  ``----`` (it stops at the '='), so the email package leaves that multipart unsplit
  and mime.py's ``_repair_boundary`` re-splits it with the whole value. The splitter
  splits on the whole value as well, and bails out if a line would match the
  truncated one (then the email package would split there itself).
* Memory: besides the skeleton and the decoded bodies only the unread input window
  (at most ``min_part`` + one chunk + a boundary's length) and small carries are held.
"""
from __future__ import annotations

import binascii
import io
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

from gateway.pipeline.parse.mimepolicy import POLICY

__all__ = ["MARKER_PREFIX", "LargePartSplitter", "is_marker", "split_large_parts"]

MARKER_PREFIX = b"ticketmx-elided-part-"
_MARKER_RE = re.compile(rb"ticketmx-elided-part-[0-9]+-[0-9a-f]{16}")
_MAX_MARKER = 64                 # longer payloads cannot be markers (cheap is_marker)

_MAX_HEADER = 64 * 1024          # a header section larger than this is not parsed
_MAX_DEPTH = 20                  # multipart nesting followed; deeper ones are opaque
_MAX_WS = 1024                   # blanks after a boundary before the line must end
# Bytes the boundary search may scan per byte of input (+ a constant). Each open multipart's
# boundary is searched for from each candidate line on; one that occurs only at the very end
# (10,000 nested multiparts) made that quadratic. Over the budget the splitter bails out (the rest
# is copied verbatim: the plain parse reads it). Ordinary mail scans each byte a few times.
_SCAN_FACTOR = 64
_SCAN_SLACK = 1 << 20
_MAX_TAIL = 64 * 1024            # blank lines around base64 data we accept
_QP_PIECE = 1 << 20              # quoted-printable is decoded in pieces of about this

_CR, _LF, _SP, _HT = 13, 10, 32, 9
_B64 = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_NON_B64 = re.compile(rb"[^A-Za-z0-9+/]")
_LAST_LINE = re.compile(rb"[A-Za-z0-9+/]*={0,2}")
# A header line as the feed parser accepts it: name of printable non-colon chars, colon.
_FIELD = re.compile(rb"[\x21-\x39\x3b-\x7e]+:")
_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_TYPE = re.compile(rb"(" + _TOKEN + rb")/(" + _TOKEN + rb")")
_PARAM = re.compile(
    rb"[ \t]*(" + _TOKEN + rb")[ \t]*=[ \t]*"
    rb"(?:\"([^\"\\\r\n]*)\"|([^;\"\\ \t\r\n]+))[ \t]*(?:;|\Z)"
)

# Results of the line/boundary matchers besides "no" (None) and a match.
_MORE = "more"                   # undecidable until more input arrives
_AMBIG = "ambiguous"             # the email package may read it differently: stop


# --------------------------------------------------------------------------- #
# Public helpers
# --------------------------------------------------------------------------- #
def is_marker(payload: bytes) -> bool:
    """Cheap pre-check: could this (stripped) payload be a marker this module emits?"""
    if len(payload) > _MAX_MARKER + 16:
        return False
    text = bytes(payload).strip()
    return text.startswith(MARKER_PREFIX) and _MARKER_RE.fullmatch(text) is not None


def split_large_parts(chunks: Iterable[bytes], min_part: int = 256 * 1024, *, text_parts: bool = False
                      ) -> tuple[bytes, dict[bytes, bytes]]:
    """Convenience: feed all chunks, return finish()."""
    splitter = LargePartSplitter(min_part, text_parts=text_parts)
    for chunk in chunks:
        splitter.feed(chunk)
    return splitter.finish()


# --------------------------------------------------------------------------- #
# Body decoders: decode incrementally and can give the exact raw body back
# --------------------------------------------------------------------------- #
class _Out(io.BytesIO):
    """A decoder's growing output. It ends as ``bytes`` without a copy: ``BytesIO.getvalue()`` hands
    over its own buffer when nothing else views it. A bytearray needed ``bytes(out)`` at the end, so a
    38 MB attachment was held twice for a moment (the worker's peak RSS for a 51 MB message: +36 MB)."""

    def __iadd__(self, data: bytes | bytearray | memoryview) -> "_Out":
        self.write(data)
        return self


class _Decoder(Protocol):
    out: _Out
    ok: bool

    def feed(self, data: memoryview) -> None: ...
    def finish(self) -> bool: ...
    def raw(self) -> bytes | bytearray: ...
    def commit(self) -> None: ...


class _Identity:
    """7bit, 8bit, binary or no encoding: the body is its own decoded form."""

    def __init__(self) -> None:
        self.out = _Out()
        self.ok = True

    def feed(self, data: memoryview) -> None:
        self.out += data

    def finish(self) -> bool:
        return True

    def raw(self) -> bytes:
        return self.out.getvalue()

    def commit(self) -> None:
        pass


class _QuotedPrintable:
    """Quoted-printable: raw kept until the elision is final, then decoded in line-aligned pieces.

    Why not decode while streaming: QP cannot be re-encoded byte-exactly, and an
    elision may still have to be undone (e.g. the enclosing boundary is never closed).
    """

    def __init__(self) -> None:
        self.out = _Out()
        self.ok = True
        self._raw: bytearray | None = bytearray()

    def feed(self, data: memoryview) -> None:
        assert self._raw is not None
        self._raw += data

    def finish(self) -> bool:
        return True

    def raw(self) -> bytearray:
        assert self._raw is not None
        return self._raw

    def commit(self) -> None:
        """Decode and drop the raw body; pieces end at line ends, so a2b_qp sees whole lines."""
        raw, out = self._raw, _Out()
        assert raw is not None
        while raw:
            cut = raw.find(b"\n", _QP_PIECE) + 1 or len(raw)
            with memoryview(raw) as view, view[:cut] as piece:
                out += binascii.a2b_qp(piece)
            del raw[:cut]
        self.out, self._raw = out, None


class _Base64:
    """Streaming decoder for base64 bodies in the canonical layout; gives up on anything else.

    Canonical: optional blank lines, then lines of one fixed width (a multiple of 4) ended
    by one kind of line end, only alphabet characters, a last line of at most that width
    with correct or missing padding, then nothing but line ends. Such a body is rebuilt exactly from its decoded
    bytes (:meth:`raw`), which is what undoing an elision needs. Whole lines are checked
    and decoded straight from the input window with C-level operations (strided slices,
    a2b_base64), never per line in Python; only a partial line is copied to the carry.
    """

    def __init__(self) -> None:
        self.out = _Out()
        self.ok = True
        self._carry = bytearray()   # raw bytes not decoded as full lines yet (kept verbatim)
        self._lead = bytearray()    # line ends before the first line (kept verbatim)
        self._in_lead = True
        self._width = 0             # line width; 0 while the first line is unfinished
        self._eol = b""
        self._coded = 0             # base64 chars decoded from full lines / the first line
        self._ended = False         # the last line was seen: only line ends may follow

    def feed(self, data: memoryview) -> None:
        if not self.ok or self._ended:
            # raw() must return every byte fed, so even a rejected piece is kept.
            self.ok = self.ok and not bytes(data).translate(None, b"\r\n")
            self._carry += data
            self.ok = self.ok and len(self._carry) <= _MAX_TAIL + self._width
            return
        if self._width:
            self._lines(data)
            return
        self._carry += data
        self._first_line()
        if self.ok and self._width and not self._ended:
            rest, self._carry = self._carry, bytearray()
            with memoryview(rest) as view:
                self._lines(view)

    def finish(self) -> bool:
        """Decode the last line; False (raw kept) when the result could differ from the email package's."""
        if not self.ok:
            return False
        limit = None
        if self._width:
            if not self._ended:
                self._to_tail()
            limit = self._width
        if not self.ok:
            return False
        last = bytes(self._carry.rstrip(b"\r\n"))
        self.ok = self._decode_last(last, limit)
        return self.ok

    def raw(self) -> bytearray:
        """The exact original bytes fed so far (decoded lines re-encoded + the raw carry)."""
        res = bytearray(self._lead)
        nbytes = self._coded // 4 * 3
        with self.out.getbuffer() as view:
            if self._width:
                width, eol = self._width, self._eol
                step = width // 4 * 3 * 4096
                for start in range(0, nbytes, step):
                    with view[start:min(start + step, nbytes)] as block:
                        enc = binascii.b2a_base64(block, newline=False)
                    res += eol.join([enc[i:i + width] for i in range(0, len(enc), width)])
                    res += eol
            else:
                with view[:nbytes] as block:
                    res += binascii.b2a_base64(block, newline=False)
        res += self._carry
        return res

    def commit(self) -> None:
        self._carry = bytearray()

    # -- internals ---------------------------------------------------------- #
    def _first_line(self) -> None:
        """Width unknown yet: decode the first line as it grows, fix the width at its end."""
        carry = self._carry
        if self._in_lead:
            lead = len(carry) - len(carry.lstrip(b"\r\n"))
            self._lead += carry[:lead]
            del carry[:lead]
            self._in_lead = not carry
            self.ok = len(self._lead) <= _MAX_TAIL
            if self._in_lead or not self.ok:
                return
        nl = carry.find(b"\n")
        if nl < 0:
            bad = _NON_B64.search(carry)
            good = bad.start() if bad else len(carry)
            good -= good % 4
            if good:
                self.out += binascii.a2b_base64(carry[:good])
                self._coded += good
                del carry[:good]
            if len(carry) > 8:          # something other than padding / a CR in the line
                self.ok = False
            return
        eol = b"\r\n" if nl and carry[nl - 1] == _CR else b"\n"
        line = carry[:nl + 1 - len(eol)]
        rest = carry[nl + 1:]
        if not rest.translate(None, b"\r\n"):   # maybe the last line: wait and see
            self.ok = len(rest) <= _MAX_TAIL
            return
        width = self._coded + len(line)
        if not width or width % 4 or _NON_B64.search(line):
            self.ok = False
            return
        self.out += binascii.a2b_base64(line)
        self._coded, self._width, self._eol = width, width, eol
        del carry[:nl + 1]

    def _lines(self, data: memoryview) -> None:
        """Decode the complete lines of carry + data; keep the partial last one in the carry."""
        carry, size = self._carry, self._width + len(self._eol)
        pos = 0
        if carry:
            pos = min(len(data), size - len(carry))
            carry += data[:pos]
            if len(carry) < size:
                return
            with memoryview(carry) as view:
                decoded = self._decode_lines(view, 1)
            if decoded is None:
                carry += data[pos:]
                self._to_tail()
                return
            self.out += decoded
            self._coded += self._width
            carry.clear()
        count = (len(data) - pos) // size
        if count:
            with data[pos:pos + count * size] as region:
                decoded = self._decode_lines(region, count)
            if decoded is None:
                carry += data[pos:]
                self._to_tail()
                return
            self.out += decoded
            self._coded += count * self._width
            pos += count * size
        carry += data[pos:]

    def _decode_lines(self, region: memoryview, count: int) -> bytes | None:
        """Decode exactly ``count`` full lines, or None if region is not that.

        The line ends must sit at the end of every line (strided slices), and a2b_base64
        must yield width*3/4 bytes per line: it skips any other byte and stops at padding,
        so a stray byte, a line end inside a line or early padding makes the output short.
        """
        width, eol = self._width, self._eol
        size = width + len(eol)
        if bytes(region[size - 1::size]) != b"\n" * count:
            return None
        if len(eol) == 2 and bytes(region[width::size]) != b"\r" * count:
            return None
        try:
            decoded = binascii.a2b_base64(region)
        except binascii.Error:
            return None
        return decoded if len(decoded) == count * width // 4 * 3 else None

    def _to_tail(self) -> None:
        """Lines stopped being full: accept only full lines, one last line, then line ends."""
        carry = self._carry
        size = self._width + len(self._eol)
        end = len(carry.rstrip(b"\r\n"))
        start = carry.rfind(b"\n", 0, end) + 1
        self._ended = True
        if start % size:
            self.ok = False
            return
        if start:
            with memoryview(carry) as view, view[:start] as region:
                decoded = self._decode_lines(region, start // size)
            if decoded is None:
                self.ok = False
                return
            self.out += decoded
            self._coded += start // size * self._width
            del carry[:start]
        last = carry[:end - start]
        self.ok = (b"\r" not in last and len(last) <= self._width
                   and _LAST_LINE.fullmatch(last) is not None and len(carry) - len(last) <= _MAX_TAIL)

    def _decode_last(self, last: bytes, limit: int | None) -> bool:
        """Decode the last line as email's decode_b would (missing padding added); refuse the rest."""
        if _LAST_LINE.fullmatch(last) is None or (limit is not None and len(last) > limit):
            return False
        pads = last.count(b"=")
        data = len(last) - pads
        rest = data % 4                 # full lines and the first line are multiples of 4
        if rest == 1 or (pads and rest + pads != 4):
            return False
        full = data - rest
        if full:
            self.out += binascii.a2b_base64(last[:full])
        if rest:
            self.out += binascii.a2b_base64(last[full:data] + b"=" * (4 - rest))
        return True


_DECODERS: dict[bytes, type] = {
    b"": _Identity, b"7bit": _Identity, b"8bit": _Identity, b"binary": _Identity,
    b"base64": _Base64, b"quoted-printable": _QuotedPrintable,
}


# --------------------------------------------------------------------------- #
# Header analysis
# --------------------------------------------------------------------------- #
@dataclass
class _Kind:
    """What to do with a part's body."""

    boundary: bytes | None = None   # set: a multipart to recurse into
    shadow: bytes | None = None     # the truncated boundary policy.default reads instead
    digest: bool = False            # multipart/digest: children default to message/rfc822
    decoder: type | None = None     # set: an elidable leaf


_OPAQUE = _Kind()


def _values(fields: list[tuple[bytes, bytes]], name: bytes) -> list[bytes]:
    return [value for key, value in fields if key == name]


def _classify(fields: list[tuple[bytes, bytes]], parent_digest: bool, text_parts: bool = False) -> _Kind:
    """Decide from a part's headers; anything unusual is opaque (copied, never elided). Text
    parts that are not attachments are elided only with ``text_parts`` (mime.py decodes the
    charset of what it gets back exactly as of a payload it parsed itself)."""
    ctypes = _values(fields, b"content-type")
    ctes = _values(fields, b"content-transfer-encoding")
    dispositions = _values(fields, b"content-disposition")
    if len(ctypes) > 1 or len(ctes) > 1 or len(dispositions) > 1:
        return _OPAQUE
    if ctypes:
        head, _, params = ctypes[0].partition(b";")
        match = _TYPE.fullmatch(head.strip(b" \t"))
        if match is None:
            return _OPAQUE
        maintype, subtype = match.group(1).lower(), match.group(2).lower()
    else:
        maintype, subtype, params = (b"message", b"rfc822", b"") if parent_digest else (b"text", b"plain", b"")
    if maintype == b"multipart":
        return _multipart(ctypes[0], params, subtype == b"digest")
    if maintype == b"message":
        return _OPAQUE
    cte = ctes[0].lower() if ctes else b""
    if cte not in _DECODERS:
        return _OPAQUE
    if maintype == b"text" and not text_parts:
        disposition = dispositions[0].partition(b";")[0].strip(b" \t").lower() if dispositions else b""
        if disposition != b"attachment":
            return _OPAQUE
    return _Kind(decoder=_DECODERS[cte])


def _multipart(value: bytes, params: bytes, digest: bool) -> _Kind:
    """Recurse only when our boundary is the one the worker will split on.

    policy.default's header parser stops an unquoted value at the first tspecial, so
    Outlook's ``boundary=----=_NextPart_...`` becomes ``----``: the feed parser then
    finds no parts, and the worker re-splits the body with the full boundary (see
    mime.py ``_repair_boundary``). We split on the full value too, but any line that is
    a delimiter of the truncated one (``shadow``) would make the email package split
    there: that is ambiguous and stops the splitter (see ``_match_at``).
    """
    if len(value) > 4096 or value.translate(None, bytes(range(0x20, 0x7f)) + b"\t"):
        return _OPAQUE
    parsed = _boundary(params)
    seen = _email_boundary(value)
    if parsed is None or not seen:
        return _OPAQUE
    boundary, quoted = parsed
    if seen == boundary:
        return _Kind(boundary=boundary, digest=digest)
    if not quoted and boundary.startswith(seen):
        return _Kind(boundary=boundary, shadow=b"--" + seen, digest=digest)
    return _OPAQUE


def _email_boundary(value: bytes) -> bytes | None:
    """The boundary the feed parser uses for this Content-Type value: ask policy.default itself.

    With the worker's own policy (mime.py: policy.default with a header factory that does not
    build a new header class per field) a header-only parse costs ~60 µs, once per multipart
    header; with plain policy.default it was ~600 µs. Re-implementing the header registry's
    reading (tspecials, comments, RFC 2231) would be guesswork.
    """
    try:
        # What the feed parser does with the one header line (its message class, the policy's
        # header_source_parse, set_raw), without the parser around it: 115 -> 20 µs.
        msg = POLICY.message_factory(policy=POLICY)
        msg.set_raw(*POLICY.header_source_parse(["Content-Type: " + value.decode("ascii") + "\n"]))
        found = msg.get_boundary()
        return found.encode("ascii") if found is not None else None
    except Exception:                   # noqa: BLE001 - any doubt means "do not recurse"
        return None


def _boundary(params: bytes) -> tuple[bytes, bool] | None:
    """(boundary, was quoted) when the parameter list is plain enough to read unambiguously.

    Unquoted values run to ';' or whitespace, so Outlook's ``----=_NextPart_...`` is read
    whole. Escapes, encoded words, RFC 2231 forms and duplicates give None (opaque).
    """
    found: list[tuple[bytes, bool]] = []
    pos = 0
    while params[pos:].strip(b" \t"):
        match = _PARAM.match(params, pos)
        if match is None:
            return None
        name = match.group(1).lower()
        if name.startswith(b"boundary*"):
            return None
        if name == b"boundary":
            quoted = match.group(2) is not None
            found.append((match.group(2) if quoted else match.group(3), quoted))
        pos = match.end()
    if len(found) != 1:
        return None
    value, quoted = found[0]
    value = value.rstrip(b" \t")
    if (not value or len(value) > 200 or b"=?" in value or value.translate(None, bytes(range(0x20, 0x7f)))
            or (value.startswith(b"<") and value.endswith(b">"))):
        return None
    return value, quoted


# --------------------------------------------------------------------------- #
# The splitter
# --------------------------------------------------------------------------- #
@dataclass(eq=False)
class _Elision:
    marker: bytes
    offset: int                     # where the marker starts in the skeleton
    decoder: _Decoder


@dataclass(eq=False)
class _Frame:
    """One open multipart."""

    bound: bytes                    # b"--" + boundary
    digest: bool
    shadow: bytes | None = None     # b"--" + the truncated boundary policy.default sees
    started: bool = False           # first delimiter seen (no longer in the preamble)
    pending: list[_Elision] = field(default_factory=list)


@dataclass
class _Delim:
    level: int                      # index into the frame stack
    close: bool
    eol_start: int                  # start of the line break that belongs to the delimiter
    end: int                        # after the delimiter line


_BAIL = "bail"

# Modes
_TOP_HEADERS, _PART_HEADERS, _OPAQUE_BODY, _BUFFER, _STREAM, _PASS = range(6)


class LargePartSplitter:
    """Push parser: feed() chunks of a raw RFC 5322 message, then finish()."""

    def __init__(self, min_part: int = 256 * 1024, *, text_parts: bool = False) -> None:
        self._min = max(1, int(min_part))
        self._text_parts = text_parts
        self._token = secrets.token_hex(8).encode("ascii")
        self._buf = bytearray()
        self._out: io.BytesIO = io.BytesIO()
        self._prev = _LF                # last byte consumed (line-start test at buf[0])
        self._resume = 0                # no boundary line starts in buf before this
        self._frames: list[_Frame] = []
        self._maxbound = 0
        self._mode = _TOP_HEADERS
        self._hpos = 0                  # header reader: next line start in buf
        self._hfields: list[list[bytes]] = []
        self._hlines = 0
        self._kind: _Kind = _OPAQUE     # of the current leaf (BUFFER/STREAM)
        self._current: _Elision | None = None   # the elision being streamed
        self._root: list[_Elision] = []         # elided top-level body (no multipart)
        self._committed: list[_Elision] = []
        self._undone: list[_Elision] = []       # finished elisions to restore at finish()
        self._count = 0
        self._finished = False
        self._fed = 0                   # input bytes so far
        self._scanned = 0               # bytes the boundary search has scanned so far

    # -- public API --------------------------------------------------------- #
    def feed(self, data: bytes) -> None:
        """Consume the next chunk; split points are arbitrary."""
        if self._finished:
            raise RuntimeError("feed() after finish()")
        if data:
            self._buf += data
            self._fed += len(data)
            self._run(final=False)

    def finish(self) -> tuple[bytes, dict[bytes, bytes]]:
        """End of input: returns (skeleton, {marker: decoded body})."""
        if self._finished:
            raise RuntimeError("finish() called twice")
        self._run(final=True)
        self._emit(len(self._buf))
        while self._frames:
            self._undo(self._frames.pop())
        self._commit(self._root)
        self._finished = True
        parts = {el.marker: el.decoder.out.getvalue() for el in self._committed}  # no copies (_Out)
        return self._assemble(), parts

    # -- driver ------------------------------------------------------------- #
    def _run(self, final: bool) -> None:
        steps = (self._top_headers, self._part_headers, self._opaque, self._buffer, self._stream, self._pass)
        while steps[self._mode](final):
            pass

    def _consume(self, n: int, emit: bool) -> None:
        """Drop the first n buffered bytes, writing them to the skeleton when emit."""
        if n <= 0:
            return
        buf = self._buf
        self._prev = buf[n - 1]
        if emit:
            with memoryview(buf) as view, view[:n] as piece:
                self._out.write(piece)
        del buf[:n]
        self._resume = max(0, self._resume - n)
        self._hpos = max(0, self._hpos - n)

    def _emit(self, n: int) -> None:
        self._consume(n, emit=True)

    # -- boundary lines ------------------------------------------------------ #
    def _push(self, kind: _Kind) -> None:
        assert kind.boundary is not None
        self._frames.append(_Frame(b"--" + kind.boundary, kind.digest, kind.shadow))
        self._maxbound = max(len(f.bound) for f in self._frames)

    def _pop(self) -> _Frame:
        frame = self._frames.pop()
        self._maxbound = max((len(f.bound) for f in self._frames), default=0)
        return frame

    def _ws_eol(self, pos: int, final: bool) -> int | str | None:
        """After a boundary: blanks, then the line end. Returns the line's end position."""
        buf, n = self._buf, len(self._buf)
        stop = min(n, pos + _MAX_WS + 1)
        while pos < stop and buf[pos] in (_SP, _HT):
            pos += 1
        if pos == stop and stop < n:
            return _AMBIG
        if pos == n:
            return n if final else _MORE
        if buf[pos] == _LF:
            return pos + 1
        if buf[pos] == _CR:
            if pos + 1 == n:
                return _AMBIG if final else _MORE
            return pos + 2 if buf[pos + 1] == _LF else _AMBIG   # bare CR line end
        return None

    def _line_rest(self, pos: int, final: bool) -> tuple[bool, int] | str | None:
        """What follows ``--boundary``: optional ``--``, blanks, line end -> (close, end)."""
        tail = bytes(self._buf[pos:pos + 2])
        if len(tail) < 2 and not final and b"--".startswith(tail):
            return _MORE
        close = tail == b"--"
        end = self._ws_eol(pos + 2 if close else pos, final)
        if end is None or isinstance(end, str):
            return end
        return close, end

    def _match_at(self, pos: int, final: bool) -> tuple[int, bool, int] | str | None:
        """Is the line starting at pos a delimiter of exactly one open multipart?"""
        buf, n = self._buf, len(self._buf)
        hits: list[tuple[int, bool, int]] = []
        more = False
        for level, frame in enumerate(self._frames):
            if frame.shadow is not None and buf.startswith(frame.shadow, pos):
                rest = self._line_rest(pos + len(frame.shadow), final)
                if rest is _AMBIG or isinstance(rest, tuple):
                    return _AMBIG       # the email package would split here
                more = more or rest is _MORE
            bound = frame.bound
            if not buf.startswith(bound, pos):
                if not final and n - pos < len(bound) and bound.startswith(bytes(buf[pos:])):
                    more = True
                continue
            rest = self._line_rest(pos + len(bound), final)
            if rest is _AMBIG:
                return _AMBIG
            if rest is _MORE:
                more = True
            elif isinstance(rest, tuple):
                hits.append((level, rest[0], rest[1]))
        if more:
            return _MORE
        if len(hits) > 1:               # e.g. "--a--" with boundaries "a" and "a--"
            return _AMBIG
        return hits[0] if hits else None

    def _next_candidate(self, pos: int) -> int:
        best = -1
        for frame in self._frames:
            key = frame.shadow or frame.bound   # the shadow is a prefix of the boundary
            end = best + len(key) if best >= 0 else len(self._buf)
            found = self._buf.find(key, pos, end)
            self._scanned += (found + len(key) if found >= 0 else end) - pos
            if found >= 0 and (best < 0 or found < best):
                best = found
        return best

    def _scan(self, final: bool) -> tuple[int, _Delim | str | None]:
        """Find the next delimiter line. Returns (limit, event).

        Bytes before ``limit`` are certainly not part of a delimiter (nor of the line
        break in front of one). event: a _Delim, _BAIL, or None (need more input).
        """
        buf, n = self._buf, len(self._buf)
        if not self._frames:
            return n, None
        pos = self._resume
        while True:
            p = self._next_candidate(pos)
            if self._scanned > _SCAN_FACTOR * self._fed + _SCAN_SLACK:
                return min(pos, p) if p >= 0 else pos, _BAIL
            if p < 0:
                self._resume = max(pos, n - self._maxbound + 1)
                return (n if final else max(0, n - self._maxbound - 1)), None
            prev = buf[p - 1] if p else self._prev
            if prev in (_LF, _CR):
                found = self._match_at(p, final)
                if found is _MORE:
                    self._resume = p
                    return max(0, p - 2), None
                if found is _AMBIG or (found is not None and prev == _CR):
                    return p, _BAIL
                if isinstance(found, tuple):
                    level, close, end = found
                    eol_start = p
                    if p:
                        eol_start = p - 2 if p >= 2 and buf[p - 2] == _CR else p - 1
                    return eol_start, _Delim(level, close, eol_start, end)
            pos = p + 1

    # -- header sections ----------------------------------------------------- #
    def _begin_headers(self, mode: int) -> None:
        self._mode = mode
        self._hpos, self._hlines, self._hfields = 0, 0, []
        self._resume = 0

    def _read_headers(self, final: bool, top: bool) -> str:
        """Advance through complete header lines: 'more', 'bad', 'delim' or 'done'.

        Follows the feed parser: a line that is not a field, a continuation or the
        blank line ends its header section; we treat that (and bare CRs, size) as 'bad'.
        """
        buf = self._buf
        while True:
            if self._hpos > _MAX_HEADER:
                return "bad"
            nl = buf.find(b"\n", self._hpos)
            if nl < 0:
                return "bad" if final or len(buf) - self._hpos > _MAX_HEADER else "more"
            line = bytes(buf[self._hpos:nl + 1])
            text = line[:-2] if line.endswith(b"\r\n") else line[:-1]
            if b"\r" in text:
                return "bad"
            if not text:
                self._hpos = nl + 1
                return "done"
            if not top and text.startswith(b"--"):
                found = self._match_at(self._hpos, final)
                if found is _AMBIG or found is _MORE:
                    return "bad"
                if found is not None:
                    return "delim"
            if text[0] in (_SP, _HT):
                if not self._hfields:
                    return "bad"
                self._hfields[-1][1] += text
            elif top and self._hlines == 0 and text.startswith(b"From "):
                pass                                    # mbox envelope line
            else:
                match = _FIELD.match(text)
                if match is None:
                    return "bad"
                self._hfields.append([text[:match.end() - 1].lower(), text[match.end():].lstrip(b" \t")])
            self._hlines += 1
            self._hpos = nl + 1

    def _fields(self) -> list[tuple[bytes, bytes]]:
        return [(bytes(name), bytes(value)) for name, value in self._hfields]

    def _top_headers(self, final: bool) -> bool:
        state = self._read_headers(final, top=True)
        if state == "more":
            return False
        if state != "done":
            self._bail()
            return True
        self._emit(self._hpos)
        self._start_body(_classify(self._fields(), parent_digest=False, text_parts=self._text_parts))
        return True

    def _part_headers(self, final: bool) -> bool:
        state = self._read_headers(final, top=False)
        if state == "more":
            return False
        if state == "delim" and self._hlines == 0:
            self._bail()                # two delimiters in a row: the feed parser merges them
            return True
        if state != "done":
            self._mode, self._resume = _OPAQUE_BODY, 0
            return True
        self._emit(self._hpos)
        self._start_body(_classify(self._fields(), parent_digest=self._frames[-1].digest,
                                   text_parts=self._text_parts))
        return True

    def _start_body(self, kind: _Kind) -> None:
        self._resume = 0
        if kind.boundary is not None and len(self._frames) < _MAX_DEPTH:
            self._push(kind)
            self._mode = _OPAQUE_BODY    # the preamble
        elif kind.decoder is not None:
            self._kind, self._mode = kind, _BUFFER
        else:
            self._mode = _OPAQUE_BODY if self._frames else _PASS

    # -- bodies -------------------------------------------------------------- #
    def _pass(self, final: bool) -> bool:
        self._emit(len(self._buf))
        return False

    def _opaque(self, final: bool) -> bool:
        limit, event = self._scan(final)
        if event is _BAIL:
            self._bail()
            return True
        if isinstance(event, _Delim):
            self._emit(event.end)
            self._on_delim(event)
            return True
        if not self._frames:
            self._mode = _PASS
            return True
        if limit > 0:
            self._emit(limit)
            return True
        return False

    def _buffer(self, final: bool) -> bool:
        """An elidable leaf whose size is not known yet: hold up to min_part bytes."""
        limit, event = self._scan(final)
        if event is _BAIL:
            self._bail()
            return True
        if isinstance(event, _Delim):
            self._elide_or_keep(event.eol_start)
            self._emit(event.end - event.eol_start)
            self._on_delim(event)
            return True
        if final:
            if not self._frames:        # a top-level body ends at the end of input
                self._elide_or_keep(len(self._buf))
            self._mode = _PASS if not self._frames else _OPAQUE_BODY
            self._emit(len(self._buf))
            return False
        if limit < self._min:
            return False
        decoder = self._new_decoder()
        self._current = self._add_marker(decoder)
        self._mode = _STREAM
        self._stream_to(limit)
        return True

    def _stream(self, final: bool) -> bool:
        """Large elided leaf: decode what is certainly body, keep only a small carry."""
        limit, event = self._scan(final)
        if event is _BAIL:
            self._bail()
            return True
        if isinstance(event, _Delim):
            self._stream_to(event.eol_start)
            self._end_stream()
            self._emit(event.end - event.eol_start)
            self._on_delim(event)
            return True
        if final:
            if self._frames:            # ran into the end inside an open multipart
                self._undo_stream()
                return True
            self._stream_to(len(self._buf))
            self._end_stream()
            self._mode = _PASS
            return False
        if limit <= 0:
            return False
        self._stream_to(limit)
        return True

    def _new_decoder(self) -> _Decoder:
        assert self._kind.decoder is not None
        decoder: _Decoder = self._kind.decoder()
        return decoder

    def _feed(self, decoder: _Decoder, end: int) -> None:
        with memoryview(self._buf) as view, view[:end] as piece:
            decoder.feed(piece)
        self._consume(end, emit=False)

    def _stream_to(self, end: int) -> None:
        assert self._current is not None
        self._feed(self._current.decoder, end)
        if not self._current.decoder.ok:
            self._undo_stream()

    def _end_stream(self) -> None:
        """The streamed body ended: keep the elision (provisionally) or restore the raw body."""
        if self._current is None:       # gave up earlier, the body is already verbatim
            return
        if self._current.decoder.finish():
            (self._frames[-1].pending if self._frames else self._root).append(self._current)
            self._current = None
        else:
            self._undo_stream()

    def _undo_stream(self) -> None:
        """Give up the elision being streamed: its raw bytes replace the marker (it is last)."""
        current, self._current = self._current, None
        if current is not None:
            self._out.seek(current.offset)
            self._out.truncate()
            self._out.write(current.decoder.raw())
        self._mode = _OPAQUE_BODY if self._frames else _PASS

    def _elide_or_keep(self, end: int) -> None:
        """A whole leaf body is buffered (it ends at ``end``): elide it when large and decodable."""
        if end >= self._min:
            decoder = self._new_decoder()
            with memoryview(self._buf) as view, view[:end] as piece:
                decoder.feed(piece)
            if decoder.ok and decoder.finish():
                elision = self._add_marker(decoder)
                (self._frames[-1].pending if self._frames else self._root).append(elision)
                self._consume(end, emit=False)
                return
        self._emit(end)

    def _add_marker(self, decoder: _Decoder) -> _Elision:
        marker = MARKER_PREFIX + str(self._count).encode("ascii") + b"-" + self._token
        self._count += 1
        elision = _Elision(marker, self._out.tell(), decoder)
        self._out.write(marker)
        return elision

    # -- structure ------------------------------------------------------------ #
    def _on_delim(self, event: _Delim) -> None:
        """A delimiter line was copied: close inner multiparts, start a part or close this one."""
        while len(self._frames) - 1 > event.level:
            self._undo(self._pop())     # ended by an outer boundary: never closed
        frame = self._frames[-1]
        if not frame.started:
            if event.close:
                self._bail()            # close before the first delimiter: no parts at all
                return
            frame.started = True
            self._begin_headers(_PART_HEADERS)
        elif not event.close:
            self._begin_headers(_PART_HEADERS)
        else:
            self._pop()
            self._resume = 0
            if self._frames:            # elisions are final only when the outermost closes
                self._frames[-1].pending.extend(frame.pending)
                self._mode = _OPAQUE_BODY
            else:
                self._commit(frame.pending)
                self._mode = _PASS

    def _bail(self) -> None:
        """Structure we might read differently from the email package: copy the rest verbatim."""
        if self._mode == _STREAM:
            self._undo_stream()
        while self._frames:
            self._undo(self._pop())
        self._mode = _PASS

    def _undo(self, frame: _Frame) -> None:
        self._undone.extend(frame.pending)
        frame.pending = []

    def _commit(self, elisions: list[_Elision]) -> None:
        for elision in elisions:
            elision.decoder.commit()
            self._committed.append(elision)
        elisions.clear()

    def _assemble(self) -> bytes:
        """The skeleton; undone elisions get their original bytes back (rare, costs a copy)."""
        skeleton = self._out.getvalue()
        self._out = io.BytesIO()
        if not self._undone:
            return skeleton
        out = io.BytesIO()
        pos = 0
        with memoryview(skeleton) as view:
            for elision in sorted(self._undone, key=lambda el: el.offset):
                out.write(view[pos:elision.offset])
                out.write(elision.decoder.raw())
                pos = elision.offset + len(elision.marker)
                elision.decoder = _Identity()    # drop the decoded copy early
            out.write(view[pos:])
        self._undone = []
        return out.getvalue()
