"""The one reading of a From field's mailboxes (docs/security.md, invariant 8).

Both readers of From use :func:`read_mailboxes`: the SMTP side (``dmarc.parse_from``, what DMARC
evaluates) and the pipeline's MIME parser (``gateway.pipeline.parse.mime``, the requester's display name).
One function means the two cannot drift apart; the identity stage still compares their results,
because they may be given different text (header section boundaries, unfolding).

Beyond RFC 5322 it accepts what real senders write and has one clear reading:

* an RFC 2047 encoded word in the phrase that carries a literal special (``,`` ``<`` ``"`` ...),
  which RFC 2047 forbids and Outlook and others send (``=?iso-8859-1?Q?M=FCller,=20Hans?= <a@b>``):
  read as one quoted phrase, not split at its comma;
* ``addr (Display Name)``: the comment is the display name (as ``getaddresses`` reads it);
* a quoted local part that needs no quotes (``"john.doe"@example.com``) is stored without them.
"""
from __future__ import annotations

import email.utils
import re

__all__ = ["MAX_FROM_CHARS", "read_mailboxes", "simple_from", "too_complex", "normalise_address"]

MAX_FROM_CHARS = 1_000
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]"
_DOT_ATOM = re.compile(rf"{_ATEXT}+(?:\.{_ATEXT}+)*")
_ADDR = rf"{_ATEXT}+(?:\.{_ATEXT}+)*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*"
# "Display Name <local@domain>" (phrase of atext, dots and spaces) or a bare "local@domain"
# Possessive: the leading blanks and the phrase overlap, and backtracking between them was
# quadratic on a long run of blanks.
_SIMPLE_FROM = re.compile(
    rf"[ \t]*+(?:([A-Za-z0-9!#$%&'*+/=?^_`{{|}}~. \t-]*+)<({_ADDR})>|({_ADDR}))[ \t]*+")
# An encoded word whose text carries a character that is special in a phrase (only Q text can).
_EW = re.compile(r"=\?[^?\s]+\?[Qq]\?[^?]*\?=")
_PHRASE_SPECIALS = frozenset(',;:<>@"()[]\\')

Pair = tuple[str, str]


def simple_from(value: str) -> list[Pair] | None:
    """(phrase, address) of the everyday From value, exactly the address ``email.utils.getaddresses``
    finds (``tests/auth/test_dmarc_from.py`` compares them on random values); None for anything else."""
    m = _SIMPLE_FROM.fullmatch(value)
    if m is None:
        return None
    if m.group(2):
        return [(" ".join(m.group(1).split()), m.group(2))]
    return [("", m.group(3))]


# email.utils.getaddresses recurses once per group (``a:``) and per nested comment: a From of 1,000
# ``a:`` raised RecursionError (a 451 and a 1,000-line traceback on every try). A real From has one
# group at most and comments nested a level or two; far beyond that it is not a From anyone can read,
# so it goes through ``[auth] malformed_from`` like any other unreadable From.
_MAX_COLONS = 64
_MAX_COMMENT_DEPTH = 16


def too_complex(value: str) -> str | None:
    """Why the stdlib parser must not be given ``value`` (None: it may). Linear, and only for the
    rare From that the fast path did not read."""
    if value.count(":") > _MAX_COLONS:
        return f"more than {_MAX_COLONS} ':' (groups)"
    if value.count("(") > _MAX_COMMENT_DEPTH:
        depth = deepest = 0
        escaped = quoted = False
        for c in value:
            if escaped:
                escaped = False
            elif c == "\\":
                escaped = True
            elif c == '"' and depth == 0:
                quoted = not quoted
            elif quoted:
                continue
            elif c == "(":
                depth += 1
                deepest = max(deepest, depth)
            elif c == ")" and depth:
                depth -= 1
        if deepest > _MAX_COMMENT_DEPTH:
            return f"comments nested deeper than {_MAX_COMMENT_DEPTH}"
    return None


def _quote_wild_words(value: str) -> str:
    """Quote each encoded word that stands in a phrase (outside quotes and comments, not touching
    an ``@``) and carries a phrase special, so that the address parser reads it as one word.
    Linear: one pass over ``value`` (at most MAX_FROM_CHARS)."""
    words = [m for m in _EW.finditer(value) if _PHRASE_SPECIALS.intersection(m.group(0))]
    if not words:
        return value
    out: list[str] = []
    pos = 0
    depth = 0
    quoted = escaped = False
    i = 0
    for m in words:
        while i < m.start():                 # the quoting state at the word's start
            c = value[i]
            if escaped:
                escaped = False
            elif c == "\\":
                escaped = True
            elif quoted:
                quoted = c != '"'
            elif c == '"' and depth == 0:
                quoted = True
            elif c == "(":
                depth += 1
            elif c == ")" and depth:
                depth -= 1
            i += 1
        if quoted or escaped or depth or i != m.start():
            continue
        before = value[:m.start()].rstrip()[-1:]
        after = value[m.end():].lstrip()[:1]
        if before == "@" or after == "@" or value[m.end():m.end() + 1] in ("@", "."):
            continue                          # part of an address, not a phrase
        text = m.group(0).replace("\\", "\\\\").replace('"', '\\"')
        out.append(value[pos:m.start()])
        out.append(f'"{text}"')
        pos = i = m.end()
    out.append(value[pos:])
    return "".join(out)


def normalise_address(addr: str) -> str:
    """``"john.doe"@example.com`` -> ``john.doe@example.com``: quotes dropped where the local part is
    a dot-atom without them (RFC 5322 3.4.1: the same address); white space inside the domain (a fold
    in a domain literal) dropped; anything else unchanged."""
    local, at, domain = addr.rpartition("@")
    if not at:
        return addr
    if any(c.isspace() for c in domain):     # folding white space inside a domain (literal): not part of it
        domain = "".join(domain.split())
    if local.startswith('"') and len(local) > 2 and local.endswith('"') and _DOT_ATOM.fullmatch(local[1:-1]):
        local = local[1:-1]
    return f"{local}@{domain}"


def read_mailboxes(value: str) -> tuple[list[Pair], str | None]:
    """The (display name as written, address) pairs of an unfolded From value, or why it cannot be
    read (too long or too complex for the bounded parser). The display name is not decoded (RFC 2047
    words are left as they are); addresses are normalised (:func:`normalise_address`)."""
    pairs = simple_from(value)
    if pairs is None:
        # getaddresses is super-linear on some values and recurses on others: it never sees more
        # than MAX_FROM_CHARS, nor a value with too many groups or too deep comments.
        if len(value) > MAX_FROM_CHARS:
            return [], f"From header field too long to read ({len(value)} > {MAX_FROM_CHARS} characters)"
        problem = too_complex(value)
        if problem is not None:
            return [], f"From header field too complex to read: {problem}"
        try:
            pairs = [(n, a) for n, a in email.utils.getaddresses([_quote_wild_words(value)]) if a]
        except (RecursionError, ValueError, IndexError):  # the bounds above should make this unreachable
            return [], "From header field too complex to read: the address parser failed"
    return [(n, normalise_address(a)) for n, a in pairs], None
