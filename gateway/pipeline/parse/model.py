"""The parsed, immutable inbound-message model that every pipeline stage reads.

Built once per message by :func:`gateway.pipeline.parse.mime.parse_message` (a pure
function of the raw bytes, so it can run in a worker process) and never
mutated afterwards: stages decide, they do not edit.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Attachment:
    """One attachment or inline non-text part, with its decoded content."""

    filename: str            # decoded (RFC 2047/2231); "" when the part has none
    content_type: str        # declared, lower-case "maintype/subtype"
    content: bytes           # transfer-decoded payload
    sha256: str              # hex digest of ``content`` (content address)
    inline: bool = False     # Content-Disposition: inline (e.g. cid: images)
    content_id: str = ""     # without angle brackets

    @property
    def size(self) -> int:
        return len(self.content)


@dataclass(frozen=True, slots=True)
class ParsedMessage:
    """What the pipeline needs from one RFC 5322 message."""

    subject: str                         # decoded, whitespace-collapsed; "" when absent
    from_name: str                       # display name of the first From address
    from_addr: str                       # addr-spec of the first From address, lower-cased domain; "" if none
    from_count: int                      # number of addresses across all From headers
    to: tuple[str, ...]                  # addr-specs from To
    cc: tuple[str, ...]                  # addr-specs from Cc
    reply_to: tuple[str, ...]            # addr-specs from Reply-To
    message_id: str                      # without angle brackets; "" when absent/invalid
    in_reply_to: tuple[str, ...]         # message ids, without brackets
    references: tuple[str, ...]          # message ids, without brackets, oldest first
    date: str                            # the Date header as sent ("" if none)
    body_text: str                       # the text body (text/plain, or the HTML rendered to text)
    body_html: str                       # the HTML body as sent (decoded to str); "" if none
    attachments: tuple[Attachment, ...] = ()
    headers: tuple[tuple[str, str], ...] = ()   # every header (name, decoded value), in order
    defects: tuple[str, ...] = ()        # parser defects and fallbacks taken (for the audit trail)
    # the first value of each header by lower-cased name, built on first use: the stages ask ~20 header
    # questions per message, each a scan of every header before. One str per name (no list per name: on
    # 80,000 distinct names those lists cost more than the rest of the index). Not an init field, so
    # dataclasses.replace() never copies it.
    _by_name: dict[str, str] | None = field(default=None, init=False, repr=False, compare=False)
    # every value of a name asked for by header_all (rules ask by name, so a name is scanned once)
    _all_by_name: dict[str, tuple[str, ...]] | None = field(default=None, init=False, repr=False, compare=False)

    def _index(self) -> dict[str, str]:
        index = self._by_name
        if index is None:
            index = {key.lower(): value for key, value in reversed(self.headers)}  # the first one wins
            object.__setattr__(self, "_by_name", index)  # frozen: a cache, not a change of the message
        return index

    def header(self, name: str) -> str | None:
        """First value of header ``name`` (case-insensitive), or None."""
        return self._index().get(name.lower())

    def header_all(self, name: str) -> list[str]:
        """Every value of header ``name``, in order: one scan per name asked (absent names cost nothing)."""
        want = name.lower()
        if want not in self._index():
            return []
        cache = self._all_by_name
        if cache is None:
            cache = {}
            object.__setattr__(self, "_all_by_name", cache)
        values = cache.get(want)
        if values is None:
            values = cache[want] = tuple(value for key, value in self.headers if key.lower() == want)
        return list(values)
