"""Pulled mail end to end for the graph and pop3 kinds and for XOAUTH2: a gateway with [[source]] tables,
the Graph EMULATOR (tests/sources/graph_emulator.py, not Microsoft's service) or a real Dovecot, tickets in
the store, messages moved by outcome, and nothing imported twice across restarts, throttling and failed moves.
"""
from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest

from tests.sources.conftest import message, wait_for
from tests.sources.dovecot import Dovecot
from tests.sources.graph_emulator import GraphEmulator

USER = "support@example.test"
PASSWORD = "s3cret-e2e"


@pytest.fixture
def emu() -> Iterator[GraphEmulator]:
    with GraphEmulator() as e:
        e.app_user = USER
        yield e


def secret(tmp_path: Path, name: str, value: str) -> str:
    p = tmp_path / name
    p.write_text(value + "\n")
    os.chmod(p, 0o600)
    return str(p)


def graph_table(emu: GraphEmulator, tmp_path: Path, **over: Any) -> dict[str, Any]:
    t: dict[str, Any] = {"name": "m365", "kind": "graph", "mailbox": USER, "tenant": emu.tenant, "user": USER,
                         "endpoint": emu.base, "authority": emu.base, "oauth_client_id": emu.client_id,
                         "oauth_client_secret_file": secret(tmp_path, "graph-secret", emu.client_secret),
                         "poll_interval": "1s", "timeout": "10s"}
    t.update(over)
    return t


def loop_message(i: int) -> bytes:
    """31 Received fields: over [smtp] max_received_headers (30), so the intake refuses it -> quarantined."""
    hops = "".join(f"Received: from hop{n}.test by hop{n + 1}.test; Sun, 22 Nov 2026 10:00:00 +0000\r\n"
                   for n in range(31))
    return message(i, extra=hops)


async def counts(gw: Any, name: str) -> dict[str, int]:
    return (await gw.store.source_counts()).get(name, {})


async def metric(port: int, name: str, labels: str) -> float | None:
    """One sample of the gateway's /metrics (asynchronously: the gateway runs on this test's loop)."""
    async with httpx.AsyncClient() as c:
        text = (await c.get(f"http://127.0.0.1:{port}/metrics", timeout=5)).text
    m = re.search(rf"^{re.escape(name)}\{{{re.escape(labels)}\}} (\S+)$", text, re.M)
    return float(m.group(1)) if m else None


async def test_graph_mailbox_to_tickets_and_folders_by_outcome(start_gateway: Any, emu: GraphEmulator,
                                                               tmp_path: Path) -> None:
    emu.deliver(USER, message(1), is_read=True)      # read by someone in Outlook: still ours to import
    emu.deliver(USER, message(2, extra="Auto-Submitted: auto-replied\r\n"))
    emu.deliver(USER, loop_message(3))
    gw = await start_gateway(source=[graph_table(emu, tmp_path)])
    await wait_for(lambda: _settled(gw, "m365", 3), what="3 settled")
    names = {f.name: f.id for f in emu.mailbox(USER).folders.values()}
    assert emu.folder_messages(USER, "inbox") == []
    assert len(emu.folder_messages(USER, names["Processed"])) == 1
    assert len(emu.folder_messages(USER, names["Excluded"])) == 1
    assert len(emu.folder_messages(USER, names["Failed"])) == 1
    assert [t["subject"] for t in await gw.store.tickets_list()] == ["Printer 1"]
    expiry = await metric(gw.metrics_port, "ticketmx_source_token_expiry_timestamp_seconds", 'source="m365"')
    assert expiry is not None and expiry > time.time() + 3000
    assert await metric(gw.metrics_port, "ticketmx_source_fetched_total", 'source="m365"') == 3.0


async def test_graph_exactly_once_across_failed_moves_restart_and_throttling(start_gateway: Any, emu: GraphEmulator,
                                                                             tmp_path: Path) -> None:
    n = 40
    for i in range(n):
        emu.deliver(USER, message(i), received=1_790_000_000 + i)
    emu.fail_moves = True          # committed to our spool, but the server cannot move anything
    table = graph_table(emu, tmp_path, stop_after_failures=0)
    gw1 = await start_gateway(source=[table])
    await wait_for(lambda: _spooled(gw1, "m365", n), what="all spooled")
    await gw1.gw.stop(grace=1.0)
    assert len(emu.folder_messages(USER, "inbox")) == n          # nothing moved yet
    fetched_before = sum(1 for _, p in emu.requests if p.endswith("/$value"))
    assert fetched_before == n

    emu.fail_moves = False
    emu.throttle(4, retry_after=1)  # 429 TooManyRequests with Retry-After on the next requests
    gw2 = await start_gateway(source=[table])
    await wait_for(lambda: _settled(gw2, "m365", n), timeout=60, what="all settled after the restart")
    processed = {f.name: f.id for f in emu.mailbox(USER).folders.values()}["Processed"]
    assert len(emu.folder_messages(USER, processed)) == n and emu.folder_messages(USER, "inbox") == []
    assert sum(1 for _, p in emu.requests if p.endswith("/$value")) == n   # not one message fetched twice
    assert emu.throttled == 4
    subjects = [t["subject"] for t in await gw2.store.tickets_list()]
    assert sorted(subjects) == sorted(f"Printer {i}" for i in range(n))
    new = emu.deliver(USER, message(99))
    await wait_for(lambda: _settled(gw2, "m365", n + 1), timeout=30, what="new mail after the restart")
    assert any(m.immutable_id == new for m in emu.folder_messages(USER, processed))


async def test_graph_revoked_refresh_token_shows_in_metrics(start_gateway: Any, emu: GraphEmulator,
                                                            tmp_path: Path) -> None:
    rt = secret(tmp_path, "graph-refresh", emu.issue_refresh_token(USER))
    table = graph_table(emu, tmp_path, oauth_refresh_token_file=rt, stop_after_failures=0)
    del table["oauth_client_secret_file"]
    emu.deliver(USER, message(1))
    gw = await start_gateway(source=[table])
    await wait_for(lambda: _settled(gw, "m365", 1), what="settled with the delegated token")
    assert Path(rt).read_text().strip() in emu.refresh_tokens      # the rotated one was saved
    emu.refresh_tokens.clear()
    emu.expire_tokens()
    emu.deliver(USER, message(2))

    async def failures() -> bool:
        v = await metric(gw.metrics_port, "ticketmx_source_token_refresh_failures_total", 'source="m365"')
        return v is not None and v >= 1
    await wait_for(failures, timeout=20, what="a refresh failure counted")
    assert await metric(gw.metrics_port, "ticketmx_source_errors_total", 'kind="token",source="m365"')


def pop3_table(d: Dovecot, tmp_path: Path, **over: Any) -> dict[str, Any]:
    t: dict[str, Any] = {"name": "pop", "kind": "pop3", "mailbox": USER, "host": "127.0.0.1", "port": d.pop3s_port,
                         "tls": "implicit", "ca_file": str(d.ca_path), "username": USER,
                         "password_file": secret(tmp_path, "pop-password", PASSWORD), "poll_interval": "1s",
                         "timeout": "10s"}
    t.update(over)
    return t


@pytest.fixture
def dove(dove_root: Path) -> Iterator[Dovecot]:
    d = Dovecot(dove_root, users={USER: PASSWORD}).start()
    try:
        yield d
    finally:
        d.stop()


async def test_pop3_to_tickets_exactly_once_across_a_restart(start_gateway: Any, dove: Dovecot,
                                                             tmp_path: Path) -> None:
    for i in range(5):
        dove.deliver(USER, message(i), seen=(i == 0))
    gw1 = await start_gateway(source=[pop3_table(dove, tmp_path)])     # delete_after_import = false: left
    await wait_for(lambda: _settled(gw1, "pop", 5), what="5 settled")
    await gw1.gw.stop(grace=1.0)
    assert dove.count(USER) == 5
    for i in range(5, 8):
        dove.deliver(USER, message(i))
    gw2 = await start_gateway(source=[pop3_table(dove, tmp_path, delete_after_import=True)])
    await wait_for(lambda: _settled(gw2, "pop", 8), what="8 settled")
    subjects = sorted(t["subject"] for t in await gw2.store.tickets_list())
    assert subjects == sorted(f"Printer {i}" for i in range(8))
    # the three new ones are deleted at the QUIT after their settle; the five imported before stay (known keys
    # are never settled twice)
    await wait_for(lambda: dove.count(USER) == 5, what="the new ones deleted")


async def test_imap_and_pop3_xoauth2_against_dovecot_oauth2_passdb(start_gateway: Any, emu: GraphEmulator,
                                                                    dove_root: Path, tmp_path: Path) -> None:
    d = Dovecot(dove_root, users={USER: PASSWORD}, oauth2_introspection_url=f"{emu.base}/introspect").start()
    try:
        for i in range(3):
            d.deliver(USER, message(i))
        oauth = {"auth": "xoauth2", "oauth_token_url": emu.token_url, "oauth_client_id": emu.client_id,
                 "oauth_client_secret_file": secret(tmp_path, "oauth-secret", emu.client_secret),
                 "oauth_scope": "https://outlook.office365.com/.default"}
        imap = {"name": "imap-oauth", "kind": "imap", "mailbox": USER, "host": "127.0.0.1", "port": d.imaps_port,
                "tls": "implicit", "ca_file": str(d.ca_path), "username": USER, "poll_interval": "1s", **oauth}
        gw = await start_gateway(source=[imap])
        await wait_for(lambda: _settled(gw, "imap-oauth", 3), what="imap xoauth2 settled")
        await wait_for(lambda: d.count(USER) == 0 and d.count(USER, "Processed") == 3, what="moved to Processed")
        assert "method=XOAUTH2" in d.log()
        await gw.gw.stop(grace=1.0)
        for i in range(3, 5):
            d.deliver(USER, message(i))
        pop = pop3_table(d, tmp_path, name="pop-oauth", **oauth)
        del pop["password_file"]
        gw2 = await start_gateway(source=[pop])
        await wait_for(lambda: _settled(gw2, "pop-oauth", 2), what="pop3 xoauth2 settled")
        assert sorted(t["subject"] for t in await gw2.store.tickets_list()) == [f"Printer {i}" for i in range(5)]
    finally:
        d.stop()


async def _settled(gw: Any, name: str, n: int) -> bool:
    return (await counts(gw, name)).get("settled", 0) == n


async def _spooled(gw: Any, name: str, n: int) -> bool:
    return sum((await counts(gw, name)).values()) == n


async def test_authorized_draft_starts_on_reload_and_a_new_refresh_token_is_picked_up(
        start_gateway: Any, emu: GraphEmulator, tmp_path: Path) -> None:
    from tests.conftest import BASE_CONFIG, merge, toml_dump
    rt = tmp_path / "m365.refresh"               # not written yet: `source authorize` will
    table = graph_table(emu, tmp_path, status="draft", oauth_refresh_token_file=str(rt))
    del table["oauth_client_secret_file"]
    emu.deliver(USER, message(1))
    gw = await start_gateway(source=[table])
    store = {"store": {"url": gw.gw.cfg.store.url}}

    def reload(**over: Any) -> None:
        path = tmp_path / "reload.toml"
        path.write_text(toml_dump(merge(BASE_CONFIG, {**store, "source": [{**table, **over}]})))
        assert gw.gw.reload(str(path))

    rt.write_text(emu.issue_refresh_token(USER) + "\n")   # what `source authorize` does
    rt.chmod(0o600)
    reload(status="active")
    await wait_for(lambda: _settled(gw, "m365", 1), what="imported after the reload")
    rotated = rt.read_text().strip()
    reload(status="active")                               # the rotated token in the file: no restart needed
    emu.refresh_tokens.clear()                            # revoked; the admin authorizes again
    emu.expire_tokens()
    rt.write_text(emu.issue_refresh_token(USER) + "\n")
    assert rt.read_text().strip() != rotated
    reload(status="active")
    emu.deliver(USER, message(2))
    await wait_for(lambda: _settled(gw, "m365", 2), timeout=30, what="imported with the new refresh token")


async def test_graph_one_unreadable_message_does_not_block_the_others(start_gateway: Any, emu: GraphEmulator,
                                                                      tmp_path: Path) -> None:
    ids = [emu.deliver(USER, message(i), received=1_790_000_000 + i) for i in range(4)]
    emu.fail_values.add(ids[1])               # the server fails on this one's MIME, every time
    gw = await start_gateway(source=[graph_table(emu, tmp_path, stop_after_failures=0)])
    await wait_for(lambda: _settled(gw, "m365", 3), what="the other three settled")
    assert [m.immutable_id for m in emu.folder_messages(USER, "inbox")] == [ids[1]]
    assert await metric(gw.metrics_port, "ticketmx_source_errors_total", 'kind="fetch",source="m365"')
    emu.fail_values.clear()                   # the server recovers: imported then, once
    await wait_for(lambda: _settled(gw, "m365", 4), what="the fourth settled")
    assert sorted(t["subject"] for t in await gw.store.tickets_list()) == [f"Printer {i}" for i in range(4)]
