"""The Graph source against the Graph EMULATOR (tests/sources/graph_emulator.py; not Microsoft's service).

Real HTTP on 127.0.0.1 both ways: the source's httpx client, the relay's token client, the emulator's
token endpoint and mail API.
"""
from __future__ import annotations

import os
import stat
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest

from gateway.config.relay import OAuthConfig
from gateway.config.sources import SourceConfig
from gateway.ingress.sources.base import SourceError
from gateway.ingress.sources.graph import GraphSource

from tests.conftest import simple_message
from tests.sources.graph_emulator import GraphEmulator

USER = "support@contoso.test"


def Cfg(oauth: OAuthConfig, endpoint: str, **kw: Any) -> SourceConfig:
    """A graph ``SourceConfig`` as parse_sources makes it (the parser itself is tested in test_sources_e2e)."""
    base: dict[str, Any] = dict(name="m365", kind="graph", mailbox="support@example.test", auth="xoauth2", user=USER,
                                folder="inbox")
    return SourceConfig(oauth=oauth, endpoint=endpoint, **{**base, **kw})


@pytest.fixture
def emu() -> Iterator[GraphEmulator]:
    with GraphEmulator() as e:
        yield e


def app_cfg(emu: GraphEmulator, **kw: Any) -> Cfg:
    oauth = OAuthConfig(token_url=emu.token_url, client_id=emu.client_id, client_secret=emu.client_secret,
                        scope="https://graph.microsoft.com/.default")
    return Cfg(oauth=oauth, endpoint=emu.base, **kw)


async def test_list_fetch_move_keeps_immutable_key(emu: GraphEmulator) -> None:
    ids = [emu.deliver(USER, simple_message(subject=f"m{i}", message_id=f"m{i}@x.test"), received=1_790_000_000 + i)
           for i in range(5)]
    src = GraphSource(app_cfg(emu))
    await src.connect()
    try:
        keys = await src.keys()
        assert keys == [f"graph:{i}" for i in ids]          # oldest first, immutable ids
        got = await src.fetch(keys[0])
        assert got.raw == simple_message(subject="m0", message_id="m0@x.test")
        assert got.received == 1_790_000_000
        await src.settle(keys[0], "ticket")
        await src.settle(keys[1], "quarantined")
        await src.settle(keys[2], "suppressed")
        assert [m.immutable_id for m in emu.folder_messages(USER, "inbox")] == ids[3:]
        names = {f.name: f.id for f in emu.mailbox(USER).folders.values()}
        assert {"Processed", "Failed", "Excluded"} <= set(names)   # created at first use
        assert [m.immutable_id for m in emu.folder_messages(USER, names["Processed"])] == [ids[0]]
        assert [m.immutable_id for m in emu.folder_messages(USER, names["Failed"])] == [ids[1]]
        assert [m.immutable_id for m in emu.folder_messages(USER, names["Excluded"])] == [ids[2]]
        # the moved message is still reachable under its key: a settle repeated after a crash is harmless
        await src.settle(keys[0], "ticket")
        assert (await src.fetch(keys[0])).raw.startswith(b"From:")
        assert await src.keys() == [f"graph:{i}" for i in ids[3:]]
    finally:
        await src.close()


async def test_emulator_rest_ids_change_on_move_without_immutable_prefer(emu: GraphEmulator) -> None:
    """The behaviour the Prefer header protects against, shown on the emulator itself."""
    emu.deliver(USER, simple_message())
    async with httpx.AsyncClient(base_url=emu.base) as c:
        tok = (await c.post(emu.token_url, data={"grant_type": "client_credentials", "client_id": emu.client_id,
                                                  "client_secret": emu.client_secret,
                                                  "scope": "https://graph.microsoft.com/.default"})).json()
        h = {"Authorization": f"Bearer {tok['access_token']}"}
        lst = (await c.get(f"/v1.0/users/{USER}/mailFolders/inbox/messages", headers=h)).json()
        rest_id = lst["value"][0]["id"]
        moved = await c.post(f"/v1.0/users/{USER}/messages/{rest_id}/move", headers=h,
                             json={"destinationId": "archive"})
        assert moved.status_code == 201 and moved.json()["id"] != rest_id
        gone = await c.get(f"/v1.0/users/{USER}/messages/{rest_id}", headers=h)
        assert gone.status_code == 404 and gone.json()["error"]["code"] == "ErrorItemNotFound"
        hi = {**h, "Prefer": 'IdType="ImmutableId"'}
        imm = (await c.get(f"/v1.0/users/{USER}/mailFolders/archive/messages", headers=hi)).json()["value"][0]["id"]
        again = await c.post(f"/v1.0/users/{USER}/messages/{imm}/move", headers=hi, json={"destinationId": "inbox"})
        assert again.json()["id"] == imm


async def test_since_filters_old_mail(emu: GraphEmulator) -> None:
    emu.deliver(USER, simple_message(subject="old"), received=since_ts("2025-12-31T23:59:59"))
    new = emu.deliver(USER, simple_message(subject="new"), received=since_ts("2026-01-01T00:00:00"))
    src = GraphSource(app_cfg(emu, since="2026-01-01"))
    try:
        assert await src.keys() == [f"graph:{new}"]
    finally:
        await src.close()


def since_ts(value: str) -> float:
    from datetime import datetime, timezone
    return datetime.fromisoformat(value).replace(tzinfo=timezone.utc).timestamp()


async def test_paging_follows_next_link(emu: GraphEmulator) -> None:
    ids = [emu.deliver(USER, simple_message(subject=f"s{i}"), received=1_790_000_000 + i) for i in range(450)]
    src = GraphSource(app_cfg(emu))
    try:
        assert await src.keys() == [f"graph:{i}" for i in ids]
        lists = [p for m, p in emu.requests if p.endswith("/inbox/messages")]
        assert len(lists) == 3   # 200 + 200 + 50
    finally:
        await src.close()


async def test_throttling_429_and_503_honour_retry_after(emu: GraphEmulator) -> None:
    emu.deliver(USER, simple_message())
    src = GraphSource(app_cfg(emu))
    try:
        await src.connect()
        emu.throttle(2, retry_after=1)
        t0 = time.monotonic()
        keys = await src.keys()
        assert len(keys) == 1 and time.monotonic() - t0 >= 2.0 and src.throttled == 2
        emu.throttle(1, retry_after=1, status=503)
        assert (await src.fetch(keys[0])).raw.startswith(b"From:")
        assert src.throttled == 3
        emu.throttle(10, retry_after=0)
        with pytest.raises(SourceError) as err:   # max_tries answers in a row: the manager decides what next
            await src.keys()
        assert err.value.kind == "throttled" and "TooManyRequests" in str(err.value)
    finally:
        await src.close()


async def test_expired_token_is_renewed_and_rotated_refresh_token_saved(emu: GraphEmulator, tmp_path: Path) -> None:
    emu.deliver(USER, simple_message())
    rt_file = tmp_path / "refresh"
    first = emu.issue_refresh_token(USER)
    rt_file.write_text(first + "\n")
    rt_file.chmod(0o600)
    oauth = OAuthConfig(token_url=emu.token_url, client_id=emu.client_id, refresh_token=first,
                        refresh_token_file=str(rt_file), scope="https://graph.microsoft.com/Mail.ReadWrite offline_access")
    src = GraphSource(Cfg(oauth=oauth, endpoint=emu.base))
    try:
        assert len(await src.keys()) == 1
        second = rt_file.read_text().strip()
        assert second != first and second in emu.refresh_tokens
        assert stat.S_IMODE(os.stat(rt_file).st_mode) == 0o600
        assert src.token.expires_at > time.time() + 3000
        emu.expire_tokens()
        assert len(await src.keys()) == 1       # 401 -> new token -> retried
        assert rt_file.read_text().strip() not in (first, second)
        assert src.token.requests == 2
        emu.refresh_tokens.clear()               # revoked: a clear error, counted
        emu.expire_tokens()
        with pytest.raises(SourceError) as err:
            await src.keys()
        assert err.value.kind == "token" and "invalid_grant" in str(err.value)
        assert src.token.failures == 1
    finally:
        await src.close()


async def test_wrong_user_and_missing_folder_are_clear(emu: GraphEmulator) -> None:
    src = GraphSource(app_cfg(emu, folder="Nope"))
    try:
        with pytest.raises(SourceError) as err:
            await src.connect()
        assert err.value.kind == "folder" and "'Nope' not found" in str(err.value)
    finally:
        await src.close()


async def test_next_link_to_another_host_is_not_followed(emu: GraphEmulator) -> None:
    src = GraphSource(app_cfg(emu))
    try:
        with pytest.raises(SourceError) as err:
            await src._json("GET", "https://evil.test/v1.0/steal")
        assert "another host" in str(err.value)
    finally:
        await src.close()


async def test_wait_for_new_returns_on_delta(emu: GraphEmulator) -> None:
    emu.deliver(USER, simple_message(subject="before"))
    src = GraphSource(app_cfg(emu))
    src.delta_interval = 0.2
    try:
        t0 = time.monotonic()
        await src.wait_for_new(1.0)        # nothing new: the whole timeout
        assert time.monotonic() - t0 >= 0.95
        await src.settle((await src.keys())[0], "ticket")   # a move out is not "new"
        t0 = time.monotonic()
        await src.wait_for_new(0.6)
        assert time.monotonic() - t0 >= 0.55
        emu.deliver(USER, simple_message(subject="after"))
        t0 = time.monotonic()
        await src.wait_for_new(30)
        assert time.monotonic() - t0 < 2
    finally:
        await src.close()


async def test_step_trace_masks_secrets(emu: GraphEmulator) -> None:
    emu.deliver(USER, simple_message())
    src = GraphSource(app_cfg(emu, exclusion_folder=""))
    try:
        steps = await src.test()
    finally:
        await src.close()
    text = "\n".join(f"{s.name} {s.ok} {s.detail}" for s in steps)
    assert [s.name for s in steps] == ["endpoint", "dns", "tcp", "token", "folder", "list", "success_folder",
                                       "failure_folder", "exclusion_folder"]
    assert all(s.ok for s in steps), text
    assert "1 messages, 1 unread" in text and "'Processed' missing: created at first use" in text
    assert emu.client_secret not in text
    assert not any(tok in text for tok in emu.tokens)
    bad = GraphSource(Cfg(oauth=OAuthConfig(token_url=emu.token_url, client_id=emu.client_id,
                                            client_secret="wrong-secret-value", scope="x/.default"),
                          endpoint=emu.base))
    try:
        steps = await bad.test()
    finally:
        await bad.close()
    assert steps[-1].name == "token" and not steps[-1].ok
    assert "invalid_client" in steps[-1].detail and "wrong-secret-value" not in steps[-1].detail


async def test_prefetch_overlaps_round_trips_and_skips_known_keys(emu: GraphEmulator) -> None:
    ids = [emu.deliver(USER, simple_message(subject=f"f{i}"), received=1_790_000_000 + i) for i in range(9)]
    src = GraphSource(app_cfg(emu))
    try:
        keys = await src.keys()
        emu.latency = 0.2
        new = keys[1:]                      # keys[0] is known: never downloaded
        src.prefetch(new)
        t0 = time.monotonic()
        got = [await src.fetch(k) for k in new]
        took = time.monotonic() - t0
        assert [g.raw for g in got] == [simple_message(subject=f"f{i}") for i in range(1, 9)]
        assert took < 0.2 * 8 * 0.6, took    # 8 sequential round trips would take 1.6 s
        values = [p for _, p in emu.requests if p.endswith("/$value")]
        assert len(values) == 8 and not any(ids[0] in p for p in values)
    finally:
        await src.close()


async def test_https_endpoint_verified_with_ca_file_and_refused_without(tmp_path: Path) -> None:
    with GraphEmulator(tls_dir=str(tmp_path)) as emu:
        emu.deliver(USER, simple_message())
        oauth = OAuthConfig(token_url=emu.token_url, client_id=emu.client_id, client_secret=emu.client_secret,
                            scope="https://graph.microsoft.com/.default", ca_file=emu.ca_file)
        src = GraphSource(Cfg(oauth=oauth, endpoint=emu.base, ca_file=emu.ca_file))
        try:
            steps = await src.test()
            assert len(await src.keys()) == 1
        finally:
            await src.close()
        tls = [s for s in steps if s.name == "tls"]
        assert len(tls) == 1 and tls[0].ok and "SAN=127.0.0.1" in tls[0].detail and "TLSv1.3" in tls[0].detail
        assert all(s.ok for s in steps)
        untrusted = GraphSource(Cfg(oauth=replace(oauth, ca_file=None), endpoint=emu.base))
        try:
            steps = await untrusted.test()
        finally:
            await untrusted.close()
        assert steps[-1].name == "tls" and not steps[-1].ok and "CERTIFICATE_VERIFY_FAILED" in steps[-1].detail
