-- v21: a trace by Message-ID looked at every spool row (see migrations/0021_spool_message_id.sql); the
-- same index here.
CREATE INDEX IF NOT EXISTS spool_message_id ON spool(message_id)
