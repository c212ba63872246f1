"""HTTP inbound, the pure part: authenticate a post, read its format, build the one message to spool.

Formats (``format`` of ``[[http.inbound]]``; ``auto`` detects them):

* ``mime``: the body is the message (``Content-Type: message/rfc822`` or ``text/plain``).
* ``postmark``: Postmark's inbound JSON. ``RawEmail`` (the "include raw email" option) is taken as is;
  otherwise the message is rebuilt from ``Headers``, ``From``/``FromFull``, ``To``, ``Cc``, ``ReplyTo``,
  ``Subject``, ``Date``, ``TextBody``/``HtmlBody`` and ``Attachments`` (base64).
* ``mailgun``: a route's ``forward()`` (form data). ``body-mime`` (a forward URL ending in ``mime``) is
  the message; otherwise rebuilt from ``message-headers``, ``body-plain``/``body-html`` and the
  ``attachment-N`` files.
* ``sendgrid``: Inbound Parse (form data). ``email`` ("POST the raw, full MIME message") is the message;
  otherwise rebuilt from ``headers``, ``text``/``html`` and the ``attachmentN`` files with
  ``attachment-info``.

A rebuilt message is not the original: its signatures cannot verify (docs/auth.md, "HTTP inbound").
Every failure is an :class:`InboundError` with the HTTP status and a sentence for the problem document.
"""
from __future__ import annotations

import base64
import binascii
import email.utils
import hashlib
import hmac
import json
import re
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from email.headerregistry import Address
from email.message import EmailMessage
from email.parser import BytesHeaderParser
from email.policy import SMTP
from typing import Any, Iterable
from urllib.parse import parse_qsl

from python_multipart import MultipartParser
from python_multipart.multipart import parse_options_header

from gateway.config.inbound import InboundConfig

__all__ = ["InboundError", "Form", "Posted", "ReplayGuard", "check_auth", "read_post", "idempotency_key",
           "detect_format"]

MAX_FIELDS = 1000            # form fields (attachments included) in one post
MAX_ATTACHMENTS = 200


class InboundError(Exception):
    """A refused post: ``status`` and ``title`` for the problem document, ``detail`` says why."""

    def __init__(self, status: int, title: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.title = title
        self.detail = detail


def _bad(detail: str) -> InboundError:
    return InboundError(422, "Unreadable inbound post", detail)


# --------------------------------------------------------------------------- forms
@dataclass(slots=True)
class Part:
    name: str
    data: bytes
    filename: str | None = None
    content_type: str = ""


@dataclass(slots=True)
class Form:
    """A form post's fields in order (several parts may share a name)."""

    parts: list[Part] = field(default_factory=list)

    def get(self, name: str, default: str = "") -> str:
        for p in self.parts:
            if p.name == name and p.filename is None:
                return _text(p.data, p.content_type)
        return default

    def has(self, name: str) -> bool:
        return any(p.name == name for p in self.parts)

    def file(self, name: str) -> Part | None:
        return next((p for p in self.parts if p.name == name), None)


def _text(data: bytes, content_type: str = "") -> str:
    charset = "utf-8"
    if content_type:
        _, opts = parse_options_header(content_type)
        charset = (opts.get(b"charset") or b"utf-8").decode("ascii", "replace")
    try:
        return data.decode(charset, "replace")
    except LookupError:
        return data.decode("utf-8", "replace")


def parse_form(content_type: str, body: bytes) -> Form:
    """multipart/form-data or application/x-www-form-urlencoded → :class:`Form` (bounded field count)."""
    ctype, opts = parse_options_header(content_type)
    if ctype == b"application/x-www-form-urlencoded":
        try:
            pairs = parse_qsl(body, keep_blank_values=True, strict_parsing=False, max_num_fields=MAX_FIELDS)
        except ValueError as exc:
            raise _bad(f"form: {exc}") from None
        return Form([Part(k.decode("utf-8", "replace"), v) for k, v in pairs])
    if ctype != b"multipart/form-data" or not opts.get(b"boundary"):
        raise _bad(f"expected a form post (multipart/form-data with a boundary), got {content_type!r}")
    form = Form()
    cur: dict[str, Any] = {}

    def on_part_begin() -> None:
        cur.clear()
        cur.update(headers={}, data=bytearray(), field=b"", value=b"")
        if len(form.parts) >= MAX_FIELDS:
            raise _bad(f"form: more than {MAX_FIELDS} fields")

    def on_header_field(data: bytes, start: int, end: int) -> None:
        cur["field"] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        cur["value"] += data[start:end]

    def on_header_end() -> None:
        cur["headers"][cur["field"].decode("latin-1").lower()] = cur["value"].decode("utf-8", "replace")
        cur["field"] = cur["value"] = b""

    def on_part_data(data: bytes, start: int, end: int) -> None:
        cur["data"] += data[start:end]

    def on_part_end() -> None:
        disp, dopts = parse_options_header(cur["headers"].get("content-disposition", ""))
        name = (dopts.get(b"name") or b"").decode("utf-8", "replace")
        filename = dopts.get(b"filename")
        form.parts.append(Part(name, bytes(cur["data"]),
                               filename.decode("utf-8", "replace") if filename is not None else None,
                               cur["headers"].get("content-type", "")))

    parser = MultipartParser(opts[b"boundary"], {
        "on_part_begin": on_part_begin, "on_header_field": on_header_field, "on_header_value": on_header_value,
        "on_header_end": on_header_end, "on_part_data": on_part_data, "on_part_end": on_part_end},
        max_header_count=32, max_header_size=16 * 1024)
    try:
        parser.write(body)
        parser.finalize()
    except InboundError:
        raise
    except Exception as exc:  # noqa: BLE001 - python-multipart's errors: a malformed body
        raise _bad(f"form: {type(exc).__name__}: {exc}") from None
    return form


# --------------------------------------------------------------------------- authentication
class ReplayGuard:
    """Mailgun tokens seen within the replay window: a signed post is good once (per process)."""

    def __init__(self, limit: int = 200_000) -> None:
        self.limit = limit
        self._seen: OrderedDict[str, float] = OrderedDict()

    def first_use(self, key: str, now: float, window: float) -> bool:
        """True the first time ``key`` is presented within ``window`` seconds (and remembers it)."""
        while self._seen:
            k, at = next(iter(self._seen.items()))
            if at >= now - window and len(self._seen) < self.limit:
                break
            del self._seen[k]
        if key in self._seen:
            return False
        self._seen[key] = now
        return True


@dataclass(frozen=True, slots=True)
class Secrets:
    """The secrets of one ``[[http.inbound]]`` (read from its files when the endpoint starts)."""

    key: bytes = b""          # mailgun signing key / basic password / bearer token

    def __repr__(self) -> str:  # never in a log line or a traceback's locals dump
        return "Secrets(<redacted>)"


def check_auth(inb: InboundConfig, secrets: Secrets, authorization: str, form: Form | None,
               guard: ReplayGuard, now: float | None = None) -> None:
    """Raise a 401 :class:`InboundError` unless the post carries the service's proof for this mailbox.

    ``mailgun``: ``signature`` = hex HMAC-SHA256(signing key, ``timestamp`` + ``token``), the timestamp
    within ``max_age`` of our clock, the token not seen before in that window. ``basic``: the
    configured username and password. ``bearer``: ``Authorization: Bearer <token>``. The reasons
    name what was wrong, never a secret."""
    now = time.time() if now is None else now
    if inb.auth == "mailgun":
        if form is None:
            raise _unauth("a Mailgun post is a form with timestamp, token and signature fields")
        ts, token, sig = form.get("timestamp"), form.get("token"), form.get("signature")
        if not (ts and token and sig):
            raise _unauth("timestamp, token and signature fields required (Mailgun signature)")
        try:
            ts_value = float(ts)
        except ValueError:
            raise _unauth("timestamp is not a number") from None
        want = hmac.new(secrets.key, (ts + token).encode("utf-8"), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(want, sig.strip().lower()):
            raise _unauth("signature does not match (HMAC-SHA256 of timestamp and token with the signing key)")
        if abs(now - ts_value) > inb.max_age:
            raise _unauth(f"timestamp is {abs(now - ts_value):.0f}s away from our clock (max_age {inb.max_age:g}s)")
        if not guard.first_use(f"{inb.name}\n{token}", now, 2 * inb.max_age):
            raise _unauth("token already used (a replayed post)")
        return
    scheme, _, value = authorization.strip().partition(" ")
    if inb.auth == "bearer":
        if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(), secrets.key):
            raise _unauth("Authorization: Bearer <token> missing or wrong")
        return
    if scheme.lower() != "basic":
        raise _unauth("Authorization: Basic credentials required")
    try:
        user, _, password = base64.b64decode(value.strip(), validate=True).partition(b":")
    except (binascii.Error, ValueError):
        raise _unauth("Authorization: Basic credentials are not base64") from None
    ok_user = hmac.compare_digest(user, inb.username.encode())
    if not (hmac.compare_digest(password, secrets.key) and ok_user):
        raise _unauth("wrong username or password")


def _unauth(detail: str) -> InboundError:
    return InboundError(401, "Unauthorized", detail)


# --------------------------------------------------------------------------- formats
@dataclass(frozen=True, slots=True)
class Posted:
    """The message a post carries, and what the service said about its envelope."""

    format: str
    raw: bytes
    mail_from: str | None     # the service's envelope sender; None when it did not say
    provider_id: str          # the service's id of the message ("" when none): the idempotency key
    rebuilt: bool             # built from parsed fields here (not the original bytes)


def detect_format(content_type: str, form: Form | None, doc: Any) -> str:
    """``auto``: which service posted this (422 when no known shape)."""
    ctype = content_type.split(";", 1)[0].strip().lower()
    if ctype in ("message/rfc822", "text/plain"):
        return "mime"
    if doc is not None:
        if isinstance(doc, dict) and any(k in doc for k in ("RawEmail", "MessageID", "FromFull", "TextBody")):
            return "postmark"
        raise _bad("JSON that is not Postmark's inbound shape (no RawEmail, MessageID, FromFull or TextBody)")
    if form is not None:
        if any(form.has(k) for k in ("body-mime", "message-headers", "body-plain", "signature")):
            return "mailgun"
        if any(form.has(k) for k in ("email", "envelope", "headers")):
            return "sendgrid"
        raise _bad("a form that is neither a Mailgun forward (body-mime, message-headers, body-plain) nor"
                   " a SendGrid Inbound Parse post (email, envelope, headers)")
    raise _bad(f"unsupported Content-Type {content_type!r} (message/rfc822, text/plain, application/json,"
               " multipart/form-data or application/x-www-form-urlencoded)")


def is_form(content_type: str) -> bool:
    ctype = content_type.split(";", 1)[0].strip().lower()
    return ctype in ("multipart/form-data", "application/x-www-form-urlencoded")


def is_json(content_type: str) -> bool:
    ctype = content_type.split(";", 1)[0].strip().lower()
    return ctype == "application/json" or ctype.endswith("+json")


def load_json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise InboundError(400, "Malformed JSON", f"the body is not JSON: {str(exc)[:200]}") from None


def read_post(fmt: str, content_type: str, body: bytes, form: Form | None, doc: Any) -> Posted:
    """The message of a post in format ``fmt`` (already detected)."""
    if fmt == "mime":
        if not body.strip():
            raise _bad("empty message")
        return Posted("mime", body, None, "", False)
    if fmt == "postmark":
        if not isinstance(doc, dict):
            raise _bad("Postmark posts a JSON object")
        return _postmark(doc)
    if form is None:
        raise _bad(f"a {fmt} post is a form (multipart/form-data or urlencoded), got {content_type!r}")
    return _mailgun(form) if fmt == "mailgun" else _sendgrid(form)


def _str(doc: dict, key: str) -> str:
    v = doc.get(key)
    if v is None:
        return ""
    if not isinstance(v, str):
        raise _bad(f"{key}: expected a string, got {type(v).__name__}")
    return v


def _postmark(doc: dict) -> Posted:
    pid = _str(doc, "MessageID")
    raw = _str(doc, "RawEmail")
    headers = _pairs(doc.get("Headers") or [], "Headers", lambda h: (h.get("Name"), h.get("Value")))
    if raw:
        data = raw.encode("utf-8", "surrogateescape")
        return Posted("postmark", data, _return_path(data), pid, False)
    full = doc.get("FromFull") if isinstance(doc.get("FromFull"), dict) else None
    sender = (_address(full.get("Name") or "", full.get("Email") or "") if full else "") or _str(doc, "From")
    top = [("From", sender), ("To", _str(doc, "To")), ("Cc", _str(doc, "Cc")), ("Reply-To", _str(doc, "ReplyTo")),
           ("Subject", _str(doc, "Subject")), ("Date", _str(doc, "Date"))]
    attachments = []
    for i, a in enumerate(_list(doc.get("Attachments"), "Attachments")):
        if not isinstance(a, dict):
            raise _bad(f"Attachments[{i}]: expected an object")
        try:
            content = base64.b64decode(a.get("Content") or "", validate=True)
        except (binascii.Error, ValueError, TypeError):
            raise _bad(f"Attachments[{i}].Content is not base64") from None
        attachments.append((str(a.get("Name") or f"attachment-{i + 1}"), str(a.get("ContentType") or ""),
                            content, str(a.get("ContentID") or "")))
    raw_msg = build_message(top + headers, _str(doc, "TextBody"), _str(doc, "HtmlBody"), attachments)
    return Posted("postmark", raw_msg, _return_path(raw_msg), pid, True)


def _mailgun(form: Form) -> Posted:
    sender = form.get("sender") or None
    if form.has("body-mime"):
        part = form.file("body-mime")
        assert part is not None
        raw = part.data
        if not raw.strip():
            raise _bad("body-mime is empty")
        return Posted("mailgun", raw, sender, _message_id(raw), False)
    try:
        pairs = json.loads(form.get("message-headers") or "[]")
    except ValueError:
        raise _bad("message-headers is not JSON") from None
    headers = _pairs(pairs, "message-headers", lambda h: (h[0], h[1]) if isinstance(h, list) and len(h) == 2
                     else (None, None))
    if not headers:
        headers = [("From", form.get("from")), ("To", form.get("To") or form.get("recipient")),
                   ("Subject", form.get("subject"))]
    attachments = []
    count = _count(form.get("attachment-count") or "0", "attachment-count")
    for i in range(1, count + 1):
        part = form.file(f"attachment-{i}")
        if part is None:
            raise _bad(f"attachment-count is {count} but attachment-{i} is missing")
        attachments.append((part.filename or f"attachment-{i}", part.content_type, part.data, ""))
    raw = build_message(headers, form.get("body-plain"), form.get("body-html"), attachments)
    return Posted("mailgun", raw, sender, _message_id(raw), True)


def _sendgrid(form: Form) -> Posted:
    sender = None
    if form.get("envelope"):
        try:
            env = json.loads(form.get("envelope"))
            sender = str(env.get("from") or "") if isinstance(env, dict) else None
        except ValueError:
            raise _bad("envelope is not JSON") from None
    if form.has("email"):
        part = form.file("email")
        assert part is not None
        raw = part.data
        if not raw.strip():
            raise _bad("email is empty")
        return Posted("sendgrid", raw, sender, _message_id(raw), False)
    head = form.get("headers")
    if not head.strip():
        raise _bad("neither email (raw mode) nor headers (parsed mode)")
    parsed = BytesHeaderParser().parsebytes(head.encode("utf-8", "surrogateescape").strip() + b"\r\n\r\n")
    headers = [(k, str(v)) for k, v in parsed.raw_items()]
    try:
        info = json.loads(form.get("attachment-info") or "{}")
    except ValueError:
        raise _bad("attachment-info is not JSON") from None
    if not isinstance(info, dict):
        raise _bad("attachment-info: expected an object")
    attachments = []
    count = _count(form.get("attachments") or "0", "attachments")
    for i in range(1, count + 1):
        part = form.file(f"attachment{i}")
        if part is None:
            raise _bad(f"attachments is {count} but attachment{i} is missing")
        meta = info.get(f"attachment{i}") if isinstance(info.get(f"attachment{i}"), dict) else {}
        attachments.append((str(meta.get("filename") or part.filename or f"attachment{i}"),
                            str(meta.get("type") or part.content_type), part.data, str(meta.get("content-id") or "")))
    raw = build_message(headers, form.get("text"), form.get("html"), attachments)
    return Posted("sendgrid", raw, sender, _message_id(raw), True)


def _list(v: Any, key: str) -> list:
    if v is None:
        return []
    if not isinstance(v, list):
        raise _bad(f"{key}: expected a list")
    if len(v) > MAX_ATTACHMENTS:
        raise _bad(f"{key}: more than {MAX_ATTACHMENTS} entries")
    return v


def _pairs(items: Any, key: str, get: Any) -> list[tuple[str, str]]:
    if not isinstance(items, list):
        raise _bad(f"{key}: expected a list")
    if len(items) > MAX_FIELDS:
        raise _bad(f"{key}: more than {MAX_FIELDS} header fields")
    out = []
    for i, item in enumerate(items):
        name, value = get(item) if isinstance(item, (dict, list)) else (None, None)
        if not isinstance(name, str) or not isinstance(value, str):
            raise _bad(f"{key}[{i}]: expected a header name and value (strings)")
        out.append((name, value))
    return out


def _count(value: str, key: str) -> int:
    if not value.strip().isdigit() or int(value) > MAX_ATTACHMENTS:
        raise _bad(f"{key}: expected a number of attachments up to {MAX_ATTACHMENTS}, got {value[:20]!r}")
    return int(value)


def _address(name: str, addr: str) -> str:
    if not addr:
        return ""
    if not name:
        return addr
    try:
        return str(Address(display_name=name, addr_spec=addr))
    except (ValueError, IndexError):
        return addr


# Fields that describe the original MIME structure or another hop's transfer: the rebuilt message has its own.
_STRUCTURAL = {"content-type", "content-transfer-encoding", "mime-version", "content-disposition", "content-id",
               "content-length", "lines", "content-description"}
_FIELD_NAME = re.compile(r"[!-9;-~]+")
_TOKEN = re.compile(r"[a-z0-9!#$&^_.+-]{1,64}")


def build_message(headers: Iterable[tuple[str, str]], text: str, html: str,
                  attachments: list[tuple[str, str, bytes, str]]) -> bytes:
    """An RFC 5322 message from a service's parsed fields: the header fields in their order (first of each
    address field wins), text and/or HTML alternatives, attachments (inline when they carry a Content-ID)."""
    msg = EmailMessage(policy=SMTP)
    seen: set[str] = set()
    for name, value in headers:
        key = name.strip().lower()
        if not value or key in _STRUCTURAL:
            continue
        if not _FIELD_NAME.fullmatch(name.strip()):
            raise _bad(f"header field name {name[:40]!r} is not valid")
        if key in ("from", "to", "cc", "reply-to", "subject", "date", "message-id", "sender") and key in seen:
            continue
        seen.add(key)
        try:
            msg[name.strip()] = value.replace("\r", " ").replace("\n", " ")
        except (ValueError, TypeError, IndexError) as exc:
            raise _bad(f"header field {name[:40]}: {exc}") from None
    if "from" not in seen:
        raise _bad("no From address in the post")
    if "date" not in seen:
        msg["Date"] = email.utils.formatdate(localtime=False)
    try:
        if text or not html:
            msg.set_content(text or "", cte="quoted-printable" if not text.isascii() else None)
            if html:
                msg.add_alternative(html, subtype="html")
        else:
            msg.set_content(html, subtype="html")
        for filename, ctype, content, cid in attachments:
            maintype, _, subtype = (ctype or "").split(";", 1)[0].strip().lower().partition("/")
            if not (_TOKEN.fullmatch(maintype) and _TOKEN.fullmatch(subtype)) or maintype in ("multipart", "message"):
                maintype, subtype = "application", "octet-stream"
            msg.add_attachment(content, maintype=maintype, subtype=subtype, filename=filename)
            if cid:
                part = msg.get_payload()[-1]
                part.replace_header("Content-Disposition", f'inline; filename="{_q(filename)}"')
                part["Content-ID"] = cid if cid.startswith("<") else f"<{cid}>"
        return msg.as_bytes()
    except (ValueError, TypeError, LookupError) as exc:
        raise _bad(f"cannot build a message from the post: {exc}") from None


def _q(s: str) -> str:
    return s.replace("\\", "\\\\").replace('"', '\\"').replace("\r", " ").replace("\n", " ")


_MID = re.compile(rb"(?im)^message-id[ \t]*:[ \t]*((?:[^\r\n]|\r?\n[ \t])*)")
_RETURN_PATH = re.compile(rb"(?im)^return-path[ \t]*:[ \t]*<([^>\r\n]*)>")


def _head(raw: bytes) -> bytes:
    m = re.search(rb"\r?\n\r?\n", raw)
    return raw[:m.start() + 1] if m else raw


def _message_id(raw: bytes) -> str:
    m = _MID.search(_head(raw))
    return re.sub(r"\s+", "", m.group(1).decode("utf-8", "replace"))[:998] if m else ""


def _return_path(raw: bytes) -> str | None:
    m = _RETURN_PATH.search(_head(raw))
    return m.group(1).decode("utf-8", "replace").strip() if m else None


def idempotency_key(mailbox: str, posted: Posted) -> str:
    """What makes two posts the same message for this mailbox: the service's message id, else the bytes."""
    if posted.provider_id:
        return f"{mailbox.lower()}\n{posted.format}:{posted.provider_id}"
    return f"{mailbox.lower()}\nsha256:{hashlib.sha256(posted.raw).hexdigest()}"


def envelope_sender(posted: Posted) -> str:
    """The envelope sender to record: the service's, else the message's Return-Path, else its From
    address ("" only for a real null sender, ``Return-Path: <>``)."""
    if posted.mail_from is not None:
        return posted.mail_from.strip().strip("<>")
    return message_sender(posted.raw)


def message_sender(raw: bytes) -> str:
    """The envelope sender a message itself records: its Return-Path (written by the last MTA, as for
    pulled mail), else its From address ("" only for a real null sender, ``Return-Path: <>``)."""
    rp = _return_path(raw)
    if rp is not None:
        return rp
    m = re.search(rb"(?im)^from[ \t]*:((?:[^\r\n]|\r?\n[ \t])*)", _head(raw))
    if m:
        addrs = email.utils.getaddresses([m.group(1).decode("utf-8", "replace")])
        if addrs and "@" in addrs[0][1]:
            return addrs[0][1]
    return ""
