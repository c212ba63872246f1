"""MIME parsing: raw RFC 5322 bytes -> :class:`ParsedMessage`.

:func:`parse_message` is the only public entry point. It is a pure function of
the raw bytes (so it can run in a ``ProcessPoolExecutor``) and it never raises:
inbound mail is hostile or broken often enough that a parse failure must become
a ticket with an audit trail (``defects``), not a bounced or lost message.

Design notes (why it looks the way it does):

* Parsing is ``email.message_from_bytes(raw, policy=email.policy.default)``.
  Everything *after* that avoids the policy's header registry on the hot path:
  each registry access re-parses the header (measured 50-600 us per header on
  the build box), it raises on some malformed input, and it turns raw 8-bit
  bytes into U+FFFD.  Headers, MIME parameters and transfer encodings are
  therefore decoded here from the raw stored values; the registry is only the
  second opinion for address lists the fast path does not understand, with
  ``email.utils.getaddresses`` as the last resort.
* Charset decoding never trusts the label blindly: well-known supersets are
  used (WHATWG style), and a failing or unknown label falls back to UTF-8 and
  then to cp1252, byte by byte.  Every fallback taken is recorded in
  ``defects`` so the audit trail shows why a ticket text looks the way it does.
* The MIME tree is walked exactly once.
"""
from __future__ import annotations

import binascii
import codecs
import email
import email.policy
import email.utils
import functools
import hashlib
import html as html_lib
import io
import re
from collections.abc import Iterable, Iterator
from typing import Any
from email.generator import BytesGenerator
from email.message import EmailMessage, Message
import email.feedparser
from urllib.parse import unquote_to_bytes

from inscriptis import get_text

from gateway.auth.fromfield import read_mailboxes
from gateway.pipeline.parse.charset_guess import MAX_GUESS, guess
from gateway.pipeline.parse.bigmime import is_marker, split_large_parts
from gateway.pipeline.parse.htmlbound import MAX_RENDER_TAGS, bound_html
from gateway.pipeline.parse.model import Attachment, ParsedMessage
from gateway.pipeline.parse.mimepolicy import MAX_MIME_PARAMS, POLICY as _POLICY, _PARAM_RE, _unquote

__all__ = ["parse_message"]

# For re-serialising attached messages: write stored header values untouched.
_GEN_POLICIES = {
    nl: email.policy.default.clone(refold_source="none", linesep=nl) for nl in ("\r\n", "\n")
}
_MAX_DEPTH = 64          # MIME nesting we follow; deeper parts are dropped (with a defect)
# Work limits on sender-controlled structure (docs/pipeline.md, "Bounded cost"). The stdlib parsers
# behind them are super-linear; real mail stays far below each limit.
MAX_MIME_PARTS = 10_000      # parts per message; beyond: a plain linear reading and a quarantine
MAX_MIME_NESTING = 100       # nested multiparts; beyond: the same (the walker follows 64)
MAX_ADDRESS_CHARS = 1_000    # one address (phrase + addr-spec) handed to the stdlib address parsers
MAX_ADDRESSES = 2_000        # addresses read per header name (To, Cc, ...)
ADDRESS_PARSER_BUDGET = 8_000  # characters per message the stdlib address parsers may see in all
_MAX_LABEL = 40          # longest charset/CTE label echoed into a defect string
MAX_GUESSES = 32         # header values per message whose charset is guessed (charset_guess, ~0.2 ms each)


# --------------------------------------------------------------------------- #
# Per-message state
# --------------------------------------------------------------------------- #
class TooManyParts(Exception):
    """The message has more than MAX_MIME_PARTS MIME parts."""


class _Ctx:
    """Mutable state of one parse: defects (ordered, de-duplicated) and the charset hint."""

    __slots__ = ("_defects", "hint", "linesep", "raw", "budget", "parts", "guesses")

    def __init__(self, raw: bytes) -> None:
        self._defects: dict[str, None] = {}
        # Codecs of the first declared non-UTF-8 body charset: senders that put raw
        # 8-bit bytes into headers/filenames almost always use the body's charset.
        self.hint: tuple[str, ...] = ()
        self.linesep: str | None = None
        self.raw = raw
        self.budget = ADDRESS_PARSER_BUDGET   # characters left for the stdlib address parsers
        self.parts = 0                        # message objects the feed parser has built
        self.guesses = MAX_GUESSES            # header values left whose charset may be guessed

    def parse(self, data: bytes) -> Message:
        """``data`` through the feed parser, stopped (TooManyParts) at MAX_MIME_PARTS parts or
        MAX_MIME_NESTING nested multiparts: its cost per part is high (1 MB holds 100,000 empty
        parts), and it tests every line against every enclosing boundary (quadratic in depth)."""
        holder: list[email.feedparser.BytesFeedParser] = []   # empty during the parser's probe call

        def factory(policy: Any = None) -> Message:
            self.parts += 1
            if self.parts > MAX_MIME_PARTS + 2:    # +2: the parser's probe call and the top level
                raise TooManyParts(f"more than {MAX_MIME_PARTS}")
            stack = getattr(getattr(holder[0], "_input", None), "_eofstack", ()) if holder else ()
            if len(stack) > MAX_MIME_NESTING:
                raise TooManyParts(f"nested more than {MAX_MIME_NESTING} deep")
            return EmailMessage(policy=policy)
        parser = email.feedparser.BytesFeedParser(_factory=factory, policy=_POLICY)
        holder.append(parser)
        parser.feed(data)
        return parser.close()

    def defect(self, text: str) -> None:
        self._defects.setdefault(text, None)

    @property
    def defects(self) -> tuple[str, ...]:
        return tuple(self._defects)

    def newline(self) -> str:
        """Line ending of the message as received (used to re-serialise attached messages)."""
        if self.linesep is None:
            self.linesep = "\r\n" if b"\r\n" in self.raw else "\n"
        return self.linesep


def _short(label: str) -> str:
    """A sender-controlled label made safe and short for a defect string."""
    return "".join(c for c in label[:_MAX_LABEL] if c.isprintable() and not c.isspace()) or "?"


# --------------------------------------------------------------------------- #
# Charsets
# --------------------------------------------------------------------------- #
def _latin1_errors(err: UnicodeError) -> tuple[str, int]:
    """Map undecodable bytes to the same code points (WHATWG windows-1252 holes -> C1)."""
    if not isinstance(err, UnicodeDecodeError):
        raise err
    return err.object[err.start:err.end].decode("latin-1"), err.end


def _cp1252_errors(err: UnicodeError) -> tuple[str, int]:
    """Decode bytes that are not valid UTF-8 as cp1252 (mixed UTF-8/legacy text stays readable)."""
    if not isinstance(err, UnicodeDecodeError):
        raise err
    return err.object[err.start:err.end].decode("cp1252", "ticketmx.latin1"), err.end


codecs.register_error("ticketmx.latin1", _latin1_errors)
codecs.register_error("ticketmx.cp1252", _cp1252_errors)

# Labels seen in mail that Python does not know under that name.
_ALIASES = {
    "x-sjis": "shift_jis", "x-gbk": "gbk", "x-euc-jp": "euc_jp", "x-euc": "euc_jp",
    "iso-8859-8-i": "iso8859-8", "iso-8859-6-i": "iso8859-6", "iso-8859-8-e": "iso8859-8",
    "x-mac-roman": "mac_roman", "unicode-1-1-utf-7": "utf-7", "utf8mb4": "utf-8",
    "x-cp1250": "cp1250", "x-cp1251": "cp1251", "x-cp1252": "cp1252", "cp-850": "cp850",
    "ks_c_5601-1987": "cp949", "ks_c_5601": "cp949", "ksc5601": "cp949", "x-windows-949": "cp949",
}
# Python codec name -> codecs to try, supersets first (WHATWG Encoding Standard choices).
_SUPERSETS: dict[str, tuple[str, ...]] = {
    "gb2312": ("gb18030",), "gbk": ("gb18030",),
    "shift_jis": ("cp932",), "euc_kr": ("cp949",),
    "ascii": ("cp1252",), "iso8859-1": ("cp1252",), "iso8859-9": ("cp1254",),
    "tis-620": ("cp874",), "iso8859-11": ("cp874",), "big5": ("big5hkscs",),
    # jp_2 adds the ISO-2022-JP-2 sets, jp_ext the half-width katakana (CP50221 style).
    "iso2022_jp": ("iso2022_jp_2", "iso2022_jp_ext"),
}
# Codecs that are "text encodings" to Python but never a real mail charset.
_REFUSED = frozenset({"unicode-escape", "raw-unicode-escape", "idna", "punycode", "undefined"})
_UTF8 = ("utf-8",)


@functools.lru_cache(maxsize=512)
def _codecs_for(label: str) -> tuple[str, ...] | None:
    """Codecs to try for a declared charset label; None when the label is unknown."""
    name = label.strip().strip("\"'").strip().lower()
    if not name:
        return None
    name = name.split()[0]
    name = _ALIASES.get(name, name)
    try:
        canonical = codecs.lookup(name).name
    except (LookupError, ValueError, TypeError):
        return None
    if canonical.replace("_", "-") in _REFUSED:
        return None
    return _SUPERSETS.get(canonical, (canonical,))


@functools.lru_cache(maxsize=64)
def _ascii_label(label: str) -> bool:
    try:
        return codecs.lookup(label.strip().strip("\"'").strip().lower()).name == "ascii"
    except (LookupError, ValueError, TypeError):
        return False


def _strict(data: bytes, codec: str) -> str:
    # cp1252 is always decoded WHATWG style: its five holes map to C1 controls.
    return data.decode(codec, "ticketmx.latin1" if codec == "cp1252" else "strict")


# Japanese mailers label Shift_JIS or EUC-JP bytes as ISO-2022-JP (a 7-bit charset): try those first.
_JP_8BIT = ("cp932", "euc_jp")


def _guess(data: bytes, ctx: _Ctx) -> tuple[str, str] | None:
    """charset_guess.guess within the message's budget (MAX_GUESSES values of at most MAX_GUESS bytes)."""
    if len(data) > MAX_GUESS:
        return None
    if ctx.guesses <= 0:
        ctx.defect(f"charset-guess-limit:{MAX_GUESSES}")
        return None
    ctx.guesses -= 1
    return guess(data)


def _decode(data: bytes, label: str | None, ctx: _Ctx, hint: tuple[str, ...] = (),
            short: bool = False) -> str:
    """Decode bytes declared as ``label``; never raises, records every fallback taken.

    Order: declared charset (via superset) -> UTF-8 strict -> the declared charset with
    replacement when only a few bytes are bad (a stray invalid byte in CJK text) ->
    UTF-8 with cp1252 for the invalid bytes.  ``hint`` (the body's charset) is tried after
    UTF-8 when there is no label (raw 8-bit headers). ``short``: a header value (Subject, a
    display name, an encoded word, a file name): as real MUAs read those, after UTF-8 come the
    body's charset (also when a declared label does not fit), then detection (charset_guess),
    and only then Latin-1 (cp1252).
    """
    if data.startswith(codecs.BOM_UTF8):
        data, label = data[3:], "utf-8"
    cands: tuple[str, ...] = ()
    if label:
        found = _codecs_for(label)
        if found is None:
            ctx.defect(f"charset-unknown:{_short(label)}")
        else:
            cands = found
            if cands == ("cp1252",) and not data.isascii():
                # us-ascii/latin-1 labels on 8-bit data: mislabelled UTF-8 is far more
                # common than Latin-1 text that happens to validate as UTF-8.
                try:
                    text = data.decode("utf-8")
                except UnicodeDecodeError:
                    pass
                else:
                    ctx.defect(f"charset-mismatch:{_short(label)}->utf-8")
                    return text
            for codec in cands:
                try:
                    return _strict(data, codec)
                except (UnicodeError, LookupError):
                    continue
    if not cands and b"\x1b" in data:
        # Unlabelled 7-bit JIS (old Japanese mailers); cheap to recognise by ESC.
        for codec in _SUPERSETS["iso2022_jp"]:
            try:
                text = data.decode(codec)
            except UnicodeError:
                continue
            ctx.defect("charset-guessed:iso-2022-jp")
            return text
    if data.isascii() and not cands:
        return data.decode("ascii")
    if cands != _UTF8:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            pass
        else:
            ctx.defect(f"charset-mismatch:{_short(label)}->utf-8" if label else "charset-missing:utf-8")
            return text
    if short and cands:
        for codec in _JP_8BIT if cands[0].startswith("iso2022_jp") else ():
            try:
                text = data.decode(codec)
            except UnicodeError:
                continue
            ctx.defect(f"charset-mismatch:{_short(label or '')}->{codec}")
            return text
    if not cands or short:
        for codec in hint:
            if codec in cands:
                continue
            try:
                text = _strict(data, codec)
            except (UnicodeError, LookupError):
                continue
            ctx.defect(f"charset-mismatch:{_short(label)}->{codec}" if label else f"charset-missing:{codec}")
            return text
    if short:
        found_guess = _guess(data, ctx)
        if found_guess is not None:
            text, codec = found_guess
            ctx.defect(f"charset-mismatch:{_short(label)}->{codec}" if label else f"charset-guessed:{codec}")
            return text
    if cands and cands != _UTF8:
        try:
            text = data.decode(cands[0], "replace")
        except (UnicodeError, LookupError):
            pass
        else:
            bad = text.count("\ufffd")
            if bad <= 2 or bad * 100 <= len(text):
                ctx.defect(f"charset-lossy:{_short(label or '')}")
                return text
    ctx.defect(f"charset-fallback:{_short(label)}->cp1252" if label else "charset-missing:cp1252")
    return data.decode("utf-8", "ticketmx.cp1252")


# --------------------------------------------------------------------------- #
# Headers
# --------------------------------------------------------------------------- #
_EW_RE = re.compile(r"=\?([^?*\s]+)(?:\*[^?\s]*)?\?([BbQq])\?([^?]*)\?=")
_B64_JUNK = re.compile(r"[^A-Za-z0-9+/]")
_CTRL_RE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def _unfold(value: str) -> str:
    if "\n" in value or "\r" in value:
        value = value.replace("\r", "").replace("\n", "")
    return value.strip()


def _header_text(raw: str, ctx: _Ctx) -> str:
    """Unfolded header value with raw 8-bit bytes decoded (RFC 6532 UTF-8, else legacy).

    ``message_from_bytes`` stores non-ASCII header bytes as surrogate escapes; turn
    them back into bytes and decode properly instead of the policy's U+FFFD.
    RFC 2047 encoded-words are left alone here (address parsing needs them intact).
    """
    value = _unfold(raw)
    if not value.isascii():
        value = _decode(value.encode("utf-8", "surrogateescape"), None, ctx, ctx.hint, short=True)
        ctx.defect("header-8bit")
    elif "\x1b" in value:
        value = _decode(value.encode("ascii"), None, ctx)
    return value


def _word_bytes(encoding: str, text: str) -> bytes:
    if encoding in "bB":
        text = _B64_JUNK.sub("", text)
        if len(text) % 4 == 1:
            text = text[:-1]
        return binascii.a2b_base64(text + "=" * (-len(text) % 4))
    return binascii.a2b_qp(text.encode("utf-8", "replace"), header=True)


def _decode_words(text: str, ctx: _Ctx) -> str:
    """Decode RFC 2047 encoded-words, leniently.

    Unlike the header registry this accepts encoded-words glued to other text, spaces
    inside Q text and unknown charsets, and it joins adjacent words of one charset
    before decoding (senders split multi-byte characters across words).
    """
    if "=?" not in text:
        return text
    out: list[str] = []
    run = bytearray()
    run_charset = ""
    pos = 0
    prev_word = False

    def flush() -> None:
        nonlocal run, run_charset
        if run:
            out.append(_decode(bytes(run), run_charset, ctx, ctx.hint, short=True))
            run = bytearray()
        run_charset = ""

    for m in _EW_RE.finditer(text):
        gap = text[pos:m.start()]
        if gap and not (prev_word and gap.isspace()):   # RFC 2047 6.2: drop space between words
            flush()
            out.append(gap)
        charset = m.group(1).lower()
        try:
            data = _word_bytes(m.group(2), m.group(3))
        except (binascii.Error, ValueError):
            ctx.defect("encoded-word-invalid")
            flush()
            out.append(m.group(0))
            prev_word = False
            pos = m.end()
            continue
        if charset != run_charset:
            flush()
            run_charset = charset
        run += data
        prev_word = True
        pos = m.end()
    flush()
    out.append(text[pos:])
    return "".join(out)


def _clean(value: str) -> str:
    """Line breaks and control characters in a decoded header become spaces (no injection)."""
    return _CTRL_RE.sub(" ", value).strip()


def _collapse(value: str) -> str:
    return " ".join(value.split())


def _full_decode(text: str, ctx: _Ctx) -> str:
    return _clean(_decode_words(text, ctx) if "=?" in text else text)


# --------------------------------------------------------------------------- #
# MIME parameters (Content-Type / Content-Disposition)
# --------------------------------------------------------------------------- #
_TYPE_JUNK = re.compile(r"\s+|\([^)]*\)")


def _mime_header(value: str, ctx: _Ctx) -> tuple[str, dict[str, str]]:
    """Split a MIME header into (lower-cased main value, parameters), RFC 2231 aware."""
    main, _, rest = value.partition(";")
    params: dict[str, str] = {}
    if rest:
        extended: dict[str, list[tuple[int, bool, str]]] = {}
        for count, m in enumerate(_PARAM_RE.finditer(";" + rest)):
            if count >= MAX_MIME_PARAMS:
                ctx.defect(f"mime-params-limit:{MAX_MIME_PARAMS}")
                break
            name = m.group(1).lower()
            val = _unquote(m.group(2) or "")
            if "*" in name:                      # RFC 2231: name*, name*0, name*0*, ...
                base, _, section = name.partition("*")
                number = section.rstrip("*")
                extended.setdefault(base, []).append(
                    (int(number) if number.isdigit() else 0, name.endswith("*"), val))
            else:
                params.setdefault(name, val)
        for base, sections in extended.items():
            sections.sort(key=lambda s: s[0])
            charset = ""
            buf = bytearray()
            for i, (_, encoded, val) in enumerate(sections):
                if encoded:
                    if i == 0 and val.count("'") >= 2:
                        charset, _, val = val.split("'", 2)
                    buf += unquote_to_bytes(val)
                else:
                    buf += val.encode("utf-8")
            # RFC 2231 wins over a plain parameter of the same name (it is the exact one).
            params[base] = _decode(bytes(buf), charset or None, ctx, ctx.hint, short=True)
    main = main.strip()
    if " " in main or "\t" in main or "(" in main:
        main = _TYPE_JUNK.sub("", main)
    return main.lower(), params


def _filename(disp_params: dict[str, str], type_params: dict[str, str], ctx: _Ctx) -> str:
    name = disp_params.get("filename") or type_params.get("name") or ""
    if "=?" in name:   # RFC 2047 inside a parameter: forbidden, yet what Outlook and others send
        name = _decode_words(name, ctx)
    return _collapse(_CTRL_RE.sub(" ", name)) if name else ""


# --------------------------------------------------------------------------- #
# Addresses and message ids
# --------------------------------------------------------------------------- #
_SPEC = r'[^\s<>()\[\]",;:\\@]+@[^\s<>()\[\]",;:\\@]+'
# Possessive throughout: the display-name class includes white space (stripped later), so nothing
# can be matched two ways (a lazy name before "\s*<" was quadratic on long runs of spaces).
_FAST_ITEM = re.compile(
    rf'\s*+(?:({_SPEC})|("(?:[^"\\]|\\.)*+"\s*+|[^"<>()\[\],;:\\]*+)<\s*+({_SPEC})\s*+>)\s*+')
_LIST_SPLIT = re.compile(r'(?:"(?:[^"\\]|\\.)*+"|[^,"]++)++')  # possessive: no backtracking stack
_EW_SPECIALS = frozenset(',"<>@')
_MSGID_RE = re.compile(r"<([^<>]*)>")
_ID_TOKENS = re.compile(r"[\s,]+")

Pair = tuple[str, str]


def _is_addr(addr: str) -> bool:
    local, at, domain = addr.rpartition("@")
    return bool(at and local.strip() and domain.strip() and not domain.endswith(">"))


def _norm_addr(addr: str) -> str:
    local, _, domain = addr.strip().rpartition("@")
    return f"{local}@{domain.lower()}"


def _display(name: str, ctx: _Ctx) -> str:
    if name.startswith('"'):
        name = _unquote(name)
    if any("\udc80" <= c <= "\udcff" for c in name):     # registry output for unknown charsets
        name = _decode(name.encode("utf-8", "surrogateescape"), None, ctx, ctx.hint, short=True)
    return _collapse(_CTRL_RE.sub(" ", _decode_words(name, ctx)))


def _fast_addresses(value: str, ctx: _Ctx) -> list[Pair] | None:
    """The common shapes (``a@b``, ``Name <a@b>``, ``"Q, Name" <a@b>``, lists); None otherwise."""
    if "=?" in value and any(_EW_SPECIALS.intersection(m.group(0)) for m in _EW_RE.finditer(value)):
        return None
    items = _LIST_SPLIT.findall(value)
    if ",".join(items) != value:
        return None
    out: list[Pair] = []
    for item in items:
        m = _FAST_ITEM.fullmatch(item)
        if m is None:
            return None
        if m.group(1):
            out.append(("", _norm_addr(m.group(1))))
        else:
            out.append((_display(m.group(2), ctx), _norm_addr(m.group(3))))
    return out


def _addresses(name: str, values: Iterable[str], ctx: _Ctx) -> list[Pair]:
    """(display name, addr-spec) pairs from all headers ``name``; never raises.

    Fast path for ordinary values, then the header registry (RFC 5322 with obsolete
    forms), then ``getaddresses`` when the registry raises or finds nothing. Both stdlib
    parsers are super-linear (50,000 ``"`` in From: minutes), so they only see values of at
    most MAX_ADDRESS_CHARS, ADDRESS_PARSER_BUDGET characters per message in all; a longer
    value is first split at its top-level commas. What is left unread is recorded in
    ``defects`` (``address-unread:<name>``). At most MAX_ADDRESSES per header name.
    """
    out: list[Pair] = []
    for value in values:
        if not value or value.isspace():
            continue
        fast = _fast_addresses(value, ctx)
        if fast is not None:
            out.extend(fast)
        elif len(value) <= MAX_ADDRESS_CHARS:
            out.extend(_slow_addresses(name, value, ctx))
        else:
            for m in _LIST_SPLIT.finditer(value):
                if len(out) >= MAX_ADDRESSES:
                    break
                item = m.group(0)
                if item.isspace():
                    continue
                fast = _fast_addresses(item, ctx)
                out.extend(fast if fast is not None else _slow_addresses(name, item, ctx))
        if len(out) >= MAX_ADDRESSES:
            ctx.defect(f"address-limit:{name}:{MAX_ADDRESSES}")
            return out[:MAX_ADDRESSES]
    return out


def _slow_addresses(name: str, value: str, ctx: _Ctx) -> list[Pair]:
    """One value through the stdlib parsers, within the length limit and the message's budget."""
    if len(value) > MAX_ADDRESS_CHARS or len(value) > ctx.budget:
        ctx.defect(f"address-unread:{name}")
        return []
    ctx.budget -= len(value)
    pairs: list[Pair] = []
    try:
        header = _POLICY.header_factory(name, value)
        pairs = [(a.display_name, a.addr_spec) for a in header.addresses]
    except Exception:                       # registry bugs on hostile input
        ctx.defect(f"address-registry-failed:{name}")
    pairs = [(n, a) for n, a in pairs if _is_addr(a)]
    if not pairs and "@" in value:
        ctx.defect(f"address-fallback:{name}")
        try:
            pairs = [(n, a) for n, a in email.utils.getaddresses([value]) if _is_addr(a)]
        except Exception:
            pairs = []
    return [(_display(n, ctx), _norm_addr(a)) for n, a in pairs]


def _from_mailboxes(values: Iterable[str], ctx: _Ctx) -> list[Pair]:
    """(display name, address) pairs of the From fields, read by the function the SMTP side uses for
    DMARC (``gateway.auth.fromfield.read_mailboxes``) from the same text it reads (UTF-8, bad bytes
    replaced), so that the requester and DMARC's From are one reading. Only the display names are
    decoded further: legacy 8-bit bytes in them as any header text (body charset, detection, Latin-1)."""
    out: list[Pair] = []
    for raw in values:
        value = _unfold(raw)
        if len(value) > ctx.budget:
            ctx.defect("address-unread:from")
            continue
        ctx.budget -= len(value)
        data = value.encode("utf-8", "surrogateescape")
        text = data.decode("utf-8", "replace")
        pairs, problem = read_mailboxes(text)
        if problem is not None:
            ctx.defect("address-unread:from")
            continue
        names = [n for n, _ in pairs]
        if "\ufffd" in text and not data.isascii():   # legacy bytes: names from the undamaged text
            legacy, _ = read_mailboxes(data.decode("utf-8", "surrogateescape"))
            if len(legacy) == len(pairs):
                names = [n for n, _ in legacy]
        out.extend((_display(n, ctx), _norm_addr(a)) for n, (_, a) in zip(names, pairs))
    return out


def _unique(items: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(items))


def _message_ids(values: Iterable[str]) -> tuple[str, ...]:
    """``<id>`` tokens without brackets (whitespace folded into an id removed); bare
    ``x@y`` tokens only when a header has no bracketed id at all."""
    ids: list[str] = []
    for value in values:
        found = ["".join(x.split()) for x in _MSGID_RE.findall(value)]
        found = [x for x in found if x]
        if not found:
            found = [t.strip("<>") for t in _ID_TOKENS.split(value) if "@" in t]
        ids.extend(found)
    return _unique(ids)


# --------------------------------------------------------------------------- #
# Bodies
# --------------------------------------------------------------------------- #
_CTE_SEP = re.compile(r"[\s_]+")
_CTE_ALIASES = {"7-bit": "7bit", "8-bit": "8bit", "8bits": "8bit", "7bits": "7bit"}
_IDENTITY_CTE = frozenset({"", "7bit", "8bit", "binary"})
_UU_CTE = frozenset({"x-uuencode", "uuencode", "uue", "x-uue"})
_META_CHARSET = re.compile(rb"""<meta[^>]{0,200}?charset\s*=\s*["']?\s*([A-Za-z0-9_:.+-]+)""", re.I)
_XML_INVALID = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_SCRIPT_OPEN = re.compile(r"<(script|style)\b")
_TAG = re.compile(r"<[^<>]*+>")   # not "<[^>]*>": each "<" of "<<<…" would scan to the end
_BLANK_RUN = re.compile(r"\n{3,}")
_TITLE = re.compile(r"<title\b[^<>]{0,200}>([^<]{1,2000})", re.I)


def _cte(raw: str | None) -> str:
    """Normalised Content-Transfer-Encoding ("Quoted printable;" -> "quoted-printable")."""
    if not raw:
        return ""
    value = _unfold(raw).split(";", 1)[0].strip().strip("\"'").strip().lower()
    value = _CTE_SEP.sub("-", value)
    return _CTE_ALIASES.get(value, value)


def _raw_payload(part: Message) -> bytes:
    """The stored body bytes, before transfer decoding.

    Reads ``_payload`` (what email.generator reads too) because ``get_payload()``
    decodes 8-bit text with the declared charset and errors="replace" -- exactly the
    lossy step the charset fallback here exists to avoid.
    """
    payload = getattr(part, "_payload", None)
    if isinstance(payload, bytes):
        return payload
    if not isinstance(payload, str):
        return b""
    try:
        return payload.encode("ascii", "surrogateescape")
    except UnicodeEncodeError:
        return payload.encode("utf-8", "surrogateescape")


def _transfer_decode(data: bytes, cte: str, part: Message, ctx: _Ctx) -> bytes:
    """Undo the Content-Transfer-Encoding without the registry (lenient base64/QP)."""
    if cte in _IDENTITY_CTE:
        return data
    if cte == "base64":
        try:
            return binascii.a2b_base64(data)
        except binascii.Error:
            ctx.defect("base64-repaired")
            clean = re.sub(rb"[^A-Za-z0-9+/]", b"", data)
            if len(clean) % 4 == 1:
                clean = clean[:-1]
            try:
                return binascii.a2b_base64(clean + b"=" * (-len(clean) % 4))
            except binascii.Error:
                return data
    if cte == "quoted-printable":
        return binascii.a2b_qp(data)
    if cte in _UU_CTE:
        decoded = part.get_payload(decode=True)
        return decoded if isinstance(decoded, bytes) else data
    ctx.defect(f"cte-unknown:{_short(cte)}")
    return data


def _newlines(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n") if "\r" in text else text


def _strip_markup(html: str) -> str:
    """Crude, linear HTML to text: script/style elements and tags removed, entities decoded."""
    low = html.lower()
    out: list[str] = []
    pos = 0
    while True:
        m = _SCRIPT_OPEN.search(low, pos)
        if m is None:
            out.append(html[pos:])
            break
        out.append(html[pos:m.start()])
        out.append(" ")
        end = low.find("</" + m.group(1), m.end())   # one search: an unclosed one ends the text
        close = low.find(">", end) if end >= 0 else -1
        if close < 0:
            break
        pos = close + 1
    return html_lib.unescape(_TAG.sub(" ", "".join(out)))


def _html_to_text(html: str, ctx: _Ctx) -> str:
    """Render HTML with inscriptis (block, list and table layout); crude strip if it fails."""
    if html.count("<") > MAX_RENDER_TAGS:       # inscriptis: ~20 us a table cell; a tag strip is linear
        ctx.defect(f"html-render-limit:{MAX_RENDER_TAGS}")
        text = _strip_markup(html)
    else:
        try:
            text = get_text(_XML_INVALID.sub("", html))
        except Exception:                      # lxml/inscriptis on hostile markup
            ctx.defect("html-render-failed")
            text = _strip_markup(html)
    lines = [line.rstrip() for line in text.split("\n")]
    return _BLANK_RUN.sub("\n\n", "\n".join(lines)).strip("\n")


class _Part:
    """The MIME fields of one part, read from the raw stored headers in one pass."""

    __slots__ = ("ctype", "type_params", "disposition", "disp_params", "content_id", "cte", "declared")

    def __init__(self, part: Message, ctx: _Ctx) -> None:
        ct = cd = cid = cte = None
        for name, value in part.raw_items():
            key = name.lower()
            if key == "content-type":
                ct = value if ct is None else ct
            elif key == "content-disposition":
                cd = value if cd is None else cd
            elif key == "content-id":
                cid = value if cid is None else cid
            elif key == "content-transfer-encoding":
                cte = value if cte is None else cte
        self.declared = ct is not None           # a Content-Type field is present
        if ct is None:
            self.ctype, self.type_params = part.get_default_type(), {}
        else:
            self.ctype, self.type_params = _mime_header(_header_text(ct, ctx), ctx)
            if self.ctype.count("/") != 1:       # same rule as Message.get_content_type
                self.ctype = "text/plain"
        if cd is None:
            self.disposition, self.disp_params = "", {}
        else:
            self.disposition, self.disp_params = _mime_header(_header_text(cd, ctx), ctx)
        self.content_id = _header_text(cid, ctx).strip("<> \t") if cid else ""
        self.cte = _cte(cte)


_UNSAFE_NAME = re.compile(r'[\x00-\x1f\x7f/\\:*?"<>|]+')
MAX_EML_NAME = 100       # characters of the Subject kept in a forwarded message's file name


def _eml_name(inner: Message | None, ctx: _Ctx) -> str:
    """A forwarded message's file name: its Subject made safe for a file name, plus ``.eml``
    (``message.eml`` when it has none), the name the big helpdesks show."""
    subject = ""
    if inner is not None:
        raw = next((v for k, v in inner.raw_items() if k.lower() == "subject"), None)
        if isinstance(raw, str):
            subject = _full_decode(_header_text(raw, ctx), ctx)
    name = _collapse(_UNSAFE_NAME.sub(" ", subject))[:MAX_EML_NAME].strip(" .")
    return f"{name}.eml" if name else "message.eml"


class _Walker:
    """One recursive pass over the MIME tree collecting body texts and attachments."""

    def __init__(self, ctx: _Ctx, elided: dict[bytes, Any] | None = None) -> None:
        self.ctx = ctx
        self.attachments: list[Attachment] = []
        self.elided = elided  # marker -> decoded body of the large parts bigmime took out

    def walk(self, part: Message, depth: int = 0, in_attachment: bool = False,
             later: bool = False) -> tuple[list[str], list[str]]:
        """Return (text/plain bodies, text/html bodies) of this subtree. ``later``: a part after the
        first of a multipart/mixed (or related, ...): without a Content-Type of its own, or as a
        multipart without any boundary part, it is a file (named ``file``), as the big helpdesks
        read it, not more body text."""
        ctx = self.ctx
        if depth > _MAX_DEPTH:
            ctx.defect("mime-depth-limit")
            return [], []
        try:
            for d in part.defects:
                ctx.defect(type(d).__name__)
            info = _Part(part, ctx)
            maintype = info.ctype.partition("/")[0]
            attach = in_attachment or info.disposition.startswith("attachment")
            if part.is_multipart():             # payload is a list (message/* included)
                children = part.get_payload()
                if maintype == "message":
                    self._message_attachment(part, children, info)
                    return [], []
                return self._container(children, info, depth, attach)
            if maintype == "multipart":
                repaired = self._repair_boundary(part, info)
                if repaired is not None:
                    return self._container(repaired.get_payload(), info, depth, attach)
            if later and not attach and (not info.declared or maintype == "multipart"):
                ctx.defect("part-without-type-as-file" if not info.declared else "multipart-as-file")
                if not _filename(info.disp_params, info.type_params, ctx):
                    info.disp_params = {**info.disp_params, "filename": "file"}
                if maintype == "multipart":
                    info.ctype = "application/octet-stream"
                return self._leaf(part, info, True)
            return self._leaf(part, info, attach)
        except TooManyParts:
            raise
        except Exception as exc:                  # one bad part must not lose the rest
            ctx.defect(f"part-failed:{type(exc).__name__}")
            return [], []

    def _container(self, children: list, info: _Part, depth: int,
                   attach: bool) -> tuple[list[str], list[str]]:
        """alternative: first branch with text/plain, last with HTML; otherwise concatenate."""
        files = info.ctype not in ("multipart/alternative", "multipart/digest")
        results = [self.walk(child, depth + 1, attach, files and i > 0)
                   for i, child in enumerate(c for c in children if isinstance(c, Message))]
        if info.ctype == "multipart/alternative":
            plain = next((p for p, _ in results if p), [])
            html = next((h for _, h in reversed(results) if h), [])
            return plain, html
        plains = [t for p, _ in results for t in p]
        htmls = [t for _, h in results for t in h]
        return plains, htmls

    def _repair_boundary(self, part: Message, info: _Part) -> Message | None:
        """Re-split a multipart whose boundary the policy mangled; None if that is not the case.

        policy.default's header registry truncates an unquoted boundary containing "="
        (Outlook's ``boundary=----=_NextPart_...``, very common) to "----", so such a
        part arrives unsplit.  Re-parse its body under a properly quoted boundary.
        """
        boundary = info.type_params.get("boundary", "")
        payload = getattr(part, "_payload", None)
        if not boundary or not isinstance(payload, str) or "--" + boundary not in payload:
            return None
        quoted = boundary.replace("\\", "\\\\").replace('"', '\\"')
        head = f'Content-Type: {info.ctype}; boundary="{quoted}"\r\n\r\n'
        try:
            sub = self.ctx.parse(head.encode("utf-8", "surrogateescape") + _raw_payload(part))
        except TooManyParts:
            raise
        except Exception:
            return None
        if not sub.is_multipart():
            return None
        self.ctx.defect("boundary-repaired")
        for d in sub.defects:
            self.ctx.defect(type(d).__name__)
        return sub

    def _leaf(self, part: Message, info: _Part, attach: bool) -> tuple[list[str], list[str]]:
        ctx = self.ctx
        payload = _raw_payload(part)
        data = self._elided(payload)
        if data is None:
            data = _transfer_decode(payload, info.cte, part, ctx)
        ctype = info.ctype
        if not attach and (ctype == "text/plain" or ctype == "text/html" or ctype.startswith("multipart/")):
            label = info.type_params.get("charset")
            if ctype == "text/html" and not label:
                m = _META_CHARSET.search(data, 0, 4096)
                label = m.group(1).decode("ascii") if m else None
            if label and not ctx.hint:
                found = _codecs_for(label)
                if found and found != _UTF8 and not _ascii_label(label):   # us-ascii says nothing
                    ctx.hint = found
            text = _newlines(_decode(data, label, ctx))
            if ctype == "text/html":
                return [], [text]
            if ctype != "text/plain":            # multipart without usable boundary
                ctx.defect("multipart-as-text")
            return [text], []
        self._add(data, info, ctx)
        return [], []

    def _elided(self, payload: bytes) -> bytes | None:
        """The decoded body bigmime took out of this part, if the payload is one of its markers."""
        if not self.elided or len(payload) > 256 or not is_marker(payload):
            return None
        data = self.elided.pop(payload.strip(), None)
        return bytes(data) if data is not None else None

    def _message_attachment(self, part: Message, payload: list, info: _Part) -> None:
        """message/* part: keep the attached message as bytes (re-serialised, see below)."""
        ctx = self.ctx
        data = b""
        try:
            inner = payload[0] if len(payload) == 1 and isinstance(payload[0], Message) else None
            if inner is not None and info.cte in ("base64", "quoted-printable") and not inner.keys():
                # Encoded message/rfc822 (forbidden, but seen): the "message" is the encoded text.
                ctx.defect("message-part-encoded")
                data = _transfer_decode(_raw_payload(inner).lstrip(b"\r\n"), info.cte, inner, ctx)
            else:
                nl = ctx.newline()
                buf = io.BytesIO()
                gen = BytesGenerator(buf, mangle_from_=False, policy=_GEN_POLICIES[nl])
                if inner is not None and info.ctype != "message/delivery-status":
                    gen.flatten(inner, unixfrom=False)
                    data = buf.getvalue()
                else:                             # header blocks (delivery-status, MDN): drop our own header
                    gen.flatten(part, unixfrom=False)
                    out, sep = buf.getvalue(), nl.encode()
                    if part.keys():
                        end = out.find(sep + sep)
                        data = out[end + 2 * len(sep):] if end >= 0 else b""
                    else:
                        data = out[len(sep):]
        except Exception as exc:
            ctx.defect(f"message-bytes-failed:{type(exc).__name__}")
        if info.ctype in ("message/rfc822", "message/global") and not _filename(
                info.disp_params, info.type_params, ctx):
            inner = payload[0] if len(payload) == 1 and isinstance(payload[0], Message) else None
            info.disp_params = {**info.disp_params, "filename": _eml_name(inner, ctx)}
        self._add(data, info, ctx)

    def _add(self, data: bytes, info: _Part, ctx: _Ctx) -> None:
        self.attachments.append(Attachment(
            filename=_filename(info.disp_params, info.type_params, ctx),
            content_type=info.ctype,
            content=data,
            sha256=hashlib.sha256(data).hexdigest(),
            inline=info.disposition == "inline",
            content_id=info.content_id,
        ))


# --------------------------------------------------------------------------- #
# Assembly
# --------------------------------------------------------------------------- #
_WANTED = frozenset({"subject", "from", "to", "cc", "reply-to", "message-id",
                     "in-reply-to", "references", "date"})


def _build(raw_headers: Iterable[tuple[str, str]], plains: list[str], htmls: list[str],
           attachments: list[Attachment], ctx: _Ctx) -> ParsedMessage:
    """ParsedMessage from stored (name, raw value) headers and the collected body parts."""
    headers: list[tuple[str, str]] = []
    wanted: dict[str, list[str]] = {}          # undecoded-RFC-2047 text, for address/id parsing
    first: dict[str, str] = {}                 # first fully decoded value per header name
    raw_from: list[str] = []                   # From as stored: read by the SMTP side's reader
    for name, raw in raw_headers:
        if name.lower() == "from" and isinstance(raw, str):
            raw_from.append(raw)
        try:
            text = _header_text(raw, ctx)
            value = _full_decode(text, ctx)
        except Exception as exc:
            ctx.defect(f"header-failed:{_short(name)}:{type(exc).__name__}")
            text = value = _clean(str(raw).encode("utf-8", "replace").decode("utf-8", "replace"))
        headers.append((name, value))
        key = name.lower()
        if key in _WANTED:
            wanted.setdefault(key, []).append(text)
            first.setdefault(key, value)

    senders = _from_mailboxes(raw_from, ctx)
    msg_ids = _message_ids(wanted.get("message-id", ())[:1])

    body_html = "\n".join(htmls)
    if body_html:
        body_html, cuts = bound_html(body_html)
        for cut in cuts:
            ctx.defect(cut)
    body_text = "\n".join(plains)
    if body_html and not body_text.strip():
        body_text = _html_to_text(body_html, ctx)
        if not body_text.strip():                 # only a <title>: renderers drop it, the helpdesks keep it
            m = _TITLE.search(body_html, 0, 65536)
            if m:
                body_text = _collapse(html_lib.unescape(m.group(1)))

    return ParsedMessage(
        subject=_collapse(first.get("subject", "")),
        from_name=senders[0][0] if senders else "",
        from_addr=senders[0][1] if senders else "",
        from_count=len(senders),
        to=_unique(a for _, a in _addresses("to", wanted.get("to", ()), ctx)),
        cc=_unique(a for _, a in _addresses("cc", wanted.get("cc", ()), ctx)),
        reply_to=_unique(a for _, a in _addresses("reply-to", wanted.get("reply-to", ()), ctx)),
        message_id=msg_ids[0] if msg_ids else "",
        in_reply_to=_message_ids(wanted.get("in-reply-to", ())),
        references=_message_ids(wanted.get("references", ())),
        date=first.get("date", ""),
        body_text=body_text,
        body_html=body_html,
        attachments=tuple(attachments),
        headers=tuple(headers),
        defects=ctx.defects,
    )


def _parse(raw: bytes, elided: dict[bytes, Any] | None = None) -> ParsedMessage:
    ctx = _Ctx(raw)
    msg = ctx.parse(raw)
    walker = _Walker(ctx, elided)
    plains, htmls = walker.walk(msg)
    return _build(msg.raw_items(), plains, htmls, walker.attachments, ctx)


_HEADER_END = re.compile(rb"\r?\n\r?\n")
_FOLD = re.compile(rb"\r?\n(?=[ \t])")


def _salvage(raw: bytes, exc: BaseException) -> ParsedMessage:
    """Last resort when the email package itself failed (or was stopped at a work limit):
    headers by line, the rest as text."""
    ctx = _Ctx(raw)
    if isinstance(exc, TooManyParts):
        ctx.defect(f"mime-parts-limit:{exc}")
    else:
        ctx.defect(f"parse-failed:{type(exc).__name__}")
    m = _HEADER_END.search(raw)
    head, body = (raw[:m.start()], raw[m.end():]) if m else (raw, b"")
    raw_headers = []
    for line in _FOLD.sub(b"", head).splitlines():
        name, sep, value = line.partition(b":")
        if sep and name and not name[:1].isspace():
            raw_headers.append((name.strip().decode("ascii", "replace"),
                                value.strip().decode("ascii", "surrogateescape")))
    text = _newlines(_decode(body, None, ctx))
    return _build(raw_headers, [text], [], [], ctx)


# From this size the email package's feed parser is handed a skeleton: bigmime takes every leaf body of
# at least SPLIT_PART bytes out first (bytes.find over the boundaries instead of a Python loop over every
# line; text parts too), and _Walker gets the bodies back decoded. A 60 KB text + HTML + attachment
# message: 1.61 -> 1.05 ms. Below it the split costs more than it saves (4 KB: 120 -> 164 µs).
SPLIT_MIN = 24 * 1024
SPLIT_PART = 2048


_FEED_PIECE = 256 * 1024


def _pieces(raw: bytes) -> Iterator[memoryview]:
    """``raw`` as views of _FEED_PIECE bytes. Fed whole, the splitter's input window was one more
    copy of the message (+1 MB for a 1 MB message in the worker, issue 18 item 9)."""
    with memoryview(raw) as view:
        for start in range(0, len(raw), _FEED_PIECE):
            with view[start:start + _FEED_PIECE] as piece:
                yield piece


def parse_message(raw: bytes, elided: dict[bytes, Any] | None = None) -> ParsedMessage:
    """Parse one raw message; never raises (failures end up in ``defects``).

    ``elided``: for a large message, ``raw`` is bigmime's skeleton and this maps its markers to the
    decoded bodies of the parts it took out (consumed: each body is handed on, not kept twice).
    Without it, a message of ``SPLIT_MIN`` bytes or more is split that way here (same result, tested
    on the corpus: ``tests/pipeline/test_split_parse.py``)."""
    try:
        if isinstance(raw, (bytearray, memoryview)):
            raw = bytes(raw)
        elif not isinstance(raw, bytes):
            raw = str(raw).encode("utf-8", "surrogateescape")
        if elided is None and len(raw) >= SPLIT_MIN:
            try:
                skeleton, parts = split_large_parts(_pieces(raw), SPLIT_PART, text_parts=True)
            except Exception:  # the splitter is an optimisation: on any doubt, the plain parse
                skeleton, parts = raw, {}
            if parts:
                try:
                    return _parse(skeleton, parts)
                except TooManyParts:
                    raise
                except Exception:  # noqa: BLE001 - then exactly as without the split
                    pass
        return _parse(raw, elided)
    except Exception as exc:
        try:
            return _salvage(raw if isinstance(raw, bytes) else b"", exc)
        except Exception as exc2:
            return ParsedMessage(
                subject="", from_name="", from_addr="", from_count=0, to=(), cc=(), reply_to=(),
                message_id="", in_reply_to=(), references=(), date="", body_text="", body_html="",
                defects=(f"parse-failed:{type(exc).__name__}", f"salvage-failed:{type(exc2).__name__}"),
            )
