-- v12: how often a service start found the entry in processing (the whole service was stopped, killed or
-- crashed while a worker had it). Counted apart from attempts, which count only the crashes of the worker
-- that processed it; a message is quarantined when this passes [pipeline] max_attempts (docs/operations.md).
ALTER TABLE spool ADD COLUMN interrupted INTEGER NOT NULL DEFAULT 0;
