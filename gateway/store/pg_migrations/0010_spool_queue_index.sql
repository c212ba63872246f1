-- v10: SQLite replaces its (state, next_attempt_at) spool index with one in claim order, so that a
-- claim no longer sorts the whole queue. PostgreSQL's claim already walks spool_live (received_at, id)
-- WHERE state IN ('queued', 'processing') (v2), so nothing changes here; the version number keeps both
-- dialects in step.
SELECT 1;
