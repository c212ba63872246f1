-- v5: operator controls shared by every worker and node (e.g. pipeline paused after repeated failures).
CREATE TABLE control (
    key             TEXT PRIMARY KEY,
    value           TEXT NOT NULL,
    updated_at      REAL NOT NULL
);
