-- v21: a trace by Message-ID (GET /api/v1/trace, the UI's trace page, `ticketmx spool find --message-id`)
-- looked at every spool row: 219 ms p50 / 335 ms p99 with 1,000,000 entries (bench/bench_ui_admin.py).
-- One more index entry per spooled message (a short text) makes it a lookup.
CREATE INDEX IF NOT EXISTS spool_message_id ON spool(message_id)
