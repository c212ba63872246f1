"""Pull ingress: mailboxes the gateway reads (IMAP, POP3, Microsoft Graph), docs/sources.md.

``base``: the interface every kind implements (:class:`Source`, :class:`Fetched`, :class:`Step`);
``manager``: scheduling, the exactly-once state (source_messages, committed with the spool entry),
settling after the pipeline's outcome, failures and pauses, metrics, reload; ``imap`` (aioimaplib),
``pop3`` and ``graph``: each talks only to its server.
May import: gateway.auth, gateway.config.load, gateway.runtime, gateway.smtp, gateway.spool, gateway.store.
"""
