-- v5 (PostgreSQL dialect of migrations/0005_control.sql): operator controls shared by every worker and
-- node (e.g. pipeline paused after repeated failures).
CREATE TABLE control (
    key             TEXT PRIMARY KEY,
    value           TEXT NOT NULL,
    updated_at      DOUBLE PRECISION NOT NULL
);
-- PostgreSQL only: run-once-across-nodes jobs (retention, SLA timers). A node holds the job named
-- `name` until expires_at (the database's clock, epoch seconds); it renews by taking it again before
-- then; when it dies the lease runs out and another node takes the job over.
CREATE TABLE leases (
    name            TEXT PRIMARY KEY,
    owner           TEXT NOT NULL,
    acquired_at     DOUBLE PRECISION NOT NULL,
    expires_at      DOUBLE PRECISION NOT NULL
);
