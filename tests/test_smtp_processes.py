"""Several SMTP processes on one listener ([smtp] processes): real child processes, real sockets.

What must hold across processes: limits count every process's sessions and messages, /metrics adds up
all processes (and never goes backwards when one dies), a reload reaches every process, a dead one is
replaced, and a stop drains and ends them all.
"""
from __future__ import annotations

import asyncio
import os
import re
import signal
import time
import urllib.request

import aiosmtplib
import pytest

from gateway.config.load import Config
from gateway.config.errors import ConfigErrors
from gateway.smtp.limits import Limits

from .conftest import BASE_CONFIG, make_config, merge, queued_id, simple_message, toml_dump

TWO = {"smtp": {"processes": 2}}


async def _scrape(port: int) -> str:
    return await asyncio.to_thread(
        lambda: urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode())


def _value(text: str, sample: str) -> float:
    m = re.search(rf"^{re.escape(sample)} (\S+)$", text, re.M)
    assert m, f"{sample} not in /metrics"
    return float(m.group(1))


async def _send(port: int, to: str = "support@example.test", subject: str = "hello") -> str:
    """One message on its own connection (so the kernel picks a process for each); the 250's text."""
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=20)
    await client.connect()
    try:
        errors, reply = await client.sendmail("alice@customer.test", [to], simple_message(subject=subject, to=to))
        return reply
    finally:
        await client.quit()


async def _greeting(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    line = await asyncio.wait_for(reader.readline(), 10)
    return reader, writer, line


async def test_processes_share_the_listener_and_metrics_add_up(start_gateway):
    gw = await start_gateway(**TWO)
    assert len(gw.gw.group.pids) == 1 and gw.gw.group.pids[0] != os.getpid()
    replies = await asyncio.gather(*(_send(gw.port, subject=f"m{i}") for i in range(40)))
    ids = [queued_id(r) for r in replies]
    for spool_id in ids:
        entry = await gw.wait_done(spool_id)
        assert entry.state == "ticket_created"
    text = await _scrape(gw.metrics_port)
    assert _value(text, "ticketmx_messages_accepted_total") == 40
    assert _value(text, "ticketmx_smtp_sessions_total") == 40
    assert _value(text, "ticketmx_smtp_processes") == 2
    assert _value(text, "ticketmx_smtp_accept_duration_seconds_count") == 40
    # Both processes answered some of the 40 connections (all 40 on one: probability 2^-39).
    mine = gw.gw.metrics.accepted._value.get()
    assert 0 < mine < 40, mine


async def test_session_limit_per_ip_counts_every_process(start_gateway):
    gw = await start_gateway(smtp={"processes": 2, "max_sessions_per_ip": 4})
    held = [await _greeting(gw.port) for _ in range(4)]
    assert all(line.startswith(b"220 ") for _, _, line in held)
    # Ten more from the same address: with per-process counting about half would get in.
    for _ in range(10):
        _, writer, line = await _greeting(gw.port)
        assert line.startswith(b"421 4.7.0"), line
        writer.close()
    held[0][1].close()  # one session ends (in whichever process it was): room for exactly one more
    deadline = time.monotonic() + 10
    while True:
        _, writer, line = await _greeting(gw.port)
        writer.close()
        if line.startswith(b"220 ") or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)
    assert line.startswith(b"220 "), line
    for _, w, _ in held[1:]:
        w.close()


async def test_rate_limit_counts_every_process(start_gateway):
    gw = await start_gateway(smtp={"processes": 2, "rate_per_ip": "5/1m"})
    for i in range(5):
        assert "queued as" in await _send(gw.port, subject=f"ok{i}")
    for i in range(6):
        with pytest.raises(aiosmtplib.SMTPSenderRefused) as exc:
            await _send(gw.port, subject=f"over{i}")
        assert exc.value.code == 450 and "4.7.1" in exc.value.message


async def test_killed_process_is_replaced_and_counters_do_not_go_back(start_gateway):
    gw = await start_gateway(**TWO)
    await asyncio.gather(*(_send(gw.port, subject=f"a{i}") for i in range(20)))
    before = _value(await _scrape(gw.metrics_port), "ticketmx_messages_accepted_total")
    assert before == 20
    group = gw.gw.group
    old = group.pids[0]
    os.kill(old, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while not (group.pids and group.pids[0] != old):
        assert time.monotonic() < deadline, "the SMTP process was not restarted"
        await asyncio.sleep(0.05)
    replies = await asyncio.gather(*(_send(gw.port, subject=f"b{i}") for i in range(20)))
    assert all("queued as" in r for r in replies)
    text = await _scrape(gw.metrics_port)
    assert _value(text, "ticketmx_messages_accepted_total") == 40
    assert _value(text, "ticketmx_smtp_processes") == 2


async def test_reload_reaches_every_process(start_gateway, tmp_path, dns_server):
    gw = await start_gateway(**TWO)
    with pytest.raises(aiosmtplib.SMTPRecipientsRefused):
        await _send(gw.port, to="sales@example.test")
    data = merge(BASE_CONFIG, {"store": {"url": f"sqlite:///{tmp_path}/ticketmx.db"},
                               "dns": {"nameservers": [f"127.0.0.1:{dns_server.port}"], "timeout": "1s"},
                               "smtp": {"processes": 2}})
    data["mailbox"] = data["mailbox"] + [{"address": "sales@example.test", "queue": "Sales"}]
    path = tmp_path / "reload.toml"
    path.write_text(toml_dump(data))
    assert gw.gw.reload(str(path))
    await asyncio.sleep(0.2)  # the children read the new config from their control pipe
    replies = await asyncio.gather(*(_send(gw.port, to="sales@example.test", subject=f"r{i}")
                                     for i in range(20)))
    assert all("queued as" in r for r in replies)
    assert 0 < gw.gw.metrics.accepted._value.get() < 20  # both processes took some


async def test_stop_drains_and_ends_every_process(start_gateway):
    gw = await start_gateway(**TWO)
    pids = gw.gw.group.pids
    idle = [await _greeting(gw.port) for _ in range(12)]
    assert all(line.startswith(b"220 ") for _, _, line in idle)
    for reader, writer, _ in idle:
        writer.write(b"EHLO client.test\r\n")
        while not (await asyncio.wait_for(reader.readline(), 10)).startswith(b"250 "):
            pass
    stopping = asyncio.ensure_future(gw.gw.stop(grace=5))
    for reader, _, _ in idle:  # every idle session, whichever process holds it, gets 421 4.3.2
        line = await asyncio.wait_for(reader.readline(), 10)
        assert line.startswith(b"421 4.3.2"), line
    await asyncio.wait_for(stopping, 30)
    for pid in pids:
        deadline = time.monotonic() + 5
        while True:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            assert time.monotonic() < deadline, f"SMTP process {pid} still alive after stop"
            await asyncio.sleep(0.05)


def test_processes_config(tmp_path):
    cfg: Config = make_config(tmp_path, smtp={"processes": "auto"})
    assert 1 <= cfg.smtp.processes <= 4
    assert make_config(tmp_path).smtp.processes == 1
    for bad in (0, 65, "many", 1.5):
        with pytest.raises(ConfigErrors) as exc:
            make_config(tmp_path, smtp={"processes": bad})
        assert "smtp.processes" in str(exc.value)


def test_limits_forget_a_dead_process_sessions(tmp_path):
    cfg = make_config(tmp_path, smtp={"max_sessions_per_ip": 2, "max_sessions": 3})
    limits = Limits(cfg)
    assert limits.open(0, "192.0.2.1") is None
    assert limits.open(1, "192.0.2.1") is None
    assert limits.open(1, "192.0.2.1").reason == "per_ip_limit"
    assert limits.open(0, "192.0.2.2").reason == "session_limit"  # 4 > max_sessions
    limits.drop_slot(1)  # process 1 died with its two sessions
    assert limits.total == 2 and limits.per_ip["192.0.2.1"] == 1
    limits.close(1, "192.0.2.1")  # a late close from the dead process changes nothing
    assert limits.per_ip["192.0.2.1"] == 1
    limits.close(0, "192.0.2.1")
    limits.close(0, "192.0.2.2")
    assert limits.total == 0 and not limits.per_ip
