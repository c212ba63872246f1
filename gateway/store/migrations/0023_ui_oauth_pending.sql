-- v23: OAuth authorisations of a [[source]] started from the web UI's sources page and not finished yet
-- (gateway/ui/admin_oauth.py; docs/sources.md, "Authorising from the web UI"). The HTTP server may be
-- several processes, so what a later request (the provider's redirect back, the device grant's polls)
-- needs lives here, not in a process. Short-lived: 10 minutes at most, deleted when used, refused or
-- expired (expired rows of anyone go whenever a new one is made).
-- id_sha256: SHA-256 of the code grant's `state` (the browser brings it back) or of a random handle
-- (the device grant); never the value itself. session_sha256: the ui_sessions row that started it: only
-- that browser's session may finish it. secret: the PKCE code_verifier (code grant) or the device_code
-- (device grant), needed for the one token request that ends it.
CREATE TABLE ui_oauth_pending (
    id_sha256       TEXT PRIMARY KEY,
    kind            TEXT NOT NULL,                  -- code | device
    source          TEXT NOT NULL,                  -- [[source]] name
    session_sha256  TEXT NOT NULL,
    user_email      TEXT NOT NULL,
    secret          TEXT NOT NULL,
    redirect_uri    TEXT NOT NULL DEFAULT '',       -- code: sent again with the code exchange
    user_code       TEXT NOT NULL DEFAULT '',       -- device: shown to the admin
    verification_uri TEXT NOT NULL DEFAULT '',      -- device: where the admin enters it
    poll_interval   REAL NOT NULL DEFAULT 0,        -- device: seconds between token requests (slow_down adds 5)
    next_poll       REAL NOT NULL DEFAULT 0,        -- device: no token request before this time
    created         REAL NOT NULL,
    expires         REAL NOT NULL
);
CREATE INDEX ui_oauth_pending_session ON ui_oauth_pending(session_sha256, source);
