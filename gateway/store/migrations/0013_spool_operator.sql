-- v13: operator actions on spool entries (`ticketmx spool release` / `spool delete`, docs/cli.md).
-- released: the release waiting for the pipeline, as JSON {"stage", "by", "at", "forced"}: that stage is
-- skipped once, then the column is cleared when the entry ends again. spool_audit: who did what to an
-- entry and when; kept when the raw message is deleted.
ALTER TABLE spool ADD COLUMN released TEXT NOT NULL DEFAULT '';
CREATE TABLE spool_audit (
    id              INTEGER PRIMARY KEY,
    spool_id        TEXT NOT NULL,
    at              REAL NOT NULL,
    actor           TEXT NOT NULL,              -- the OS user who ran the command
    action          TEXT NOT NULL,              -- released | deleted
    detail          TEXT NOT NULL DEFAULT '{}'  -- JSON
);
CREATE INDEX spool_audit_spool ON spool_audit(spool_id);
