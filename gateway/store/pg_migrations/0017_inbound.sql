-- v17: HTTP inbound (POST /api/v1/inbound/{mailbox}, docs/api.md "HTTP inbound"): a repeated post is one
-- message. key: "<mailbox address>\n<provider message id>" (or "...\nsha256:<hex of the raw bytes>");
-- written in the same transaction as the spool row, so a post is answered 2xx only once both exist and a
-- repeat finds the first spool id. Not removed with the spool row: the key outlives a purged message.
CREATE TABLE inbound_keys (
    key             TEXT COLLATE "C" PRIMARY KEY,
    spool_id        TEXT COLLATE "C" NOT NULL,
    created_at      DOUBLE PRECISION NOT NULL
);
