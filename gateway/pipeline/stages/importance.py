"""Importance of a message from its headers: "low" | "normal" | "high".

Pure functions, no I/O. Headers, first one that says something wins:

* ``Importance`` (RFC 2156; Outlook): ``high`` / ``normal`` / ``low``;
* ``X-Priority`` (de facto): ``1``/``2`` high, ``3`` normal, ``4``/``5`` low (``"1 (Highest)"``);
* ``Priority`` (RFC 2156): ``urgent`` high, ``normal``, ``non-urgent`` low;
* ``X-MSMail-Priority`` (Outlook Express): ``High`` / ``Normal`` / ``Low``.

Unreadable values are skipped; with nothing usable the message is "normal".
"""
from __future__ import annotations

import re
from collections.abc import Iterable

from gateway.pipeline.parse.model import ParsedMessage

__all__ = ["importance", "importance_from_headers", "LOW", "NORMAL", "HIGH"]

LOW, NORMAL, HIGH = "low", "normal", "high"
_ORDER = ("importance", "x-priority", "priority", "x-msmail-priority")
_WORDS = {
    "high": HIGH, "highest": HIGH, "urgent": HIGH, "1": HIGH, "2": HIGH,
    "normal": NORMAL, "medium": NORMAL, "3": NORMAL,
    "low": LOW, "lowest": LOW, "non-urgent": LOW, "nonurgent": LOW, "4": LOW, "5": LOW,
}
_FIRST_TOKEN = re.compile(r"[A-Za-z-]+|\d")


def _level(name: str, value: str) -> str | None:
    m = _FIRST_TOKEN.search(value.strip().lower())
    if m is None:
        return None
    token = m.group(0)
    if name == "x-priority" and not token.isdigit():
        return _WORDS.get(token)
    if name != "x-priority" and token.isdigit():
        return None
    return _WORDS.get(token)


def importance_from_headers(headers: Iterable[tuple[str, str]]) -> str:
    """"low" | "normal" | "high" from (name, value) header pairs."""
    first: dict[str, str] = {}
    for name, value in headers:
        lname = name.strip().lower()
        if lname in _ORDER and lname not in first:
            level = _level(lname, value or "")
            if level is not None:
                first[lname] = level
    for lname in _ORDER:
        if lname in first:
            return first[lname]
    return NORMAL


def importance(parsed: ParsedMessage) -> str:
    """"low" | "normal" | "high" for a parsed message."""
    return importance_from_headers(parsed.headers)
