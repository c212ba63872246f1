"""What only the SMTP session uses, beside gateway/smtpd.py (the protocol handler, which stays put).

Replies (codes + RFC 3463 statuses), session limits, the SMTP-time check chain (checks.py, auth_check.py,
rspamd_check.py), DATA spill to disk, the fast session start and the group of SMTP processes (group.py).
May import: gateway.auth, gateway.config, gateway.pipeline.runner, gateway.pipeline.stages, gateway.runtime,
gateway.spool, gateway.store.
"""
