-- v14: the HTTP API (docs/api.md). api_tokens: bearer tokens, stored as the SHA-256 of the token (the
-- token itself is printed once by `ticketmx token create` and kept nowhere); a revoked token stays,
-- so names stay unique and the audit log unambiguous. queues: JSON list, [] = every queue.
-- audit_log: every write through the API (and the token commands): who, what, target, when, from where.
CREATE TABLE api_tokens (
    id              INTEGER PRIMARY KEY,
    name            TEXT NOT NULL UNIQUE,
    token_sha256    TEXT NOT NULL UNIQUE,           -- hex
    role            TEXT NOT NULL,                  -- admin | agent | viewer
    queues          TEXT NOT NULL DEFAULT '[]',     -- JSON list of queue names; [] = every queue
    created         REAL NOT NULL,
    created_by      TEXT NOT NULL DEFAULT '',
    last_used       REAL,
    revoked         REAL                            -- when; NULL = active
);
CREATE TABLE audit_log (
    id              INTEGER PRIMARY KEY,
    at              REAL NOT NULL,
    actor           TEXT NOT NULL,                  -- token name, or cli:<OS user>
    role            TEXT NOT NULL DEFAULT '',
    action          TEXT NOT NULL,                  -- e.g. message.replay, token.create
    target          TEXT NOT NULL DEFAULT '',       -- e.g. the spool id, the ticket number, the token name
    detail          TEXT NOT NULL DEFAULT '{}',     -- JSON
    client          TEXT NOT NULL DEFAULT ''        -- the client address (or "local" for the CLI)
);
CREATE INDEX audit_log_at ON audit_log(at);
CREATE INDEX audit_log_actor ON audit_log(actor, at)
