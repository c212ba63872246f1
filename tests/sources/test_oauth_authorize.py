"""RFC 8628 device grant and RFC 8252 loopback + PKCE against the Graph EMULATOR's identity endpoints."""
from __future__ import annotations

import asyncio
import re
import threading
from typing import Iterator

import httpx
import pytest

from gateway.config.relay import OAuthConfig
from gateway.runtime.oauth import OAuthError
from gateway.runtime.oauth_authorize import (delegated_scope, device_grant, endpoints_for, loopback_grant,
                                             pkce_pair)

from tests.sources.graph_emulator import DEVICE_GRANT, GraphEmulator

USER = "admin@contoso.test"


@pytest.fixture
def emu() -> Iterator[GraphEmulator]:
    with GraphEmulator() as e:
        yield e


def cfg(emu: GraphEmulator, secret: str = "") -> OAuthConfig:
    return OAuthConfig(token_url=emu.token_url, client_id=emu.client_id, client_secret=secret,
                       scope="https://graph.microsoft.com/Mail.ReadWrite")


def test_endpoints_and_scope() -> None:
    e = endpoints_for("https://login.microsoftonline.us/t1/oauth2/v2.0/token")
    assert e.device_url == "https://login.microsoftonline.us/t1/oauth2/v2.0/devicecode"
    assert e.authorize_url == "https://login.microsoftonline.us/t1/oauth2/v2.0/authorize"
    assert endpoints_for("https://oauth2.googleapis.com/token").device_url == "https://oauth2.googleapis.com/device/code"
    assert endpoints_for("https://idp.example/token").device_url is None
    assert delegated_scope("https://outlook.office365.com/IMAP.AccessAsUser.All",
                           "https://login.microsoftonline.com/t/oauth2/v2.0/token").endswith(" offline_access")
    assert delegated_scope("https://mail.google.com/", "https://oauth2.googleapis.com/token") == "https://mail.google.com/"
    v, c = pkce_pair()
    assert 43 <= len(v) <= 128 and re.fullmatch(r"[A-Za-z0-9_-]+", v) and len(c) == 43


async def test_device_grant_polls_with_interval_and_slow_down(emu: GraphEmulator) -> None:
    c = cfg(emu)
    shown: list[str] = []
    waits: list[float] = []
    emu.slow_down_next = 1

    async def sleep(s: float) -> None:
        waits.append(s)
        if len(waits) == 3:   # the person approves after the third poll's wait
            code = re.search(r"enter the code (\w+)", shown[0]).group(1)  # type: ignore[union-attr]
            emu.approve_device(code, USER)
        await asyncio.sleep(0.01)

    scope = delegated_scope(c.scope, c.token_url)
    ans = await device_grant(c, endpoints_for(c.token_url).device_url or "", scope, shown.append, sleep=sleep)
    assert f"{emu.base}/devicelogin" in shown[0]
    assert waits == [1.0, 6.0, 6.0]        # server's interval, then +5 s after slow_down, kept
    polls = [r for r in emu.token_requests if r.get("grant_type") == DEVICE_GRANT]
    assert len(polls) == 3
    assert ans["refresh_token"] in emu.refresh_tokens and emu.refresh_tokens[ans["refresh_token"]] == USER


async def test_device_grant_denied_and_expired(emu: GraphEmulator) -> None:
    c = cfg(emu)
    shown: list[str] = []

    async def deny(s: float) -> None:
        emu.approve_device(re.search(r"code (\w+)", shown[0]).group(1), USER, deny=True)  # type: ignore[union-attr]

    with pytest.raises(OAuthError, match="declined"):
        await device_grant(c, f"{emu.base}/{emu.tenant}/oauth2/v2.0/devicecode", "x offline_access", shown.append,
                           sleep=deny)
    now = [0.0]

    async def tick(s: float) -> None:
        now[0] += s
    with pytest.raises(OAuthError, match="expired"):
        await device_grant(c, f"{emu.base}/{emu.tenant}/oauth2/v2.0/devicecode", "x", lambda s: None,
                           sleep=tick, clock=lambda: now[0], max_wait=3)
    bad = OAuthConfig(token_url=emu.token_url, client_id="not-registered")
    with pytest.raises(OAuthError, match=r"HTTP 400 \(error=unauthorized_client\)"):
        await device_grant(bad, f"{emu.base}/{emu.tenant}/oauth2/v2.0/devicecode", "x", lambda s: None)


async def test_loopback_pkce(emu: GraphEmulator) -> None:
    c = cfg(emu)
    urls: list[str] = []
    got = threading.Event()

    def prompt(text: str) -> None:
        urls.append(text.splitlines()[-1])
        got.set()

    async def browser() -> None:
        while not got.is_set():
            await asyncio.sleep(0.01)
        async with httpx.AsyncClient(follow_redirects=True) as b:   # the person's browser
            page = await b.get(urls[0])
            assert page.status_code == 200 and "close this window" in page.text

    task = asyncio.create_task(browser())
    ans = await loopback_grant(c, endpoints_for(c.token_url).authorize_url or "", "x offline_access", prompt,
                               login_hint=USER, timeout=20)
    await task
    assert "code_challenge_method=S256" in urls[0] and "redirect_uri=http%3A%2F%2F127.0.0.1%3A" in urls[0]
    assert emu.refresh_tokens[ans["refresh_token"]] == USER
    exchange = [r for r in emu.token_requests if r.get("grant_type") == "authorization_code"][0]
    assert len(exchange["code_verifier"]) >= 43


async def test_loopback_ignores_a_forged_state_and_times_out(emu: GraphEmulator) -> None:
    c = cfg(emu)
    port: list[int] = []

    def prompt(text: str) -> None:
        port.append(int(re.search(r"127\.0\.0\.1:(\d+)/", text).group(1)))  # type: ignore[union-attr]

    async def attacker() -> None:
        while not port:
            await asyncio.sleep(0.01)
        async with httpx.AsyncClient() as b:
            r = await b.get(f"http://127.0.0.1:{port[0]}/?code=stolen&state=forged")
            assert r.status_code == 200

    task = asyncio.create_task(attacker())
    with pytest.raises(OAuthError, match="no redirect came back"):
        await loopback_grant(c, f"{emu.base}/{emu.tenant}/oauth2/v2.0/authorize", "x", prompt, timeout=2)
    await task
    assert not [r for r in emu.token_requests if r.get("grant_type") == "authorization_code"]
