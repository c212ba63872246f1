"""Issue 18 item 7: a token endpoint's error body is never copied anywhere.

A real HTTP token endpoint on 127.0.0.1 refuses every request and echoes the whole request - client
secret and refresh token included - in ``error_description`` (and in ``error_uri``, in a second
field, in a non-JSON body). Through the relay worker and the real CLI, the secret must appear in no
log record, no relay queue row and no CLI output; the RFC 6749 ``error`` code and the HTTP status
are kept.
"""
from __future__ import annotations

import asyncio
import json
import logging
import sys
from typing import Any

import pytest

from gateway.runtime.oauth import OAuthError, TokenProvider, error_code

from .conftest import host, relay_table, wait_for
from .helpers import enqueue_many, note, start_worker

SECRET = "Sup3r-S3cret-client-VALUE-9f2c"
REFRESH = "rt-Sup3r-refresh-VALUE-77aa"


class EchoingEndpoint:
    """Answers every token request 400/401 with the request's body echoed back in ``mode``'s way."""

    def __init__(self, mode: str = "description") -> None:
        self.mode = mode
        self.requests = 0
        self.server: asyncio.AbstractServer | None = None
        self.port = 0

    async def start(self) -> "EchoingEndpoint":
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/token"

    async def close(self) -> None:
        if self.server:
            self.server.close()
            await self.server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readline()
        length = 0
        while (h := await reader.readline()) not in (b"\r\n", b""):
            k, _, v = h.decode().partition(":")
            if k.strip().lower() == "content-length":
                length = int(v)
        body = (await reader.readexactly(length)).decode()
        self.requests += 1
        status = "401 Unauthorized"
        if self.mode == "description":
            data = json.dumps({"error": "invalid_client", "error_description": f"bad request: {body}",
                               "error_uri": f"https://idp.test/e?{body}", "trace": body}).encode()
        elif self.mode == "code":       # the echo in the error code itself
            data = json.dumps({"error": body.split("client_secret=")[1].split("&")[0]
                               if "client_secret=" in body else body}).encode()
        elif self.mode == "text":       # not JSON at all
            status, data = "400 Bad Request", f"<html>you sent {body}</html>".encode()
        else:                           # a status line that echoes
            writer.write(f"HTTP/1.1 4{body}\r\n\r\n".encode())
            await writer.drain()
            writer.close()
            return
        writer.write(f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {len(data)}\r\n"
                     f"Connection: close\r\n\r\n".encode() + data)
        await writer.drain()
        writer.close()


@pytest.fixture
async def echoing():
    eps: list[EchoingEndpoint] = []

    async def make(mode: str = "description") -> EchoingEndpoint:
        ep = await EchoingEndpoint(mode).start()
        eps.append(ep)
        return ep
    yield make
    for ep in eps:
        await ep.close()


def _leaks(text: str) -> bool:
    low = text.lower()
    return any(s.lower() in low for s in (SECRET, REFRESH, SECRET.replace("-", "%2D")))


@pytest.mark.parametrize("mode", ["description", "code", "text", "status"])
async def test_token_provider_error_keeps_only_the_code(echoing, mode):
    from gateway.config.relay import OAuthConfig
    ep = await echoing(mode)
    for cfg in (OAuthConfig(token_url=ep.url, client_id="cid", client_secret=SECRET),
                OAuthConfig(token_url=ep.url, client_id="cid", client_secret=SECRET, refresh_token=REFRESH)):
        with pytest.raises(OAuthError) as ei:
            await TokenProvider(cfg).token()
        text = str(ei.value)
        assert not _leaks(text), text
        if mode == "description":
            assert "HTTP 401" in text and "error=invalid_client" in text
        elif mode == "code":
            assert "HTTP 401" in text and "error=unrecognised" in text
        elif mode == "text":
            assert "HTTP 400" in text and "error=missing" in text
    assert ep.requests >= 2


def test_error_code_charset_and_length():
    assert error_code("invalid_grant") == "invalid_grant"
    assert error_code("temporarily_unavailable") == "temporarily_unavailable"
    for bad in ("invalid grant", "x" * 65, "Invalid_Client<script>", "a\r\nb", 42, ["invalid_client"], ""):
        assert error_code(bad) == "unrecognised", bad
    assert error_code(None) == "missing"
    assert error_code("abcd1234secretvalue", ["abcd1234secretvalue"]) == "unrecognised"
    assert error_code("x_abcd1234secretvalue_y", ["abcd1234secretvalue"]) == "unrecognised"


async def test_secret_in_no_log_no_queue_row_no_cli_output(echoing, sinks, tmp_path, caplog):
    """Worker -> relay queue -> `ticketmx relay queue [--json]` and `ticketmx relay test`."""
    caplog.set_level(logging.DEBUG)
    ep = await echoing("description")
    s = sinks()
    secret_file = tmp_path / "client-secret"
    secret_file.write_text(SECRET + "\n")
    secret_file.chmod(0o600)
    smarthost = host("m365", s.port, auth="xoauth2", username="help@example.test", oauth_token_url=ep.url,
                     oauth_client_id="cid", oauth_client_secret_file=str(secret_file), allow_insecure_auth=True)
    from gateway.store.sqlite import SqliteStore
    store = SqliteStore(tmp_path / "relay.db")   # a file the CLI below reads too
    await store.open()
    w = await start_worker(store, relay_table(smarthost))
    try:
        (mid,) = await enqueue_many(store, [note()])
        w.wake()
        await wait_for(lambda: ep.requests >= 1)
        rows: list[Any] = []

        async def deferred() -> bool:
            rows[:] = await store.query("SELECT * FROM relay_queue WHERE id=?", (mid,))
            return bool(rows) and rows[0]["state"] == "deferred"
        for _ in range(500):
            if await deferred():
                break
            await asyncio.sleep(0.01)
        assert rows[0]["state"] == "deferred", dict(rows[0])
    finally:
        await w.close()
    rows = [dict(r) for r in rows]
    assert "error=invalid_client" in rows[0]["last_error"] and "HTTP 401" in rows[0]["last_error"]
    assert not s.handler.messages
    # no row of any relay table, no log record
    for table in ("relay_queue", "relay_recipients", "relay_contacts"):
        for row in await store.query(f"SELECT * FROM {table}"):
            assert not _leaks(repr(tuple(row))), (table, tuple(row))
    await store.close()
    logged = [r.getMessage() + (str(r.exc_info) if r.exc_info else "") for r in caplog.records]
    assert logged and not any(_leaks(m) for m in logged), logged

    # the real CLI, in a subprocess, on the same database and configuration
    db = store.path
    cfg = tmp_path / "t.toml"
    cfg.write_text(f"""
[smtp]
hostname = "mx.example.test"
[store]
url = "sqlite:///{db}"
[relay]
from = "Helpdesk <help@example.test>"
[[relay.smarthost]]
name = "m365"
host = "127.0.0.1"
port = {s.port}
tls = "none"
auth = "xoauth2"
allow_insecure_auth = true
username = "help@example.test"
oauth_token_url = "{ep.url}"
oauth_client_id = "cid"
oauth_client_secret_file = "{secret_file}"
""")
    outputs = []
    for args in (["relay", "queue"], ["relay", "queue", "--json"], ["relay", "test", "--to", "bob@x.test"]):
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway", *args, "--config", str(cfg), stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        outputs.append((args, proc.returncode, out.decode() + err.decode()))
    for args, rc, text in outputs:
        assert not _leaks(text), (args, text)
    assert "error=invalid_client" in outputs[0][2] and "error=invalid_client" in outputs[2][2], outputs
    assert outputs[2][1] == 1
