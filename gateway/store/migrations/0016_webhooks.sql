-- v16: the outbound webhook outbox (gateway/webhooks/outbox.py). One row per (event, webhook),
-- written in the same transaction as the change that caused the event. Times are UNIX epoch seconds.

CREATE TABLE webhook_outbox (
    id              INTEGER PRIMARY KEY,
    event_id        TEXT NOT NULL,               -- uuid, sent as Ticketmx-Event-Id (same for every webhook)
    webhook         TEXT NOT NULL,               -- [[webhook]] name
    event           TEXT NOT NULL,               -- ticket.created | article.added | ticket.updated | ...
    ticket_id       INTEGER,                     -- the ticket it is about (NULL: quarantine, test)
    payload         TEXT NOT NULL,               -- the JSON body, exactly as sent (encrypted with the store key)
    dedupe_key      TEXT,                        -- idempotency key per webhook (e.g. article:<id>)
    state           TEXT NOT NULL DEFAULT 'queued', -- queued | leased | delivered | dead
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL DEFAULT 0,
    lease_owner     TEXT NOT NULL DEFAULT '',    -- worker holding it while 'leased'
    lease_until     REAL NOT NULL DEFAULT 0,     -- an expired lease is claimable again (crashed worker)
    last_status     INTEGER,                     -- last HTTP status (NULL: no answer)
    last_error      TEXT NOT NULL DEFAULT '',
    created_at      REAL NOT NULL,
    lifetime_from   REAL NOT NULL,               -- [[webhook]] lifetime counts from here (reset by retry)
    delivered_at    REAL,
    finished_at     REAL
);
CREATE INDEX webhook_outbox_due ON webhook_outbox(webhook, state, next_attempt_at);
CREATE INDEX webhook_outbox_state ON webhook_outbox(state);
CREATE UNIQUE INDEX webhook_outbox_dedupe ON webhook_outbox(webhook, dedupe_key)
