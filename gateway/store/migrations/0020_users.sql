-- v20: the web UI (docs/ui.md). users: people who sign in (`ticketmx user add`), their password as an
-- argon2id hash (gateway/ui/users.py), their role and queues as API tokens have them (queues: JSON list,
-- [] = every queue). A disabled user stays (the audit log names them) and cannot sign in.
-- ui_sessions: one row per signed-in browser. The cookie carries the session id signed with the
-- ui.cookie_key control value; only the id's SHA-256 is stored, so a copy of the database signs no one in.
-- Signing out deletes the row; "sign out everywhere", disabling and a new password delete all of a user's.
CREATE TABLE users (
    id              INTEGER PRIMARY KEY,
    email           TEXT NOT NULL UNIQUE,           -- lower-cased
    name            TEXT NOT NULL DEFAULT '',
    role            TEXT NOT NULL,                  -- admin | agent | viewer
    queues          TEXT NOT NULL DEFAULT '[]',
    password_hash   TEXT NOT NULL,                  -- argon2id, PHC string
    created         REAL NOT NULL,
    created_by      TEXT NOT NULL DEFAULT '',
    password_changed REAL NOT NULL,
    last_login      REAL,
    disabled        REAL                            -- when; NULL = active
);
CREATE TABLE ui_sessions (
    id_sha256       TEXT PRIMARY KEY,               -- hex SHA-256 of the session id
    user_id         INTEGER NOT NULL REFERENCES users(id),
    csrf            TEXT NOT NULL,                  -- the session's CSRF token (forms and htmx headers)
    created         REAL NOT NULL,
    last_seen       REAL NOT NULL,
    expires         REAL NOT NULL,                  -- absolute end ([ui] session_lifetime)
    client          TEXT NOT NULL DEFAULT ''
);
CREATE INDEX ui_sessions_user ON ui_sessions(user_id);
