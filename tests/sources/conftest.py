"""Source tests: a real Dovecot (tests/sources/dovecot.py) and a gateway pulling from it."""
from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import pytest

from .dovecot import Dovecot, dovecot  # noqa: F401 - the fixture

USER = "support@example.test"
PASSWORD = "s3cret"


def password_file(tmp_path: Path) -> str:
    p = tmp_path / "imap-password"
    p.write_text(PASSWORD + "\n")
    os.chmod(p, 0o600)
    return str(p)


def source_table(d: Dovecot, tmp_path: Path, **over: Any) -> dict[str, Any]:
    t: dict[str, Any] = {"name": "inbox", "kind": "imap", "mailbox": "support@example.test", "host": "127.0.0.1",
                         "port": d.imaps_port, "tls": "implicit", "username": USER,
                         "password_file": password_file(tmp_path), "ca_file": str(d.ca_path),
                         "poll_interval": "1s", "timeout": "10s"}
    t.update(over)
    return {k: v for k, v in t.items() if v is not None}


def message(i: int, sender: str = "alice@customer.test", subject: str | None = None, extra: str = "",
            body: str = "It is on fire.\r\n") -> bytes:
    return (f"From: Alice <{sender}>\r\nTo: support@example.test\r\nSubject: {subject or f'Printer {i}'}\r\n"
            f"Message-ID: <m{i}.{time.time_ns()}@customer.test>\r\n{extra}Date: Sun, 22 Nov 2026 10:00:00 +0000\r\n"
            f"\r\n{body}").encode()


async def wait_for(pred: Any, timeout: float = 20.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if asyncio.iscoroutine(v):
            v = await v
        if v:
            return v
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


async def tickets(store: Any) -> list[dict[str, Any]]:
    return await store.tickets_list()


@pytest.fixture
def dove_root() -> Any:
    """A directory for Dovecot outside pytest's basetemp: as root, Dovecot's mail user needs +x on every
    parent, and another pytest session starting meanwhile resets /tmp/pytest-of-root to 0700."""
    import shutil
    import tempfile
    d = tempfile.mkdtemp(prefix="ticketmx-dovecot-")
    try:
        yield Path(d)
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
