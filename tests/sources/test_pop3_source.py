"""The POP3 source against a real Dovecot (tests/sources/dovecot.py) on 127.0.0.1: plain, STLS, implicit TLS,
USER/PASS and SASL XOAUTH2 (Dovecot's oauth2 passdb asking the Graph EMULATOR's introspection endpoint)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import pytest

from gateway.config.relay import OAuthConfig
from gateway.config.sources import SourceConfig
from gateway.ingress.sources.base import SourceError
from gateway.ingress.sources.pop3 import Pop3Source

from tests.conftest import simple_message
from tests.sources.dovecot import Dovecot
from tests.sources.graph_emulator import GraphEmulator

USER = "support@example.test"
PASSWORD = "s3cret-pop-PASSWORD"


def Cfg(host: str, port: int, **kw: Any) -> SourceConfig:
    """A pop3 ``SourceConfig`` as parse_sources makes it."""
    base: dict[str, Any] = dict(name="pop", kind="pop3", mailbox="support@example.test", tls="none", username=USER,
                                password=PASSWORD, success_folder="", failure_folder="", exclusion_folder="",
                                idle=False, timeout=10.0)
    return SourceConfig(host=host, port=port, **{**base, **kw})


@pytest.fixture
def dove(dove_root: Path) -> Iterator[Dovecot]:
    d = Dovecot(dove_root, users={USER: PASSWORD}).start()
    try:
        yield d
    finally:
        d.stop()


def plain(d: Dovecot, **kw: Any) -> Cfg:
    return Cfg(host="127.0.0.1", port=d.pop3_port, **kw)


async def test_uidl_keys_fetch_and_leave(dove: Dovecot) -> None:
    long_line = b"x" * 5000   # poplib's own limit is 2048 per line
    raws = [simple_message(subject=f"p{i}", message_id=f"p{i}@x.test", body="line\r\n" + long_line.decode() + "\r\n")
            for i in range(3)]
    for r in raws:
        dove.deliver(USER, r)
    src = Pop3Source(plain(dove))
    try:
        keys = await src.keys()
        assert len(keys) == 3 and all(k.startswith("pop3:") for k in keys) and len(set(keys)) == 3
        got = [await src.fetch(k) for k in keys]
        assert sorted(g.raw for g in got) == sorted(raws)
        for k in keys:
            await src.settle(k, "ticket")       # delete_after_import = false: left on the server
        await src.wait_for_new(0)
        assert dove.count(USER) == 3
        assert await src.keys() == keys        # same UIDLs in a new session
    finally:
        await src.close()


async def test_delete_after_import_takes_effect_at_quit(dove: Dovecot) -> None:
    for i in range(4):
        dove.deliver(USER, simple_message(subject=f"d{i}"))
    src = Pop3Source(plain(dove, delete_after_import=True))
    try:
        keys = await src.keys()
        await src.settle(keys[0], "ticket")
        await src.settle(keys[1], "quarantined")
        assert dove.count(USER) == 4           # DELE waits for QUIT
        await src.wait_for_new(0)
        assert dove.count(USER) == 2 and src.deleted == 2
        assert await src.keys() == keys[2:]
    finally:
        await src.close()


async def test_tls_modes(dove: Dovecot) -> None:
    dove.deliver(USER, simple_message())
    for cfg in (Cfg(host="127.0.0.1", port=dove.pop3s_port, tls="implicit", ca_file=str(dove.ca_path)),
                Cfg(host="127.0.0.1", port=dove.pop3_port, tls="starttls", ca_file=str(dove.ca_path))):
        src = Pop3Source(cfg)
        try:
            assert len(await src.keys()) == 1
            steps = await src.test()
        finally:
            await src.close()
        text = "\n".join(f"{s.name} {s.ok} {s.detail}" for s in steps)
        assert all(s.ok for s in steps), text
        assert "certificate CN=" in text or "issuer=" in text
        assert "1 messages" in text and PASSWORD not in text
    untrusted = Pop3Source(Cfg(host="127.0.0.1", port=dove.pop3s_port, tls="implicit"))
    with pytest.raises(SourceError) as err:
        await untrusted.connect()
    assert err.value.kind == "tls" and "CERTIFICATE_VERIFY_FAILED" in str(err.value)


async def test_wrong_password_is_clear_and_secret_free(dove: Dovecot) -> None:
    src = Pop3Source(plain(dove, password="wrong-PASSWORD-xyz"))
    with pytest.raises(SourceError) as err:
        await src.keys()
    assert err.value.kind == "auth" and USER in str(err.value) and "wrong-PASSWORD-xyz" not in str(err.value)
    steps = await src.test()
    assert [s.name for s in steps][:5] == ["dns", "tcp", "greeting", "capa", "auth"]
    assert not steps[-1].ok and steps[-1].name == "login"
    assert all("wrong-PASSWORD-xyz" not in s.detail for s in steps)


async def test_xoauth2_via_dovecot_oauth2_passdb(dove_root: Path) -> None:
    with GraphEmulator() as emu:
        emu.app_user = USER
        d = Dovecot(dove_root, users={USER: PASSWORD}, oauth2_introspection_url=f"{emu.base}/introspect").start()
        try:
            d.deliver(USER, simple_message(subject="oauth"))
            oauth = OAuthConfig(token_url=emu.token_url, client_id=emu.client_id, client_secret=emu.client_secret,
                                scope="https://outlook.office365.com/.default")
            cfg = Cfg(host="127.0.0.1", port=d.pop3s_port, tls="implicit", ca_file=str(d.ca_path), auth="xoauth2",
                      password="", oauth=oauth)
            src = Pop3Source(cfg)
            try:
                keys = await src.keys()
                assert len(keys) == 1 and (await src.fetch(keys[0])).raw == simple_message(subject="oauth")
                steps = await src.test()
                text = "\n".join(f"{s.name} {s.ok} {s.detail}" for s in steps)
                assert all(s.ok for s in steps) and "SASL XOAUTH2" in text, text
                assert not any(t in text for t in emu.tokens) and emu.client_secret not in text
                await src.close()
                emu.expire_tokens()              # Dovecot's introspection says inactive: refused, token dropped
                with pytest.raises(SourceError) as err:
                    await src.keys()
                assert err.value.kind == "auth"
                assert len(await src.keys()) == 1, d.log()   # a new token on the next try
                assert src.token is not None and src.token.requests == 2   # the refused token was dropped, one new one
            finally:
                await src.close()
        finally:
            d.stop()
