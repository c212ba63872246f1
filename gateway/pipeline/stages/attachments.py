"""Attachment policy: limits, allow/deny by extension and by detected type, contradictions,
empty files, dangerous names, winmail.dat (TNEF).

Stage ``attachments``; always ``continue`` (a stripped attachment never costs the message) with::

    {"kept":      [(index, safe_filename), ...],          # index into parsed.attachments
     "stripped":  [{"index", "filename", "original", "reason", "sha256", "size", "detected"}, ...],
     "extracted": [{"parent", "filename", "content_type", "sha256", "size", "content"}, ...],  # from TNEF
     "tnef":      [{"index", "filename", "files": [...]}],  # winmail.dat parts replaced by their files
     "tnef_body": {"text": ..., "html": ...}}                # only when a TNEF carried a body

The ticket stage stores the ``kept`` parts under their safe names plus the ``extracted`` files,
and lists ``stripped`` on the ticket (the raw message, in the spool, still has everything).

Checks, in order; the first that fails strips the part with its reason:
empty file; larger than ``max_attachment_size``; extension on ``deny_extensions``; detected
type on ``deny_types``; extension not on ``allow_extensions`` (when set); type not on
``allow_types`` (when set); name or declared type contradicting the content (``mismatch``);
more than ``max_attachments``; running total above ``max_total_size``. Inline ``cid:`` images
shown by the HTML skip the allow lists and the count (not the other checks).

Content types are detected with ``filetype`` (magic numbers); when it does not recognise the
content (plain text, scripts, CSV, ...) the extension stands in for the type.
Names are sanitised by :func:`safe_filename` before any check, so ``invoice\\u202Efdp.exe``
is judged as the ``.exe`` it is.
"""
from __future__ import annotations

import asyncio
import hashlib
import mimetypes
import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import filetype

from gateway.pipeline.parse.model import Attachment, ParsedMessage
from gateway.config.pipeline import AttachmentPolicy, policy_for
from gateway.pipeline.stages.core import Context, Inbound, Verdict

__all__ = ["safe_filename", "detect_type", "analyse_attachments", "AttachmentsStage", "decode_tnef"]

_MIMES = mimetypes.MimeTypes()          # Python's built-in table only: no /etc/mime.types surprises
_BIDI = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
_WINDOWS_INVALID = re.compile(r'[<>:"|?*]')
_RESERVED = frozenset({"con", "prn", "aux", "nul", "conin$", "conout$",
                       *(f"com{i}" for i in "123456789¹²³"), *(f"lpt{i}" for i in "123456789¹²³")})
_TNEF_TYPES = frozenset({"application/ms-tnef", "application/vnd.ms-tnef"})
_GENERIC_TYPES = frozenset({
    "", "application/octet-stream", "application/x-download", "application/download",
    "application/force-download", "application/x-msdownload-unknown", "application/unknown",
    "binary/octet-stream", "application/binary", "application/x-unknown", "unknown/unknown",
    "application/x-octet-stream", "multipart/appledouble",
})

# Families of formats: an extension or declared type "contradicts" detected content only when
# their families differ (a .jpg holding a PNG is fine; a .pdf holding a PE executable is not).
_EXT_FAMILY: dict[str, str] = {}
for _fam, _exts in {
    "pdf": "pdf",
    "zip": "zip docx docm dotx xlsx xlsm xltx pptx pptm potx ppsx odt ods odp odg odf epub jar apk "
           "xpi vsdx kmz 3mf ipa nupkg whl crx",
    "ole": "doc dot xls xlt ppt pps pot msg msi vsd pub",
    "image": "jpg jpeg jpe jfif png apng gif bmp webp tif tiff ico heic heif avif jxr psd xcf cr2 jpx dwg",
    "media": "mp3 m4a aac ogg oga opus flac wav amr aif aiff mid midi mp4 m4v mkv mov avi wmv mpg mpeg "
             "webm weba flv 3gp",
    "font": "ttf otf woff woff2 eot",
    "gzip": "gz tgz", "bzip2": "bz2 tbz2", "xz": "xz txz", "7z": "7z", "rar": "rar", "tar": "tar",
    "zstd": "zst", "rtf": "rtf", "exe": "exe dll scr sys cpl ocx", "cab": "cab",
    "text": "txt text csv tsv log md json xml html htm css ics vcf vcard ini cfg conf yaml yml",
    "postscript": "ps eps", "sqlite": "sqlite sqlite3", "swf": "swf", "deb": "deb", "rpm": "rpm",
    "wasm": "wasm", "elf": "elf so",
}.items():
    for _e in _exts.split():
        _EXT_FAMILY[_e] = _fam
# Families that are the same thing on disk.
_COMPATIBLE = {frozenset({"ole", "rtf"})}     # Word happily saves RTF under .doc
_DECLARED_ALIASES = {
    "application/x-pdf": "pdf", "application/acrobat": "pdf", "application/pdf": "pdf",
    "application/zip": "zip", "application/x-zip-compressed": "zip", "application/x-zip": "zip",
    "application/java-archive": "zip", "application/epub+zip": "zip",
    "application/msword": "ole", "application/vnd.ms-excel": "ole", "application/vnd.ms-powerpoint": "ole",
    "application/vnd.ms-outlook": "ole", "application/x-msi": "ole",
    "application/gzip": "gzip", "application/x-gzip": "gzip", "application/x-bzip2": "bzip2",
    "application/x-xz": "xz", "application/x-7z-compressed": "7z", "application/vnd.rar": "rar",
    "application/x-rar-compressed": "rar", "application/x-rar": "rar", "application/x-tar": "tar",
    "application/rtf": "rtf", "text/rtf": "rtf",
    "application/x-msdownload": "exe", "application/x-msdos-program": "exe", "application/x-dosexec": "exe",
    "application/vnd.microsoft.portable-executable": "exe", "application/x-executable": "elf",
    "application/postscript": "postscript", "application/x-shockwave-flash": "swf",
}


def _declared_family(ctype: str) -> str | None:
    ctype = ctype.lower()
    if ctype in _GENERIC_TYPES:
        return None
    if ctype in _DECLARED_ALIASES:
        return _DECLARED_ALIASES[ctype]
    major, _, minor = ctype.partition("/")
    if major == "image":
        return "image"
    if major in ("audio", "video"):
        return "media"
    if major == "font":
        return "font"
    if major == "text":
        return "text"
    if minor.startswith(("vnd.openxmlformats-officedocument.", "vnd.oasis.opendocument.")):
        return "zip"
    return None


def _compatible(a: str, b: str) -> bool:
    return a == b or frozenset({a, b}) in _COMPATIBLE


# --------------------------------------------------------------------------- #
# Names
# --------------------------------------------------------------------------- #
def _escaped(name: str) -> str:
    """The name with invisible/control characters made visible (\\u202e) for the audit trail."""
    return "".join(c if c.isprintable() and unicodedata.category(c) != "Cf"
                   else f"\\u{ord(c):04x}" for c in name)


def extension(name: str) -> str:
    stem, dot, ext = name.rpartition(".")
    return ext.lower() if dot and stem and ext and len(ext) <= 16 and " " not in ext else ""


def safe_filename(name: str, max_length: int = 150, fallback: str = "attachment") -> tuple[str, list[str]]:
    """A name safe to show and to save on any OS, and the problems found in the original.

    Removes bidi/format characters (RTL override U+202E and friends, zero-width characters)
    and control characters; keeps only the last path component; replaces characters Windows
    forbids; drops leading dots and trailing dots/spaces; prefixes Windows reserved device
    names (CON, PRN, AUX, NUL, COM1-9, LPT1-9, also with an extension); shortens overlong names
    keeping the extension. An empty result becomes ``fallback``.
    """
    problems: list[str] = []
    s = unicodedata.normalize("NFC", name)
    if any(c in _BIDI for c in s):
        problems.append("bidi-control")
    cleaned = []
    for c in s:
        cat = unicodedata.category(c)
        if cat == "Cf":
            if "format-character" not in problems and c not in _BIDI:
                problems.append("format-character")
            continue
        if cat == "Cc" or cat in ("Zl", "Zp"):
            if "control-character" not in problems:
                problems.append("control-character")
            cleaned.append(" " if c in "\t\n\r\x0b\x0c\u2028\u2029" else "")
            continue
        cleaned.append(c)
    s = "".join(cleaned)
    if "/" in s or "\\" in s:
        problems.append("path-separator")
        parts = [p for p in re.split(r"[/\\]+", s) if p.strip(" .")]
        s = parts[-1] if parts else ""
    if _WINDOWS_INVALID.search(s):
        problems.append("invalid-character")
        s = _WINDOWS_INVALID.sub("_", s)
    if s != s.rstrip(". \u00a0\u3000"):
        problems.append("trailing-dot-or-space")
    s = " ".join(s.split())
    if s.startswith("."):
        problems.append("leading-dot")
    s = s.lstrip(".").rstrip(". ").strip()
    stem = s.split(".", 1)[0].rstrip(" ").lower()
    if stem in _RESERVED:
        problems.append("reserved-name")
        s = "_" + s
    limit = max(16, max_length)
    if len(s) > limit or len(s.encode("utf-8")) > 255:
        problems.append("too-long")
        ext = extension(s)
        tail = f".{ext}" if ext else ""
        head = s[: len(s) - len(tail)]
        while head and (len(head) + len(tail) > limit or len((head + tail).encode("utf-8")) > 255):
            head = head[:-1]
        s = head.rstrip(". ") + tail
    if not s:
        if name:
            problems.append("empty")
        s = fallback
    return s, problems


# --------------------------------------------------------------------------- #
# Types
# --------------------------------------------------------------------------- #
@dataclass(frozen=True, slots=True)
class TypeInfo:
    detected: str | None          # MIME type from the content, None when not recognised
    detected_ext: str | None      # filetype's canonical extension for it
    effective: str                # detected, else from the extension, else the declared type


_UNSNIFFED = object()


def _sniff(content: bytes) -> Any:
    """filetype's guess from the content (None when it does not recognise it)."""
    if not content:
        return None
    try:
        return filetype.guess(content[:8192])
    except Exception:          # pragma: no cover - filetype is defensive, be more so
        return None


def detect_type(content: bytes, name: str, declared: str, sniffed: Any = _UNSNIFFED) -> TypeInfo:
    """``sniffed``: ``_sniff(content)`` when the caller has it already (it depends on the content
    only; the name and the declared type matter only when the content is not recognised)."""
    kind = _sniff(content) if sniffed is _UNSNIFFED else sniffed
    if kind is not None:
        return TypeInfo(kind.mime, kind.extension, kind.mime)
    ext = extension(name)
    guessed = _MIMES.guess_type(f"x.{ext}", strict=False)[0] if ext else None
    return TypeInfo(None, None, (guessed or declared or "application/octet-stream").lower())


def _type_matches(ctype: str, patterns: tuple[str, ...]) -> bool:
    major = ctype.split("/", 1)[0]
    return any(p == ctype or (p.endswith("/*") and p[:-2] == major) for p in patterns)


def _mismatch(info: TypeInfo, name: str, declared: str) -> str | None:
    if info.detected is None:
        return None
    det_family = _EXT_FAMILY.get(info.detected_ext or "") or _declared_family(info.detected) \
        or f"type:{info.detected}"
    ext = extension(name)
    ext_family = _EXT_FAMILY.get(ext)
    if ext_family is not None and not _compatible(ext_family, det_family):
        return f"content is {info.detected} but the name says .{ext}"
    dec_family = _declared_family(declared)
    if dec_family is not None and not _compatible(dec_family, det_family):
        return f"content is {info.detected} but it was declared {declared}"
    return None


# --------------------------------------------------------------------------- #
# TNEF
# --------------------------------------------------------------------------- #
@dataclass(frozen=True, slots=True)
class TnefResult:
    files: tuple[tuple[str, bytes], ...]
    body_text: str = ""
    body_html: str = ""


def decode_tnef(data: bytes) -> TnefResult | None:
    """Files (and body) inside a winmail.dat, with tnefparse; None when it cannot be decoded."""
    try:
        from tnefparse import TNEF
    except ImportError:            # pragma: no cover - optional dependency missing
        return None
    try:
        tnef = TNEF(data, do_checksum=False)
        files = []
        for att in tnef.attachments:
            try:
                fname = att.long_filename() or att.name
            except Exception:
                fname = ""
            if isinstance(fname, bytes):
                fname = fname.decode("utf-8", "replace")
            payload = att.data if isinstance(att.data, bytes) else b""
            files.append((str(fname or "").strip("\x00"), payload))

        def text(v: Any) -> str:
            if isinstance(v, bytes):
                return v.decode("utf-8", "replace").strip("\x00")
            return str(v).strip("\x00") if v else ""
        return TnefResult(tuple(files), text(tnef.body), text(tnef.htmlbody))
    except Exception:
        return None


def _is_tnef(att: Attachment) -> bool:
    return att.content_type in _TNEF_TYPES or att.filename.strip().lower() == "winmail.dat"


# --------------------------------------------------------------------------- #
# The analysis
# --------------------------------------------------------------------------- #
class _Budget:
    def __init__(self) -> None:
        self.count = 0
        self.total = 0


def _judge(content: bytes, name: str, declared: str, policy: AttachmentPolicy, budget: _Budget,
           body_image: bool = False, sniffed: Any = _UNSNIFFED) -> tuple[str | None, TypeInfo]:
    """The reason to strip this part, or None to keep it (and count it against the budget).

    ``body_image``: an inline part the HTML shows via ``cid:``; if its content really is an
    image it is part of the body, so the allow lists and the attachment count do not apply
    (size, deny lists and contradictions still do).
    """
    size = len(content)
    info = detect_type(content, name, declared, sniffed)
    body_image = body_image and bool(info.detected and info.detected.startswith("image/"))
    ext = extension(name)
    if size == 0 and policy.strip_empty:
        return "empty file", info
    if size > policy.max_attachment_size:
        return f"too large ({size} bytes > max_attachment_size {policy.max_attachment_size})", info
    if ext and ext in policy.deny_extensions:
        return f"denied extension .{ext}", info
    if info.detected and _type_matches(info.detected, policy.deny_types):
        return f"denied type {info.detected}", info
    if policy.allow_extensions and not body_image and ext not in policy.allow_extensions:
        return f"extension {'.' + ext if ext else '(none)'} not allowed", info
    if policy.allow_types and not body_image and not _type_matches(info.effective, policy.allow_types):
        return f"type {info.effective} not allowed", info
    if policy.mismatch == "strip":
        why = _mismatch(info, name, declared)
        if why:
            return f"type mismatch: {why}", info
    if not body_image and budget.count + 1 > policy.max_attachments:
        return f"too many attachments (max_attachments {policy.max_attachments})", info
    if budget.total + size > policy.max_total_size:
        return f"attachments exceed max_total_size {policy.max_total_size}", info
    budget.count += 0 if body_image else 1
    budget.total += size
    return None, info


def _fallback_name(index: int, att: Attachment, info: TypeInfo) -> str:
    ext = info.detected_ext or (_MIMES.guess_extension(att.content_type, strict=False) or "").lstrip(".")
    base = "image" if att.content_type.startswith("image/") else "attachment"
    return f"{base}-{index + 1}" + (f".{ext}" if ext else "")


def analyse_attachments(parsed: ParsedMessage, policy: AttachmentPolicy) -> dict[str, Any]:
    """The stage's data for one message (see the module docstring). Pure; CPU-bound (TNEF)."""
    kept: list[tuple[int, str]] = []
    stripped: list[dict[str, Any]] = []
    extracted: list[dict[str, Any]] = []
    tnefs: list[dict[str, Any]] = []
    out: dict[str, Any] = {"kept": kept, "stripped": stripped}
    budget = _Budget()
    used: set[str] = set()
    # lower-cased once, and only when a part has a Content-ID the HTML might show
    html = parsed.body_html.lower() if parsed.body_html and any(a.content_id for a in parsed.attachments) else ""

    def unique(name: str) -> str:
        if name.lower() not in used:
            used.add(name.lower())
            return name
        ext = extension(name)
        stem = name[: -len(ext) - 1] if ext else name
        n = 2
        while f"{stem} ({n}){'.' + ext if ext else ''}".lower() in used:
            n += 1
        name = f"{stem} ({n}){'.' + ext if ext else ''}"
        used.add(name.lower())
        return name

    for i, att in enumerate(parsed.attachments):
        if policy.tnef == "decode" and _is_tnef(att) and att.content:
            res = decode_tnef(att.content)
            if res is not None and (res.files or res.body_text or res.body_html):
                names = []
                for fname, data in res.files:
                    sniffed = _sniff(data)
                    info0 = detect_type(data, fname, "", sniffed)
                    safe, _problems = safe_filename(fname, policy.max_filename_length,
                                                    f"attachment-{i + 1}-{len(names) + 1}"
                                                    + (f".{info0.detected_ext}" if info0.detected_ext else ""))
                    why, info = _judge(data, safe, "", policy, budget, sniffed=sniffed)
                    digest = hashlib.sha256(data).hexdigest()
                    if why:
                        stripped.append({"index": None, "parent": i, "filename": safe, "original": _escaped(fname),
                                         "reason": why, "sha256": digest, "size": len(data),
                                         "detected": info.detected})
                        continue
                    safe = unique(safe)
                    names.append(safe)
                    extracted.append({"parent": i, "filename": safe, "content_type": info.effective,
                                      "sha256": digest, "size": len(data), "content": data})
                tnefs.append({"index": i, "filename": att.filename or "winmail.dat", "files": names})
                if res.body_text or res.body_html:
                    out["tnef_body"] = {"text": res.body_text, "html": res.body_html}
                continue
        sniffed = _sniff(att.content)  # once: both type checks below read the same content
        info0 = detect_type(att.content, att.filename, att.content_type, sniffed)
        safe, _problems = safe_filename(att.filename, policy.max_filename_length, _fallback_name(i, att, info0))
        body_image = bool(att.content_id) and f"cid:{att.content_id.lower()}" in html
        why, info = _judge(att.content, safe, att.content_type, policy, budget, body_image, sniffed)
        if why:
            stripped.append({"index": i, "filename": safe, "original": _escaped(att.filename), "reason": why,
                             "sha256": att.sha256, "size": att.size, "detected": info.detected})
            continue
        kept.append((i, unique(safe)))
    if extracted:
        out["extracted"] = extracted
    if tnefs:
        out["tnef"] = tnefs
    return out


class AttachmentsStage:
    name = "attachments"

    def __init__(self, policy: AttachmentPolicy | None = None,
                 per_mailbox: Mapping[str, AttachmentPolicy] | None = None) -> None:
        self.policy = policy or AttachmentPolicy()
        self.per_mailbox = dict(per_mailbox or {})

    async def run(self, msg: Inbound, ctx: Context) -> Verdict:
        policy: AttachmentPolicy = policy_for(self.policy, self.per_mailbox, msg, ctx)
        atts = msg.parsed.attachments
        if not policy.enabled or not atts:
            return Verdict()
        if policy.tnef == "decode" and any(_is_tnef(a) for a in atts):
            data = await asyncio.to_thread(analyse_attachments, msg.parsed, policy)   # TNEF decoding is CPU work
        else:
            data = analyse_attachments(msg.parsed, policy)
        reason = ""
        if data["stripped"]:
            reason = f"attachments: stripped {len(data['stripped'])}: " + "; ".join(
                f"{s['filename']} ({s['reason']})" for s in data["stripped"][:5])
        return Verdict(reason=reason[:500], data=data)
