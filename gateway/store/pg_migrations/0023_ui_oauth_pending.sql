-- v23: pending OAuth authorisations started from the web UI (see migrations/0023_ui_oauth_pending.sql).
CREATE TABLE ui_oauth_pending (
    id_sha256       TEXT COLLATE "C" PRIMARY KEY,
    kind            TEXT NOT NULL,
    source          TEXT NOT NULL,
    session_sha256  TEXT COLLATE "C" NOT NULL,
    user_email      TEXT NOT NULL,
    secret          TEXT NOT NULL,
    redirect_uri    TEXT NOT NULL DEFAULT '',
    user_code       TEXT NOT NULL DEFAULT '',
    verification_uri TEXT NOT NULL DEFAULT '',
    poll_interval   DOUBLE PRECISION NOT NULL DEFAULT 0,
    next_poll       DOUBLE PRECISION NOT NULL DEFAULT 0,
    created         DOUBLE PRECISION NOT NULL,
    expires         DOUBLE PRECISION NOT NULL
);
CREATE INDEX ui_oauth_pending_session ON ui_oauth_pending(session_sha256, source);
