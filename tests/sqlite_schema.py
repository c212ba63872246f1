"""A SQLite database as an older release left it: the shipped migrations up to a version, for upgrade tests."""
from __future__ import annotations

import sqlite3
from pathlib import Path

from gateway.store.migrations import load_migrations


def database_at_version(path: Path, version: int) -> sqlite3.Connection:
    """Create ``path`` with migrations 1..``version`` applied (as SqliteStore applies them) and
    ``user_version`` set; the open connection is returned for the test to add rows."""
    conn = sqlite3.connect(path)
    for v, sql in load_migrations():
        if v > version:
            break
        for statement in sql.split(";\n"):
            if statement.strip():
                conn.execute(statement)
    conn.execute(f"PRAGMA user_version={int(version)}")
    return conn
