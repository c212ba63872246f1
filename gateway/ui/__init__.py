"""The web UI: server-rendered pages under /ui/ on the HTTP server's FastAPI app.

admin*.py are the mail-admin pages (quarantine, trace, sources, outbound queues, dashboard,
configuration, audit); admin_data.py is what they show, read from the store (no FastAPI there).
May import: gateway.auth, gateway.config, gateway.http, gateway.ingress, gateway.pipeline.runner,
gateway.pipeline.stages, gateway.runtime, gateway.store, gateway.webhooks, relay.
"""
