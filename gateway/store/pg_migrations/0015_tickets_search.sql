-- v15 (PostgreSQL dialect of migrations/0015_tickets_search.sql): the HTTP API's ticket list and search.
-- Full text: tickets.search, a positionless tsvector ('simple': no stemming, any language) over the
-- ticket's articles' subjects and text, extended by the store in each article's transaction
-- (gateway/store/postgres_deliver.py), under a GIN index. Encrypted articles get hashed words
-- (gateway/store/search.py): they are indexed by `ticketmx store rotate-key`, not here.
ALTER TABLE tickets ADD COLUMN search tsvector NOT NULL DEFAULT ''::tsvector;
UPDATE tickets t SET search = s.v FROM (
    SELECT ticket_id, strip(to_tsvector('simple', string_agg(subject || ' ' || left(body_text, 200000), ' '
                                                            ORDER BY id))) AS v
    FROM articles WHERE subject NOT LIKE 'enc1:%' AND body_text NOT LIKE 'enc1:%' GROUP BY ticket_id) s
    WHERE t.id = s.ticket_id;
CREATE INDEX tickets_search ON tickets USING gin (search);
CREATE INDEX tickets_status_id ON tickets(status, id);
CREATE INDEX tickets_queue_id ON tickets(queue, id);
CREATE INDEX tickets_assignee_id ON tickets(lower(assignee), id);
CREATE INDEX tickets_requester_id ON tickets(requester_id, id);
CREATE INDEX tickets_created ON tickets(created_at);
