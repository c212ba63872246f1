"""PostgreSQL for the tests: find or start a server, make throwaway databases, run `ticketmx serve` on it.

* :func:`server_url` — ``$TICKETMX_PG_URL`` if set (it must work), else ``scripts/pg-start`` (installs
  Debian's postgresql if missing and starts a private cluster on 127.0.0.1; bounded in time), else
  ``None`` with the reason, which the fixtures turn into a skip message.
* :func:`fresh_database` / :func:`drop_database` — one database per test (the role may CREATEDB).
* Run as a program (``python -m tests.pg_support serve --config X``) it is ``ticketmx serve`` with the
  PostgreSQL wiring patched in when this checkout's ``gateway.config.load`` / ``open_store`` do not accept
  ``postgresql://`` URLs yet (see :func:`install_shim`); once they do, it changes nothing.
"""
from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parents[1]
PG_START_TIMEOUT = float(os.environ.get("TICKETMX_PG_START_TIMEOUT", "300"))  # an apt-get install may be needed
CLAIM_LEASE_ENV = "TICKETMX_PG_CLAIM_LEASE"   # only read by the shim (before [store] claim_lease exists)

_cached: tuple[str | None, str] | None = None


def _with_db(url: str, db: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + db, parts.query, parts.fragment))


async def _probe(url: str) -> None:
    import asyncpg
    conn = await asyncpg.connect(url, timeout=10)
    try:
        await conn.fetchval("SELECT 1")
    finally:
        await conn.close()


def run_sync(coro):  # noqa: ANN001, ANN201
    """Run a coroutine to completion from sync code, even when an event loop runs in this thread."""
    import concurrent.futures
    with concurrent.futures.ThreadPoolExecutor(1) as ex:
        return ex.submit(asyncio.run, coro).result()


def server_url() -> tuple[str | None, str]:
    """(url, why): a reachable PostgreSQL, or (None, the reason there is none). Cached per process."""
    global _cached
    if _cached is not None:
        return _cached
    try:
        import asyncpg  # noqa: F401
    except ImportError:
        _cached = (None, "asyncpg is not installed (pip install asyncpg)")
        return _cached
    url = os.environ.get("TICKETMX_PG_URL", "").strip()
    how = "TICKETMX_PG_URL"
    if not url:
        script = ROOT / "scripts" / "pg-start"
        how = "scripts/pg-start"
        try:
            proc = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=PG_START_TIMEOUT)
        except subprocess.TimeoutExpired:
            _cached = (None, f"scripts/pg-start did not finish within {PG_START_TIMEOUT:.0f}s "
                             "(set TICKETMX_PG_URL to use an existing server)")
            return _cached
        except OSError as exc:
            _cached = (None, f"cannot run scripts/pg-start: {exc}")
            return _cached
        if proc.returncode != 0 or not proc.stdout.strip().startswith("postgres"):
            tail = " | ".join(proc.stderr.strip().splitlines()[-3:])
            _cached = (None, f"no PostgreSQL: TICKETMX_PG_URL is not set and scripts/pg-start failed "
                             f"(exit {proc.returncode}): {tail}")
            return _cached
        url = proc.stdout.strip().splitlines()[-1]
    try:
        run_sync(_probe(url))
    except Exception as exc:  # noqa: BLE001 - any failure is a reason to skip, reported as such
        _cached = (None, f"PostgreSQL from {how} is not reachable: {type(exc).__name__}: {exc}")
        return _cached
    _cached = (url, f"PostgreSQL from {how}")
    return _cached


async def fresh_database(url: str, prefix: str = "tmx") -> str:
    """Create an empty database next to ``url``'s and return its URL."""
    import asyncpg
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}" TEMPLATE template0 ENCODING \'UTF8\'')
    finally:
        await conn.close()
    return _with_db(url, name)


async def drop_database(admin_url: str, db_url: str) -> None:
    import asyncpg
    name = urlsplit(db_url).path.lstrip("/")
    conn = await asyncpg.connect(admin_url)
    try:
        for attempt in range(50):
            try:
                await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                return
            except (asyncpg.InsufficientPrivilegeError, asyncpg.ObjectInUseError):
                # FORCE cannot end a backend of another role: an autovacuum worker that has just
                # started on the database. It finishes within moments.
                if attempt == 49:
                    raise
                await asyncio.sleep(0.1)
    finally:
        await conn.close()


# -- `ticketmx serve` on PostgreSQL before the lead's wiring lands ------------------------------------------
def wiring_missing() -> list[str]:
    """What of the PostgreSQL wiring this checkout lacks (empty once config.py/open_store have it)."""
    from gateway.config.load import build_config
    from gateway.config.errors import ConfigErrors
    missing = []
    try:
        cfg = build_config({"store": {"url": "postgresql://u:p@127.0.0.1:1/db"}}, "probe")
    except ConfigErrors:
        return ["config", "open_store"]
    from gateway.store import open_store
    try:
        store = open_store(cfg)
    except Exception:  # noqa: BLE001
        store = None
    if type(store).__name__ != "PostgresStore":
        missing.append("open_store")
    return missing


def pg_open_store(cfg):  # noqa: ANN001, ANN201 - the shim's open_store
    from gateway.store.crypto import Cipher
    from gateway.store.postgres import PostgresStore, is_postgres_url
    if not is_postgres_url(cfg.store.url):
        return _original_open_store(cfg)
    st = cfg.store
    return PostgresStore(st.url, st.ticket_prefix, st.ticket_start, Cipher.from_file(st.encryption_key_file),
                         pool_min=getattr(st, "pool_min", 1), pool_max=getattr(st, "pool_max", 10),
                         claim_lease=getattr(st, "claim_lease", float(os.environ.get(CLAIM_LEASE_ENV, "60"))))


_original_open_store = None


def install_shim() -> list[str]:
    """Patch in what the lead's edits will do (config accepts postgresql://, open_store dispatches);
    returns what was patched. Runs in the serve process AND in its spawned worker processes (they import
    this module as their __main__)."""
    global _original_open_store
    missing = wiring_missing()
    if not missing:
        return []
    import gateway.app
    import gateway.cli
    import gateway.config.load
    import gateway.pipeline.runner.process
    import gateway.store
    from gateway.store.postgres import is_postgres_url
    if "config" in missing:
        original_url = gateway.config.load._store_url

        def _store_url(v):  # noqa: ANN001, ANN202
            s = str(v)
            return s if is_postgres_url(s) else original_url(v)
        gateway.config.load._store_url = _store_url
    _original_open_store = gateway.store.open_store
    for mod in (gateway.store, gateway.app, gateway.cli, gateway.pipeline.runner.process):
        mod.open_store = pg_open_store
    return missing


if __name__ in ("__main__", "__mp_main__") and os.environ.get("TICKETMX_PG_SHIM") == "1":
    sys.path.insert(0, str(ROOT))
    install_shim()

if __name__ == "__main__":
    from gateway.cli import main
    sys.exit(main(sys.argv[1:]))
