"""Store backends behind one interface (:class:`gateway.store.base.Store`)."""
from __future__ import annotations

from ..config import Config
from .base import Store


def open_store(cfg: Config) -> Store:
    """The store named by ``[store] url`` (not yet opened)."""
    from .crypto import Cipher
    from .sqlite import SqliteStore
    return SqliteStore(cfg.sqlite_path(), cfg.store.ticket_prefix, cfg.store.ticket_start,
                       Cipher.from_file(cfg.store.encryption_key_file))
