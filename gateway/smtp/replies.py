"""SMTP replies as values: a code, an RFC 3463 enhanced status code and a text."""
from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Reply:
    code: int
    enhanced: str
    text: str
    reason: str = ""  # bounded metrics label, e.g. "unknown_recipient"

    def __str__(self) -> str:
        return f"{self.code} {self.enhanced} {self.text}"


UNKNOWN_RECIPIENT = Reply(550, "5.1.1", "No such mailbox here", "unknown_recipient")
TOO_MANY_RECIPIENTS = Reply(452, "4.5.3", "Too many recipients", "too_many_recipients")
MESSAGE_TOO_BIG = Reply(552, "5.3.4", "Message size exceeds fixed maximum message size", "too_big")
LOOP_DETECTED = Reply(554, "5.4.6", "Mail loop detected", "loop")
TOO_MANY_HOPS = Reply(554, "5.4.6", "Too many Received headers: mail loop suspected", "loop")
INTERNAL_ERROR = Reply(451, "4.3.0", "Internal error, please try again later", "internal_error")
SPOOL_FAILED = Reply(451, "4.3.0", "Could not queue the message, please try again later", "spool_failed")
SHUTTING_DOWN = Reply(421, "4.3.2", "Service shutting down, try again later", "shutting_down")
TOO_MANY_SESSIONS_IP = Reply(421, "4.7.0", "Too many connections from your address", "per_ip_limit")
TOO_MANY_SESSIONS = Reply(421, "4.3.2", "Too many connections, try again later", "session_limit")
IDLE_TIMEOUT = Reply(421, "4.4.2", "Idle timeout, closing connection", "idle_timeout")
TOO_MANY_SESSIONS_BUSY = Reply(421, "4.7.0", "Too many connections from your address while the server is busy",
                               "busy_ip_limit")
DATA_TOO_SLOW = Reply(421, "4.4.2", "Message data arriving too slowly, closing connection", "data_too_slow")
TRANSACTION_TIMEOUT = Reply(421, "4.4.2", "Transaction took too long, closing connection", "transaction_timeout")
SESSION_TIMEOUT = Reply(421, "4.4.2", "Session lasted too long, closing connection", "session_timeout")
TOO_MANY_ERRORS = Reply(421, "4.7.0", "Too many errors, closing connection", "too_many_errors")
HEADER_TOO_BIG = Reply(552, "5.6.0", "Header section exceeds fixed maximum size (no empty line within the limit)",
                       "header_too_big")
BAD_SENDER_SYNTAX = Reply(501, "5.1.7", "Bad sender address syntax", "bad_sender_syntax")
BAD_RECIPIENT_SYNTAX = Reply(501, "5.1.3", "Bad recipient address syntax", "bad_recipient_syntax")
BAD_HELO = Reply(501, "5.5.2", "Control characters are not allowed in the HELO/EHLO name", "bad_helo")
TLS_ALREADY_ACTIVE = Reply(503, "5.5.1", "TLS already active", "tls_active")
RATE_LIMITED_IP = Reply(450, "4.7.1", "Too many messages from your address, slow down", "rate_ip")
RATE_LIMITED_SENDER = Reply(450, "4.7.1", "Too many messages from this sender, slow down", "rate_sender")
SENDER_OK = Reply(250, "2.1.0", "Sender OK")
RECIPIENT_OK = Reply(250, "2.1.5", "Recipient OK")

# Default enhanced codes for replies produced by aiosmtpd itself without one.
_DEFAULT_ENHANCED = {
    211: "2.0.0", 214: "2.0.0", 220: "2.0.0", 221: "2.0.0", 250: "2.0.0", 251: "2.1.5", 252: "2.5.0",
    421: "4.3.0", 450: "4.2.0", 451: "4.3.0", 452: "4.3.1", 454: "4.7.0", 455: "4.5.4",
    500: "5.5.2", 501: "5.5.4", 502: "5.5.1", 503: "5.5.1", 504: "5.5.4", 530: "5.7.0", 535: "5.7.8",
    550: "5.0.0", 551: "5.1.6", 552: "5.3.4", 553: "5.1.3", 554: "5.0.0", 555: "5.5.4",
}
# aiosmtpd texts we replace outright (wrong or unhelpful enhanced meaning).
_REWRITES = {
    "552 Error: Too much mail data": str(MESSAGE_TOO_BIG),
    "552 Error: message size exceeds fixed maximum message size": str(MESSAGE_TOO_BIG),
    "500 Line too long (see RFC5321 4.5.3.1.6)": "500 5.5.2 Line too long (see RFC 5321 4.5.3.1.6)",
    "503 Error: need RCPT command": "503 5.5.1 Error: need RCPT command",
}
_HAS_ENHANCED = re.compile(r"^\d{3}[ -][245]\.\d{1,3}\.\d{1,3}(?: |$)")
_CODE = re.compile(r"^(\d{3})([ -])(.*)$", re.S)


def with_enhanced(status: str) -> str:
    """Give an aiosmtpd reply line an RFC 3463 enhanced code if it lacks one (RFC 2034)."""
    rewritten = _REWRITES.get(status)
    if rewritten is not None:
        return rewritten
    if _HAS_ENHANCED.match(status):
        return status
    m = _CODE.match(status)
    if not m:
        return status
    code = int(m.group(1))
    enhanced = _DEFAULT_ENHANCED.get(code) or f"{code // 100}.0.0"
    if code // 100 not in (2, 4, 5):
        return status
    return f"{m.group(1)}{m.group(2)}{enhanced} {m.group(3)}"
