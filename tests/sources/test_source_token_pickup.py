"""A source's token provider takes a refresh token a new authorisation wrote to its file while it ran
(``ticketmx source authorize`` or the web UI, often another process), and its own write of a rotated
token never replaces such a new one. Against the Graph EMULATOR's token endpoint (rotating refresh tokens)."""
from __future__ import annotations

import asyncio
import os
from dataclasses import replace
from pathlib import Path
from typing import Iterator

import pytest

from gateway.config.relay import OAuthConfig
from gateway.ingress.sources.oauth import SourceTokens
from gateway.runtime.oauth import OAuthError, write_secret
from tests.sources.graph_emulator import GraphEmulator

USER = "support@example.test"


@pytest.fixture
def emu() -> Iterator[GraphEmulator]:
    with GraphEmulator() as e:
        yield e


def cfg(emu: GraphEmulator, path: Path, refresh: str) -> OAuthConfig:
    return OAuthConfig(token_url=emu.token_url, client_id=emu.client_id, scope="x offline_access",
                       refresh_token=refresh, refresh_token_file=str(path))


def sent(emu: GraphEmulator) -> list[str]:
    return [t["refresh_token"] for t in emu.token_requests if t.get("grant_type") == "refresh_token"]


async def test_a_new_token_in_the_file_is_used_at_the_next_token_request(emu: GraphEmulator, tmp_path: Path) -> None:
    path = tmp_path / "rt"
    first = emu.issue_refresh_token(USER)
    write_secret(str(path), first)
    tok = SourceTokens(cfg(emu, path, first))
    await tok.access_token()
    rotated = path.read_text().strip()
    assert rotated != first and tok.refresh_token == rotated          # rotated, written back
    again = emu.issue_refresh_token("other@example.test")              # the admin authorised anew
    write_secret(str(path), again)
    tok.invalidate()                                                   # the access token expired
    await tok.access_token()
    assert sent(emu)[-1] == again and emu.tokens[tok._token][1] == "other@example.test"   # type: ignore[index]


async def test_a_draft_without_a_file_then_authorised(emu: GraphEmulator, tmp_path: Path) -> None:
    path = tmp_path / "rt"
    tok = SourceTokens(replace(cfg(emu, path, ""), client_secret=""))
    with pytest.raises(OAuthError):                                   # no token yet: client credentials refused
        await tok.access_token()
    write_secret(str(path), emu.issue_refresh_token(USER))
    assert await tok.access_token()
    assert os.stat(path).st_mode & 0o777 == 0o600


async def test_a_rotation_in_flight_does_not_overwrite_a_new_authorisation(emu: GraphEmulator, tmp_path: Path) -> None:
    path = tmp_path / "rt"
    first = emu.issue_refresh_token(USER)
    write_secret(str(path), first)
    tok = SourceTokens(cfg(emu, path, first))
    emu.latency = 0.5
    req = asyncio.ensure_future(tok.access_token())
    await asyncio.sleep(0.2)                                           # the request with `first` is on its way
    new = emu.issue_refresh_token(USER)
    write_secret(str(path), new)
    await req
    assert path.read_text().strip() == new                             # the rotated one did not replace it
    emu.latency = 0.0
    tok.invalidate()
    await tok.access_token()
    assert sent(emu)[-1] == new
