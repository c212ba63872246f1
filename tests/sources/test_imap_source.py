"""IMAP pull ingress against a real Dovecot: import, settle into folders, exactly once, \\Seen mail."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from .conftest import USER, message, source_table, wait_for
from .dovecot import Dovecot


async def test_imports_and_settles_into_folders(start_gateway: Any, dovecot: Dovecot, tmp_path: Path) -> None:
    dovecot.deliver(USER, message(1))
    dovecot.deliver(USER, message(2), seen=True)  # read by another client: still new to us
    dovecot.deliver(USER, message(3, extra="Auto-Submitted: auto-replied\r\n"))  # suppressed (automatic)
    gw = await start_gateway(source=[source_table(dovecot, tmp_path)])
    await wait_for(lambda: dovecot.count(USER) == 0, what="the inbox emptied")
    await wait_for(lambda: _settled(gw, 3), what="3 settled")
    assert dovecot.count(USER, "Processed") == 2
    assert dovecot.count(USER, "Excluded") == 1
    assert dovecot.count(USER, "Failed") == 0
    ts = await gw.store.tickets_list()
    assert sorted(t["subject"] for t in ts) == ["Printer 1", "Printer 2"]
    counts = await gw.store.source_counts()
    assert counts == {"inbox": {"settled": 3}}
    state = (await gw.store.source_state_get("inbox"))["inbox"]
    assert state["last_success"] and state["failures"] == 0



async def _settled(gw: Any, n: int, source: str = "inbox") -> bool:
    return (await gw.store.source_counts()).get(source, {}).get("settled", 0) == n


def _config_file(tmp_path: Path, dovecot: Dovecot, **over: Any) -> Path:
    from ..conftest import BASE_CONFIG, merge, toml_dump
    data = merge(BASE_CONFIG, {"store": {"url": f"sqlite:///{tmp_path}/ticketmx.db"}})
    data["source"] = [source_table(dovecot, tmp_path, **over)]
    path = tmp_path / "ticketmx.toml"
    path.write_text(toml_dump(data))
    return path


def test_cli_test_sync_list_pause_resume(dovecot: Dovecot, tmp_path: Path) -> None:
    import json

    from ..conftest import run_cli
    conf = _config_file(tmp_path, dovecot, success_folder="Done Here")
    out = run_cli("source", "test", "inbox", "--config", str(conf)).stdout
    for step in ("dns", "tcp", "tls", "greeting", "auth-mechanisms", "login", "folder", "success_folder"):
        assert f"ok   {step}" in out, out
    assert "'Done Here' created" in out and "s3cret" not in out and "password ****" in out
    assert "verified" in out
    dovecot.deliver(USER, message(1))
    dovecot.deliver(USER, message(2), seen=True)
    _create_store(conf)  # as the gateway's first start does
    r = json.loads(run_cli("source", "sync", "inbox", "--once", "--json", "--config", str(conf)).stdout)
    assert r["imported"] == 2 and r["pending"] == 2, r
    again = json.loads(run_cli("source", "sync", "inbox", "--once", "--json", "--config", str(conf)).stdout)
    assert again["imported"] == 0, again  # exactly once: the keys are committed
    rows = json.loads(run_cli("source", "list", "--json", "--config", str(conf)).stdout)
    assert rows[0]["name"] == "inbox" and rows[0]["status"] == "active" and rows[0]["pending"] == 2
    assert rows[0]["last_success"]
    run_cli("source", "pause", "inbox", "--config", str(conf))
    rows = json.loads(run_cli("source", "list", "--json", "--config", str(conf)).stdout)
    assert rows[0]["status"] == "paused"
    run_cli("source", "resume", "inbox", "--config", str(conf))
    rows = json.loads(run_cli("source", "list", "--json", "--config", str(conf)).stdout)
    assert rows[0]["status"] == "active"
    bad = run_cli("source", "test", "nope", "--config", str(conf), check=False)
    assert bad.returncode == 78 and "no [[source]] named 'nope'" in bad.stderr


def test_cli_test_reports_a_wrong_password(dovecot: Dovecot, tmp_path: Path) -> None:
    from ..conftest import run_cli
    conf = _config_file(tmp_path, dovecot)
    (tmp_path / "imap-password").write_text("wrong\n")
    r = run_cli("source", "test", "inbox", "--config", str(conf), check=False)
    assert r.returncode == 1
    assert "FAIL auth" in r.stdout and "AUTHENTICATIONFAILED" in r.stdout and "wrong" not in r.stdout


def _create_store(conf: Path) -> None:
    import asyncio

    from gateway.config.load import load_config
    from gateway.store import open_store

    async def go() -> None:
        store = open_store(load_config(str(conf)))
        await store.open()
        await store.close()
    asyncio.run(go())


async def test_provider_verdict_only_from_a_trusted_authserv_id_and_no_spf(start_gateway: Any, dovecot: Dovecot,
                                                                           tmp_path: Path) -> None:
    """docs/auth.md "Pulled mail: what is trusted": the provider's dmarc=pass counts only from a configured
    authserv-id; a field with any other id is a claim like any other; SPF is never evaluated."""
    ar = "Authentication-Results: {id}; spf=pass smtp.mailfrom=customer.test; dmarc=pass header.from=customer.test\r\n"
    dovecot.deliver(USER, message(1, subject="Trusted", extra=ar.format(id="mx.provider.test")))
    dovecot.deliver(USER, message(2, subject="Forged", extra=ar.format(id="mx.elsewhere.test")))
    gw = await start_gateway(source=[source_table(dovecot, tmp_path, trusted_authserv_ids=["mx.provider.test"])])
    await wait_for(lambda: _settled(gw, 2), what="2 settled")
    by_subject = {}
    for e in await gw.store.spool_list():
        full = await gw.store.spool_get(e.id)
        subject = next(line for line in full.raw.split(b"\r\n") if line.startswith(b"Subject:"))
        by_subject[subject.split(b": ", 1)[1].decode()] = full.auth
    trusted, forged = by_subject["Trusted"], by_subject["Forged"]
    assert trusted["dmarc"].get("override") == "provider"
    assert not forged["dmarc"].get("override") and forged["dmarc"]["result"] != "pass"
    for auth in (trusted, forged):
        assert auth["spf"]["checked"] is False and auth["source"]["name"] == "inbox"


async def test_a_batch_imports_each_once_and_same_bytes_twice_is_one_import(start_gateway: Any, dovecot: Dovecot,
                                                                            tmp_path: Path) -> None:
    """152 files (three fetch/commit batches of 64): one message delivered twice far apart and one twice
    side by side (same batch), byte for byte: 150 tickets, 152 keys (each copy an alias of the first
    import), every file moved (one UID MOVE per group)."""
    twice = message(7)
    for i in range(149):
        dovecot.deliver(USER, twice if i == 7 else message(i))
    dovecot.deliver(USER, twice)  # the same bytes again, in the last batch
    dovecot.deliver(USER, message(500, subject="Copy"))
    copy = next(p for p in dovecot.files(USER) if b"Subject: Copy" in p.read_bytes())
    dup = copy.with_name(copy.name.replace(".ticketmx-test", ".again.ticketmx-test"))
    dup.write_bytes(copy.read_bytes())  # a second file with identical bytes: in the same batch as the first
    gw = await start_gateway(source=[source_table(dovecot, tmp_path)])
    await wait_for(lambda: dovecot.count(USER) == 0, timeout=60, what="the inbox emptied")
    await wait_for(lambda: _settled(gw, 152), what="152 keys settled")
    assert len(await gw.store.tickets_list()) == 150
    assert len(await gw.store.spool_list()) == 150
    assert dovecot.count(USER, "Processed") == 152
