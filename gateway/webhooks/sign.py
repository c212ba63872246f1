"""``Ticketmx-Signature: t=<unix time>,v1=<hex HMAC-SHA256(secret, "<t>.<raw body>")>``.

The timestamp is inside the MAC so a captured request cannot be replayed later than the
receiver's tolerance; the raw body (not a re-serialisation) is what is signed, so a receiver
verifies before parsing. ``v1`` names the scheme: a later one can be added beside it.
"""
from __future__ import annotations

import hashlib
import hmac
import time

HEADER = "Ticketmx-Signature"
EVENT_ID_HEADER = "Ticketmx-Event-Id"
EVENT_HEADER = "Ticketmx-Event"


def sign(secret: str, body: bytes, t: int | None = None) -> str:
    """The header value for ``body`` sent at ``t`` (now by default)."""
    t = int(time.time()) if t is None else int(t)
    mac = hmac.new(secret.encode("utf-8"), f"{t}.".encode("ascii") + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


def verify(secret: str, header: str, body: bytes, tolerance: float = 300.0, now: float | None = None) -> bool:
    """True when ``header`` is a valid signature of ``body`` made within ``tolerance`` seconds."""
    parts: dict[str, list[str]] = {}
    for item in header.split(","):
        k, _, v = item.strip().partition("=")
        parts.setdefault(k, []).append(v)
    try:
        t = int(parts["t"][0])
    except (KeyError, ValueError):
        return False
    now = time.time() if now is None else now
    if abs(now - t) > tolerance:
        return False
    expected = hmac.new(secret.encode("utf-8"), f"{t}.".encode("ascii") + body, hashlib.sha256).hexdigest()
    return any(hmac.compare_digest(expected, v) for v in parts.get("v1", []))
