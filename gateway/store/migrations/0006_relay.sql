-- v3: the outbound relay queue (relay/queue.py), per-recipient delivery status,
-- the acknowledgement rate counter and per-contact delivery status (relay/notify.py).
-- Times are UNIX epoch seconds (REAL).

CREATE TABLE relay_queue (
    id              INTEGER PRIMARY KEY,
    ticket_id       INTEGER,                     -- the ticket that caused it (NULL for tests/system mail)
    event           TEXT NOT NULL,               -- ack | reply | status | escalation | test
    mailbox         TEXT NOT NULL DEFAULT '',    -- the mailbox it speaks for
    mail_from       TEXT NOT NULL,               -- envelope sender ('' = null sender)
    message         BLOB NOT NULL,               -- rendered RFC 5322 message, unsigned (DKIM at send time),
                                                 -- empty when ``render`` is set
    render          TEXT,                        -- JSON render spec: the worker renders at send time
    message_id      TEXT NOT NULL,               -- its Message-ID, without angle brackets
    dedupe_key      TEXT UNIQUE,                 -- idempotency key (e.g. ack:<spool id>): replay never doubles
    coalesce_key    TEXT,                        -- later changes replace a not-yet-claimed row with this key
    state           TEXT NOT NULL DEFAULT 'queued', -- queued | sending | deferred | sent | dead
    attempts        INTEGER NOT NULL DEFAULT 0,  -- delivery attempts claimed
    next_attempt_at REAL NOT NULL DEFAULT 0,
    lease_owner     TEXT NOT NULL DEFAULT '',    -- worker holding it while 'sending'
    lease_until     REAL NOT NULL DEFAULT 0,     -- an expired lease is claimable again (crashed worker)
    last_error      TEXT NOT NULL DEFAULT '',
    last_host       TEXT NOT NULL DEFAULT '',
    created_at      REAL NOT NULL,
    lifetime_from   REAL NOT NULL,               -- max_lifetime counts from here (reset by retry)
    sent_at         REAL,
    finished_at     REAL
);
CREATE INDEX relay_queue_due ON relay_queue(state, next_attempt_at);
CREATE INDEX relay_queue_ticket ON relay_queue(ticket_id);
CREATE INDEX relay_queue_coalesce ON relay_queue(coalesce_key, state);

CREATE TABLE relay_recipients (
    notification_id INTEGER NOT NULL REFERENCES relay_queue(id) ON DELETE CASCADE,
    address         TEXT NOT NULL,
    kind            TEXT NOT NULL DEFAULT 'to',   -- to | cc | bcc (envelope only)
    state           TEXT NOT NULL DEFAULT 'queued', -- queued | deferred | sent | dead
    code            INTEGER,                      -- last SMTP reply code for this recipient
    reply           TEXT NOT NULL DEFAULT '',     -- last reply text (the server's, never our secrets)
    host            TEXT NOT NULL DEFAULT '',     -- smarthost name that gave it
    updated_at      REAL,
    PRIMARY KEY (notification_id, address)
);

-- One row per acknowledgement sent to a sender: the per-sender rate counter.
CREATE TABLE relay_ack_log (
    sender          TEXT NOT NULL,
    sent_at         REAL NOT NULL
);
CREATE INDEX relay_ack_log_sender ON relay_ack_log(sender, sent_at);

-- Contacts we must not mail automatically: a 5xx made them undeliverable, or they opted out.
CREATE TABLE relay_contacts (
    email           TEXT PRIMARY KEY,
    undeliverable   INTEGER NOT NULL DEFAULT 0,
    reason          TEXT NOT NULL DEFAULT '',
    opt_out         INTEGER NOT NULL DEFAULT 0,   -- no non-critical notifications
    updated_at      REAL NOT NULL
);
