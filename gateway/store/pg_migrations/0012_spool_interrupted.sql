-- v12: how often a service start (or another node, its lease having run out) found the entry in processing:
-- the service holding it was stopped, killed or crashed. Counted apart from attempts, which count only the
-- crashes of the worker that processed it; quarantined when this passes [pipeline] max_attempts.
ALTER TABLE spool ADD COLUMN interrupted INTEGER NOT NULL DEFAULT 0;
