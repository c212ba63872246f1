"""SQLite's schema migrations: each applied version is recorded (``schema_migrations``), so a migration
merged after one with a higher number still runs on a database that already has the higher one (as on
PostgreSQL). Before, only ``PRAGMA user_version`` (the highest) was kept, and 0022-0024 merged after
0025 would have been skipped for good on a database made in between."""
from __future__ import annotations

import sqlite3
from pathlib import Path

from gateway.store.migrations import load_migrations
from gateway.store.sqlite import SqliteStore

from .sqlite_schema import database_at_version

LATEST = max(v for v, _ in load_migrations())


def _apply(conn: sqlite3.Connection, version: int) -> None:
    sql = dict(load_migrations())[version]
    for statement in sql.split(";\n"):
        if statement.strip():
            conn.execute(statement)


def _names(db: Path) -> set[str]:
    conn = sqlite3.connect(db)
    try:
        return {n for (n,) in conn.execute("SELECT name FROM sqlite_master")}
    finally:
        conn.close()


async def test_a_lower_version_merged_later_still_runs(tmp_path: Path) -> None:
    db = tmp_path / "t.db"
    conn = database_at_version(db, 21)        # a database from before the table, at 21 ...
    _apply(conn, 25)                           # ... that then got 0025 but not 0022-0024
    conn.execute("PRAGMA user_version=25")
    conn.execute("CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY)")
    conn.executemany("INSERT INTO schema_migrations VALUES (?)", [(v,) for v in [*range(1, 22), 25]
                                                                   if v in dict(load_migrations())])
    conn.commit()
    conn.close()
    assert "reply_templates" not in _names(db)
    store = SqliteStore(db)
    await store.open()
    await store.close()
    names = _names(db)
    assert {"reply_templates", "ui_oauth_pending", "relay_queue_state_id", "signin_failures"} <= names
    conn = sqlite3.connect(db)
    recorded = {v for (v,) in conn.execute("SELECT version FROM schema_migrations")}
    assert recorded == {v for v, _ in load_migrations()}
    assert conn.execute("PRAGMA user_version").fetchone()[0] == LATEST
    conn.close()


async def test_an_old_database_counts_as_having_1_to_user_version(tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    conn = database_at_version(db, 21)         # no schema_migrations: what every release up to 0021 made
    conn.commit()
    conn.close()
    store = SqliteStore(db)
    await store.open()                         # 0001-0021 must not run again (0001 has no IF NOT EXISTS)
    await store.close()
    conn = sqlite3.connect(db)
    assert {v for (v,) in conn.execute("SELECT version FROM schema_migrations")} == {v for v, _ in load_migrations()}
    conn.close()
    store = SqliteStore(db)                    # and a second open applies nothing
    await store.open()
    await store.close()
