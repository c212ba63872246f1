"""The HTTP server: one FastAPI app under /api/v1 served by uvicorn in its own process(es) (process.py;
``[http] processes = 0``: inside the SMTP process's loop).

server.py builds the app and runs it (limits, problem+json errors, /healthz /readyz /metrics);
deps.py is what every endpoint module uses (the caller's Principal, Problem, the running gateway's
services, the audit log); tokens.py keeps API tokens and the audit log in the store and is all the
``ticketmx token`` commands import (no FastAPI). Endpoint modules each define ``router``:
api_admin.py (messages, trace, relay queue, audit), api_tickets.py, inbound.py, reply_templates.py
(canned responses: the checker, the renderer, their store rows).
May import: gateway.ingress, gateway.pipeline.runner, gateway.pipeline.stages, gateway.runtime, gateway.spool,
gateway.store, relay.
"""
