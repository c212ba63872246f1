"""Streaming DKIM / ARC-AMS body hash (RFC 6376 3.4.3, 3.4.4, 3.7 ``bh=`` and ``l=``).

Large messages are spooled to a file, so the body is no longer one ``bytes`` object that
dkimpy could canonicalise. This module computes the same digest as dkimpy's
``DomainSigner.verify_sig_process`` over chunks split at arbitrary points, in one pass and
with a carry of at most two bytes (a 50 MB line without CRLF costs no more than 50 short ones).

Exactly what dkimpy does, including its quirks (see ``tests/auth/test_bodyhash.py``):

* the body dkimpy hashes comes from ``rfc822_parse``, which splits the message on ``\\r?\\n``
  and rejoins with CRLF: a bare LF in the body counts as CRLF, a bare CR stays content. We
  apply the same normalisation, so feeding the raw bytes after the header separator works.
* simple: the body as is, trailing empty lines dropped, exactly one CRLF at the end (one is
  added if missing; an empty body gives ``"\\r\\n"``).
* relaxed: WSP runs before a CRLF removed, other WSP runs become one space, trailing empty
  lines dropped, and an all-empty result is ``""``. WSP at the end of a last line *without*
  CRLF is kept (as one space) before the added CRLF: ``"a  "`` gives ``"a \\r\\n"``.
* ``l=`` truncates the canonical body before hashing; the canonical length is reported so
  the caller can tell an ``l=`` shorter than the body.

Work is per chunk with C-speed operations (``bytes.rfind``/``replace``/``rstrip`` and two
regexes whose literal prefix keeps ordinary text on sre's fast scan); lines are never split
in Python, and empty lines held back at the end are counted, not stored.
"""
from __future__ import annotations

import re
from typing import Callable, Iterable

import dkim

__all__ = ["BodyHasher", "body_hashes"]

_CANONS = {b"simple": False, b"relaxed": True}
_CRLF = b"\r\n"
_CRLF_BLOCK = _CRLF * 32768  # pending empty lines are hashed in 64 KiB pieces, never built whole
# Relaxed WSP: tabs become spaces first (same result: any WSP run becomes one space), so only
# runs of two or more spaces need the regex; its literal prefix keeps ordinary text (single
# spaces) off the slow path. A run before CRLF is then " \r\n" and bytes.replace drops it.
_SPACE_RUNS = re.compile(rb"  [ ]*")
# A LF not preceded by CR. The literal comes first so the lookbehind runs only at line ends
# (a leading lookbehind is tried at every byte, ~20x slower).
_BARE_LF = re.compile(rb"\n(?<!\r\n)")


def _hash_ctor(algorithm: bytes) -> Callable:
    try:
        return dkim.HASH_ALGORITHMS[algorithm]
    except (KeyError, TypeError):
        raise ValueError(f"unknown DKIM signature algorithm: {algorithm!r}") from None


def _is_relaxed(canon: bytes) -> bool:
    try:
        return _CANONS[canon]
    except (KeyError, TypeError):
        raise ValueError(f"unknown DKIM body canonicalisation: {canon!r}") from None


def _check_length(length: int | None) -> None:
    if length is not None and (not isinstance(length, int) or length < 0):
        # dkimpy only accepts l= matching \d{,76}; a negative slice would cut from the end.
        raise ValueError(f"l= must be a non-negative int or None, not {length!r}")


def _normalise_newlines(buf: bytes) -> bytes:
    """rfc822_parse's ``re.split(b"\\r?\\n")`` + CRLF join: bare LF -> CRLF, CRLF unchanged."""
    if _BARE_LF.search(buf) is None:
        return buf
    return buf.replace(_CRLF, b"\n").replace(b"\n", _CRLF)


def _compress(buf: bytes) -> bytes:
    """dkimpy's ``compress_whitespace``: every run of SP/HTAB becomes one SP."""
    buf = buf.replace(b"\t", b" ")  # returns buf itself when there is no tab
    return _SPACE_RUNS.sub(b" ", buf) if b"  " in buf else buf


def _trailing_crlfs(buf: bytes) -> int:
    """Number of CRLF pairs at the very end of ``buf`` (aligned from the end, like dkimpy's
    ``strip_trailing_lines``), without a Python loop per pair."""
    tail = buf[len(buf.rstrip(b"\r\n")):]
    if len(tail) & 1:
        tail = tail[1:]
    pairs = len(tail) >> 1
    if pairs <= 1:
        return pairs if tail == _CRLF else 0
    # Pairs from the end are CRLF until the last pair whose CR or LF half is wrong.
    bad = max(len(tail[0::2].rstrip(b"\r")), len(tail[1::2].rstrip(b"\n")))
    return pairs - bad


class _Sink:
    """One hash of the canonical body, cut at l= (``room`` bytes left; None = no l=)."""

    __slots__ = ("hash", "room")

    def __init__(self, algorithm: bytes, length: int | None) -> None:
        _check_length(length)
        self.hash = _hash_ctor(algorithm)()
        self.room = length

    def write(self, data: bytes) -> None:
        room = self.room
        if room is None:
            self.hash.update(data)
        elif room:
            if len(data) > room:
                data = data[:room]
            self.hash.update(data)
            self.room = room - len(data)

    def write_crlfs(self, n: int) -> None:
        if self.room is not None:
            n = min(n, (self.room + 1) >> 1)
        while n > 0:
            k = min(n, len(_CRLF_BLOCK) >> 1)
            self.write(_CRLF_BLOCK if k << 1 == len(_CRLF_BLOCK) else _CRLF_BLOCK[:k << 1])
            n -= k


class _Canonicaliser:
    """Canonicalises a chunked body once and feeds every sink.

    State between chunks: ``carry`` (raw bytes not yet decided: a trailing CR that may pair
    with the next chunk's LF and, in relaxed, a trailing WSP run kept as one space — it is
    dropped if a CRLF follows, one space otherwise); ``pending`` empty lines held back because
    trailing empty lines are dropped; ``mid_line`` when part of the current line was already
    emitted (so the CRLF ending it does not end an empty line).
    """

    __slots__ = ("relaxed", "sinks", "carry", "pending", "mid_line", "length", "finished")

    def __init__(self, relaxed: bool, sinks: list[_Sink]) -> None:
        self.relaxed = relaxed
        self.sinks = sinks
        self.carry = b""
        self.pending = 0
        self.mid_line = False
        self.length = 0
        self.finished = False

    def _emit(self, data: bytes) -> None:
        self.length += len(data)
        for sink in self.sinks:
            sink.write(data)

    def _flush_pending(self) -> None:
        if self.pending:
            self.length += self.pending << 1
            for sink in self.sinks:
                sink.write_crlfs(self.pending)
            self.pending = 0

    def update(self, data: bytes) -> None:
        if self.finished:
            raise RuntimeError("update() after digest()")
        buf = self.carry + data if self.carry else bytes(data)
        if not buf:
            return
        buf = _normalise_newlines(buf)
        cut = buf.rfind(_CRLF) + 2
        if cut >= 2:
            self._lines(buf if cut == len(buf) else buf[:cut])
            buf = buf[cut:]
        self._partial(buf)

    def _lines(self, block: bytes) -> None:
        """Complete lines (``block`` ends with CRLF), starting at the current line's start
        or at the carry."""
        if self.relaxed:
            block = _compress(block).replace(b" \r\n", _CRLF)
        empties = _trailing_crlfs(block)  # >= 1: the block ends with CRLF
        if len(block) > empties << 1:  # some line has content: flush held empty lines first
            self._flush_pending()
            self._emit(block if empties == 1 else block[:len(block) - ((empties - 1) << 1)])
            self.pending = empties - 1
        elif self.mid_line:  # first CRLF ends a line whose content was emitted earlier
            self._emit(_CRLF)
            self.pending = empties - 1
        else:
            self.pending += empties
        self.mid_line = False

    def _partial(self, rest: bytes) -> None:
        """Start of a line without CRLF yet: emit what cannot change, carry the rest."""
        if not rest:
            self.carry = b""
            return
        cr = rest[-1] == 13
        if cr:
            rest = rest[:-1]
        if self.relaxed:
            body = rest.rstrip(b" \t")
            carry = b" " if len(body) != len(rest) else b""
            body = _compress(body)
        else:
            body, carry = rest, b""
        self.carry = carry + b"\r" if cr else carry
        if body:
            self._flush_pending()
            self._emit(body)
            self.mid_line = True

    def finish(self) -> None:
        """End of body: a last line without CRLF gets one (its held empty lines before it are
        kept); otherwise held trailing empty lines are dropped."""
        if self.finished:
            return
        self.finished = True
        if self.carry or self.mid_line:
            self._flush_pending()
            if self.carry:  # already canonical: " ", "\r" or " \r"
                self._emit(self.carry)
            self._emit(_CRLF)
        elif not self.length and not self.relaxed:
            self._emit(_CRLF)  # simple: an empty body is "\r\n"; relaxed: it is ""
        self.carry = b""
        self.pending = 0


class BodyHasher:
    """Streaming DKIM body hash for one (body canonicalisation, hash algorithm, l=) triple."""

    def __init__(self, canon: bytes, algorithm: bytes, length: int | None = None) -> None:
        self._sink = _Sink(algorithm, length)
        self._canon = _Canonicaliser(_is_relaxed(canon), [self._sink])
        self._digest: bytes | None = None

    def update(self, data: bytes) -> None:
        """Feed the next chunk of the body (bytes after the header/body separator)."""
        self._canon.update(data)

    def digest(self) -> bytes:
        """The ``bh=`` digest (raw bytes); ends the stream. Later calls return the same value."""
        if self._digest is None:
            self._canon.finish()
            self._digest = self._sink.hash.digest()
        return self._digest

    @property
    def canonical_length(self) -> int:
        """Length of the whole canonical body before l= truncation (after :meth:`digest`)."""
        if self._digest is None:
            raise RuntimeError("canonical_length is known only after digest()")
        return self._canon.length


def body_hashes(chunks: Iterable[bytes], wants: Iterable[tuple[bytes, bytes, int | None]]
                ) -> dict[tuple[bytes, bytes, int | None], tuple[bytes, int]]:
    """One pass over the body for several signatures: {(canon, algorithm, l): (digest,
    canonical_length)}; identical triples share one hasher, and each canonicalisation is done
    once for all the triples that use it. Raises ValueError (before reading) on a bad triple."""
    sinks: dict[tuple[bytes, bytes, int | None], _Sink] = {}
    by_canon: dict[bool, list[_Sink]] = {}
    for want in wants:
        if want in sinks:
            continue
        canon, algorithm, length = want
        relaxed = _is_relaxed(canon)
        sinks[want] = sink = _Sink(algorithm, length)
        by_canon.setdefault(relaxed, []).append(sink)  # one canonicalisation per canon
    if not sinks:
        return {}
    canonicalisers = {relaxed: _Canonicaliser(relaxed, group) for relaxed, group in by_canon.items()}
    workers = list(canonicalisers.values())
    for chunk in chunks:
        for worker in workers:
            worker.update(chunk)
    for worker in workers:
        worker.finish()
    return {want: (sink.hash.digest(), canonicalisers[_is_relaxed(want[0])].length)
            for want, sink in sinks.items()}
