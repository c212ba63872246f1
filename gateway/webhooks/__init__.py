"""Outbound webhooks: events about tickets and messages POSTed, signed, to helpdesks.

gateway/config/webhooks.py parses ``[[webhook]]``; here: payload.py (the ``ticketmx`` and
``postmark`` JSON bodies), outbox.py (the durable outbox: events written in the transaction of the
change that causes them; claim / record with leases, on SQLite and PostgreSQL), sign.py (the
``Ticketmx-Signature`` header), worker.py (the delivery worker run by ``ticketmx serve``), cli.py
(``ticketmx webhook list|test|retry``). See docs/webhooks.md.
May import: gateway.config.
"""
