"""Real SMTP sinks (aiosmtpd Controllers on 127.0.0.1) acting as smarthosts, and a temp store."""
from __future__ import annotations

import asyncio
import base64
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator, Callable

import pytest
import trustme
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, Envelope, LoginPassword, Session, SMTP

from gateway.store.sqlite import SqliteStore


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    login: str | None


class SinkHandler:
    """Records every message; replies can be injected per recipient or for DATA."""

    def __init__(self) -> None:
        self.messages: list[Received] = []
        self.rcpt_reply: Callable[[str], str | None] = lambda addr: None
        self.data_reply: Callable[[Envelope], str | None] = lambda env: None
        self.mail_reply: Callable[[str], str | None] = lambda addr: None
        self.oauth_tokens: set[str] = set()   # accepted XOAUTH2 bearer tokens
        self.oauth_seen: list[str] = []
        self.connections = 0
        self.lock = threading.Lock()
        self.on_message: Callable[[Received], None] | None = None

    async def handle_EHLO(self, server: SMTP, session: Session, envelope: Envelope, hostname: str,
                          responses: list[str]) -> list[str]:
        session.host_name = hostname
        return responses

    async def handle_MAIL(self, server: SMTP, session: Session, envelope: Envelope, address: str,
                          mail_options: list[str]) -> str:
        reply = self.mail_reply(address)
        if reply:
            return reply
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 OK"

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope, address: str,
                          rcpt_options: list[str]) -> str:
        reply = self.rcpt_reply(address)
        if reply:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        reply = self.data_reply(envelope)
        if reply:
            return reply
        r = Received(envelope.mail_from, list(envelope.rcpt_tos), bytes(envelope.original_content or b""),
                     getattr(getattr(session, "auth_data", None), "login", None))
        with self.lock:
            self.messages.append(r)
        if self.on_message:
            self.on_message(r)
        return "250 2.0.0 queued"

    async def auth_XOAUTH2(self, server: SMTP, args: list[str]) -> AuthResult:
        blob = args[1] if len(args) > 1 else ""
        try:
            decoded = base64.b64decode(blob).decode()
            user = decoded.split("\x01")[0].removeprefix("user=")
            token = decoded.split("auth=Bearer ", 1)[1].split("\x01")[0]
        except Exception:
            return AuthResult(success=False, handled=False)
        self.oauth_seen.append(token)
        if token in self.oauth_tokens:
            return AuthResult(success=True, auth_data=LoginPassword(user.encode(), b""))
        err = base64.b64encode(b'{"status":"401","schemes":"bearer","scope":"https://mail.example/"}').decode()
        await server.challenge_auth(err, encode_to_b64=False)  # 334 <error JSON>; the client answers ""
        return AuthResult(success=False, handled=False, message="535 5.7.8 Username and Password not accepted")

    def recipients(self) -> list[str]:
        with self.lock:
            return [r for m in self.messages for r in m.rcpt_tos]


class CountingSMTP(SMTP):
    def connection_made(self, transport: Any) -> None:
        self.event_handler.connections += 1
        super().connection_made(transport)


class Sink:
    """An aiosmtpd Controller we can stop and start again on the same port."""

    def __init__(self, port: int | None = None, **kwargs: Any) -> None:
        self.port = port or free_port()
        self.handler = SinkHandler()
        self.kwargs = kwargs
        self.controller: Controller | None = None

    def start(self) -> "Sink":
        kwargs = dict(self.kwargs)
        tls_ctx = kwargs.pop("ssl_context", None)

        class C(Controller):
            def factory(inner) -> SMTP:  # noqa: N805
                return CountingSMTP(inner.handler, **inner.SMTP_kwargs)

        self.controller = C(self.handler, hostname="127.0.0.1", port=self.port, ssl_context=tls_ctx,
                            server_hostname="localhost", **kwargs)
        self.controller.start()
        return self

    def stop(self) -> None:
        if self.controller is not None:
            self.controller.stop()
            self.controller = None

    @property
    def messages(self) -> list[Received]:
        return self.handler.messages


@pytest.fixture
def sinks() -> Any:
    made: list[Sink] = []

    def make(**kwargs: Any) -> Sink:
        s = Sink(**kwargs).start()
        made.append(s)
        return s

    yield make
    for s in made:
        s.stop()


@pytest.fixture(scope="session")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="session")
def server_cert(ca: trustme.CA) -> trustme.LeafCert:
    return ca.issue_cert("127.0.0.1", "localhost")


@pytest.fixture(scope="session")
def ca_file(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


@pytest.fixture
def server_ctx(server_cert: trustme.LeafCert) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_cert.configure_cert(ctx)
    return ctx


@pytest.fixture(params=("sqlite", "postgres"))
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Any]:
    """The relay's store: SQLite, and PostgreSQL (a fresh database; skips without a server, saying
    why) — every queue, delivery and notification test runs on both backends."""
    if request.param == "sqlite":
        s: Any = SqliteStore(tmp_path / "t.db")
        await s.open()
        yield s
        await s.close()
        return
    from ..pg_support import drop_database, fresh_database, server_url
    server, why = server_url()
    if server is None:
        pytest.skip(f"PostgreSQL tests skipped: {why}")
    from gateway.store.postgres import PostgresStore
    url = await fresh_database(server)
    s = PostgresStore(url, pool_min=1, pool_max=4)
    await s.open()
    try:
        yield s
    finally:
        await s.close()
        await drop_database(server, url)


def host(name: str, port: int, **kw: Any) -> dict[str, Any]:
    """A [[relay.smarthost]] table for a loopback sink, fast timings."""
    d = {"name": name, "host": "127.0.0.1", "port": port, "tls": "none", "timeout": "2s", "max_tries": 1,
         "cooloff": "300ms"}
    d.update(kw)
    return d


def relay_table(*hosts: dict[str, Any], **kw: Any) -> dict[str, Any]:
    d = {"from": "Helpdesk <help@example.test>", "hostname": "mx.example.test", "retry": "50ms*3, 100ms",
         "max_lifetime": "20s", "poll_interval": "20ms", "smarthost": list(hosts)}
    d.update(kw)
    return d


async def wait_for(pred: Callable[[], Any], timeout: float = 10.0, interval: float = 0.01) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if asyncio.iscoroutine(v):
            v = await v
        if v:
            return v
        await asyncio.sleep(interval)
    raise AssertionError("condition not met in time")
