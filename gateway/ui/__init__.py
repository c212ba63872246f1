"""The web UI (issue 24, docs/ui.md): server-rendered pages under /ui/ on the API's HTTP server.

routes.py mounts it (``install(app)``, named in gateway/http/server.py MOUNTS): sign-in and sign-out;
web.py is what every page module uses (templates, the signed-in user as an API Principal, CSRF, the
security headers, the navigation); agent.py the queue and ticket pages; frame.py the customer's HTML in a
sandboxed frame; users.py and user_cli.py the users (``ticketmx user …``; no FastAPI there); admin.py,
admin_sources.py and admin_templates.py (reply templates) the mail-admin pages, admin_data.py what they
show (no FastAPI there).
Pages call the API's functions and store methods, never a second implementation of them.
May import: gateway.auth, gateway.config, gateway.http, gateway.ingress, gateway.pipeline.runner,
gateway.pipeline.stages, gateway.runtime, gateway.store, gateway.webhooks, relay.
"""
