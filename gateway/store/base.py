"""The store interface: one contract, a SQLite implementation now, PostgreSQL later.

The pipeline only talks to :class:`Store`; every idempotency decision that must
be atomic (spool id already delivered, Message-ID already seen, thread lookup)
happens inside :meth:`Store.deliver`'s single transaction.
"""
from __future__ import annotations

import abc
import json
from dataclasses import dataclass, field
from typing import IO, Any, AsyncIterator, Callable, Iterator, Sequence

from gateway.runtime.fileio import read_chunks

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
    attempts: int = 0          # claims, less those refunded (stops, other messages' kills, store errors)
    last_error: str = ""
    history: tuple[dict[str, Any], ...] = ()
    ticket_id: int | None = None
    article_id: int | None = None
    finished_at: float | None = None
    traceback: str = ""
    # Large messages (see docs/architecture.md, "Large messages"): ``raw`` holds only our prepended
    # headers and the message's header section. On the SMTP side the body is in ``body`` (an
    # anonymous temporary file, read from offset 0); once spooled it is in ``chunks`` rows, read
    # back one at a time with :meth:`Store.spool_body_chunks`.
    body: IO[bytes] | None = field(default=None, compare=False, repr=False)
    body_size: int = 0
    chunks: int = 0
    interrupted: int = 0       # service starts that found it processing (docs/operations.md, "Crashes")
    # An operator's `spool release` waiting for the pipeline: {"stage", "by", "at", "forced"}; that stage
    # is skipped once (gateway/pipeline/runner/worker.py), and the store clears it when the entry ends again.
    released: dict[str, Any] | None = None
    # HTTP inbound (gateway/ingress/http_inbound.py): the idempotency key of the post, written to
    # inbound_keys in the spool insert's transaction; a second entry with the same key fails to commit.
    inbound_key: str = field(default="", compare=False)
    # Pull ingress (gateway/ingress/sources/): (source name, message key, SHA-256 of the fetched bytes),
    # written to source_messages in the spool insert's transaction, like inbound_key; a second entry with
    # the same (source, key) fails to commit. An entry inserted with state QUARANTINED (a check refused it:
    # what SMTP would have answered 5xx) is quarantined with its reason in the same transaction.
    source_key: tuple[str, str, str] | None = field(default=None, compare=False)

    @property
    def size(self) -> int:
        return len(self.raw) + self.body_size

    @property
    def chunked(self) -> bool:
        return self.body is not None or self.chunks > 0


SPOOL_CHUNK = 1024 * 1024  # bytes per spool_chunks row


def ingress_keys(entries: Sequence[SpoolEntry]) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]],
                                                         list[tuple[Any, ...]]]:
    """What a spool insert writes beside the rows, in its transaction: the idempotency keys of the ingress
    that is not SMTP — HTTP posts (inbound_keys) and pulled messages (source_messages) — and the
    quarantine of entries a check refused at intake (a pulled message cannot be answered 5xx)."""
    keys = [(e.inbound_key, e.id, e.received_at) for e in entries if e.inbound_key]
    pulled = [(e.source_key[0], e.source_key[1], e.id, e.source_key[2], e.received_at)
              for e in entries if e.source_key]
    refused = [(e.state, e.reason, e.received_at, e.id) for e in entries if e.state == QUARANTINED]
    return keys, pulled, refused


def body_file_chunks(entry: SpoolEntry) -> Iterator[bytes]:
    """A not-yet-spooled entry's body file from the start, one spool chunk at a time."""
    if entry.body is None:
        return iter(())
    return read_chunks(entry.body, entry.body_size, SPOOL_CHUNK)


def chunk_count(entry: SpoolEntry) -> int:
    """How many spool_chunks rows the entry has (or will have once inserted)."""
    return -(-entry.body_size // SPOOL_CHUNK) if entry.body is not None else entry.chunks


@dataclass(frozen=True, slots=True)
class SpoolQuery:
    """``ticketmx spool find``: entries matching every given criterion, newest first.

    ``mail_from`` matches the envelope sender or the From address the SMTP side read (what DMARC
    evaluated); ``rcpt`` an envelope recipient or the mailbox it mapped to; both case-insensitively.
    ``since``: epoch seconds (received at or after); ``until``: received before. The HTTP API adds
    ``state`` (exactly), ``before`` (ids older than this one: the next page) and ``mailboxes`` (the entry
    reached one of these mailbox addresses: a token's queue scope; ``None`` = no such filter)."""

    message_id: str = ""
    mail_from: str = ""
    rcpt: str = ""
    since: float | None = None
    limit: int = 50
    until: float | None = None
    state: str = ""
    before: str = ""
    mailboxes: frozenset[str] | None = None

    def matches(self, r: Any) -> bool:
        """The exact test on a candidate row (the SQL only narrows the candidates)."""
        if self.message_id and r["message_id"] != self.message_id:
            return False
        if self.mail_from:
            want = self.mail_from.lower()
            header = ((_loads(r["auth"]) or {}).get("from") or {}).get("addresses") or ()
            if r["mail_from"].lower() != want and want not in (str(a).lower() for a in header):
                return False
        if self.rcpt:
            want = self.rcpt.lower()
            given = [*(_loads(r["rcpt_tos"]) or ()), *(_loads(r["mailboxes"]) or ())]
            if want not in (str(a).lower() for a in given):
                return False
        if self.mailboxes is not None:
            if not self.mailboxes.intersection(str(a).lower() for a in (_loads(r["mailboxes"]) or ())):
                return False
        return True


def _loads(text: Any) -> Any:
    try:
        return json.loads(text) if text else None
    except ValueError:
        return None


def _like_json_string(value: str) -> str | None:
    """A LIKE pattern (ESCAPE '!') finding ``value`` as a JSON string in a JSON column, or None when the
    JSON spelling could differ (non-ASCII is written as \\u escapes, quotes and backslashes escaped)."""
    if not value.isascii() or '"' in value or "\\" in value:
        return None
    escaped = value.lower().replace("!", "!!").replace("%", "!%").replace("_", "!_")
    return f'%"{escaped}"%'


def spool_id_floor(ts: float) -> str:
    """The smallest spool id of a message received at or after ``ts`` (ids begin with the receive
    time in ms as 11 hex digits, gateway/spool.py): a range on the primary key."""
    return f"{max(0, int(ts * 1000)):011x}"


# Light columns of a spool row: enough to match (SpoolQuery.matches) without reading any message.
_FIND_COLUMNS = "s.id, s.mail_from, s.rcpt_tos, s.mailboxes, s.message_id, s.auth"
_FIND_PAGE = 1000


@dataclass(frozen=True, slots=True)
class TicketQuery:
    """``ticketmx tickets list`` filters (all optional, combined with AND)."""

    status: str = ""
    queue: str = ""
    assignee: str = ""
    requester: str = ""
    since: float | None = None      # created at or after (epoch seconds)
    limit: int | None = None
    newest_first: bool = False

    def sql(self) -> tuple[str, tuple[Any, ...]]:
        """WHERE/ORDER/LIMIT for ``tickets t JOIN contacts c`` with ``?`` placeholders (both stores)."""
        where: list[str] = []
        params: list[Any] = []
        for column, value in (("t.status", self.status), ("t.queue", self.queue)):
            if value:
                where.append(f"{column} = ?")
                params.append(value)
        if self.assignee:
            where.append("lower(t.assignee) = ?")
            params.append(self.assignee.lower())
        if self.requester:
            where.append("c.email = ?")  # stored lower-cased
            params.append(self.requester.lower())
        if self.since is not None:
            where.append("t.created_at >= ?")
            params.append(self.since)
        sql = (" WHERE " + " AND ".join(where) if where else "") + \
            (" ORDER BY t.id DESC" if self.newest_first else " ORDER BY t.id")
        if self.limit is not None:
            sql += " LIMIT ?"
            params.append(self.limit)
        return sql, tuple(params)


@dataclass(frozen=True, slots=True)
class TicketPage:
    """One page of ``GET /tickets``: newest first (by ticket id: creation order), tickets below
    ``before`` (the cursor of the page before), at most ``limit``. ``text``: every term must occur in
    the subject or text of an article (gateway/store/search.py). ``scope``: only tickets of these
    queues (() = every queue: an admin's or an unscoped token's view). ``unassigned``: only tickets
    nobody is assigned to (the web UI's "unassigned" view; walks the lower(assignee) index)."""

    status: str = ""
    queue: str = ""
    assignee: str = ""
    requester: str = ""
    since: float | None = None
    text: str = ""
    scope: tuple[str, ...] = ()
    before: int | None = None
    limit: int = 50
    unassigned: bool = False
    statuses: tuple[str, ...] = ()      # any of these (the UI's "open" view: new and open); with status: both

    def filters(self) -> tuple[list[str], list[Any]]:
        """WHERE terms (``?`` placeholders) for ``tickets t JOIN contacts c``, both stores."""
        where: list[str] = []
        params: list[Any] = []
        base_sql, base_params = TicketQuery(self.status, self.queue, self.assignee, self.requester).sql()
        if base_sql.startswith(" WHERE "):
            where.append(base_sql[len(" WHERE "):base_sql.index(" ORDER BY")])
            params += base_params
        if self.since is not None:
            # as an id bound too: the newest-first walk down the primary key stops at the first ticket
            # created before ``since`` (tickets_created index) instead of reading the table to its start
            where.append("t.created_at >= ? AND t.id >= (SELECT COALESCE(MIN(id), 0) FROM tickets"
                         " WHERE created_at >= ?)")
            params += [self.since, self.since]
        if self.statuses:
            where.append(f"t.status IN ({','.join('?' * len(self.statuses))})")
            params += list(self.statuses)
        if self.unassigned:
            where.append("lower(t.assignee) = ''")
        if self.scope:
            where.append(f"t.queue IN ({','.join('?' * len(self.scope))})")
            params += list(self.scope)
        if self.before is not None:
            where.append("t.id < ?")
            params.append(self.before)
        return where, params


@dataclass(frozen=True, slots=True)
class AttachmentDraft:
    filename: str
    content_type: str
    sha256: str
    content: bytes
    inline: bool = False
    content_id: str = ""


@dataclass(frozen=True, slots=True)
class StrippedAttachment:
    """An attachment the policy refused: listed on the ticket with the reason, content not stored."""

    filename: str
    content_type: str
    size: int
    sha256: str
    reason: str


@dataclass(frozen=True, slots=True)
class ArticleDraft:
    """What the pipeline wants stored for one inbound message."""

    from_addr: str
    from_name: str
    subject: str
    body_text: str
    body_html: str          # sanitised HTML (the raw original stays in the spool)
    message_id: str
    to_addrs: tuple[str, ...] = ()
    cc_addrs: tuple[str, ...] = ()
    rcpt_tos: tuple[str, ...] = ()
    attachments: tuple[AttachmentDraft, ...] = ()
    stripped: tuple[StrippedAttachment, ...] = ()
    visibility: str = "public"   # public | internal (internal notes never reach requesters)
    kind: str = "email"          # email | note (automatic mail kept as a note) | system
    new_text: str = ""           # the reply without quoted history / signature


@dataclass(frozen=True, slots=True)
class ThreadHints:
    """How the store may attach a message to an existing ticket (decided atomically in deliver()).

    In order: ``refs`` (In-Reply-To/References ids we issued or received on a ticket), then
    ``number`` (a subject token), then — when ``subject_days`` > 0 — the same requester's ticket
    with the same normalised subject within that many days. The sender must be a participant of
    the ticket, unless it is an agent or ``number_verified`` (the token's MAC verified).
    """

    ticket_ids: tuple[int, ...] = ()   # from Message-IDs we issued (their MAC verified)
    refs: tuple[str, ...] = ()
    number: str | None = None
    number_verified: bool = False
    subject_key: str = ""
    subject_days: float = 0.0
    sender_is_agent: bool = False
    may_act: bool = True          # False: never append (e.g. DMARC failed under p=quarantine)
    may_reopen: bool = True       # automatic mail never reopens
    reopen_days: float = 0.0      # reply to a resolved/closed ticket within this → reopen; else new linked
    on_no_match: str = "new"      # new | drop | quarantine (replies-only mailboxes)
    on_stranger: str = "new"      # a non-participant naming a ticket: new (linked ticket) | quarantine
    internal_queues: tuple[str, ...] = ()  # queues that take no public updates by email (kept internal)
    reopen_days_by_queue: tuple[tuple[str, float], ...] = ()  # per-queue override of reopen_days
    thanks_only: bool = False     # a customer's "thanks, works now": added to a resolved ticket, never reopens


@dataclass(frozen=True, slots=True)
class TicketFields:
    """Fields a new ticket gets (routing rules, mapping); ``None`` keeps the default."""

    priority: str | None = None
    category: str | None = None
    assignee: str | None = None
    tags: tuple[str, ...] = ()
    fields: dict[str, Any] = field(default_factory=dict)
    flags: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Delivery:
    """A final pipeline verdict for one spool entry, applied atomically by the store.

    ``kind``: ``ticket`` (thread onto an existing ticket per ``thread``, else open a new one),
    ``note`` (automatic mail kept as an internal note on the ticket it answers; suppressed when it
    answers none), ``suppress`` or ``quarantine``.
    """

    spool_id: str
    kind: str
    reason: str = ""
    queue: str = ""
    mailbox: str = ""
    article: ArticleDraft | None = None
    thread: ThreadHints = ThreadHints()
    ticket_fields: TicketFields = TicketFields()
    participants: tuple[tuple[str, str, str], ...] = ()   # (email, name, role) besides the requester
    updates: dict[str, Any] = field(default_factory=dict)  # authorised command results for the ticket
    ticket_history: tuple[dict[str, Any], ...] = ()       # rules fired, commands, ... (actor/action/detail)
    contact_updates: tuple[tuple[str, bool, str], ...] = ()  # (email, undeliverable, reason)
    history: tuple[dict[str, Any], ...] = ()              # the stage decisions for the spool entry
    traceback: str = ""                                   # quarantine after an exception (never logged)
    headers: tuple[tuple[str, str], ...] = ()             # the inbound headers (acknowledgement decisions)
    opt_out: str = ""                                     # a verified unsubscribe request: this contact opts out
    report: dict[str, Any] | None = None                  # a DSN/MDN about one of our mails (see relay.reports)


@dataclass(frozen=True, slots=True)
class DeliveryResult:
    spool_id: str
    state: str
    reason: str = ""
    ticket_id: int | None = None
    article_id: int | None = None
    ticket_number: str | None = None
    requester: str | None = None
    reopened: bool = False


class Store(abc.ABC):
    # The [[webhook]]s (gateway.config.webhooks.WebhookConfig): code running inside a transaction finds
    # them on its connection (``conn.webhooks``) and queues events for them (gateway/webhooks/outbox.py).
    webhooks: tuple[Any, ...] = ()
    """Persistent state of the gateway."""

    @abc.abstractmethod
    async def open(self) -> None: ...

    @abc.abstractmethod
    async def close(self) -> None: ...

    async def defer_checkpoints(self, run_here: bool, interval: float = 0.2) -> None:
        """Keep the write-ahead log's checkpoints out of this process's commits (SQLite, see there);
        nothing to do for a store without one."""

    # -- spool -----------------------------------------------------------------
    @abc.abstractmethod
    async def spool_insert(self, entries: list[SpoolEntry]) -> None:
        """Commit entries durably (fsync) before returning: the caller then answers 250."""

    async def inbound_lookup(self, key: str) -> str | None:
        """The spool id committed with this HTTP inbound idempotency key, or None."""
        raise NotImplementedError

    # -- pull sources (source_messages, source_state; migration 0018) --------------------------------
    # Written once for both backends on ``query`` (a read, ``?`` placeholders) and ``transaction`` (a
    # sqlite3-shaped connection), which SqliteStore and PostgresStore both have.
    async def source_lookup(self, source: str, keys: Sequence[str]) -> dict[str, tuple[str, str]]:
        """key -> (spool id, state) for those of ``keys`` this source already imported."""
        out: dict[str, tuple[str, str]] = {}
        keys = list(keys)
        for i in range(0, len(keys), 500):
            part = keys[i:i + 500]
            rows = await self.query(  # type: ignore[attr-defined]
                f"SELECT key, spool_id, state FROM source_messages WHERE source=? AND key IN"
                f" ({','.join('?' * len(part))})", (source, *part))
            out.update((r[0], (r[1], r[2])) for r in rows)
        return out

    async def source_digest(self, source: str, digest: str) -> tuple[str, str, str] | None:
        """(key, spool id, state) of a message this source imported with these exact bytes, or None."""
        rows = await self.query("SELECT key, spool_id, state FROM source_messages WHERE source=? AND digest=?"  # type: ignore[attr-defined]
                                " ORDER BY created_at LIMIT 1", (source, digest))
        return (rows[0][0], rows[0][1], rows[0][2]) if rows else None

    async def source_alias(self, source: str, key: str, spool_id: str, state: str, digest: str) -> None:
        """Record ``key`` as one more key of an already imported message (seen again under a new key)."""
        import time as _time

        def fn(conn: Any) -> None:
            conn.execute("INSERT INTO source_messages (source, key, spool_id, state, digest, created_at)"
                         " VALUES (?,?,?,?,?,?) ON CONFLICT (source, key) DO NOTHING",
                         (source, key, spool_id, state, digest, _time.time()))
        await self.transaction(fn)  # type: ignore[attr-defined]

    async def source_pending(self, source: str, limit: int = 500) -> list[tuple[str, str, str, str]]:
        """(key, spool id, spool state, spool reason) of this source's messages not yet settled, oldest
        first; a spool row purged meanwhile reads as state ``""``."""
        rows = await self.query(  # type: ignore[attr-defined]
            "SELECT m.key, m.spool_id, COALESCE(s.state, ''), COALESCE(s.reason, '') FROM source_messages m"
            " LEFT JOIN spool s ON s.id = m.spool_id WHERE m.source=? AND m.state='spooled'"
            " ORDER BY m.created_at LIMIT ?", (source, limit))
        return [(r[0], r[1], r[2], r[3]) for r in rows]

    async def source_settled(self, source: str, keys: Sequence[str], outcome: str, now: float) -> None:
        """Mark messages settled: the server was told (moved or flagged)."""
        def fn(conn: Any) -> None:
            conn.executemany("UPDATE source_messages SET state='settled', outcome=?, settled_at=?"
                             " WHERE source=? AND key=?", [(outcome, now, source, k) for k in keys])
        if keys:
            await self.transaction(fn)  # type: ignore[attr-defined]

    async def source_counts(self, source: str | None = None) -> dict[str, dict[str, int]]:
        """source -> {state: count} over source_messages (one source's only when given)."""
        out: dict[str, dict[str, int]] = {}
        where, params = (" WHERE source=?", (source,)) if source else ("", ())
        for r in await self.query("SELECT source, state, COUNT(*) FROM source_messages" + where  # type: ignore[attr-defined]
                                  + " GROUP BY source, state", params):
            out.setdefault(r[0], {})[r[1]] = int(r[2])
        return out

    async def source_state_get(self, source: str | None = None) -> dict[str, dict[str, Any]]:
        """source -> its source_state row (every source's when ``source`` is None)."""
        sql = ("SELECT source, paused, paused_reason, paused_at, last_success, last_error, last_error_kind,"
               " last_error_at, failures, backlog, updated_at FROM source_state")
        rows = await self.query(sql + (" WHERE source=?" if source else ""), (source,) if source else ())  # type: ignore[attr-defined]
        names = ("source", "paused", "paused_reason", "paused_at", "last_success", "last_error", "last_error_kind",
                 "last_error_at", "failures", "backlog", "updated_at")
        return {r[0]: dict(zip(names, tuple(r))) for r in rows}

    async def source_state_set(self, source: str, **values: Any) -> None:
        """Upsert some columns of a source's state row; ``failures_add=1`` adds one to ``failures``."""
        import time as _time
        add = values.pop("failures_add", None)
        allowed = {"paused", "paused_reason", "paused_at", "last_success", "last_error", "last_error_kind",
                   "last_error_at", "failures", "backlog"}
        bad = set(values) - allowed
        if bad:
            raise ValueError(f"unknown source_state column(s): {sorted(bad)}")
        if "paused" in values:
            values["paused"] = int(bool(values["paused"]))
        sets = [f"{c}=excluded.{c}" for c in values] + ["updated_at=excluded.updated_at"]
        if add:
            sets.append(f"failures=source_state.failures + {int(add)}")
        if "failures" not in values:
            values["failures"] = int(add or 0)  # a new row's count
        cols = list(values)
        sql = (f"INSERT INTO source_state (source, {', '.join(cols)}, updated_at)"
               f" VALUES (?, {', '.join('?' for _ in cols)}, ?) ON CONFLICT (source) DO UPDATE SET {', '.join(sets)}")
        params = (source, *values.values(), _time.time())

        def fn(conn: Any) -> None:
            conn.execute(sql, params)
        await self.transaction(fn)  # type: ignore[attr-defined]

    @abc.abstractmethod
    def spool_body_chunks(self, entry: SpoolEntry) -> AsyncIterator[bytes]:
        """The body of a chunked entry in order, decrypted, at most one chunk at a time (a store may
        hand a chunk over in smaller pieces); nothing for other entries."""

    async def spool_full_raw(self, entry: SpoolEntry) -> bytes:
        """The whole message as one buffer: for the CLI and the few consumers that need it whole
        (``attach_original``). The pipeline itself streams chunked entries."""
        if not entry.chunks:
            return entry.raw
        parts = [entry.raw]
        async for chunk in self.spool_body_chunks(entry):
            parts.append(chunk)
        return b"".join(parts)

    @abc.abstractmethod
    async def spool_recover(self, owner: str | None = None, refund: bool = False) -> int:
        """Return entries left ``processing`` by a crashed worker to ``queued``: those claimed by
        ``owner``, or every one when ``owner`` is None (at start, before any worker runs).
        ``refund``: the claim's attempt is taken back (a worker killed for another message's budget).
        At start (``owner`` None) the attempt is always taken back and ``interrupted`` counted instead:
        the service was stopped or killed around the message, which did not crash a worker by itself."""

    @abc.abstractmethod
    async def spool_release(self, ids: "tuple[str, ...] | list[str]", owner: str, refund: bool = True) -> int:
        """Put these entries back in the queue if they are still ``processing`` and claimed by ``owner``
        (a worker whose batch could not be settled: a store error while saving its outcome).
        ``refund``: the claim's attempt is taken back. Returns how many went back."""

    @abc.abstractmethod
    async def spool_claim(self, limit: int, now: float, owner: str = "") -> list[SpoolEntry]:
        """Claim up to ``limit`` due queued entries for ``owner`` (attempts += 1, committed before work)."""

    @abc.abstractmethod
    async def spool_retry(self, spool_id: str, error: str, next_attempt_at: float) -> None: ...

    @abc.abstractmethod
    async def deliver(self, deliveries: list[Delivery], now: float,
                      on_delivered: Any = None) -> list[DeliveryResult]:
        """Apply final verdicts in one transaction; idempotent per spool id and Message-ID.

        ``on_delivered(conn, delivery, result)`` runs inside the same transaction after each one:
        notifications it queues commit (or roll back) together with the ticket change."""

    @abc.abstractmethod
    async def spool_get(self, spool_id: str) -> SpoolEntry | None: ...

    @abc.abstractmethod
    async def spool_list(self, state: str | None = None, limit: int | None = None) -> list[SpoolEntry]: ...

    @abc.abstractmethod
    async def spool_replay(self, spool_id: str, also: Callable[[Any], None] | None = None) -> bool:
        """Put a finished or quarantined entry back in the queue (attempts reset). ``also(conn)``
        runs in the same transaction when it does (the HTTP API's audit row)."""

    @abc.abstractmethod
    async def spool_replay_quarantined(self) -> list[str]: ...

    @abc.abstractmethod
    async def spool_counts(self) -> dict[str, int]: ...

    @abc.abstractmethod
    async def query(self, sql: str, params: tuple[Any, ...] = ()) -> Sequence[Any]:
        """A read with ``?`` placeholders; rows indexable by column name."""

    async def spool_find(self, q: SpoolQuery) -> list[SpoolEntry]:
        """Entries matching ``q``, newest first, at most ``q.limit``. The scan reads only light
        columns, a page at a time down the primary key (ids are time-ordered, so ``since`` bounds it);
        only the matches are then read whole."""
        where: list[str] = []
        params: list[Any] = []
        if q.since is not None:
            where.append("s.id >= ?")
            params.append(spool_id_floor(q.since))
        if q.until is not None:
            where.append("s.id < ?")
            params.append(spool_id_floor(q.until))
        if q.before:
            where.append("s.id < ?")
            params.append(q.before)
        if q.state:
            where.append("s.state = ?")
            params.append(q.state)
        if q.message_id:
            where.append("s.message_id = ?")
            params.append(q.message_id)
        if q.mail_from:
            like = _like_json_string(q.mail_from)
            if like is not None:
                where.append("(lower(s.mail_from) = ? OR lower(s.auth) LIKE ? ESCAPE '!')")
                params += [q.mail_from.lower(), like]
        if q.rcpt:
            like = _like_json_string(q.rcpt)
            if like is not None:
                where.append("(lower(s.rcpt_tos) LIKE ? ESCAPE '!' OR lower(s.mailboxes) LIKE ? ESCAPE '!')")
                params += [like, like]
        found: list[str] = []
        before: str | None = None
        # The first page is as long as the answer (every row matches when the SQL filters are exact:
        # a list by state reads 20 rows for 20, not 1000); each further page four times longer.
        page = max(1, min(q.limit, _FIND_PAGE))
        while len(found) < q.limit:
            page_where = where + (["s.id < ?"] if before is not None else [])
            sql = (f"SELECT {_FIND_COLUMNS} FROM spool s" + (" WHERE " + " AND ".join(page_where) if page_where else "")
                   + f" ORDER BY s.id DESC LIMIT {page}")
            rows = await self.query(sql, tuple(params) + ((before,) if before is not None else ()))
            found += [r["id"] for r in rows if q.matches(r)]
            if len(rows) < page:
                break
            before = rows[-1]["id"]
            page = min(page * 4, _FIND_PAGE)
        return await self.spool_get_many(found[:q.limit])

    async def spool_get_many(self, ids: "list[str]") -> list[SpoolEntry]:
        """The entries of ``ids`` that exist, in that order (one query where the store has it)."""
        entries = [await self.spool_get(sid) for sid in ids]
        return [e for e in entries if e is not None]

    @abc.abstractmethod
    async def spool_release_held(self, spool_id: str, release: dict[str, Any], actor: str,
                                 detail: dict[str, Any], also: Callable[[Any], None] | None = None) -> bool:
        """An operator's release of a quarantined entry (``release``: the stage to skip once, who,
        when): back in the queue with a fresh attempt count, and an audit line, in one transaction.
        False when the entry is not quarantined (any more) or its raw message is gone. ``also(conn)``:
        as in :meth:`spool_replay`."""

    @abc.abstractmethod
    async def spool_delete_raw(self, spool_id: str, actor: str, detail: dict[str, Any],
                               also: Callable[[Any], None] | None = None) -> bool:
        """Delete the raw message of a quarantined or suppressed entry (the row, its history and state
        stay) and write an audit line, in one transaction. False when it is in another state or the raw
        message is already gone. ``also(conn)``: as in :meth:`spool_replay`."""

    @abc.abstractmethod
    async def spool_audit(self, spool_id: str) -> list[dict[str, Any]]:
        """The operator actions on an entry, oldest first: ``{at, actor, action, detail}``."""

    # -- tickets ---------------------------------------------------------------
    @abc.abstractmethod
    async def tickets_list(self, limit: int | None = None, query: TicketQuery | None = None
                           ) -> list[dict[str, Any]]:
        """Tickets, oldest first unless ``query.newest_first``; ``query``'s limit wins over ``limit``."""

    @abc.abstractmethod
    async def ticket_get(self, ref: str) -> dict[str, Any] | None:
        """A ticket by numeric id or human number, with its articles and attachments."""

    @abc.abstractmethod
    async def tickets_page(self, page: TicketPage) -> tuple[list[dict[str, Any]], int | None]:
        """(tickets, the id the next page continues below or None at the end): see :class:`TicketPage`.
        A search page may hold fewer than ``limit`` tickets and still have a next one (the scan of one
        request is bounded)."""

    @abc.abstractmethod
    async def ticket_update(self, ticket_id: int, updates: dict[str, Any], actor: str, now: float,
                            hook: Any = None) -> dict[str, Any] | None:
        """Set ticket fields (status, priority, assignee, queue, category; ``tags``: the whole new list)
        exactly as an agent's mail commands do (the same code, the same "command" history line), in
        one transaction with what ``hook(conn, ticket_id)`` queues (the status mail to the requester).
        Returns {"old": {...}, "new": {...}} of the fields given, None when the ticket does not exist."""

    @abc.abstractmethod
    async def ticket_add_article(self, ticket_id: int, article: ArticleDraft, actor: str, now: float,
                                 agent_reply: bool = False, hook: Any = None) -> int | None:
        """Add an article written by an agent outside mail (the HTTP API): a note (internal) or, with
        ``agent_reply``, a public answer that meets the first-response SLA; ``hook(conn, ticket_id,
        article_id)`` runs in the same transaction (it queues the reply mail to the customer). The
        article id, None when the ticket does not exist."""

    @abc.abstractmethod
    async def attachment_get(self, attachment_id: int) -> tuple[dict[str, Any], bytes] | None:
        """(metadata with ``ticket_id``, ``queue``, ``filename``, ``content_type``, ``size``; content)."""

    @abc.abstractmethod
    async def blob_get(self, sha256: str) -> bytes | None: ...

    @abc.abstractmethod
    async def control_get(self, key: str) -> str | None: ...

    @abc.abstractmethod
    async def control_set(self, key: str, value: str | None) -> None:
        """Set (or, with None, clear) an operator control shared by all workers and nodes."""

    @abc.abstractmethod
    async def purge(self, now: float, raw_days: float, quarantine_days: float,
                    closed_ticket_days: float, relay_days: float = 0.0,
                    audit_days: float = 0.0) -> dict[str, int]:
        """Retention: drop raw mail of finished entries, quarantined entries, closed tickets and
        finished (sent / dead) relay notifications older than the given days (0 = keep forever).
        With ``audit_days``, audit history rows older than that. Returns counts by kind ("relay" only
        when relay_days > 0, "audit" only when audit_days > 0)."""
