"""Guess the legacy charset of a short header value that arrived as raw 8-bit bytes.

Used by the MIME parser (gateway/pipeline/parse/mime.py) after the charset declared for the body and
before Latin-1, the order real MUAs use for raw 8-bit Subject and display names. charset-normalizer
proposes the charsets whose decoding is not chaotic; on a few words it cannot rank them (its language
coherence needs longer text: GBK came out as Korean, KOI8-R as Arabic), so the candidates are ranked
here by how odd their decoding looks: scripts mixed inside a word (Hangul next to Han is the classic
GBK-read-as-CP949 mojibake), upper case inside a lower-case word (KOI8-R read as CP1251 inverts the
case), symbols and controls among letters, rare Han characters. Ties go to the charset most seen in
mail. Bounded: only values up to MAX_GUESS bytes are guessed (the caller also caps the bytes per message).
"""
from __future__ import annotations

import functools
import logging

__all__ = ["MAX_GUESS", "guess"]

MAX_GUESS = 512   # bytes; a longer header value is not guessed (Latin-1 then)

# Legacy charsets seen in raw 8-bit mail headers, most common first (ties go to the earlier one).
CANDIDATES = ("gb18030", "cp932", "cp1251", "koi8_r", "cp1252", "cp1250", "big5", "cp949", "euc_jp",
              "cp1253", "koi8_u", "cp1254", "cp1257")
_RANK = {c: i for i, c in enumerate(CANDIDATES)}
_ALIAS = {"gb2312": "gb18030", "gbk": "gb18030", "shift_jis": "cp932", "shift_jis_2004": "cp932",
          "euc_kr": "cp949", "windows-1252": "cp1252", "latin_1": "cp1252", "iso8859_1": "cp1252"}

logging.getLogger("charset_normalizer").setLevel(logging.ERROR)   # it logs every probe at DEBUG/INFO


def _script(o: int) -> str:
    """A coarse script class of a code point ('' = neutral: digits, spaces, punctuation)."""
    if o < 0x80:
        return "L" if (0x41 <= o <= 0x5A or 0x61 <= o <= 0x7A) else ""
    if 0xC0 <= o <= 0x24F and o not in (0xD7, 0xF7):
        return "L"
    if 0x370 <= o <= 0x3FF:
        return "G"
    if 0x400 <= o <= 0x52F:
        return "C"
    if 0x590 <= o <= 0x5FF:
        return "H"
    if 0x600 <= o <= 0x6FF:
        return "A"
    if 0x3000 <= o <= 0x30FF or 0x3400 <= o <= 0x4DBF or 0x4E00 <= o <= 0x9FFF or 0xFF01 <= o <= 0xFF60:
        return "J"
    if 0xAC00 <= o <= 0xD7AF or 0x1100 <= o <= 0x11FF or 0x3130 <= o <= 0x318F:
        return "K"
    if 0x2000 <= o <= 0x206F or 0x20A0 <= o <= 0x20CF or o in (0xAB, 0xBB, 0xB0, 0xA7, 0xA9, 0xAE, 0xA0):
        return ""   # general punctuation, currency, the Latin-1 signs text really uses
    return "X"      # other symbols, C1 controls, box drawing, half-width katakana, private use


@functools.lru_cache(maxsize=4096)
def _rare_han(ch: str) -> bool:
    """A Han character outside the first (most frequent) level of GB2312, Big5 and JIS X 0208."""
    for codec, lo, hi in (("gb2312", 0xB0, 0xD7), ("big5", 0xA4, 0xC6), ("cp932", 0x88, 0x98)):
        try:
            if lo <= ch.encode(codec)[0] <= hi:
                return False
        except UnicodeEncodeError:
            continue
    return True


_JAPANESE = frozenset({"cp932", "euc_jp"})


def oddness(text: str, codec: str = "") -> int:
    """How much ``text`` looks like a wrong decoding (0 for ordinary text of one script per word).
    Kana decoded by a non-Japanese codec count too: GB2312 and EUC-JP share the kana rows, so
    Japanese read as GBK keeps its kana and garbles only the kanji."""
    score = 0
    if codec not in _JAPANESE:
        score += 2 * sum(1 for ch in text if 0x3041 <= ord(ch) <= 0x30FF)
    prev = ""
    prev_lower = False
    for ch in text:
        o = ord(ch)
        s = _script(o)
        if not s:
            prev, prev_lower = "", False
            continue
        if s == "X":
            score += 3 if 0x80 <= o <= 0x9F or 0xE000 <= o <= 0xF8FF else 2
            prev, prev_lower = "", False
            continue
        if prev and s != prev and {s, prev} != {"J", "L"}:   # "iPhone手机" is real; Hangul+Han is not
            score += 2
        if s == "J" and 0x4E00 <= o <= 0x9FFF and _rare_han(ch):
            score += 1
        if prev_lower and ch.isupper():
            score += 1
        prev, prev_lower = s, ch.islower()
    return score


def guess(data: bytes) -> tuple[str, str] | None:
    """(text, codec) for raw 8-bit bytes of unknown charset, or None when no candidate fits
    (or ``data`` is longer than MAX_GUESS). Never raises."""
    if len(data) > MAX_GUESS or data.isascii():
        return None
    names: list[str] = []
    try:
        from charset_normalizer import from_bytes
        for match in from_bytes(data, cp_isolation=list(CANDIDATES), explain=False):
            for name in (match.encoding, *match.could_be_from_charset):
                name = _ALIAS.get(name, name)
                if name in _RANK and name not in names:
                    names.append(name)
    except Exception:   # noqa: BLE001 - the detector is advice; without it, Latin-1
        return None
    best: tuple[int, int, str, str] | None = None
    for codec in names:
        try:
            text = data.decode(codec)
        except (UnicodeError, LookupError):
            continue
        key = (oddness(text, codec), _RANK[codec], text, codec)
        if best is None or key[:2] < best[:2]:
            best = key
    return (best[2], best[3]) if best is not None else None
