-- v24: a state's notifications oldest first (WHERE state=$1 ORDER BY id LIMIT n) walk this index and stop
-- at the limit instead of sorting every row of the state (see migrations/0024_relay_state_id.sql).
CREATE INDEX IF NOT EXISTS relay_queue_state_id ON relay_queue(state, id)
