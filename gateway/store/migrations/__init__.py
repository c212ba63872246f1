"""Versioned schema migrations: ``NNNN_name.sql`` files applied in order, tracked in the store."""
from __future__ import annotations

from functools import cache
from importlib import resources


@cache
def load_migrations() -> tuple[tuple[int, str], ...]:
    """(version, sql) for every migration shipped with the package, ascending."""
    out = []
    for item in resources.files(__name__).iterdir():
        name = item.name
        if name.endswith(".sql") and name[:4].isdigit():
            out.append((int(name[:4]), item.read_text(encoding="utf-8")))
    return tuple(sorted(out))
