-- v9: SQLite moves a spool entry's bytes out of the spool row (spool_raw), because SQLite rewrites
-- every overflow page of a row on any update. PostgreSQL needs no such table: a large raw value is
-- TOASTed (stored out of line), and an UPDATE that does not touch raw keeps the TOAST pointer, so a
-- state change already rewrites only the small row. Nothing to change; the version number keeps
-- both dialects in step.
SELECT 1;
