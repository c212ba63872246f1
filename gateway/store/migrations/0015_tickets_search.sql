-- v15: the HTTP API's ticket list and search (gateway/store/search.py).
-- Full text: one FTS5 row per article, rowid = ticket_id << 20 | the article's ordinal on its ticket, so
-- a descending rowid walk is newest tickets first. Written by the store in the article's transaction
-- (no trigger: with encryption at rest the stored text is ciphertext and the index gets hashed words).
-- Existing plaintext articles are indexed here; encrypted ones by `ticketmx store rotate-key`.
CREATE VIRTUAL TABLE ticket_search USING fts5(subject, body, tokenize = 'unicode61 remove_diacritics 2');
INSERT INTO ticket_search (rowid, subject, body)
    SELECT (ticket_id << 20) | min(n, 1048575), subject, substr(body_text, 1, 200000) FROM
    (SELECT ticket_id, subject, body_text, row_number() OVER (PARTITION BY ticket_id ORDER BY id) AS n FROM articles)
    WHERE subject NOT LIKE 'enc1:%' AND body_text NOT LIKE 'enc1:%';
-- The list's filters, each walked newest first; `since` as an id bound (gateway/store/base.py TicketPage).
CREATE INDEX tickets_status_id ON tickets(status, id);
CREATE INDEX tickets_queue_id ON tickets(queue, id);
CREATE INDEX tickets_assignee_id ON tickets(lower(assignee), id);
CREATE INDEX tickets_requester_id ON tickets(requester_id, id);
CREATE INDEX tickets_created ON tickets(created_at)
