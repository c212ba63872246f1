-- v22: replies from the web UI (docs/ui.md, "Signature" and "Reply templates").
-- users.signature: the user's own plain-text signature (at most 2,000 characters, set on the account page
-- or by `ticketmx user signature`), added under a "-- " line to the replies they send from the UI.
-- reply_templates: canned responses an admin keeps (/ui/admin/templates); queue NULL = every queue. The
-- body is a restricted Jinja2 template (gateway/http/reply_templates.py checks it on every save and render).
ALTER TABLE users ADD COLUMN signature TEXT NOT NULL DEFAULT '';
CREATE TABLE reply_templates (
    id              INTEGER PRIMARY KEY,
    name            TEXT NOT NULL UNIQUE,
    queue           TEXT,                           -- NULL = every queue
    body            TEXT NOT NULL,
    created         REAL NOT NULL,
    created_by      TEXT NOT NULL DEFAULT '',
    updated         REAL NOT NULL,
    updated_by      TEXT NOT NULL DEFAULT ''
);
CREATE INDEX reply_templates_queue ON reply_templates(queue, name);
