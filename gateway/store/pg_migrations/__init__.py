"""PostgreSQL dialect of the versioned schema migrations in ``gateway/store/migrations``.

One file per version, with the SAME version number and meaning as the SQLite file of that version
(``0004_twoway.sql`` here is the PostgreSQL spelling of ``migrations/0004_twoway.sql``), plus what only
several nodes need (claim leases in 0002, the ``leases`` table in 0005). Applied versions are recorded
in ``schema_migrations`` (a set, not a high-water mark), so a version added later with a lower number
than one already applied is still applied.
"""
from __future__ import annotations

from functools import cache
from importlib import resources


@cache
def load_migrations() -> tuple[tuple[int, str, str], ...]:
    """(version, name, sql) for every PostgreSQL migration shipped with the package, ascending."""
    out = []
    for item in resources.files(__name__).iterdir():
        name = item.name
        if name.endswith(".sql") and name[:4].isdigit():
            out.append((int(name[:4]), name[:-4], item.read_text(encoding="utf-8")))
    return tuple(sorted(out))
