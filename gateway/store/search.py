"""Full-text search over ticket subjects and article text, and the ticket list's keyset cursor.

Both stores keep their index in step inside the transaction that writes the article
(gateway/store/sqlite_deliver.py, postgres_deliver.py): a committed article is findable, a rolled
back one never was.

* **SQLite**: an FTS5 table ``ticket_search`` (subject, body), one row per article, its rowid
  ``ticket_id << SEARCH_SHIFT | n`` (n: the article's ordinal on its ticket). A ticket's rows are
  adjacent and rowid order is ticket order, so "newest tickets first" is a descending rowid walk
  that FTS5 does without sorting, and a page cursor is a rowid bound.
* **PostgreSQL**: ``tickets.search``, a positionless ``tsvector`` ('simple' configuration: no
  stemming, any language) that each article extends, under a GIN index.

With encryption at rest the words must not reach the disk either: what is indexed is then a keyed
hash of each word (:meth:`Cipher.search_token`), and a query is hashed the same way — exact words
only (no prefixes), still no plaintext in the database.
"""
from __future__ import annotations

import base64
import re
import unicodedata

from gateway.store.crypto import Cipher

SEARCH_SHIFT = 20                  # up to 2**20 - 1 articles per ticket in the SQLite index
MAX_INDEX_CHARS = 200_000          # characters of one article's body indexed (a huge body: its start)
MAX_QUERY_TERMS = 16
_WORD = re.compile(r"\w+")


def words(text: str) -> list[str]:
    """Words as the hashed index sees them: case-folded, diacritics removed (as FTS5's unicode61)."""
    folded = unicodedata.normalize("NFKD", text.casefold())
    return _WORD.findall("".join(c for c in folded if not unicodedata.combining(c)))


def index_text(cipher: Cipher, text: str) -> str:
    """What the index gets for ``text``: the text itself, or its words' keyed hashes when encrypting."""
    text = text[:MAX_INDEX_CHARS]
    if not cipher.enabled:
        return text
    return " ".join(cipher.search_token(w) for w in words(text))


def search_rowid(ticket_id: int, ordinal: int) -> int:
    return (ticket_id << SEARCH_SHIFT) | min(ordinal, (1 << SEARCH_SHIFT) - 1)


def query_terms(q: str) -> list[str]:
    """The user's query as terms (whitespace separated; each must contain a word character)."""
    return [t for t in q.split() if _WORD.search(t)][:MAX_QUERY_TERMS]


def fts5_match(cipher: Cipher, q: str) -> str | None:
    """An FTS5 MATCH expression for ``q`` (every term must occur; a term is a phrase of its words, so
    ``bob@example.com`` finds that address), or None when ``q`` has no word. No user syntax gets
    through: every term is a quoted string."""
    terms = query_terms(q)
    if not terms:
        return None
    if not cipher.enabled:
        return " AND ".join('"' + t.replace('"', '""') + '"' for t in terms)
    out = []
    for t in terms:
        alts = [" ".join(tokens) for tokens in zip(*(cipher.search_tokens(w) for w in words(t)))]
        out.append("(" + " OR ".join(f'"{a}"' for a in alts) + ")")
    return " AND ".join(out)


def pg_tsquery(cipher: Cipher, q: str) -> tuple[str, str] | None:
    """(SQL function, argument) making the PostgreSQL tsquery for ``q``: ``plainto_tsquery`` of the text
    (the server's parser, as for the index), or with encryption ``to_tsquery`` of the hashed words (hex:
    nothing to quote). None when ``q`` has no word."""
    terms = query_terms(q)
    if not terms:
        return None
    if not cipher.enabled:
        return "plainto_tsquery", " ".join(terms)
    parts = []
    for t in terms:
        for w in words(t):
            parts.append("(" + " | ".join(cipher.search_tokens(w)) + ")")
    return ("to_tsquery", " & ".join(parts)) if parts else None


def encode_cursor(ticket_id: int) -> str:
    """The opaque cursor of a page that ends at ``ticket_id`` (the next page: older tickets)."""
    return base64.urlsafe_b64encode(f"t1:{ticket_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    """The ticket id a cursor continues below; ValueError for anything we did not hand out."""
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError("cursor is not one this API returned") from exc
    kind, _, value = text.partition(":")
    if kind != "t1" or not value.isdigit() or len(value) > 18:
        raise ValueError("cursor is not one this API returned")
    return int(value)
