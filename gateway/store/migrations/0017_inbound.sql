-- v17: HTTP inbound (POST /api/v1/inbound/{mailbox}, docs/api.md "HTTP inbound"): a repeated post is one
-- message. key: "<mailbox address>\n<provider message id>" (or "...\nsha256:<hex of the raw bytes>");
-- written in the same transaction as the spool row, so a post is answered 2xx only once both exist and a
-- repeat finds the first spool id. Not removed with the spool row: the key outlives a purged message.
CREATE TABLE inbound_keys (
    key             TEXT PRIMARY KEY,
    spool_id        TEXT NOT NULL,
    created_at      REAL NOT NULL
);
