-- v2: who claimed a spool entry, so a crashed worker process's claims can be released precisely.
ALTER TABLE spool ADD COLUMN claimed_by TEXT NOT NULL DEFAULT '';
