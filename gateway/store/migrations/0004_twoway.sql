-- v4: two-way mail — ticket fields and history, article visibility, contact deliverability,
-- stripped attachments, and the stack trace of quarantined mail.
ALTER TABLE tickets ADD COLUMN priority TEXT NOT NULL DEFAULT 'normal';
ALTER TABLE tickets ADD COLUMN category TEXT NOT NULL DEFAULT '';
ALTER TABLE tickets ADD COLUMN assignee TEXT NOT NULL DEFAULT '';
ALTER TABLE tickets ADD COLUMN tags TEXT NOT NULL DEFAULT '[]';
ALTER TABLE tickets ADD COLUMN fields TEXT NOT NULL DEFAULT '{}';
ALTER TABLE tickets ADD COLUMN subject_key TEXT NOT NULL DEFAULT '';
ALTER TABLE tickets ADD COLUMN closed_at REAL;
ALTER TABLE tickets ADD COLUMN linked_ticket_id INTEGER REFERENCES tickets(id);
CREATE INDEX tickets_subject_key ON tickets(requester_id, subject_key);
ALTER TABLE articles ADD COLUMN visibility TEXT NOT NULL DEFAULT 'public';
ALTER TABLE articles ADD COLUMN kind TEXT NOT NULL DEFAULT 'email';
ALTER TABLE articles ADD COLUMN new_text TEXT NOT NULL DEFAULT '';
ALTER TABLE contacts ADD COLUMN undeliverable INTEGER NOT NULL DEFAULT 0;
ALTER TABLE contacts ADD COLUMN undeliverable_reason TEXT NOT NULL DEFAULT '';
ALTER TABLE spool ADD COLUMN traceback TEXT NOT NULL DEFAULT '';
CREATE TABLE ticket_history (
    id              INTEGER PRIMARY KEY,
    ticket_id       INTEGER NOT NULL REFERENCES tickets(id),
    at              REAL NOT NULL,
    actor           TEXT NOT NULL,              -- an address, or "system" / "rule:<name>"
    action          TEXT NOT NULL,              -- created, article_added, reopened, rule, command, ...
    detail          TEXT NOT NULL DEFAULT '{}'  -- JSON
);
CREATE INDEX ticket_history_ticket ON ticket_history(ticket_id);
CREATE TABLE stripped_attachments (
    id              INTEGER PRIMARY KEY,
    article_id      INTEGER NOT NULL REFERENCES articles(id),
    filename        TEXT NOT NULL,
    content_type    TEXT NOT NULL DEFAULT '',
    size            INTEGER NOT NULL,
    sha256          TEXT NOT NULL,
    reason          TEXT NOT NULL
);
