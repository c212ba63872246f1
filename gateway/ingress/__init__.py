"""Ingress other than the SMTP listener: mail posted over HTTP by a hosted inbound service.

``http_inbound``: pure functions (request formats → one RFC 5322 message, the services' own
authentication, idempotency keys); ``service``: the checks and the durable spool commit behind
``POST /api/v1/inbound/{mailbox}`` (gateway/http/inbound.py). Same spool, same checks, same pipeline
as SMTP (design invariant 10). The pull sources (IMAP, POP3, Graph) join this room.
May import: gateway.auth, gateway.config, gateway.runtime, gateway.smtp, gateway.spool, gateway.store.
"""
