"""A real smarthost for tests: an aiosmtpd sink on 127.0.0.1 that keeps every message it is given."""
from __future__ import annotations

import asyncio
import time
from typing import Any, Callable

import pytest
from aiosmtpd.controller import Controller

from .conftest import free_port


class Sink:
    """Keeps (MAIL FROM, RCPT TOs, raw message) of every transaction, answering 250."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, list[str], bytes]] = []
        self.port = 0

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content))
        return "250 2.0.0 OK"


@pytest.fixture
def sink():
    s = Sink()
    s.port = free_port()
    c = Controller(s, hostname="127.0.0.1", port=s.port)
    c.start()
    yield s
    c.stop()


async def wait_for(pred: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll ``pred`` every 50 ms until it holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not reached")
