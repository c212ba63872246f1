"""Forwarded mail: find the original sender, subject and body inside a forward.

Pure functions, no I/O. Used when a configured agent forwards a customer's mail in, so
that the customer (not the agent) becomes the requester. Whether the sender is an agent
is the caller's decision.

Recognised, in this order:

1. an inline forward with a marker line: "---------- Forwarded message ---------" (Gmail),
   "-------- Forwarded Message --------" (Thunderbird), "Begin forwarded message:" (Apple
   Mail), "-----Original Message-----" / an underscore rule (Outlook), and their
   localised forms (see ``quotes.FORWARD_MARKER`` / ``ORIGINAL_MARKER``), followed by a
   header block (From/Date/Subject/To, localised; ``>``-quoted or not);
2. an attached message (``message/rfc822`` attachment): its own From, Subject and body;
3. an Outlook-style header block (``From: … Sent: … Subject: …``) without a marker.

Nested forwards: the outermost one wins (the mail the agent forwarded).
"""
from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from gateway.pipeline.parse.model import ParsedMessage
from gateway.pipeline.stages.quotes import FORWARD_MARKER, ORIGINAL_MARKER, header_line
from gateway.pipeline.stages.subjects import normalize_subject

__all__ = ["ForwardedOriginal", "find_forwarded", "parse_inline_forward"]

_ADDR = re.compile(r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
                   r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)+")
_RULE = re.compile(r"^\s*(?:_{8,}|-{8,})\s*$")
_QUOTE_PREFIX = re.compile(r"^[ \t]*>[ \t]?")
_MAILTO_LINK = re.compile(r"<a\b[^>]*?href\s*=\s*[\"']mailto:([^\"'?>\s]+)[^>]*>(.{0,500}?)</a\s*>", re.I | re.S)
_TAGS = re.compile(r"<[^>]+>")
_ON_BEHALF = re.compile(r"\s+(?:on behalf of|im auftrag von|au nom de|en nombre de|namens)\b.*$", re.I)


@dataclass(frozen=True, slots=True)
class ForwardedOriginal:
    from_addr: str          # "" when the forward names no address (see from_name)
    from_name: str
    subject: str
    body: str               # the original message's text (de-quoted)
    date: str = ""
    kind: str = ""          # "inline" | "rfc822" | "header-block"
    note: str = ""          # what the forwarder wrote above the forward


def _split_from(value: str, html: str = "") -> tuple[str, str]:
    """(address, name) from a From value as forwards print it."""
    v = value.replace("*", " ").strip()
    v = re.sub(r"\[\s*mailto:([^\]\s]+)\s*\]", r"<\1>", v, flags=re.I)
    v = re.sub(r"<\s*mailto:", "<", v, flags=re.I)
    m = _ADDR.search(v)
    addr = m.group(0) if m else ""
    name = v
    if m:
        name = (v[:m.start()] + v[m.end():])
    name = _ON_BEHALF.sub("", name)
    name = re.sub(r"[<>()\[\]]", " ", name)
    name = " ".join(name.split()).strip(" \"'\u201c\u201d,;:")
    if name.lower() == addr.lower():
        name = ""
    if not addr and html and name:
        for link in _MAILTO_LINK.finditer(html):
            text = " ".join(_TAGS.sub(" ", link.group(2)).split())
            if text and (text.casefold() == name.casefold() or name.casefold() in text.casefold()):
                addr = link.group(1)
                break
    if addr:
        local, _, domain = addr.rpartition("@")
        addr = f"{local}@{domain.lower()}"
    return addr, name


def _dequote(lines: list[str]) -> list[str]:
    return [_QUOTE_PREFIX.sub("", line, count=1) for line in lines]


def _header_block(lines: list[str], start: int) -> tuple[dict[str, str], int] | None:
    """Parse the header block that starts at ``lines[start]``: (headers, index after it)."""
    headers: dict[str, str] = {}
    last_kind = ""
    i = start
    while i < len(lines) and i - start < 20:
        line = lines[i]
        if not line.strip():
            if headers:
                break
            i += 1
            continue
        h = header_line(line)
        if h is not None:
            kind, value = h
            if kind not in headers:
                headers[kind] = value
            last_kind = kind
        elif last_kind and headers:
            # a wrapped value ("To: a@x, b@y,\n c@z") continues the previous header
            if last_kind in headers and len(line.strip()) < 200:
                headers[last_kind] = f"{headers[last_kind]} {line.strip()}".strip()
                last_kind = last_kind if line.startswith((" ", "\t")) else ""
            else:
                break
        else:
            break
        i += 1
    if "from" not in headers or len(headers) < 2:
        return None
    return headers, i


_HEADER_WINDOW = 20   # _header_block reads at most 20 lines
# Candidate header blocks tried per search (a marker line or From line that turns out not to start
# a forward). Real forwards are found at the first; 16,000 marker lines cost seconds.
MAX_FORWARD_CANDIDATES = 100


def _build(lines: list[str], header_at: int, note: Callable[[], str], kind: str, outer_subject: str,
           html: str) -> ForwardedOriginal | None:
    quoted = bool(_QUOTE_PREFIX.match(lines[header_at]))
    # The header block is read from a window of its at most 20 lines + blank lines before it; the
    # rest is copied only once a forward is found (each failed candidate copied the whole text:
    # quadratic in the number of marker lines).
    window = lines[header_at:header_at + _HEADER_WINDOW]
    parsed = _header_block(_dequote(window) if quoted else window, 0)
    if parsed is None:
        return None
    headers, end = parsed
    addr, name = _split_from(headers["from"], html)
    if not addr and not name:
        return None
    rest = lines[header_at + end:]
    body = "\n".join(_dequote(rest) if quoted else rest).strip("\n")
    body = "\n".join(line.rstrip() for line in body.split("\n")).strip()
    subject = headers.get("subject", "").strip() or normalize_subject(outer_subject, None)
    return ForwardedOriginal(from_addr=addr, from_name=name, subject=subject, body=body,
                             date=headers.get("date", "").strip(), kind=kind, note=note())


def parse_inline_forward(text: str, html: str = "", subject: str = "") -> ForwardedOriginal | None:
    """The original of an inline forward in ``text`` (``html``, when given, supplies an
    address the text shows only as a name; ``subject`` is the outer subject, used when
    the forward shows none)."""
    text = (text or "").replace("\r\n", "\n").replace("\r", "\n")
    lines = text.split("\n")
    n = len(lines)
    tries = 0
    # 1. a marker line followed by a header block
    for i, line in enumerate(lines):
        plain = _QUOTE_PREFIX.sub("", line)
        if not (FORWARD_MARKER.match(plain) or ORIGINAL_MARKER.match(plain) or _RULE.match(plain)):
            continue
        j = i + 1
        while j < n and not _QUOTE_PREFIX.sub("", lines[j]).strip():
            j += 1
        if j >= n or header_line(_QUOTE_PREFIX.sub("", lines[j])) is None:
            continue
        tries += 1
        if tries > MAX_FORWARD_CANDIDATES:
            break
        found = _build(lines, j, lambda i=i: "\n".join(lines[:i]).strip(), "inline", subject, html)
        if found is not None:
            return found
    # 3. a bare header block
    tries = 0
    for i, line in enumerate(lines):
        h = header_line(_QUOTE_PREFIX.sub("", line))
        if h is None or h[0] != "from":
            continue
        tries += 1
        if tries > MAX_FORWARD_CANDIDATES:
            break
        found = _build(lines, i, lambda i=i: "\n".join(lines[:i]).strip(), "header-block", subject, html)
        if found is not None:
            return found
    return None


def _has_marker(text: str) -> bool:
    for line in text.replace("\r\n", "\n").split("\n"):
        plain = _QUOTE_PREFIX.sub("", line)
        if FORWARD_MARKER.match(plain) or ORIGINAL_MARKER.match(plain):
            return True
    return False


def find_forwarded(parsed: ParsedMessage) -> ForwardedOriginal | None:
    """The original message inside a forward, or None when ``parsed`` is no forward.
    Order: a marked inline forward, else an attached message/rfc822, else a bare
    Outlook-style header block in the body."""
    text, html = parsed.body_text, parsed.body_html
    if _has_marker(text):
        found = parse_inline_forward(text, html, parsed.subject)
        if found is not None and found.kind == "inline":
            return found
    for att in parsed.attachments:
        if att.content_type in ("message/rfc822", "message/global") and att.content:
            from gateway.pipeline.parse.mime import parse_message  # pure; imported here to keep this module light

            inner = parse_message(att.content)
            if inner.from_addr or inner.from_name:
                return ForwardedOriginal(from_addr=inner.from_addr, from_name=inner.from_name,
                                         subject=inner.subject, body=inner.body_text.strip(), date=inner.date,
                                         kind="rfc822", note=text.strip())
    return parse_inline_forward(text, html, parsed.subject)
