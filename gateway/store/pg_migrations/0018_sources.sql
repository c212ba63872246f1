-- v18: pull ingress (docs/sources.md). One row per message a [[source]] imported, keyed by the source's
-- name and the message key its kind gives ("imap:<uidvalidity>:<uid>", "pop3:<uidl>", "graph:<id>").
-- Written in the same transaction as the spool row (the inbound_keys mechanism of v17, generalised:
-- SpoolEntry.source_key), so a message is committed with its key before anything is moved or flagged on
-- the server, and a key already here is never imported again. state: spooled (committed, the server not
-- yet told) | settled (moved or flagged after the pipeline's outcome). digest: SHA-256 of the bytes as
-- fetched, so a message seen again under a new key (an IMAP UIDVALIDITY change) is recognised.
CREATE TABLE source_messages (
    source          TEXT COLLATE "C" NOT NULL,
    key             TEXT COLLATE "C" NOT NULL,
    spool_id        TEXT COLLATE "C" NOT NULL,
    state           TEXT NOT NULL DEFAULT 'spooled',
    outcome         TEXT NOT NULL DEFAULT '',     -- ticket | quarantined | suppressed, once settled
    digest          TEXT NOT NULL DEFAULT '',
    created_at      DOUBLE PRECISION NOT NULL,
    settled_at      DOUBLE PRECISION,
    PRIMARY KEY (source, key)
);
CREATE INDEX source_messages_state ON source_messages(source, state);
CREATE INDEX source_messages_digest ON source_messages(source, digest);
-- Per source: a pause by the operator or by stop_after_failures (survives restarts), the last success
-- and error, failures in a row. Rows of sources no longer configured are kept (and shown as removed).
CREATE TABLE source_state (
    source          TEXT COLLATE "C" PRIMARY KEY,
    paused          INTEGER NOT NULL DEFAULT 0,
    paused_reason   TEXT NOT NULL DEFAULT '',
    paused_at       DOUBLE PRECISION,
    last_success    DOUBLE PRECISION,
    last_error      TEXT NOT NULL DEFAULT '',
    last_error_kind TEXT NOT NULL DEFAULT '',
    last_error_at   DOUBLE PRECISION,
    failures        INTEGER NOT NULL DEFAULT 0,
    backlog         INTEGER NOT NULL DEFAULT 0,
    updated_at      DOUBLE PRECISION NOT NULL DEFAULT 0
);
