"""Reopen with sense: is a customer's reply to a resolved ticket only a "thanks, works now"?

Pure functions, no I/O. A reply is *thanks-only* when its new text (quotes and signature already
stripped) is short, asks nothing (no ``?``), contains at least one thanks/confirmation phrase, and
nothing is left once every thanks phrase, every filler phrase (greetings, sign-offs) and the
sender's own name are taken out. Any other word left over ("but", "still", "again" after "broke",
"not") means the customer says something more, and the ticket reopens as before.

Phrases are matched as whole word sequences on case-folded text with punctuation removed, longest
first; lists are per language (``[threading] thanks_phrases = {en = [...], de = [...]}``) and a
reply is checked against all of them (we do not guess its language).
"""
from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from functools import lru_cache

__all__ = ["DEFAULT_THANKS", "DEFAULT_FILLER", "is_thanks_only", "words"]

DEFAULT_THANKS: dict[str, tuple[str, ...]] = {
    "en": (
        "thanks", "thank you", "thankyou", "thx", "ty", "many thanks", "thanks a lot", "thank you very much",
        "thank you so much", "thanks so much", "thanks very much", "thanks again", "thank you again",
        "much appreciated", "appreciated", "appreciate it", "i appreciate it", "great", "perfect", "awesome",
        "excellent", "brilliant", "wonderful", "ok", "okay", "all good", "all set", "got it", "that worked",
        "it worked", "this worked", "worked", "works", "it works", "works now", "it works now",
        "it is working now", "it's working now", "its working now", "working now", "works again",
        "it works again", "working again", "it's working again", "that fixed it", "this fixed it",
        "fixed", "problem solved", "issue solved", "solved", "issue resolved", "resolved", "all sorted",
        "sorted", "that did it", "that did the trick", "did the trick", "for your help", "for the help",
        "for the quick help", "for the quick response", "for the quick reply", "for your quick response",
        "for your quick reply", "for your support", "for the fix", "for fixing it", "for sorting this out",
        "you can close the ticket", "you can close this ticket", "you can close it", "please close the ticket",
        "please close this ticket", "no further help needed", "nothing else needed",
    ),
    "de": (
        "danke", "danke schön", "dankeschön", "danke sehr", "vielen dank", "vielen lieben dank",
        "herzlichen dank", "besten dank", "tausend dank", "danke nochmal", "nochmals danke",
        "nochmals vielen dank", "merci", "super", "perfekt", "prima", "klasse", "toll", "top", "passt",
        "alles klar", "ok", "okay", "funktioniert", "funktioniert jetzt", "funktioniert wieder",
        "es funktioniert", "es funktioniert jetzt", "es funktioniert wieder", "jetzt funktioniert es",
        "jetzt funktioniert alles", "funktioniert alles", "läuft", "läuft wieder", "läuft jetzt", "es läuft wieder",
        "hat geklappt", "hat funktioniert", "es hat geklappt", "klappt", "klappt jetzt", "klappt wieder",
        "problem gelöst", "problem behoben", "gelöst", "behoben", "erledigt", "hat sich erledigt",
        "für die hilfe", "für ihre hilfe", "für deine hilfe", "für die schnelle hilfe",
        "für die schnelle antwort", "für die schnelle rückmeldung", "für ihre unterstützung",
        "für die unterstützung", "das ticket kann geschlossen werden", "sie können das ticket schließen",
        "ticket kann geschlossen werden",
    ),
}
DEFAULT_FILLER: dict[str, tuple[str, ...]] = {
    "en": (
        "hi", "hello", "hey", "dear", "team", "support", "support team", "guys", "all", "again", "very much",
        "so much", "a lot", "really", "regards", "best", "best regards", "kind regards", "warm regards",
        "cheers", "br", "kr", "yours", "sincerely", "yours sincerely", "have a nice day", "have a great day",
        "have a good day", "have a nice weekend", "best wishes", "sent from my iphone", "sent from my phone",
        "now", "and", "it", "this", "that", "everything", "yes", "yep", "indeed",
    ),
    "de": (
        "hallo", "hi", "liebes", "liebe", "lieber", "sehr geehrte", "sehr geehrter", "sehr geehrte damen und herren",
        "team", "support", "supportteam", "support team", "nochmal", "nochmals", "sehr", "wirklich", "vielmals",
        "grüße", "gruß", "viele grüße", "liebe grüße", "beste grüße", "freundliche grüße",
        "mit freundlichen grüßen", "mfg", "lg", "vg", "schönen tag noch", "schönes wochenende",
        "einen schönen tag", "von meinem iphone gesendet", "jetzt", "und", "es", "alles", "wieder", "ja",
        "dir", "euch", "ihnen",
    ),
}

_WORD = re.compile(r"[^\W_]+(?:['’][^\W_]+)*", re.UNICODE)


def words(text: str) -> list[str]:
    """Case-folded words of ``text`` (letters and digits; apostrophes inside a word kept, as ')."""
    return [w.replace("’", "'") for w in _WORD.findall(text.casefold())]


@lru_cache(maxsize=16)
def _compiled(phrases: tuple[str, ...]) -> dict[str, tuple[tuple[str, ...], ...]]:
    """Phrases as word tuples indexed by their first word, longest first (so "thank you very much"
    wins over "thank you"): one dict lookup per position instead of a scan of every phrase."""
    index: dict[str, list[tuple[str, ...]]] = {}
    for seq in {tuple(words(p)) for p in phrases}:
        if seq:
            index.setdefault(seq[0], []).append(seq)
    return {k: tuple(sorted(v, key=len, reverse=True)) for k, v in index.items()}


def _flatten(table: Mapping[str, Sequence[str]] | None, default: Mapping[str, Sequence[str]]) -> tuple[str, ...]:
    source = default if table is None else table
    return tuple(p for lst in source.values() for p in lst)


def is_thanks_only(text: str, *, sender_name: str = "", phrases: Mapping[str, Sequence[str]] | None = None,
                   filler: Mapping[str, Sequence[str]] | None = None, max_chars: int = 200) -> bool:
    """True when ``text`` (the new text of a reply) only thanks or confirms; see the module doc.

    ``phrases`` / ``filler``: {language: [phrase, ...]}; None takes the built-in lists, an empty
    table of phrases turns the rule off (nothing is thanks-only)."""
    text = text.strip()
    if not text or len(text) > max_chars or "?" in text or "¿" in text:
        return False
    thanks = _compiled(_flatten(phrases, DEFAULT_THANKS))
    if not thanks:
        return False
    fill = _compiled(_flatten(filler, DEFAULT_FILLER))
    name = set(words(sender_name))
    seq = words(text)
    i, found = 0, False
    while i < len(seq):
        hit = _match(seq, i, thanks)
        if hit:
            found, i = True, i + hit
            continue
        hit = 1 if seq[i] in name else _match(seq, i, fill)
        if not hit:
            return False  # a word that is neither thanks nor filler: the customer says more
        i += hit
    return found


def _match(seq: list[str], i: int, patterns: dict[str, tuple[tuple[str, ...], ...]]) -> int:
    for p in patterns.get(seq[i], ()):
        if tuple(seq[i:i + len(p)]) == p:
            return len(p)
    return 0
