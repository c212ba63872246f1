"""The API in its own process ([http] processes, gateway/http/process.py): served by another pid than
the SMTP side, answering while the SMTP process's loop is blocked, restarted after kill -9, and what
crosses the boundary (the wake-up after a replay, /metrics and /readyz of the whole service, the rate
windows shared by several HTTP processes)."""
from __future__ import annotations

import asyncio
import os
import signal
import socket
import threading
import time

import httpx

from ..conftest import simple_message
from .test_api_messages import send
from .conftest import Api


def _owner_of_connection(local_port: int, server_port: int) -> set[int]:
    """The pids holding the server side of the TCP connection from ``local_port`` to ``server_port``
    (/proc/net/tcp gives the socket's inode, /proc/PID/fd which process has it open)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = open(table).read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            local, remote, inode = f[1], f[2], f[9]
            if int(local.split(":")[1], 16) == server_port and int(remote.split(":")[1], 16) == local_port:
                inodes.add(f"socket:[{inode}]")
    pids = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                if os.readlink(f"/proc/{pid}/fd/{fd}") in inodes:
                    pids.add(int(pid))
        except OSError:
            continue
    return pids


async def test_api_is_served_by_another_process_and_answers_while_smtp_is_blocked(api: Api) -> None:
    group = api.gw.gw.http
    assert len(group.pids) == 1 and group.pids[0] != os.getpid()
    # The connection's server side is held by the HTTP process, not by this (the SMTP) process.
    reader, writer = await asyncio.open_connection("127.0.0.1", group.port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
    assert (await asyncio.wait_for(reader.readuntil(b"ok\n"), 5)).startswith(b"HTTP/1.1 200")
    owners = await asyncio.to_thread(_owner_of_connection, writer.get_extra_info("sockname")[1], group.port)
    writer.close()
    assert owners == {group.pids[0]}, owners
    token = await api.token("ops", "admin")
    await api.gw.wait_done(await send(api.gw.port, simple_message(message_id="p1@customer.test"),
                                      "alice@customer.test"))
    # Block the SMTP process's event loop for 1.5 s: requests from a thread are still answered, by
    # the HTTP process, from its own store connection.
    answered: list[tuple[float, int]] = []

    def client() -> None:
        with httpx.Client(base_url=api.base, headers={"Authorization": f"Bearer {token}"}, timeout=5) as c:
            end = time.monotonic() + 1.2
            while time.monotonic() < end:
                r = c.get("/api/v1/tickets")
                answered.append((time.monotonic(), r.status_code))
                time.sleep(0.02)  # within [http] rate_per_token (600 a minute)
    thread = threading.Thread(target=client)
    started = time.monotonic()
    thread.start()
    time.sleep(1.5)  # noqa: ASYNC101 - the point: this loop (SMTP's) is stuck
    blocked_until = time.monotonic()
    await asyncio.to_thread(thread.join)
    during = [s for t, s in answered if started < t < blocked_until]
    assert len(during) >= 5 and set(during) == {200}, answered[:10]


async def test_a_killed_http_process_is_restarted_and_waiting_requests_answered(api: Api) -> None:
    group = api.gw.gw.http
    old = group.pids[0]
    os.kill(old, signal.SIGKILL)
    await asyncio.sleep(0.05)
    # Connected while no HTTP process runs: the main process keeps the listening socket, so the
    # connection waits in its queue and the new process answers it.
    reader, writer = await asyncio.open_connection("127.0.0.1", group.port)
    writer.write(b"GET /readyz HTTP/1.1\r\nHost: t\r\n\r\n")
    data = await asyncio.wait_for(reader.readuntil(b"ready\n"), 30)
    writer.close()
    assert data.startswith(b"HTTP/1.1 200"), data
    for _ in range(100):  # its "started" note may reach the main process after its first answer
        if group.pids:
            break
        await asyncio.sleep(0.05)
    assert group.pids and group.pids[0] != old and group.restarts == 1
    async with api.client() as c:
        assert (await c.get("/healthz")).text == "ok\n"


async def test_replay_wakes_the_pipeline_and_metrics_are_the_whole_services(start_api) -> None:
    # a long poll interval: the replayed message is processed at once only if the wake-up arrives
    api = await start_api(pipeline={"poll_interval": "30s"})
    token = await api.token("ops", "admin")
    sid = await send(api.gw.port, simple_message(message_id="w1@customer.test"), "alice@customer.test")
    await api.gw.wait_done(sid)
    async with api.client(token) as c:
        r = await c.post(f"/api/v1/messages/{sid}/replay")
        assert r.status_code in (200, 202), r.text
        started = time.monotonic()
        entry = await api.gw.wait_done(sid, timeout=5)
        assert time.monotonic() - started < 3 and entry.state != "queued"
        r = await c.get("/metrics")
    # the SMTP side's counter (main process) in the HTTP process's /metrics
    assert r.status_code == 200 and "ticketmx_messages_accepted_total 1.0" in r.text, r.text[:500]
    assert "ticketmx_smtp_processes 1.0" in r.text


async def test_two_http_processes_share_the_rate_limit(start_api) -> None:
    api = await start_api(http={"processes": 2, "rate_per_token": "4/1m"})
    assert len(api.gw.gw.http.pids) == 2
    token = await api.token("one", "viewer")
    codes = []
    for _ in range(8):  # a new connection each time: the kernel hands them to either process
        async with api.client(token) as c:
            codes.append((await c.get("/api/v1/me")).status_code)
    assert codes == [200] * 4 + [429] * 4, codes
    async with api.client() as c:
        assert (await c.get("/readyz")).text == "ready\n"


async def test_an_http_process_that_cannot_open_the_store_is_retried_with_backoff(api: Api, caplog) -> None:
    from dataclasses import replace
    group = api.gw.gw.http
    good = group.cfg
    # The next HTTP process gets a store it cannot open (under a file, not a directory).
    group.cfg = replace(good, store=replace(good.store, url="sqlite:////dev/null/ticketmx.db"))
    os.kill(group.pids[0], signal.SIGKILL)
    for _ in range(200):
        if "could not open the store; next try in 1s" in caplog.text:
            break
        await asyncio.sleep(0.05)
    assert "could not open the store; next try in 1s" in caplog.text, caplog.text
    group.cfg = good  # the store is back: the retry after the backoff serves again
    for _ in range(200):
        if group.pids:
            break
        await asyncio.sleep(0.05)
    assert group.pids, caplog.text
    async with api.client() as c:
        assert (await c.get("/readyz")).text == "ready\n"
