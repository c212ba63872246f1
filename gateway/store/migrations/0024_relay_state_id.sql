-- v24: the outbound page and `GET /api/v1/relay?state=dead` list a state's notifications oldest first
-- (WHERE state=? ORDER BY id LIMIT n). relay_queue_due is (state, next_attempt_at), so every row of the
-- state was read and sorted to show the first 200: fine for 300 dead rows, not after an outage leaves
-- tens of thousands. This index walks the state in id order and stops at the limit.
CREATE INDEX IF NOT EXISTS relay_queue_state_id ON relay_queue(state, id)
