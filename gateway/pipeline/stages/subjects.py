"""Subject normalisation: reply/forward prefixes and list tags off, our ticket token kept.

Pure functions, no I/O.
"""
from __future__ import annotations

import re

from gateway.pipeline.stages.tokens import DEFAULT_STYLE

from gateway.config.threading import TokenStyle

__all__ = ["normalize_subject", "subject_key", "is_reply_subject", "is_forward_subject"]

# Reply prefixes, by language: en/la Re, de AW/Antw, nl Antw/Antwoord, sv/da/no SV, fi VS,
# fr Réf, it R/RIF, pl Odp, hr Odg, pt RES, tr YNT, el ΑΠ/ΣΧΕΤ, ru Ответ/Отв, he/ar,
# zh 回复/回覆/答复, ja 返信, ko 회신/답장.
_REPLY = ("re", "aw", "antw", "antwort", "antwoord", "sv", "vs", "réf", "ref", "rif", "r", "odp", "odg", "res",
          "ynt", "απ", "σχετ", "ответ", "отв", "תשובה", "رد", "回复", "回覆", "答复", "答覆", "返信",
          "회신", "답장", "atb", "vá", "odgovor", "svar")
# Forward prefixes: Fwd/Fw, de WG, fr TR, es RV, pt ENC, pl PD, nl Doorst/Wtr, fi VL, da VS,
# tr İLT, ru ПР/Пересл, zh 转发/轉寄, ja 転送, ko 전달. (Danish forward "VS:" is also the
# Finnish reply prefix: it is stripped, but counted as a reply.)
_FORWARD = ("fwd", "fw", "wg", "tr", "rv", "enc", "pd", "doorst", "wtr", "vl", "vb", "ilt", "i̇lt",
            "пр", "пересл", "fwd", "转发", "轉寄", "転送", "전달", "továbbítás", "prosl")


def _alt(words: tuple[str, ...]) -> str:
    return "|".join(re.escape(w) for w in sorted(set(words), key=len, reverse=True))


_COUNTER = r"(?:\s*(?:\[\d{1,4}\]|\(\d{1,4}\)|\^\d{1,4}|\*\d{1,4}))?"
_PREFIX = re.compile(r"^\s*(?:" + _alt(_REPLY + _FORWARD) + r")\.?" + _COUNTER + r"\s*[:：]\s*", re.IGNORECASE)
_REPLY_PREFIX = re.compile(r"^\s*(?:" + _alt(_REPLY) + r")\.?" + _COUNTER + r"\s*[:：]", re.IGNORECASE)
_FORWARD_PREFIX = re.compile(r"^\s*(?:" + _alt(_FORWARD) + r")\.?" + _COUNTER + r"\s*[:：]", re.IGNORECASE)
_LIST_TAG = re.compile(r"^\s*\[[^\[\]\n]{1,60}\]\s*")
_FWD_SUFFIX = re.compile(r"\s*\((?:fwd|fw)\)\s*$", re.IGNORECASE)


def normalize_subject(s: str, style: TokenStyle | None = DEFAULT_STYLE) -> str:
    """``s`` without reply/forward prefixes (``Re:``, ``Fwd:``, ``AW:``, ``WG:``, ``SV:``,
    ``RE[2]:``, ``Re^2:``, ``Réf. :``, ``回复：`` …, repeatedly) and without list tags such as
    ``[listname]`` at the front. A ticket token of ``style`` at the front is kept (moved
    before the rest, prefixes behind it stripped too): ``"Re: [HD-7] AW: Drucker"`` →
    ``"[HD-7] Drucker"``. Whitespace is collapsed. ``style=None``: no token is special.
    """
    rest = " ".join((s or "").split())
    kept: list[str] = []
    token_re = style.regex if style is not None else None
    for _ in range(100):                     # bounded: each round removes something
        m = _PREFIX.match(rest)
        if m and m.end() > 0:
            rest = rest[m.end():]
            continue
        if token_re is not None:
            t = token_re.match(rest)
            if t is not None:
                kept.append(t.group(0))
                rest = rest[t.end():].lstrip()
                continue
        m = _LIST_TAG.match(rest)
        if m and rest[m.end():].strip():
            rest = rest[m.end():]
            continue
        break
    rest = _FWD_SUFFIX.sub("", rest).strip()
    return " ".join([*kept, rest]).strip() if rest else " ".join(kept)


def subject_key(s: str, style: TokenStyle | None = DEFAULT_STYLE) -> str:
    """A comparison key for "same subject" matching: normalised, tokens removed, case-folded."""
    text = normalize_subject(s, style)
    if style is not None:
        text = style.regex.sub(" ", text)
    return " ".join(text.split()).casefold()


def is_reply_subject(s: str) -> bool:
    return bool(_REPLY_PREFIX.match(s or ""))


def is_forward_subject(s: str) -> bool:
    """True when the subject starts (after list tags and reply prefixes) with a forward prefix."""
    rest = s or ""
    for _ in range(20):
        if _FORWARD_PREFIX.match(rest):
            return True
        m = _REPLY_PREFIX.match(rest) or _LIST_TAG.match(rest)
        if not m:
            return False
        rest = rest[m.end():].lstrip(" :：")
    return False
