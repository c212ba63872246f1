-- v10: the claim walks the queue in order instead of sorting it. The claim asks for the oldest due
-- queued entries (state=queued AND next_attempt_at<=now ORDER BY received_at, id LIMIT n); with the
-- index on (state, next_attempt_at) SQLite found every queued row and sorted them all for each claim,
-- so a backlog (a paused pipeline, a restart after an outage) drained slower the larger it was: one
-- claim of 16 cost 12.6 ms with 20,000 queued (bench/bench_claim.py --old-index). This index gives
-- the rows in claim order and carries next_attempt_at, so a deferred entry is skipped inside the
-- index: 0.8 ms per claim at any depth.
-- The old index goes: with both, SQLite's planner keeps choosing the old one. Every other query on
-- spool.state (recovery, counts, retention) uses the state prefix of the new one.
DROP INDEX IF EXISTS spool_state;
CREATE INDEX spool_queue ON spool(state, received_at, id, next_attempt_at)
