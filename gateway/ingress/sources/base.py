"""The interface between the source manager and a kind of mailbox (IMAP, POP3, Graph).

A kind module only talks to its server: it lists message keys, fetches one message's bytes, and settles
a message (moves or flags it) when told. Everything that makes the import exactly once — which keys were
committed, when a message may be settled, failures and pauses — is the manager's (manager.py).
"""
from __future__ import annotations

import asyncio

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from gateway.config.sources import SourceConfig

# settle() outcomes: the pipeline's result for the message
TICKET = "ticket"              # ticket created or article added -> success_folder ("" = leave, flag \Seen)
QUARANTINED = "quarantined"    # -> failure_folder
SUPPRESSED = "suppressed"      # auto-replies, bulk, duplicates -> exclusion_folder
OUTCOMES = (TICKET, QUARANTINED, SUPPRESSED)

# error kinds after which the connection cannot be used for the rest of the cycle
CONNECTION_KINDS = ("connect", "protocol", "auth", "token", "uidvalidity")
FETCH_BUDGET = 16 * 1024 * 1024   # bytes one fetch_many returns at most (beyond its first message)


@dataclass(frozen=True)
class Fetched:
    """One message as the server holds it."""

    key: str                   # stable per message: "imap:<uidvalidity>:<uid>", "pop3:<uidl>", "graph:<id>"
    raw: bytes                 # the RFC 5322 bytes, exactly as stored on the server
    folder: str                # where it was found
    received: float | None     # the server's arrival time (IMAP INTERNALDATE, Graph receivedDateTime), if known


@dataclass(frozen=True)
class Step:
    """One line of ``ticketmx source test`` (and of POST /api/v1/sources/{name}/test); secrets masked."""

    name: str
    ok: bool
    detail: str


class SourceError(Exception):
    """A failure talking to the server. ``kind`` labels the error metric: connect | tls | auth | protocol |
    folder | fetch | settle | token | throttled; ``temporary`` = worth trying again later."""

    def __init__(self, kind: str, message: str, temporary: bool = True) -> None:
        super().__init__(message)
        self.kind = kind
        self.temporary = temporary


@runtime_checkable
class Source(Protocol):
    """One per ``[[source]]``; the manager calls these from one task at a time (never concurrently)."""

    cfg: SourceConfig

    async def connect(self) -> None:
        """Connect, authenticate, open ``cfg.folder``; raise :class:`SourceError`."""

    async def close(self) -> None:
        """Log out and close; never raises."""

    async def keys(self) -> list[str]:
        """The keys of the messages in the folder now (a cheap listing: UIDs, UIDLs, ids), oldest first,
        without those older than ``cfg.since`` when the server can tell."""

    async def fetch(self, key: str) -> Fetched:
        """The raw message; raise :class:`SourceError` (kind "fetch") when it is gone or unreadable."""

    async def settle(self, key: str, outcome: str) -> None:
        """Move the message to ``cfg.target(outcome)`` (creating the folder when missing), or flag it
        \\Seen and leave it when that is "". Called only after the message's spool entry is committed
        and the pipeline has ended it."""

    async def wait_for_new(self, timeout: float) -> None:
        """Return when new mail may have arrived (IMAP IDLE, Graph delta) or after ``timeout`` seconds."""

    async def test(self) -> list[Step]:
        """Every step of a connection (DNS, TCP, TLS, greeting, auth, folder, target folders), each with
        the server's answer; stops at the first failed step; leaves nothing changed but created folders."""


# -- optional batch operations -------------------------------------------------------------------------
# A kind may implement ``fetch_many(keys)`` and ``settle_many(keys, outcome)`` (IMAP does: one UID FETCH /
# UID MOVE for many messages); these helpers use them when present and fall back to one call per message
# otherwise. They are not members of the Protocol so that a kind without them still conforms.

async def fetch_many(source: Any, keys: list[str]) -> dict[str, "Fetched | SourceError"]:
    """Fetch a prefix of ``keys`` (at least the first; at most about FETCH_BUDGET bytes): key -> the
    message, or the SourceError of that message alone. Keys absent from the answer were not fetched yet.
    Raises SourceError when the connection is unusable (CONNECTION_KINDS)."""
    many = getattr(source, "fetch_many", None)
    if many is not None:
        return await many(keys)
    out: dict[str, Fetched | SourceError] = {}
    total = 0
    for key in keys:
        try:
            f = await source.fetch(key)
        except SourceError as exc:
            if exc.kind in CONNECTION_KINDS:
                raise
            out[key] = exc
            continue
        out[key] = f
        total += len(f.raw)
        if total >= FETCH_BUDGET:
            break
    return out


async def settle_many(source: Any, keys: list[str], outcome: str) -> None:
    """Settle several messages with one outcome (one command where the kind can); raises SourceError
    as ``settle`` does. The caller falls back to one ``settle`` per key to find the one that fails."""
    many = getattr(source, "settle_many", None)
    if many is not None:
        await many(keys, outcome)
        return
    # a kind whose server takes requests in parallel (graph: 4 per mailbox) settles that many at once
    width = max(1, int(getattr(source, "settle_concurrency", 1)))
    for i in range(0, len(keys), width):
        outs = await asyncio.gather(*(source.settle(k, outcome) for k in keys[i:i + width]), return_exceptions=True)
        failed = next((o for o in outs if isinstance(o, BaseException)), None)
        if failed is not None:
            raise failed
