"""The durable store behind one interface (gateway/store/base.py): SQLite (sqlite.py) by default,
PostgreSQL (postgres.py) for several nodes. Every table lives here: spool, tickets, articles, the relay
queue's rows (relay_queue.py), the webhook outbox (written through gateway.webhooks.outbox), tokens, audit.
May import: gateway.config, gateway.runtime, gateway.webhooks.
"""
from __future__ import annotations

from gateway.config.load import Config
from gateway.store.base import Store


def open_store(cfg: Config) -> Store:
    """The store named by ``[store] url`` (not yet opened)."""
    from gateway.store.crypto import Cipher
    st = cfg.store
    cipher = Cipher.from_file(st.encryption_key_file)
    store: Store
    if st.is_postgres:
        from gateway.store.postgres import PostgresStore
        store = PostgresStore(st.url, st.ticket_prefix, st.ticket_start, cipher, pool_min=st.pool_min,
                              pool_max=st.pool_max, claim_lease=st.claim_lease)
    else:
        from gateway.store.sqlite import SqliteStore
        store = SqliteStore(cfg.sqlite_path(), st.ticket_prefix, st.ticket_start, cipher)
    store.webhooks = cfg.webhooks  # the outbox queues events only for subscribed [[webhook]]s (webhooks/outbox.py)
    return store
