-- v8: large messages are spooled in chunks, so no process ever holds one as a single buffer.
-- spool.raw then holds our prepended headers and the message's header section; the body follows
-- in spool_chunks rows (seq 0, 1, ...), each encrypted on its own when encryption is on.
ALTER TABLE spool ADD COLUMN chunks INTEGER NOT NULL DEFAULT 0;
CREATE TABLE spool_chunks (
    spool_id        TEXT NOT NULL REFERENCES spool(id) ON DELETE CASCADE,
    seq             INTEGER NOT NULL,
    data            BYTEA NOT NULL,
    PRIMARY KEY (spool_id, seq)
);
