"""Failures against a real Dovecot: one bad message does not block the rest; stop_after_failures pauses
only that source and tells the admin through the relay (a real SMTP sink); SIGHUP-style reload adds,
changes and removes sources; UIDVALIDITY change; `since`."""
from __future__ import annotations

import email
import email.policy
import os
from pathlib import Path
from typing import Any

import httpx

from ..smarthost import sink  # noqa: F401 - the fixture
from .conftest import USER, message, source_table, wait_for
from .dovecot import Dovecot


def _relay(port: int) -> dict[str, Any]:
    return {"relay": {"from": "Support <support@example.test>", "retry": "1s, 2s*3",
                      "smarthost": [{"name": "sink", "host": "127.0.0.1", "port": port, "tls": "none"}]}}


async def test_stop_after_failures_pauses_only_that_source_and_tells_the_admin(start_gateway: Any, dovecot: Dovecot,
                                                                               tmp_path: Path, sink: Any) -> None:
    """Three rounds of: the bad source fails until it pauses itself while mail delivered meanwhile reaches the
    good one, then it is resumed. (This test once failed now and then: the cause was the fixture's Maildirs
    under pytest's basetemp, made unreadable to Dovecot's mail user by another pytest session; see dovecot.py.)"""
    bad_pw = tmp_path / "bad-password"
    bad_pw.write_text("wrong\n")
    os.chmod(bad_pw, 0o600)
    good = source_table(dovecot, tmp_path, name="good")
    bad = source_table(dovecot, tmp_path, name="bad", password_file=str(bad_pw), stop_after_failures=3,
                       max_tries=100, folder="Other")
    gw = await start_gateway(source=[good, bad], pipeline={"processes": 0, "poll_interval": "100ms",
                                                           "admin_address": "ops@example.test"}, **_relay(sink.port))
    rounds = 3
    for r in range(rounds):
        if r:
            await gw.gw.sources.resume("bad")
            assert not (await gw.store.source_state_get())["bad"]["paused"]
        dovecot.deliver(USER, message(r))  # while the bad one fails: the good source goes on
        await wait_for(lambda: dovecot.count(USER, "Processed") == r + 1, timeout=20,
                       what=f"round {r}: the good source fetching while the bad one fails")
        await wait_for(_paused(gw, "bad"), timeout=30, what=f"round {r}: the bad source paused")
        state = await gw.store.source_state_get()
        assert state["bad"]["failures"] >= 3 and state["bad"]["last_error_kind"] == "auth"
        assert not state.get("good", {}).get("paused") and not gw.gw.sources.runners["good"].paused
        assert not gw.gw.sources.runners["good"].task.done()
    await wait_for(lambda: any(m[1] == ["ops@example.test"] for m in sink.messages), timeout=30,
                   what="the admin notification")
    notes = [email.message_from_bytes(m[2], policy=email.policy.default) for m in sink.messages
             if m[1] == ["ops@example.test"]]
    assert len(notes) == 1  # one an hour per source, however often it pauses
    assert "source bad paused" in notes[0]["Subject"]
    assert "ticketmx source resume bad" in notes[0].get_body(("plain",)).get_content()
    async with httpx.AsyncClient() as c:  # the metrics server runs on this loop
        text = (await c.get(f"http://127.0.0.1:{gw.metrics_port}/metrics")).text
    assert 'ticketmx_source_paused{source="bad"} 1.0' in text
    assert 'ticketmx_source_paused{source="good"} 0.0' in text
    assert 'ticketmx_source_errors_total{kind="auth",source="bad"}' in text
    assert f'ticketmx_source_fetched_total{{source="good"}} {float(rounds)}' in text
    assert len(await gw.store.tickets_list()) == rounds


def _paused(gw: Any, name: str) -> Any:
    async def check() -> bool:
        return bool((await gw.store.source_state_get()).get(name, {}).get("paused"))
    return check


async def test_a_refused_message_is_quarantined_to_the_failure_folder_and_the_rest_goes_on(
        start_gateway: Any, dovecot: Dovecot, tmp_path: Path) -> None:
    dovecot.deliver(USER, message(1))
    # two From fields: what SMTP refuses at DATA (the header section check); pulled mail is quarantined
    dovecot.deliver(USER, b"From: a@customer.test\r\nFrom: b@customer.test\r\nSubject: two\r\n\r\nx\r\n")
    dovecot.deliver(USER, message(3))
    gw = await start_gateway(source=[source_table(dovecot, tmp_path)])
    await wait_for(lambda: dovecot.count(USER) == 0, what="the inbox emptied")
    assert dovecot.count(USER, "Failed") == 1 and dovecot.count(USER, "Processed") == 2
    q = await gw.store.spool_list("quarantined")
    assert len(q) == 1 and q[0].reason.startswith("refused at intake") and q[0].auth["source"]["name"] == "inbox"


async def test_reload_adds_changes_and_removes_sources(start_gateway: Any, dovecot: Dovecot, tmp_path: Path) -> None:
    from gateway.config.load import build_config

    from ..conftest import BASE_CONFIG, merge
    gw = await start_gateway()
    assert gw.gw.sources is None
    base = merge(BASE_CONFIG, {"store": {"url": f"sqlite:///{tmp_path}/ticketmx.db"}})

    async def reload(*sources: dict[str, Any]) -> None:
        new = build_config({**base, "source": list(sources)} if sources else base, "test")
        import gateway.app as app_mod
        orig = app_mod.load_config
        app_mod.load_config = lambda path: new  # the file SIGHUP would read
        try:
            assert gw.gw.reload(None)
        finally:
            app_mod.load_config = orig
        await gw.gw._sources_swap

    dovecot.deliver(USER, message(1))
    await reload(source_table(dovecot, tmp_path, success_folder="First"))
    await wait_for(lambda: dovecot.count(USER, "First") == 1, what="the added source fetching")
    await reload(source_table(dovecot, tmp_path, success_folder="Second"))
    dovecot.deliver(USER, message(2))
    await wait_for(lambda: dovecot.count(USER, "Second") == 1, what="the changed source fetching")
    await reload()
    assert gw.gw.sources is not None and not gw.gw.sources.runners
    dovecot.deliver(USER, message(3))
    import asyncio
    await asyncio.sleep(2.0)
    assert dovecot.count(USER) == 1  # removed: nothing fetched


async def test_uidvalidity_change_imports_nothing_twice_and_since_is_honoured(
        start_gateway: Any, dovecot: Dovecot, tmp_path: Path) -> None:
    import time
    old = time.time() - 400 * 86400
    dovecot.deliver(USER, message(0, subject="Too old"), mtime=old)  # Maildir mtime = INTERNALDATE
    dovecot.deliver(USER, message(1))
    cutoff = time.strftime("%Y-%m-%d", time.gmtime(time.time() - 30 * 86400))
    gw = await start_gateway(source=[source_table(dovecot, tmp_path, success_folder="", since=cutoff)])
    await wait_for(lambda: _settled(gw, 1), what="the new message settled (left, \\Seen)")
    assert dovecot.count(USER) == 2 and sorted(dovecot.flags(USER)) == ["", "S"]  # the old one untouched
    first = dovecot.uidvalidity(USER)
    await gw.gw.sources.close()
    gw.gw.sources = None
    # a new UIDVALIDITY (the server rebuilt its index, doveadm mailbox update): every message has a new key
    dovecot.set_uidvalidity(USER, first + 1000)
    dovecot.deliver(USER, message(2))
    await gw.gw._start_sources(gw.gw.cfg)
    await wait_for(lambda: _settled(gw, 3), what="the new message and the alias of the one already imported")
    subjects = sorted(t["subject"] for t in await gw.store.tickets_list())
    assert subjects == ["Printer 1", "Printer 2"]  # nothing twice (matched by SHA-256), the old one never
    assert len(await gw.store.spool_list()) == 2
    rows = await gw.store.query("SELECT key, spool_id FROM source_messages WHERE source='inbox' ORDER BY created_at")
    keys = [r[0] for r in rows]
    assert [k.split(":")[1] for k in keys] == [str(first), str(first + 1000), str(first + 1000)]
    assert rows[0][1] == rows[1][1]  # the new key of message 1 is recorded as one more key of its first import
    assert sorted(dovecot.flags(USER)) == ["", "S", "S"]


async def _settled(gw: Any, n: int, source: str = "inbox") -> bool:
    c = (await gw.store.source_counts()).get(source, {})
    return c.get("settled", 0) >= n and not c.get("spooled")


async def test_a_round_that_raises_does_not_end_the_source_task(start_gateway: Any, dovecot: Dovecot,
                                                                tmp_path: Path) -> None:
    """A kind that raises something unexpected (here: the IMAP kind made to, against the real Dovecot:
    listing raises, then close() raises while the manager disconnects): logged, the task goes on and the
    source fetches at its next round. Before, the exception ended the source's task silently."""
    from gateway.config.load import build_config
    from gateway.ingress.sources.imap import ImapSource
    from gateway.ingress.sources.manager import SourceManager

    from ..conftest import BASE_CONFIG, merge

    class Raises(ImapSource):
        armed = False
        raised = 0

        async def keys(self) -> list[str]:
            if Raises.armed:
                raise RuntimeError("listing failed")
            return await super().keys()

        async def close(self) -> None:
            await super().close()
            if Raises.armed:
                Raises.armed = False
                Raises.raised += 1
                raise RuntimeError("close failed")

    gw = await start_gateway()
    cfg = build_config(merge(BASE_CONFIG, {"store": {"url": f"sqlite:///{tmp_path}/ticketmx.db"},
                                           "source": [source_table(dovecot, tmp_path, idle=False)]}), "test")
    mgr = SourceManager(cfg, gw.store, gw.gw.spool, factory=lambda sc: Raises(sc))
    await mgr.start()
    try:
        dovecot.deliver(USER, message(1))
        await wait_for(lambda: dovecot.count(USER, "Processed") == 1, what="the first message")
        Raises.armed = True
        await wait_for(lambda: Raises.raised == 1, what="close() raising")
        dovecot.deliver(USER, message(2))
        await wait_for(lambda: dovecot.count(USER, "Processed") == 2, timeout=30, what="fetching afterwards")
        assert not mgr.runners["inbox"].task.done()
        assert (await gw.store.source_state_get("inbox"))["inbox"]["last_error_kind"] == "internal"
    finally:
        await mgr.close()
