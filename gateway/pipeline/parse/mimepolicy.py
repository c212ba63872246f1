"""The email policy the parser and the large-part splitter read MIME headers with.

One policy for both (bigmime asks it for a multipart's boundary, mime.py parses with it), so
both read a Content-Type the same way; it lives here so neither imports the other. Its header
factory caches what it built and hands over-long Content-Type/-Disposition values compacted
(bounded cost: the registry's parameter parse is super-linear).
"""
from __future__ import annotations

import email.headerregistry
import email.policy
import re

# Parameters read per Content-Type / Content-Disposition (docs/pipeline.md names it mime.MAX_MIME_PARAMS).
MAX_MIME_PARAMS = 64
_MAX_MIME_HEADER = 2_000     # longer Content-Type/-Disposition values reach the registry compacted
_MIME_HEADERS = frozenset({"content-type", "content-disposition"})

_PARAM_RE = re.compile(r';\s*([^\s=;"]+)\s*(?:=\s*("(?:[^"\\]|\\.)*"?|[^;]*))?')
_QUOTED_PAIR = re.compile(r'\\([\\"])')


def _unquote(value: str) -> str:
    value = value.strip()
    if value.startswith('"'):
        value = value[1:-1] if len(value) > 1 and value.endswith('"') else value[1:]
        if "\\" in value:
            value = _QUOTED_PAIR.sub(r"\1", value)
    return value


_COMPACT_KEEP = frozenset({"boundary", "charset", "type", "report-type", "protocol", "micalg"})


def _compact_mime(value: str) -> str:
    """A long Content-Type/-Disposition value cut to its main value and the plain parameters the
    feed parser and generator use (linear: our own parameter regex, at most MAX_MIME_PARAMS)."""
    main, _, rest = value.partition(";")
    out = [main.strip()[:200]]
    for count, m in enumerate(_PARAM_RE.finditer(";" + rest)):
        if count >= MAX_MIME_PARAMS:
            break
        name = m.group(1).lower()
        if name in _COMPACT_KEEP:
            val = _unquote(m.group(2) or "")[:200].replace("\\", "\\\\").replace('"', '\\"')
            out.append(f'{name}="{val}"')
    return "; ".join(out)


class _CachingHeaderRegistry(email.headerregistry.HeaderRegistry):
    """policy.default's header factory, remembering what it built.

    The feed parser asks each part for its content type several times while it parses
    (``get_content_type`` / ``get_content_maintype`` -> a fresh Content-Type parse each
    time): on a four-part 50 KB message that was about two thirds of the parse. Header
    objects are immutable str subclasses, so one built for ``(name, value)`` can be handed
    out again. Bounded: the cache is dropped when it grows past ``_MAX``.
    """

    _MAX = 2048

    def __init__(self) -> None:
        super().__init__()
        self._cache: dict[tuple[str, str], object] = {}

    def __call__(self, name, value):  # type: ignore[no-untyped-def] - HeaderRegistry's signature
        key = (name, value)
        try:
            return self._cache[key]
        except (KeyError, TypeError):
            pass
        if isinstance(value, str) and len(value) > _MAX_MIME_HEADER and name.lower() in _MIME_HEADERS:
            # The registry's Content-Type parse is super-linear in the parameters and runs several
            # times per part: hand it only what the feed parser needs (see _compact_mime).
            return super().__call__(name, _compact_mime(value))
        header = super().__call__(name, value)
        if not isinstance(value, str) or len(value) > 2000:
            return header  # long values (huge To: lists, attacks) are parsed, never kept
        if len(self._cache) >= self._MAX:
            self._cache.clear()
        try:
            self._cache[key] = header
        except TypeError:  # an unhashable value: never cached
            pass
        return header


# mime.py parses with it, bigmime asks it for boundaries (docs/pipeline.md, "Bounded cost").
POLICY = email.policy.default.clone(header_factory=_CachingHeaderRegistry())
