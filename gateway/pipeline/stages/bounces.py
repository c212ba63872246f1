"""Bounces / delivery status notifications (RFC 3464 and the common non-standard formats).

Stage ``bounce``. Recognition and the failed recipients come from ``flufl.bounce`` (GNU
Mailman's detectors: RFC 3464 DSNs first, then Exim, Postfix, qmail, Exchange, Yahoo, AOL, ...
heuristics). To keep its heuristics away from mail people write, it only scans *candidates*:
a ``multipart/report; report-type=delivery-status``, mail to one of our VERP return paths,
or (``scan_suspects``) mail from the null sender / MAILER-DAEMON / postmaster or with a
typical non-delivery subject.

A recognised bounce is dropped with ``"bounce: permanent failure for x@y"`` and the data::

    {"bounce": {"permanent": [...], "temporary": [...], "original_message_id": "..." or None,
                "original_is_ours": bool, "verp": "<token>" or None, "verp_address": ... or None,
                "standard": bool, "details": [{"recipient", "action", "status", "diagnostic"}]}}

and the worker hands it to the store as ``Delivery.report``: when it names one of our notifications
the notification hook (relay/reports.py) marks it ``bounced``, marks those of its recipients that
failed permanently undeliverable and notes "delivery to x failed: 5.1.1 …" on the ticket.

Read receipts (RFC 8098 MDNs, ``multipart/report; report-type=disposition-notification``) are
dropped the same way with ``{"mdn": {"reader", "disposition", "original_message_id", "at"}}`` and
recorded on the ticket of the notification they are about ("read by x at t").
"""
from __future__ import annotations

import email
import email.message
import email.parser
import email.policy
import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from flufl.bounce import all_failures

from gateway.pipeline.stages.automatic import ROBOT_LOCALPARTS
from gateway.pipeline.parse.model import ParsedMessage
from gateway.config.pipeline import BouncePolicy, policy_for
from gateway.pipeline.stages.core import DROP, Context, Inbound, Verdict

__all__ = ["BounceReport", "analyse_bounce", "analyse_mdn", "BounceStage", "verp_token"]

log = logging.getLogger(__name__)


class _QuietDetectorErrors(logging.Filter):
    """flufl.bounce logs each of its detectors that raises on hostile input (a From with a raw 8-bit byte
    makes several of them call ``.lower()`` on a Header object) at ERROR with a full traceback: thousands
    of lines a sender could provoke at will. Here each becomes one short DEBUG line; the stage already
    treats a failing detector as "no failures found"."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info:
            record.msg = f"{record.getMessage()}: {record.exc_info[1]!r}"[:300]
            record.args = None
            record.exc_info = None
            record.exc_text = None
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return True


logging.getLogger("flufl.bounce").addFilter(_QuietDetectorErrors())

# Subjects of non-delivery reports that are not RFC 3464 DSNs (and of those that are).
_BOUNCE_SUBJECT = re.compile(
    r"^(?:undeliver(?:able|ed)|delivery (?:status notification|failure|has failed|failed|report)"
    r"|mail delivery (?:failed|failure|system|subsystem)|returned mail|failure notice|non[- ]?delivery"
    r"|delivery notification|unzustellbar|nicht zustellbar|non remis|message not delivered"
    r"|could not send message|warning: could not send|mail system error)",
    re.IGNORECASE)
_MSGID_LINE = re.compile(r"(?im)^[ \t>]*message-id:[ \t]*(<[^<>\s]+>|[^\s<>]+@[^\s<>]+)")
_MAX_TEXT_SCAN = 256 * 1024
_MAX_BOUNCE_SIZE = 10 * 1024 * 1024     # larger "bounces" are not parsed a second time


@dataclass(frozen=True, slots=True)
class BounceReport:
    permanent: tuple[str, ...] = ()
    temporary: tuple[str, ...] = ()
    original_message_id: str | None = None
    verp: str | None = None
    verp_address: str | None = None
    standard: bool = False                 # an RFC 3464 multipart/report delivery-status
    details: tuple[dict[str, str], ...] = field(default=())

    def as_dict(self, own_domains: Iterable[str] = ()) -> dict[str, Any]:
        mid = self.original_message_id
        dom = mid.rpartition("@")[2].lower() if mid else ""
        ours = bool(dom) and any(dom == d or dom.endswith("." + d) for d in own_domains)
        return {"permanent": list(self.permanent), "temporary": list(self.temporary),
                "original_message_id": mid, "original_is_ours": ours, "verp": self.verp,
                "verp_address": self.verp_address, "standard": self.standard,
                "details": [dict(d) for d in self.details]}

    def reason(self) -> str:
        def some(addrs: tuple[str, ...]) -> str:
            return addrs[0] + (f" and {len(addrs) - 1} more" if len(addrs) > 1 else "")
        if self.permanent:
            return f"bounce: permanent failure for {some(self.permanent)}"
        if self.temporary:
            return f"bounce: temporary failure for {some(self.temporary)}"
        if self.verp:
            return "bounce: mail to our VERP return path (no failed recipient recognised)"
        return "bounce: delivery status notification without failures"


def verp_token(rcpt_tos: Iterable[str], prefix: str) -> tuple[str, str] | None:
    """(token, address) of the first envelope recipient ``<prefix><token>@...``, or None."""
    if not prefix:
        return None
    for rcpt in rcpt_tos:
        local, at, _ = rcpt.strip().strip("<>").rpartition("@")
        if at and local.lower().startswith(prefix) and len(local) > len(prefix):
            return local[len(prefix):], rcpt
    return None


def _is_dsn_report(content_type: str) -> bool:
    ct = content_type.lower()
    return ct.split(";", 1)[0].strip() == "multipart/report" and bool(
        re.search(r"report-type\s*=\s*\"?delivery-status", ct))


def _is_mdn_report(content_type: str) -> bool:
    ct = content_type.lower()
    return ct.split(";", 1)[0].strip() == "multipart/report" and bool(
        re.search(r"report-type\s*=\s*\"?disposition-notification", ct))


def analyse_mdn(raw: bytes, parsed: ParsedMessage) -> dict[str, Any] | None:
    """The read receipt in an RFC 8098 report: who (Final-Recipient, else the From), what
    (the disposition type: displayed, deleted, …), about which message (Original-Message-ID,
    else In-Reply-To) and when (the report's Date, if readable). None when it is not one."""
    if not _is_mdn_report(parsed.header("Content-Type") or "") or len(raw) > _MAX_BOUNCE_SIZE:
        return None
    msg = email.message_from_bytes(raw, policy=email.policy.compat32)
    fields: email.message.Message | None = None
    for part in msg.walk():
        if part.get_content_type() == "message/disposition-notification":
            payload = part.get_payload()
            if isinstance(payload, list) and payload and isinstance(payload[0], email.message.Message):
                fields = payload[0]
            break
    if fields is None:
        return None
    reader = str(fields.get("Final-Recipient") or fields.get("Original-Recipient") or "")
    reader = (reader.partition(";")[2] or reader).strip().strip("<>") or parsed.from_addr
    disposition = str(fields.get("Disposition") or "").rpartition(";")[2].strip().split("/")[0].lower()
    original = _strip_id(str(fields.get("Original-Message-ID") or "")) or (
        parsed.in_reply_to[0] if parsed.in_reply_to else None)
    at = None
    try:
        from email.utils import parsedate_to_datetime
        dt = parsedate_to_datetime(parsed.header("Date") or "")
        at = dt.timestamp() if dt is not None and dt.tzinfo is not None else None
    except (TypeError, ValueError, IndexError):
        pass
    return {"reader": " ".join(reader.split())[:320], "disposition": re.sub(r"[^a-z-]", "", disposition)[:40]
            or "displayed", "original_message_id": original, "at": at}


def is_candidate(parsed: ParsedMessage, mail_from: str, policy: BouncePolicy) -> tuple[bool, bool]:
    """(candidate, standard): whether to scan the message at all, and whether it is an RFC 3464 DSN."""
    standard = _is_dsn_report(parsed.header("Content-Type") or "")
    if standard:
        return True, True
    if not policy.scan_suspects:
        return False, False
    if mail_from.strip() in ("", "<>"):
        return True, False
    for addr in (parsed.from_addr, mail_from):
        if addr and addr.rpartition("@")[0].strip('"').lower() in ROBOT_LOCALPARTS:
            return True, False
    if _BOUNCE_SUBJECT.match(parsed.subject or ""):
        return True, False
    if parsed.header("X-Failed-Recipients") is not None:
        return True, False
    return False, False


def _decode_addrs(addrs: Iterable[bytes | str]) -> tuple[str, ...]:
    out = []
    for a in addrs:
        s = a.decode("ascii", "replace") if isinstance(a, bytes) else str(a)
        s = s.strip().strip("<>").strip()
        if "@" in s:
            local, _, domain = s.rpartition("@")
            out.append(f"{local}@{domain.lower()}")
    return tuple(sorted(dict.fromkeys(out)))


def _strip_id(value: str | None) -> str | None:
    if not value:
        return None
    m = re.search(r"<([^<>\s]+)>", value)
    v = m.group(1) if m else value.strip().strip("<>").strip()
    return v or None


def _original_message_id(msg: email.message.Message, parsed: ParsedMessage) -> str | None:
    """The Message-ID of the bounced message: from its attached copy or headers, from a copy
    inlined in the text (qmail, Exim), else from In-Reply-To/References."""
    for part in msg.walk():
        ctype = part.get_content_type()
        if ctype in ("message/rfc822", "message/global"):
            payload = part.get_payload()
            inner = payload[0] if isinstance(payload, list) and payload else None
            if isinstance(inner, email.message.Message):
                mid = _strip_id(inner.get("Message-ID"))
                if mid:
                    return mid
        elif ctype in ("text/rfc822-headers", "message/rfc822-headers", "text/rfc822-header"):
            raw = part.get_payload(decode=True) or b""
            try:
                headers = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(raw)
            except Exception:
                continue
            mid = _strip_id(headers.get("Message-ID"))
            if mid:
                return mid
    own = parsed.message_id
    for part in msg.walk():
        if part.get_content_maintype() != "text" or part.get_content_type() in ("text/html",):
            continue
        raw = part.get_payload(decode=True)
        if not isinstance(raw, bytes):
            continue
        text = raw[:_MAX_TEXT_SCAN].decode("utf-8", "replace")
        for m in _MSGID_LINE.finditer(text):
            mid = _strip_id(m.group(1))
            if mid and mid != own:
                return mid
    if parsed.in_reply_to:
        return parsed.in_reply_to[0]
    if parsed.references:
        return parsed.references[-1]
    return None


def _details(msg: email.message.Message) -> tuple[dict[str, str], ...]:
    """Per-recipient blocks of every message/delivery-status part (RFC 3464 2.3)."""
    out: list[dict[str, str]] = []
    for part in msg.walk():
        if part.get_content_type() != "message/delivery-status":
            continue
        blocks = part.get_payload()
        if not isinstance(blocks, list):
            continue
        for block in blocks:
            if not isinstance(block, email.message.Message):
                continue
            rcpt = block.get("Final-Recipient") or block.get("Original-Recipient")
            if not rcpt:
                continue
            addr = str(rcpt).partition(";")[2].strip() or str(rcpt).strip()
            out.append({
                "recipient": addr.strip("<>"),
                "action": str(block.get("Action", "")).strip().lower(),
                "status": str(block.get("Status", "")).strip(),
                "diagnostic": " ".join(str(block.get("Diagnostic-Code", "")).split())[:500],
            })
            if len(out) >= 100:
                return tuple(out)
    return tuple(out)


def analyse_bounce(raw: bytes, parsed: ParsedMessage, mail_from: str, rcpt_tos: Iterable[str],
                   policy: BouncePolicy) -> BounceReport | None:
    """A :class:`BounceReport` when the message is a bounce, else None. Pure; never raises."""
    verp = verp_token(rcpt_tos, policy.verp_prefix)
    candidate, standard = is_candidate(parsed, mail_from, policy)
    if not candidate and verp is None:
        return None
    if len(raw) > _MAX_BOUNCE_SIZE and not standard and verp is None:
        return None
    try:
        msg = email.message_from_bytes(raw, policy=email.policy.compat32)
    except Exception:                       # pragma: no cover - compat32 parsing does not raise
        return BounceReport(verp=verp[0], verp_address=verp[1]) if verp else None
    try:
        temporary, permanent = all_failures(msg)
    except Exception as exc:                # a detector choking on hostile input
        log.debug("flufl.bounce failed: %s", exc)
        temporary, permanent = frozenset(), frozenset()
    perm = _decode_addrs(permanent)
    temp = tuple(a for a in _decode_addrs(temporary) if a not in perm)
    if not (perm or temp or standard or verp):
        return None                          # a suspect that is not a bounce after all
    try:
        original = _original_message_id(msg, parsed)
    except Exception:                        # pragma: no cover - defensive
        original = None
    details = _details(msg) if standard else ()
    return BounceReport(perm, temp, original, verp[0] if verp else None, verp[1] if verp else None,
                        standard, details)


class BounceStage:
    """Drop bounces, reporting failed recipients and the bounced message for the ticket side."""

    name = "bounce"

    def __init__(self, policy: BouncePolicy | None = None,
                 per_mailbox: Mapping[str, BouncePolicy] | None = None) -> None:
        self.policy = policy or BouncePolicy()
        self.per_mailbox = dict(per_mailbox or {})

    async def run(self, msg: Inbound, ctx: Context) -> Verdict:
        policy: BouncePolicy = policy_for(self.policy, self.per_mailbox, msg, ctx)
        if not policy.enabled:
            return Verdict()
        e = msg.entry
        mdn = analyse_mdn(e.raw, msg.parsed)
        if mdn is not None:
            return Verdict(DROP, f"read receipt: {mdn['disposition']} by {mdn['reader']}", data={"mdn": mdn})
        report = analyse_bounce(e.raw, msg.parsed, e.mail_from, e.rcpt_tos, policy)
        if report is None:
            return Verdict()
        smtp = getattr(getattr(ctx, "cfg", None), "smtp", None)
        hostname = (getattr(smtp, "hostname", "") or "").lower().rstrip(".")
        return Verdict(DROP, report.reason(), data={"bounce": report.as_dict([hostname] if hostname else [])})
