"""A message's own inline images (``<img src="cid:…">``, multipart/related) shown in the customer-HTML
frame as ``data:`` URIs, so the frame's CSP stays ``img-src data:`` and no request leaves.

Only parts of the *same* article, matched by Content-ID (RFC 2392: the cid URL is the Content-ID,
percent-encoded, without ``<>``), declared image/png, image/jpeg, image/gif or image/webp *and* whose
bytes start with that format's signature; the ``data:`` URI carries the type the bytes proved. Never
SVG (it is a document that can carry script and load things), never what the sender merely declared.
Bounded: an image over :data:`MAX_IMAGE` bytes, or one that would take the frame's images over
:data:`MAX_FRAME`, is shown as a placeholder image saying so. A cid naming a missing part, a non-image
or bytes that are not the declared format loses its ``src`` (the browser shows the alt text, if any).

The rewrite is done by the ingest sanitiser's own parser (:func:`gateway.pipeline.stages.htmlsafe.rewrite_cid_images`):
values are escaped by its serialiser, never concatenated into the markup.
"""
from __future__ import annotations

import asyncio
import base64
from dataclasses import dataclass
from importlib import resources
from typing import Any
from urllib.parse import unquote

from gateway.pipeline.stages.htmlsafe import cid_references, rewrite_cid_images

MAX_IMAGE = 2 * 1024 * 1024      # bytes of one inline image
MAX_FRAME = 8 * 1024 * 1024      # bytes of all inline images of one frame (counted per reference)

_SIGNATURES: dict[str, tuple[bytes, ...]] = {
    "image/png": (b"\x89PNG\r\n\x1a\n",),
    "image/jpeg": (b"\xff\xd8\xff",),
    "image/gif": (b"GIF87a", b"GIF89a"),
}
_ALIASES = {"image/jpg": "image/jpeg", "image/pjpeg": "image/jpeg"}
ALLOWED_TYPES = frozenset(_SIGNATURES) | {"image/webp"}

PLACEHOLDER = "data:image/png;base64," + base64.b64encode(
    resources.files("gateway.ui").joinpath("static/inline-image-withheld.png").read_bytes()).decode("ascii")


def declared_type(content_type: str) -> str:
    """The media type a part declared, lower-cased, parameters removed, jpeg aliases folded."""
    t = content_type.split(";", 1)[0].strip().lower()
    return _ALIASES.get(t, t)


def proves(declared: str, data: bytes) -> bool:
    """Whether ``data`` starts with the signature of the ``declared`` image format (one of ALLOWED_TYPES)."""
    if declared == "image/webp":
        return len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP"
    return any(data.startswith(sig) for sig in _SIGNATURES.get(declared, ()))


def cid_keys(src: str) -> tuple[str, str]:
    """The Content-ID a ``cid:`` URL names: percent-decoded as RFC 2392 says, and as written (some
    mailers do not encode), scheme removed, ``<>`` and blanks trimmed."""
    rest = src.strip()[4:] if src.strip()[:4].lower() == "cid:" else src.strip()
    return unquote(rest).strip().strip("<>").strip(), rest.strip().strip("<>").strip()


@dataclass
class _Part:
    att: dict[str, Any]
    data_uri: str | None = None     # filled once the bytes are loaded and proved


WITHHELD = object()   # a verdict: over a cap, shown as the placeholder


def plan(refs: list[str], attachments: list[dict[str, Any]]) -> tuple[dict[str, _Part], list[Any]]:
    """Per reference, in order: the part to inline, :data:`WITHHELD` or None; and the parts (by
    Content-ID) whose bytes must be loaded. Pure, so the caps and the matching are tested without a store."""
    by_id: dict[str, dict[str, Any]] = {}
    folded: dict[str, dict[str, Any]] = {}
    for x in attachments:
        cid = (x.get("content_id") or "").strip().strip("<>").strip()
        if cid:
            by_id.setdefault(cid, x)
            folded.setdefault(cid.casefold(), x)
    parts: dict[str, _Part] = {}
    verdicts: list[Any] = []
    used = 0
    for ref in refs:
        att = next((x for key in cid_keys(ref) if key
                    for x in (by_id.get(key), folded.get(key.casefold())) if x is not None), None)
        if att is None or declared_type(str(att.get("content_type", ""))) not in ALLOWED_TYPES:
            verdicts.append(None)
            continue
        size = int(att.get("size") or 0)
        if size > MAX_IMAGE or used + size > MAX_FRAME:
            verdicts.append(WITHHELD)
            continue
        used += size
        cid = str(att["content_id"]).strip().strip("<>").strip()
        verdicts.append(parts.setdefault(cid, _Part(att)))
    return parts, verdicts


def _encode(part: _Part, data: bytes) -> None:
    declared = declared_type(str(part.att.get("content_type", "")))
    if len(data) <= MAX_IMAGE and proves(declared, data):
        part.data_uri = f"data:{declared};base64," + base64.b64encode(data).decode("ascii")


def apply(html: str, verdicts: list[Any]) -> str:
    """``html`` with its n-th cid: image given the n-th verdict of :func:`plan` (the sanitiser's parser
    meets them in the same order both times): the proved data: URI, the placeholder, or no ``src``."""
    answers = iter(verdicts)

    def resolve(_src: str) -> str | None:
        v = next(answers, None)
        if v is WITHHELD:
            return PLACEHOLDER
        return v.data_uri if isinstance(v, _Part) else None
    return rewrite_cid_images(html, resolve)


async def inline_cid_images(store: Any, executor: Any, html: str, attachments: list[dict[str, Any]]) -> str:
    """``html`` with its cid: images inlined (see the module docstring); unchanged when it names none.
    Parsing, encoding and rewriting run in ``executor`` (a long mail is CPU work, not for the event loop)."""
    if "cid:" not in html.lower() or not any(x.get("content_id") for x in attachments):
        return html
    loop = asyncio.get_running_loop()
    refs = await loop.run_in_executor(executor, cid_references, html)
    if not refs:
        return html
    parts, verdicts = plan(refs, attachments)
    for part in parts.values():
        got = await store.attachment_get(int(part.att["id"]))
        if got is not None:
            await loop.run_in_executor(executor, _encode, part, got[1])
    return await loop.run_in_executor(executor, apply, html, verdicts)
