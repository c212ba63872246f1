"""The interface between the source manager and a kind of mailbox (IMAP, POP3, Graph).

A kind module only talks to its server: it lists message keys, fetches one message's bytes, and settles
a message (moves or flags it) when told. Everything that makes the import exactly once — which keys were
committed, when a message may be settled, failures and pauses — is the manager's (manager.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from gateway.config.sources import SourceConfig

# settle() outcomes: the pipeline's result for the message
TICKET = "ticket"              # ticket created or article added -> success_folder ("" = leave, flag \Seen)
QUARANTINED = "quarantined"    # -> failure_folder
SUPPRESSED = "suppressed"      # auto-replies, bulk, duplicates -> exclusion_folder
OUTCOMES = (TICKET, QUARANTINED, SUPPRESSED)


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
