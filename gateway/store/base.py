"""The store interface: one contract, a SQLite implementation now, PostgreSQL later.

The pipeline only talks to :class:`Store`; every idempotency decision that must
be atomic (spool id already delivered, Message-ID already seen, thread lookup)
happens inside :meth:`Store.deliver`'s single transaction.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any

# Spool states. ``queued`` and ``processing`` are live; the rest are terminal.
QUEUED = "queued"
PROCESSING = "processing"
TICKET_CREATED = "ticket_created"
ARTICLE_ADDED = "article_added"
SUPPRESSED = "suppressed"
QUARANTINED = "quarantined"
LIVE_STATES = (QUEUED, PROCESSING)
TERMINAL_STATES = (TICKET_CREATED, ARTICLE_ADDED, SUPPRESSED, QUARANTINED)
ALL_STATES = LIVE_STATES + TERMINAL_STATES


@dataclass(frozen=True, slots=True)
class SpoolEntry:
    """One accepted message and its envelope, exactly as committed before the 250."""

    id: str
    received_at: float
    mail_from: str
    rcpt_tos: tuple[str, ...]
    mailboxes: tuple[str, ...]
    peer_ip: str
    helo: str
    tls: dict[str, Any] | None
    message_id: str
    raw: bytes
    auth_header: str | None = None
    auth: dict[str, Any] | None = None
    flags: tuple[str, ...] = ()
    state: str = QUEUED
    reason: str = ""
    attempts: int = 0
    last_error: str = ""
    history: tuple[dict[str, Any], ...] = ()
    ticket_id: int | None = None
    article_id: int | None = None
    finished_at: float | None = None

    @property
    def size(self) -> int:
        return len(self.raw)


@dataclass(frozen=True, slots=True)
class AttachmentDraft:
    filename: str
    content_type: str
    sha256: str
    content: bytes
    inline: bool = False
    content_id: str = ""


@dataclass(frozen=True, slots=True)
class ArticleDraft:
    """What the pipeline wants stored for one inbound message."""

    from_addr: str
    from_name: str
    subject: str
    body_text: str
    body_html: str
    message_id: str
    to_addrs: tuple[str, ...] = ()
    cc_addrs: tuple[str, ...] = ()
    rcpt_tos: tuple[str, ...] = ()
    attachments: tuple[AttachmentDraft, ...] = ()


@dataclass(frozen=True, slots=True)
class Delivery:
    """A final pipeline verdict for one spool entry, applied atomically by the store.

    ``kind`` is ``ticket`` (thread onto an existing ticket if ``thread_refs`` names one
    the sender participates in, else open a new ticket), ``suppress`` or ``quarantine``.
    """

    spool_id: str
    kind: str
    reason: str = ""
    queue: str = ""
    mailbox: str = ""
    article: ArticleDraft | None = None
    thread_refs: tuple[str, ...] = ()
    ticket_flags: tuple[str, ...] = ()
    history: tuple[dict[str, Any], ...] = ()


@dataclass(frozen=True, slots=True)
class DeliveryResult:
    spool_id: str
    state: str
    reason: str = ""
    ticket_id: int | None = None
    article_id: int | None = None
    ticket_number: str | None = None


class Store(abc.ABC):
    """Persistent state of the gateway."""

    @abc.abstractmethod
    async def open(self) -> None: ...

    @abc.abstractmethod
    async def close(self) -> None: ...

    # -- spool -----------------------------------------------------------------
    @abc.abstractmethod
    async def spool_insert(self, entries: list[SpoolEntry]) -> None:
        """Commit entries durably (fsync) before returning: the caller then answers 250."""

    @abc.abstractmethod
    async def spool_recover(self, owner: str | None = None) -> int:
        """Return entries left ``processing`` by a crashed worker to ``queued``: those claimed by
        ``owner``, or every one when ``owner`` is None (at start, before any worker runs)."""

    @abc.abstractmethod
    async def spool_claim(self, limit: int, now: float, owner: str = "") -> list[SpoolEntry]:
        """Claim up to ``limit`` due queued entries for ``owner`` (attempts += 1, committed before work)."""

    @abc.abstractmethod
    async def spool_retry(self, spool_id: str, error: str, next_attempt_at: float) -> None: ...

    @abc.abstractmethod
    async def deliver(self, deliveries: list[Delivery], now: float) -> list[DeliveryResult]:
        """Apply final verdicts in one transaction; idempotent per spool id and Message-ID."""

    @abc.abstractmethod
    async def spool_get(self, spool_id: str) -> SpoolEntry | None: ...

    @abc.abstractmethod
    async def spool_list(self, state: str | None = None, limit: int | None = None) -> list[SpoolEntry]: ...

    @abc.abstractmethod
    async def spool_replay(self, spool_id: str) -> bool:
        """Put a finished or quarantined entry back in the queue (attempts reset)."""

    @abc.abstractmethod
    async def spool_replay_quarantined(self) -> list[str]: ...

    @abc.abstractmethod
    async def spool_counts(self) -> dict[str, int]: ...

    # -- tickets ---------------------------------------------------------------
    @abc.abstractmethod
    async def tickets_list(self, limit: int | None = None) -> list[dict[str, Any]]: ...

    @abc.abstractmethod
    async def ticket_get(self, ref: str) -> dict[str, Any] | None:
        """A ticket by numeric id or human number, with its articles and attachments."""

    @abc.abstractmethod
    async def blob_get(self, sha256: str) -> bytes | None: ...
