-- v11: PostgreSQL gives relay_recipients an identity column to keep recipients in queued order, as
-- SQLite's rowid already does; nothing changes here. The version number keeps both dialects in step.
SELECT 1;
