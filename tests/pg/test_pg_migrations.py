"""Every versioned SQLite migration has its PostgreSQL dialect, with the same version number."""
from __future__ import annotations

from gateway.store.migrations import load_migrations as sqlite_migrations
from gateway.store.pg_migrations import load_migrations as pg_migrations

# Versions of gateway/store/migrations/ that may lack a PostgreSQL dialect for now, with the reason.
NOT_PORTED: dict[int, str] = {}


def test_every_sqlite_migration_has_a_postgres_dialect():
    lite = {v for v, _sql in sqlite_migrations()}
    pg = {v for v, _n, _sql in pg_migrations()}
    missing = sorted(lite - pg - set(NOT_PORTED))
    assert not missing, (f"SQLite migrations without a PostgreSQL dialect in gateway/store/pg_migrations/: {missing} "
                         "(write NNNN_name.sql there with the same number)")
    assert not pg - lite, "a PostgreSQL migration has no SQLite twin (version numbers must match)"
