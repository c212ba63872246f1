-- v25: failed sign-ins to the web UI, counted in the store rather than in each HTTP process's memory, so
-- [ui] signin_rate_per_account / signin_rate_per_ip hold across [http] processes and across nodes sharing
-- one PostgreSQL store. One row per failure; rows older than the window go on the next failure.
-- kind: 'account' (the address typed, lower-cased) or 'ip' (the client address).
CREATE TABLE IF NOT EXISTS signin_failures (
    kind TEXT NOT NULL,
    key  TEXT NOT NULL,
    at   DOUBLE PRECISION NOT NULL
);
CREATE INDEX IF NOT EXISTS signin_failures_key ON signin_failures(kind, key, at);
CREATE INDEX IF NOT EXISTS signin_failures_at ON signin_failures(at)
