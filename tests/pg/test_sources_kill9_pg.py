"""kill -9 of `ticketmx serve` ten times during a sync of 2,000 messages from Dovecot, on PostgreSQL: 0 lost,
0 duplicated (the scenario of tests/sources/test_source_kill9.py; a killed node's claims are taken over
after [store] claim_lease, 2 s here)."""
from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, Iterator

import pytest

from ..sources.dovecot import Dovecot, dovecot  # noqa: F401 - the fixture
from ..sources.test_source_kill9 import kill_9_during_sync


@pytest.fixture
def pg_count(pg_url: str) -> Iterator[Any]:
    """A synchronous ``count(sql)`` on the test's database (its own loop: the scenario is not async)."""
    import asyncpg
    loop = asyncio.new_event_loop()
    conn = loop.run_until_complete(asyncpg.connect(pg_url))

    def count(sql: str) -> int:
        try:
            return int(loop.run_until_complete(conn.fetchval(sql)) or 0)
        except asyncpg.UndefinedTableError:  # before the first start has migrated
            return 0
    try:
        yield count
    finally:
        loop.run_until_complete(conn.close())
        loop.close()


def test_kill_9_ten_times_during_a_sync_of_2000_postgres(dovecot: Dovecot, tmp_path: Path, dns_server: Any,
                                                         pg_url: str, pg_count: Any) -> None:
    kill_9_during_sync(dovecot, tmp_path, dns_server, {"url": pg_url, "claim_lease": "2s"}, pg_count)
