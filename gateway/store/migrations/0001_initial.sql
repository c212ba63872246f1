-- ticketmx schema v1: spool, contacts, tickets, articles, attachments, blobs.
-- Times are UNIX epoch seconds (REAL). JSON columns hold UTF-8 JSON text.

CREATE TABLE spool (
    id              TEXT PRIMARY KEY,           -- time-ordered id, also the trace id
    received_at     REAL NOT NULL,
    mail_from       TEXT NOT NULL,              -- '' for the null reverse-path
    rcpt_tos        TEXT NOT NULL,              -- JSON array, as given at RCPT
    mailboxes       TEXT NOT NULL,              -- JSON array of mailbox addresses they map to
    peer_ip         TEXT NOT NULL,
    helo            TEXT NOT NULL,
    tls             TEXT,                       -- JSON object (version, cipher) or NULL
    message_id      TEXT NOT NULL DEFAULT '',
    size            INTEGER NOT NULL,
    raw             BLOB NOT NULL,              -- the message as spooled (our headers prepended)
    auth_header     TEXT,                       -- Authentication-Results value
    auth            TEXT,                       -- JSON structured auth results
    flags           TEXT NOT NULL DEFAULT '[]', -- JSON array, e.g. ["suspicious"]
    state           TEXT NOT NULL DEFAULT 'queued',
    reason          TEXT NOT NULL DEFAULT '',
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL DEFAULT 0,
    last_error      TEXT NOT NULL DEFAULT '',
    history         TEXT NOT NULL DEFAULT '[]', -- JSON array of stage decisions
    ticket_id       INTEGER,
    article_id      INTEGER,
    finished_at     REAL
);
CREATE INDEX spool_state ON spool(state, next_attempt_at);

CREATE TABLE contacts (
    id              INTEGER PRIMARY KEY,
    email           TEXT NOT NULL UNIQUE,       -- lower-cased addr-spec
    name            TEXT NOT NULL DEFAULT '',
    created_at      REAL NOT NULL
);

CREATE TABLE tickets (
    id              INTEGER PRIMARY KEY,
    number          TEXT UNIQUE,                -- human number, prefix included (HD-1042)
    subject         TEXT NOT NULL,
    requester_id    INTEGER NOT NULL REFERENCES contacts(id),
    queue           TEXT NOT NULL,
    mailbox         TEXT NOT NULL,
    status          TEXT NOT NULL DEFAULT 'new',
    flags           TEXT NOT NULL DEFAULT '[]',
    created_at      REAL NOT NULL,
    updated_at      REAL NOT NULL
);

CREATE TABLE participants (
    ticket_id       INTEGER NOT NULL REFERENCES tickets(id),
    contact_id      INTEGER NOT NULL REFERENCES contacts(id),
    role            TEXT NOT NULL,              -- requester | cc
    PRIMARY KEY (ticket_id, contact_id)
);

CREATE TABLE articles (
    id              INTEGER PRIMARY KEY,
    ticket_id       INTEGER NOT NULL REFERENCES tickets(id),
    spool_id        TEXT UNIQUE REFERENCES spool(id),
    message_id      TEXT NOT NULL DEFAULT '',
    from_addr       TEXT NOT NULL,
    from_name       TEXT NOT NULL DEFAULT '',
    to_addrs        TEXT NOT NULL DEFAULT '[]', -- JSON: header To
    cc_addrs        TEXT NOT NULL DEFAULT '[]', -- JSON: header Cc
    rcpt_tos        TEXT NOT NULL DEFAULT '[]', -- JSON: envelope recipients
    subject         TEXT NOT NULL,
    body_text       TEXT NOT NULL,
    body_html       TEXT NOT NULL DEFAULT '',
    created_at      REAL NOT NULL
);
CREATE INDEX articles_ticket ON articles(ticket_id);

CREATE TABLE blobs (
    sha256          TEXT PRIMARY KEY,
    data            BLOB NOT NULL
);

CREATE TABLE attachments (
    id              INTEGER PRIMARY KEY,
    article_id      INTEGER NOT NULL REFERENCES articles(id),
    filename        TEXT NOT NULL,
    content_type    TEXT NOT NULL,
    size            INTEGER NOT NULL,
    sha256          TEXT NOT NULL REFERENCES blobs(sha256),
    inline          INTEGER NOT NULL DEFAULT 0,
    content_id      TEXT NOT NULL DEFAULT ''
);
CREATE INDEX attachments_article ON attachments(article_id);

-- Every Message-ID seen on a ticket (received or issued): idempotency and threading.
CREATE TABLE message_ids (
    message_id      TEXT PRIMARY KEY,
    ticket_id       INTEGER NOT NULL REFERENCES tickets(id),
    article_id      INTEGER
);
