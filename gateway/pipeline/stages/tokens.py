"""Thread tokens: the subject token and the Message-IDs we issue.

Pure functions, no I/O.

* **Subject token**, rendered from a format string with one ``{number}`` placeholder:
  ``"[{number}]"`` (default) gives ``[HD-1042]``, ``"##{number}##"`` gives ``##HD-1042##``.
  The parser is derived from the same format, so changing the style is one config value.
  A token may carry a MAC (``[HD-1042:k7d3qa2m]``): keyed HMAC-SHA256 of the ticket
  number, truncated, base32. A verifying MAC lets a non-participant's reply be trusted
  when policy allows; a bare token only threads for participants.
* **Message-ID** of every mail we send: ``<t{ticket_id}.k{mac}.r{random}@{hostname}>``
  where ``mac`` = HMAC-SHA256(key, ticket id), 80 bits, base32. Only the key holder can
  make one that verifies, so a reply whose In-Reply-To/References names it provably
  answers a mail we sent about that ticket.

Keys rotate: pass a list; the first signs, every key verifies. Verification is constant
time in the MAC (``hmac.compare_digest`` against every key, no early exit).
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

from gateway.config.threading import DEFAULT_NUMBER_PATTERN, Keys, MIN_KEY_BYTES, TokenStyle, normalize_keys, parse_keys, parse_token_style

__all__ = [
    "TokenStyle", "SubjectToken", "DEFAULT_STYLE", "DEFAULT_NUMBER_PATTERN", "MIN_KEY_BYTES",
    "format_token", "find_tokens", "strip_tokens", "tag_subject", "subject_mac", "signed_token",
    "verify_subject_token", "trusted_numbers", "mint_message_id", "verify_message_id", "normalize_keys",
    "parse_token_style", "parse_keys", "unsubscribe_token", "verify_unsubscribe_token",
]

Key = str | bytes

_MID_MAC_CHARS = 16                      # 80 bits
_MID_RANDOM_BYTES = 10                   # 80 bits of uniqueness
_TICKET_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_MID = re.compile(r"^<?\s*t(?P<id>[A-Za-z0-9_-]{1,64})\.k(?P<mac>[a-z2-7]{16})\.r(?P<rand>[a-z2-7]{4,64})"
                  r"@(?P<host>[^>\s]+?)\s*>?$", re.IGNORECASE)


DEFAULT_STYLE = TokenStyle()


@dataclass(frozen=True, slots=True)
class SubjectToken:
    number: str
    mac: str            # "" when the token carries none
    start: int
    end: int

    @property
    def signed(self) -> bool:
        return bool(self.mac)


def format_token(number: str, style: TokenStyle = DEFAULT_STYLE, mac: str = "") -> str:
    """The token text for ``number`` (``[HD-1042]``, or ``[HD-1042:mac]`` with a MAC)."""
    if not re.fullmatch(style.number_pattern, number):
        raise ValueError(f"ticket number {number!r} does not match number_pattern")
    inner = f"{number}:{mac}" if mac else number
    return style.format.replace("{number}", inner)


def find_tokens(subject: str, style: TokenStyle = DEFAULT_STYLE) -> tuple[SubjectToken, ...]:
    """Every token in ``subject``, in order."""
    return tuple(SubjectToken(m.group("number"), (m.group("mac") or "").lower(), m.start(), m.end())
                 for m in style.regex.finditer(subject))


def strip_tokens(subject: str, style: TokenStyle = DEFAULT_STYLE) -> str:
    """``subject`` without its tokens (whitespace collapsed)."""
    return " ".join(style.regex.sub(" ", subject).split())


def tag_subject(subject: str, number: str, style: TokenStyle = DEFAULT_STYLE, keys: Keys | None = None) -> str:
    """``subject`` with exactly one token for ``number`` in front (signed when ``keys`` are
    given and the style has a MAC length); tokens of other tickets are left alone."""
    kept: list[str] = []
    last = 0
    for tok in find_tokens(subject, style):
        if tok.number == number:
            kept.append(subject[last:tok.start])
            last = tok.end
    rest = " ".join(("".join(kept) + subject[last:]).split())
    token = signed_token(number, keys, style) if keys is not None and style.mac_length else format_token(number, style)
    return f"{token} {rest}" if rest else token


def _mac(key: bytes, purpose: bytes, value: str, length: int) -> str:
    digest = hmac.new(key, purpose + b"\0" + value.encode("utf-8"), hashlib.sha256).digest()
    return base64.b32encode(digest).decode("ascii").lower().rstrip("=")[:length]


def _verify(keys: Keys, purpose: bytes, value: str, mac: str) -> bool:
    mac_b = mac.lower().encode("ascii", "replace")
    ok = False
    for key in normalize_keys(keys):
        expected = _mac(key, purpose, value, len(mac)).encode("ascii")
        ok |= hmac.compare_digest(expected, mac_b)
    return ok


def subject_mac(number: str, keys: Keys, style: TokenStyle = DEFAULT_STYLE) -> str:
    """The MAC for the subject token of ``number``, made with the first key."""
    return _mac(normalize_keys(keys)[0], b"ticketmx/subject", number, style.mac_length or 8)


def signed_token(number: str, keys: Keys, style: TokenStyle = DEFAULT_STYLE) -> str:
    """``[HD-1042:k7d3qa2m]``: the token with its MAC."""
    return format_token(number, style, subject_mac(number, keys, style))


def verify_subject_token(token: SubjectToken, keys: Keys, style: TokenStyle = DEFAULT_STYLE) -> bool:
    """True when the token carries a MAC of the configured length that one of ``keys``
    made for its number. (A shorter MAC is refused: no downgrade to fewer bits.)"""
    want = style.mac_length or 8
    if not token.mac or len(token.mac) != want:
        return False
    return _verify(keys, b"ticketmx/subject", token.number, token.mac)


def trusted_numbers(subject: str, keys: Keys | None, style: TokenStyle = DEFAULT_STYLE) -> tuple[
        tuple[str, ...], tuple[str, ...]]:
    """(numbers with a verifying MAC, numbers with no or a failing MAC) named in ``subject``.
    The first may thread for anyone (when policy allows), the second only for participants."""
    good: list[str] = []
    other: list[str] = []
    for tok in find_tokens(subject, style):
        if keys is not None and tok.mac and verify_subject_token(tok, keys, style):
            good.append(tok.number)
        else:
            other.append(tok.number)
    return tuple(dict.fromkeys(good)), tuple(n for n in dict.fromkeys(other) if n not in good)


# --------------------------------------------------------------------------- #
# Message-IDs
# --------------------------------------------------------------------------- #
def mint_message_id(ticket_id: str | int, keys: Keys, hostname: str, *, random: bytes | None = None) -> str:
    """A Message-ID (with angle brackets) for a mail about ``ticket_id``:
    ``<t1042.k{80-bit MAC}.r{80-bit random}@hostname>``. ``random`` is for tests."""
    tid = str(ticket_id)
    if not _TICKET_ID.match(tid):
        raise ValueError("ticket id must be 1-64 characters of A-Z a-z 0-9 _ -")
    host = hostname.strip().strip(".")
    if not host or any(c in host for c in "<>@ \t\r\n\"()[]\\,;:"):
        raise ValueError(f"invalid hostname for a Message-ID: {hostname!r}")
    rnd = random if random is not None else secrets.token_bytes(_MID_RANDOM_BYTES)
    r = base64.b32encode(rnd).decode("ascii").lower().rstrip("=")
    mac = _mac(normalize_keys(keys)[0], b"ticketmx/message-id", tid, _MID_MAC_CHARS)
    return f"<t{tid}.k{mac}.r{r}@{host}>"


def verify_message_id(mid: str, keys: Keys) -> str | None:
    """The ticket id a Message-ID we minted names, or None (not ours, or forged).
    Accepts the id with or without angle brackets."""
    m = _MID.match(mid.strip())
    if m is None:
        return None
    tid = m.group("id")
    if not _verify(keys, b"ticketmx/message-id", tid, m.group("mac")):
        return None
    return tid


# --------------------------------------------------------------------------- #
# Unsubscribe tokens (List-Unsubscribe, RFC 2369 / RFC 8058)
# --------------------------------------------------------------------------- #
_UNSUB = re.compile(r"(?<![A-Za-z0-9.])u1\.(?P<addr>[a-z2-7]{2,1100})\.(?P<mac>[a-z2-7]{16})(?![A-Za-z0-9])",
                    re.IGNORECASE)


def unsubscribe_token(address: str, keys: Keys) -> str:
    """``u1.<address, base32>.<80-bit MAC>``: names the contact it opts out and proves we issued it
    for that address, so nobody can opt out someone else (they would need the MAC of that address).
    The address travels in the token (not a database id): a stage verifies it without the store."""
    addr = address.strip().lower()
    b32 = base64.b32encode(addr.encode("utf-8")).decode("ascii").lower().rstrip("=")
    return f"u1.{b32}.{_mac(normalize_keys(keys)[0], b'ticketmx/unsubscribe', addr, _MID_MAC_CHARS)}"


def verify_unsubscribe_token(text: str, keys: Keys) -> str | None:
    """The address of the first valid unsubscribe token in ``text`` (a Subject), or None."""
    if not keys:
        return None
    for m in _UNSUB.finditer(text):
        b32 = m.group("addr").upper()
        try:
            addr = base64.b32decode(b32 + "=" * (-len(b32) % 8)).decode("utf-8")
        except (ValueError, UnicodeDecodeError):
            continue
        if "@" in addr and _verify(keys, b"ticketmx/unsubscribe", addr, m.group("mac")):
            return addr
    return None


