"""Shared test fixtures: real gateways on 127.0.0.1 ephemeral ports, real SMTP clients."""
from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, AsyncIterator, Callable

import pytest

from gateway.app import Gateway
from gateway.config.load import Config, build_config

ROOT = Path(__file__).resolve().parents[1]
def _corpora() -> Path:
    """The shared outside test data: $TICKETMX_CORPORA, ../shared/corpora, or /work/shared/corpora."""
    for candidate in (os.environ.get("TICKETMX_CORPORA"), ROOT.parent / "shared" / "corpora",
                      "/work/shared/corpora"):
        if candidate and Path(candidate).is_dir():
            return Path(candidate)
    return ROOT.parent / "shared" / "corpora"


CORPORA = _corpora()

BASE_CONFIG: dict[str, Any] = {
    "smtp": {"listen": ["127.0.0.1:0"], "hostname": "mx.example.test", "max_message_size": "1MiB"},
    "mailbox": [
        {"address": "support@example.test", "aliases": ["help@example.test"], "queue": "IT"},
        {"address": "billing@example.test", "queue": "Billing"},
    ],
    "metrics": {"listen": "127.0.0.1:0"},
    "pipeline": {"processes": 0, "poll_interval": "100ms", "retry_delay": "50ms"},
}


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def pytest_asyncio_loop_factories(config, item):
    """In-process gateways run on the loop production uses ([smtp] event_loop = "auto": uvloop);
    TICKETMX_TEST_LOOP=asyncio runs the suite on asyncio's own loop instead."""
    if os.environ.get("TICKETMX_TEST_LOOP", "uvloop") == "uvloop":
        import uvloop
        return {"uvloop": uvloop.new_event_loop}
    return {"asyncio": asyncio.new_event_loop}


_EXIT_STATUS: list[int] = []


def pytest_sessionfinish(session, exitstatus):
    _EXIT_STATUS.append(int(exitstatus))


def pytest_unconfigure(config):
    """A run must end: threads a failing test left behind (the aiosqlite worker of a store it never
    closed is not a daemon) would keep the interpreter alive after the summary, and CI would wait for
    its time limit instead of reporting. Wait briefly, name what is left, and exit with pytest's status."""
    import threading
    import time as _time
    deadline = _time.monotonic() + 15
    while True:
        left = [t for t in threading.enumerate() if t is not threading.main_thread() and not t.daemon
                and t.is_alive()]
        if not left or _time.monotonic() > deadline:
            break
        _time.sleep(0.2)
    if left:
        print(f"\nconftest: {len(left)} non-daemon thread(s) still running after the session, exiting anyway:"
              f" {', '.join(sorted(t.name for t in left))}", file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(_EXIT_STATUS[-1] if _EXIT_STATUS else 1)


@pytest.fixture(scope="session")
def dns_server():
    """A real DNS server on 127.0.0.1 for every gateway the tests start (empty zone unless a test sets one)."""
    from .auth.dnsserver import TestDnsServer
    srv = TestDnsServer({})
    srv.start()
    yield srv
    srv.stop()


def make_config(tmp_path: Path, dns_port: int | None = None, **sections: Any) -> Config:
    data = merge(BASE_CONFIG, {"store": {"url": f"sqlite:///{tmp_path}/ticketmx.db"}})
    if dns_port is not None:
        data["dns"] = {"nameservers": [f"127.0.0.1:{dns_port}"], "timeout": "1s"}
    data = merge(data, sections)
    return build_config(data, "test")


def toml_dump(data: dict[str, Any]) -> str:
    """Just enough TOML for our configs (tables, arrays of tables, scalars, lists)."""
    lines: list[str] = []

    def scalar(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return str(v)
        if isinstance(v, list):
            return "[" + ", ".join(scalar(x) for x in v) + "]"
        if isinstance(v, dict):
            return "{" + ", ".join(f"{k} = {scalar(x)}" for k, x in v.items()) + "}"
        return json.dumps(v)

    for key, value in data.items():
        if isinstance(value, dict):
            lines.append(f"[{key}]")
            lines += [f"{k} = {scalar(v)}" for k, v in value.items()]
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            for item in value:
                lines.append(f"[[{key}]]")
                lines += [f"{k} = {scalar(v)}" for k, v in item.items()]
        else:
            lines.insert(0, f"{key} = {scalar(value)}")
    return "\n".join(lines) + "\n"


class RunningGateway:
    def __init__(self, gw: Gateway) -> None:
        self.gw = gw

    @property
    def port(self) -> int:
        assert self.gw.listener is not None
        return self.gw.listener.ports[0]

    @property
    def metrics_port(self) -> int:
        assert self.gw.metrics_server is not None
        return self.gw.metrics_server.port

    @property
    def store(self):  # noqa: ANN201
        return self.gw.store

    async def wait_done(self, spool_id: str, timeout: float = 10.0) -> Any:
        """Wait until the spool entry reaches a terminal state; returns the entry."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            entry = await self.store.spool_get(spool_id)
            if entry is not None and entry.state not in ("queued", "processing"):
                return entry
            await asyncio.sleep(0.02)
        raise AssertionError(f"spool entry {spool_id} not finished after {timeout}s")


@pytest.fixture
async def start_gateway(tmp_path: Path, dns_server: Any) -> AsyncIterator[Callable[..., Any]]:
    started: list[Gateway] = []
    dns_server.set_zone({})

    async def start(**sections: Any) -> RunningGateway:
        gw = Gateway(make_config(tmp_path, dns_server.port, **sections))
        await gw.start()
        started.append(gw)
        return RunningGateway(gw)

    yield start
    for gw in reversed(started):
        await gw.stop(grace=1.0)


@pytest.fixture
async def gateway(start_gateway: Callable[..., Any]) -> RunningGateway:
    return await start_gateway()


def queued_id(reply_text: str) -> str:
    """The spool id from a '250 2.0.0 Ok: queued as <id>' reply."""
    assert "queued as" in reply_text, reply_text
    return reply_text.rsplit("queued as", 1)[1].strip()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"port {port} did not open within {timeout}s")


def run_cli(*args: str, env: dict[str, str] | None = None, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "gateway", *args], capture_output=True, text=True,
                          cwd=ROOT, env={**os.environ, **(env or {})}, timeout=60)
    if check and proc.returncode != 0:
        raise AssertionError(f"ticketmx {' '.join(args)} exited {proc.returncode}: {proc.stderr}")
    return proc


def simple_message(subject: str = "Printer on fire", sender: str = "alice@customer.test",
                   to: str = "support@example.test", body: str = "It is on fire.\r\n",
                   message_id: str | None = None, extra: str = "") -> bytes:
    mid = f"Message-ID: <{message_id}>\r\n" if message_id else ""
    return (f"From: Alice <{sender}>\r\nTo: {to}\r\nSubject: {subject}\r\n{mid}{extra}"
            f"Date: Sun, 22 Nov 2026 10:00:00 +0000\r\n\r\n{body}").encode()
