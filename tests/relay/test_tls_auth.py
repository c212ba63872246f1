"""TLS (trustme certificates), AUTH PLAIN/LOGIN and XOAUTH2 against real loopback servers."""
from __future__ import annotations

import asyncio
import json
from typing import Any
from urllib.parse import parse_qs

import pytest
import trustme
from aiosmtpd.smtp import AuthResult, LoginPassword

from relay.client import HostFailure, Smarthost
from gateway.config.relay import parse_relay_config
from gateway.runtime.oauth import OAuthError, TokenProvider
from gateway.store.relay_queue import RelayQueue

from .conftest import host, relay_table, wait_for
from .helpers import enqueue_many, note, start_worker

MSG = b"From: help@example.test\r\nTo: a@x.test\r\nSubject: t\r\n\r\nhi\r\n"


def smarthost(table: dict[str, Any], **kw: Any) -> Smarthost:
    cfg = parse_relay_config(relay_table(table))
    return Smarthost(cfg.smarthosts[0], "mx.example.test", **kw)


async def test_starttls_verified(sinks, server_ctx, ca_file):
    s = sinks(tls_context=server_ctx, require_starttls=True)
    steps: list[tuple[str, str]] = []
    h = smarthost(host("tls", s.port, tls="starttls", ca_file=ca_file))
    res = await h.send("help@example.test", ["a@x.test"], MSG, trace=lambda a, b: steps.append((a, b)), reuse=False)
    assert res[0].status == "sent"
    names = [a for a, _ in steps]
    assert names[:6] == ["connect", "greeting", "ehlo", "starttls", "tls", "ehlo"]
    assert "TLSv1.3" in dict(steps)["tls"] or "TLSv1.2" in dict(steps)["tls"]
    assert len(s.messages) == 1


async def test_implicit_tls_verified(sinks, server_ctx, ca_file):
    s = sinks(ssl_context=server_ctx)
    h = smarthost(host("tls", s.port, tls="implicit", ca_file=ca_file))
    res = await h.send("help@example.test", ["a@x.test"], MSG, reuse=False)
    assert res[0].status == "sent"
    assert len(s.messages) == 1


async def test_bad_certificate_refused(sinks, ca_file):
    other = trustme.CA()  # a certificate from a CA we do not trust
    import ssl
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    other.issue_cert("127.0.0.1", "localhost").configure_cert(ctx)
    s = sinks(tls_context=ctx, require_starttls=True)
    h = smarthost(host("tls", s.port, tls="starttls", ca_file=ca_file))
    with pytest.raises(HostFailure) as ei:
        await h.send("help@example.test", ["a@x.test"], MSG, reuse=False)
    assert ei.value.reason == "tls"
    assert "certificate verify failed" in ei.value.text or "unable to get local issuer" in ei.value.text
    assert not s.messages
    # verification can be turned off explicitly (and only explicitly)
    h2 = smarthost(host("tls", s.port, tls="starttls", verify_cert=False))
    assert (await h2.send("help@example.test", ["a@x.test"], MSG, reuse=False))[0].status == "sent"


async def test_wrong_hostname_refused(sinks, ca, ca_file):
    import ssl
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("mail.other.test").configure_cert(ctx)  # trusted CA, wrong name
    s = sinks(ssl_context=ctx)
    h = smarthost(host("tls", s.port, tls="implicit", ca_file=ca_file))
    with pytest.raises(HostFailure) as ei:
        await h.send("help@example.test", ["a@x.test"], MSG, reuse=False)
    assert ei.value.reason == "tls"


async def test_starttls_required_but_not_offered(sinks):
    s = sinks()
    h = smarthost(host("tls", s.port, tls="starttls"))
    with pytest.raises(HostFailure) as ei:
        await h.send("help@example.test", ["a@x.test"], MSG, reuse=False)
    assert ei.value.reason == "tls" and "not offered" in ei.value.text


def _authenticator(user: str, password: str):
    def auth(server, session, envelope, mechanism, data):
        ok = isinstance(data, LoginPassword) and data.login == user.encode() and data.password == password.encode()
        return AuthResult(success=ok, handled=False, auth_data=data if ok else None)
    return auth


@pytest.mark.parametrize("mech", ["plain", "login"])
async def test_auth_plain_login(sinks, server_ctx, ca_file, tmp_path, mech):
    pw = tmp_path / "pw"
    pw.write_text("s3cret-pass\n")
    pw.chmod(0o600)
    s = sinks(tls_context=server_ctx, require_starttls=True, auth_required=True,
              authenticator=_authenticator("relay-user", "s3cret-pass"))
    steps: list[str] = []
    h = smarthost(host("auth", s.port, tls="starttls", ca_file=ca_file, auth=mech, username="relay-user",
                       password_file=str(pw)))
    res = await h.send("help@example.test", ["a@x.test"], MSG, trace=lambda a, b: steps.append(f"{a}: {b}"),
                       reuse=False)
    assert res[0].status == "sent"
    assert s.messages[0].login == b"relay-user"
    assert any(x.startswith("auth: ") and "235" in x for x in steps)
    assert not any("s3cret" in x for x in steps)

    # a wrong password is a host failure ("auth"), and the secret never shows
    pw.write_text("wrong\n")
    pw.chmod(0o600)
    h = smarthost(host("auth", s.port, tls="starttls", ca_file=ca_file, auth=mech, username="relay-user",
                       password_file=str(pw)))
    with pytest.raises(HostFailure) as ei:
        await h.send("help@example.test", ["a@x.test"], MSG, reuse=False)
    assert ei.value.reason == "auth" and "535" in ei.value.text and "wrong" not in ei.value.text


async def test_auth_from_env(sinks, server_ctx, ca_file, monkeypatch):
    monkeypatch.setenv("RELAY_PW", "env-pass")
    s = sinks(tls_context=server_ctx, require_starttls=True, auth_required=True,
              authenticator=_authenticator("u", "env-pass"))
    h = smarthost(host("auth", s.port, tls="starttls", ca_file=ca_file, auth="plain", username="u",
                       password_env="RELAY_PW"))
    assert (await h.send("help@example.test", ["a@x.test"], MSG, reuse=False))[0].status == "sent"


# -- XOAUTH2 --------------------------------------------------------------------------------------

class TokenEndpoint:
    """An OAuth2 token endpoint over plain HTTP/1.1 on 127.0.0.1 (chunked answers, to exercise the parser)."""

    def __init__(self, expires_in: int = 3600, rotate: bool = False) -> None:
        self.requests: list[dict[str, list[str]]] = []
        self.issued: list[str] = []
        self.expires_in = expires_in
        self.rotate = rotate
        self.server: asyncio.AbstractServer | None = None
        self.port = 0
        self.on_token = lambda token: None

    async def start(self) -> "TokenEndpoint":
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/oauth2/v2.0/token"

    async def close(self) -> None:
        if self.server:
            self.server.close()
            await self.server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        line = await reader.readline()
        headers = {}
        while (h := await reader.readline()) not in (b"\r\n", b""):
            k, _, v = h.decode().partition(":")
            headers[k.strip().lower()] = v.strip()
        body = await reader.readexactly(int(headers.get("content-length", 0)))
        form = parse_qs(body.decode())
        self.requests.append(form)
        ok = line.startswith(b"POST /oauth2/v2.0/token") and form.get("client_id") == ["cid"] and (
            form.get("grant_type") == ["client_credentials"] and form.get("client_secret") == ["csecret"]
            or form.get("grant_type") == ["refresh_token"] and form.get("refresh_token", [""])[0].startswith("rt"))
        if ok:
            token = f"at-{len(self.requests)}"
            self.issued.append(token)
            self.on_token(token)
            doc: dict[str, Any] = {"access_token": token, "token_type": "Bearer", "expires_in": self.expires_in}
            if self.rotate and form.get("grant_type") == ["refresh_token"]:
                doc["refresh_token"] = f"rt-{len(self.requests)}"
            status = "200 OK"
        else:
            doc, status = {"error": "invalid_client", "error_description": "bad client"}, "401 Unauthorized"
        data = json.dumps(doc).encode()
        half = len(data) // 2
        chunks = f"{half:x}\r\n".encode() + data[:half] + b"\r\n" + f"{len(data) - half:x}\r\n".encode() + \
            data[half:] + b"\r\n0\r\n\r\n"
        writer.write(f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n"
                     f"Connection: close\r\n\r\n".encode() + chunks)
        await writer.drain()
        writer.close()


@pytest.fixture
async def token_endpoint():
    eps: list[TokenEndpoint] = []

    async def make(**kw: Any) -> TokenEndpoint:
        ep = await TokenEndpoint(**kw).start()
        eps.append(ep)
        return ep
    yield make
    for ep in eps:
        await ep.close()


async def test_xoauth2_client_credentials(sinks, server_ctx, ca_file, tmp_path, token_endpoint):
    ep = await token_endpoint()
    s = sinks(tls_context=server_ctx, require_starttls=True, auth_required=True)
    ep.on_token = s.handler.oauth_tokens.add
    secret = tmp_path / "secret"
    secret.write_text("csecret\n")
    secret.chmod(0o600)
    table = relay_table(host("m365", s.port, tls="starttls", ca_file=ca_file, auth="xoauth2",
                             username="help@example.test", oauth_token_url=ep.url, oauth_client_id="cid",
                             oauth_client_secret_file=str(secret),
                             oauth_scope="https://outlook.office365.com/.default"))
    w = await start_worker(store_ := await _store(tmp_path), table)
    try:
        await enqueue_many(store_, [note(to=f"r{i}@x.test") for i in range(5)])
        w.wake()
        await wait_for(lambda: len(s.messages) == 5)
    finally:
        await w.close()
        await store_.close()
    assert len(ep.requests) == 1                     # cached: one token for all five
    req = ep.requests[0]
    assert req["grant_type"] == ["client_credentials"]
    assert req["scope"] == ["https://outlook.office365.com/.default"]
    assert s.handler.oauth_seen and set(s.handler.oauth_seen) == {"at-1"}
    assert s.messages[0].login == b"help@example.test"


async def _store(tmp_path):
    from gateway.store.sqlite import SqliteStore
    st = SqliteStore(tmp_path / "oauth.db")
    await st.open()
    return st


async def test_xoauth2_refresh_token_rotation_and_revoked_token(sinks, server_ctx, ca_file, tmp_path,
                                                                token_endpoint):
    ep = await token_endpoint(rotate=True)
    s = sinks(tls_context=server_ctx, require_starttls=True, auth_required=True)
    ep.on_token = s.handler.oauth_tokens.add
    rt = tmp_path / "refresh"
    rt.write_text("rt-initial\n")
    rt.chmod(0o600)
    h = smarthost(host("google", s.port, tls="starttls", ca_file=ca_file, auth="xoauth2", username="u@example.test",
                       oauth_token_url=ep.url, oauth_client_id="cid", oauth_refresh_token_file=str(rt)))
    assert (await h.send("help@example.test", ["a@x.test"], MSG, reuse=False))[0].status == "sent"
    assert ep.requests[0]["grant_type"] == ["refresh_token"]
    assert ep.requests[0]["refresh_token"] == ["rt-initial"]
    assert rt.read_text().strip() == "rt-1"          # the rotated refresh token was saved
    # the server revokes the cached access token: one 535, a fresh token, success
    s.handler.oauth_tokens.clear()
    ep.on_token = s.handler.oauth_tokens.add
    assert (await h.send("help@example.test", ["a@x.test"], MSG, reuse=False))[0].status == "sent"
    assert len(ep.requests) == 2 and ep.requests[1]["refresh_token"] == ["rt-1"]


async def test_token_refreshed_before_expiry(token_endpoint):
    from gateway.config.relay import OAuthConfig
    ep = await token_endpoint(expires_in=100)
    now = [1000.0]
    tp = TokenProvider(OAuthConfig(token_url=ep.url, client_id="cid", client_secret="csecret"),
                       clock=lambda: now[0])
    assert await tp.token() == "at-1"
    now[0] += 85                                      # 100 s lifetime, 10 s margin: still fresh
    assert await tp.token() == "at-1"
    now[0] += 6                                       # inside the margin: refreshed ahead of expiry
    assert await tp.token() == "at-2"
    # concurrent callers share one request
    tp.invalidate()
    assert len({await t for t in [asyncio.ensure_future(tp.token()) for _ in range(5)]}) == 1
    assert len(ep.requests) == 3


async def test_token_endpoint_refusal_is_secret_free(token_endpoint):
    from gateway.config.relay import OAuthConfig
    ep = await token_endpoint()
    tp = TokenProvider(OAuthConfig(token_url=ep.url, client_id="cid", client_secret="hunter2-wrong"))
    with pytest.raises(OAuthError) as ei:
        await tp.token()
    assert "401" in str(ei.value) and "invalid_client" in str(ei.value)
    assert "hunter2" not in str(ei.value) and "hunter2" not in repr(tp)


async def test_oauth_failure_is_host_failure_and_falls_back(sinks, server_ctx, ca_file, tmp_path, store):
    from prometheus_client import CollectorRegistry

    from .conftest import free_port
    from .helpers import metric
    s1 = sinks(tls_context=server_ctx, require_starttls=True, auth_required=True)
    s2 = sinks()
    secret = tmp_path / "secret"
    secret.write_text("csecret")
    secret.chmod(0o600)
    table = relay_table(host("m365", s1.port, tls="starttls", ca_file=ca_file, auth="xoauth2",
                             username="u@example.test", oauth_token_url=f"http://127.0.0.1:{free_port()}/token",
                             oauth_client_id="cid", oauth_client_secret_file=str(secret)),
                        host("backup", s2.port))
    reg = CollectorRegistry()
    w = await start_worker(store, table, reg)      # the token endpoint is down: no token, no AUTH
    try:
        (mid,) = await enqueue_many(store, [note()])
        w.wake()
        row = await wait_for(lambda: _sent(store, mid))
    finally:
        await w.close()
    assert row["last_host"] == "backup" and len(s2.messages) == 1 and not s1.messages
    assert metric(reg, "ticketmx_relay_failed_total", host="m365", reason="oauth") == 1
    assert "csecret" not in row["last_error"]


async def _sent(store, mid):
    row = await RelayQueue(store).get(mid)
    return row if row["state"] == "sent" else None
