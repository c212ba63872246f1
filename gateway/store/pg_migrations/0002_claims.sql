-- v2 (PostgreSQL dialect of migrations/0002_claims.sql): who claimed a spool entry, so a crashed worker
-- process's claims can be released precisely.
ALTER TABLE spool ADD COLUMN claimed_by TEXT NOT NULL DEFAULT '';
-- PostgreSQL only (several nodes): a claim is a lease. The claiming node renews it while it works
-- (heartbeat); once claimed_until has passed (epoch seconds, the database's clock) any node may claim
-- the entry again — that is how the work of a node that died is taken over.
ALTER TABLE spool ADD COLUMN claimed_until DOUBLE PRECISION NOT NULL DEFAULT 0;
CREATE INDEX spool_live ON spool(received_at, id) WHERE state IN ('queued', 'processing');
