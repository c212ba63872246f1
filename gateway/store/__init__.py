"""Store backends behind one interface (:class:`gateway.store.base.Store`)."""
from __future__ import annotations

from gateway.config.load import Config
from gateway.store.base import Store


def open_store(cfg: Config) -> Store:
    """The store named by ``[store] url`` (not yet opened)."""
    from gateway.store.crypto import Cipher
    st = cfg.store
    cipher = Cipher.from_file(st.encryption_key_file)
    if st.is_postgres:
        from gateway.store.postgres import PostgresStore
        return PostgresStore(st.url, st.ticket_prefix, st.ticket_start, cipher, pool_min=st.pool_min,
                             pool_max=st.pool_max, claim_lease=st.claim_lease)
    from gateway.store.sqlite import SqliteStore
    return SqliteStore(cfg.sqlite_path(), st.ticket_prefix, st.ticket_start, cipher)
