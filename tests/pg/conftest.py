"""Fixtures running the store contract (and the end-to-end pipeline suite) against BOTH backends.

* ``pg_server`` (session): a reachable PostgreSQL URL — ``$TICKETMX_PG_URL``, else one started by
  ``scripts/pg-start`` — or every PostgreSQL test skips with the reason.
* ``pg_url``: a fresh, empty database on it for one test (dropped afterwards).
* ``backend``: ``sqlite`` / ``postgres`` (parametrised); ``store`` / ``make_store``: opened stores of it.
* ``start_gateway`` / ``gateway``: the in-process gateway of tests/conftest.py with the ``backend``'s
  store, so the unchanged tests of tests/test_pipeline.py run on both (tests/pg/test_pipeline_backends.py).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, AsyncIterator, Callable

import pytest

from gateway.app import Gateway
from gateway.store.crypto import Cipher
from gateway.store.sqlite import SqliteStore

from ..conftest import RunningGateway, make_config
from ..pg_support import drop_database, fresh_database, server_url

BACKENDS = ("sqlite", "postgres")


@pytest.fixture(scope="session")
def pg_server() -> str:
    url, why = server_url()
    if url is None:
        pytest.skip(f"PostgreSQL tests skipped: {why}")
    return url


@pytest.fixture
async def pg_url(pg_server: str) -> AsyncIterator[str]:
    url = await fresh_database(pg_server)
    yield url
    await drop_database(pg_server, url)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
async def backend_db(backend: str, request: pytest.FixtureRequest) -> AsyncIterator[str | None]:
    """A fresh database URL for ``postgres`` (skips without a server), None for ``sqlite``."""
    if backend != "postgres":
        yield None
        return
    server = request.getfixturevalue("pg_server")
    url = await fresh_database(server)
    yield url
    await drop_database(server, url)


@pytest.fixture
async def make_store(backend: str, backend_db: str | None, tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    """``await make_store(**kw)``: another opened store of this test's backend on the SAME database
    (for PostgreSQL: another node). ``kw``: cipher, claim_lease, ticket_prefix, ticket_start."""
    opened: list[Any] = []
    db_url = backend_db

    async def make(**kw: Any) -> Any:
        cipher = kw.pop("cipher", None) or Cipher()
        prefix, start = kw.pop("ticket_prefix", "HD-"), kw.pop("ticket_start", 1000)
        if backend == "postgres":
            from gateway.store.postgres import PostgresStore
            s = PostgresStore(db_url, prefix, start, cipher, pool_min=1, pool_max=kw.pop("pool_max", 4), **kw)
        else:
            kw.pop("claim_lease", None)
            kw.pop("pool_max", None)
            s = SqliteStore(tmp_path / "contract.db", prefix, start, cipher)
        await s.open()
        opened.append(s)
        return s

    yield make
    for s in reversed(opened):
        await s.close()


@pytest.fixture
async def store(make_store: Callable[..., Any]) -> Any:
    return await make_store()


# -- the in-process gateway of tests/conftest.py, on the chosen backend -----------------------------------
@pytest.fixture
async def start_gateway(tmp_path: Path, dns_server: Any, backend_db: str | None) -> AsyncIterator[Callable[..., Any]]:
    started: list[Gateway] = []
    dns_server.set_zone({})
    db_url = backend_db

    async def start(**sections: Any) -> RunningGateway:
        cfg = make_config(tmp_path, dns_server.port, **sections)
        if db_url is not None:  # the config names the database too: HTTP processes open their own store from it
            from dataclasses import replace
            cfg = replace(cfg, store=replace(cfg.store, url=db_url))
        gw = Gateway(cfg)
        if db_url is not None:
            from gateway.store.postgres import PostgresStore
            st = cfg.store
            gw.store = PostgresStore(db_url, st.ticket_prefix, st.ticket_start,
                                     Cipher.from_file(st.encryption_key_file), pool_min=1, pool_max=4)
        await gw.start()
        started.append(gw)
        return RunningGateway(gw)

    yield start
    for gw in reversed(started):
        await gw.stop(grace=1.0)


@pytest.fixture
async def gateway(start_gateway: Callable[..., Any]) -> RunningGateway:
    return await start_gateway()
