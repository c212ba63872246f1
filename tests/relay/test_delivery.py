"""Delivery through real aiosmtpd sinks: fallback, circuit breaker, 4xx/5xx, expiry, reuse, throttle."""
from __future__ import annotations

import asyncio
import time
from datetime import datetime, timedelta

from prometheus_client import CollectorRegistry

from gateway.store.relay_queue import RelayQueue

from .conftest import free_port, host, relay_table, wait_for
from .helpers import enqueue_many, metric, note, start_worker


async def test_delivers_and_records(store, sinks):
    p = sinks()
    reg = CollectorRegistry()
    w = await start_worker(store, relay_table(host("primary", p.port)), reg)
    try:
        ids = await enqueue_many(store, [note(), note(to=["a@x.test", "b@x.test"])])
        w.wake()
        await wait_for(lambda: len(p.messages) == 2)
        await w.drain()
    finally:
        await w.close()
    q = RelayQueue(store)
    rows = await q.list()
    assert [r["state"] for r in rows] == ["sent", "sent"]
    assert all(r["attempts"] == 1 and r["sent_at"] for r in rows)
    assert {x["address"]: x["state"] for x in rows[1]["recipients"]} == {"a@x.test": "sent", "b@x.test": "sent"}
    assert sorted(p.handler.recipients()) == ["a@x.test", "alice@customer.test", "b@x.test"]
    assert p.messages[0].mail_from == "help@example.test"
    assert metric(reg, "ticketmx_relay_sent_total", host="primary") == 3
    await w.refresh_metrics()
    assert metric(reg, "ticketmx_relay_queue_messages", state="sent") == 2
    assert ids == [r["id"] for r in rows]


async def test_primary_stopped_mid_run_then_back_on_primary(store, sinks):
    primary, secondary = sinks(), sinks()

    async def slow_data(server, session, envelope):  # keep deliveries in flight while we stop it
        await asyncio.sleep(0.005)
        return await orig_data(server, session, envelope)
    orig_data = primary.handler.handle_DATA
    primary.handler.handle_DATA = slow_data

    reg = CollectorRegistry()
    table = relay_table(host("primary", primary.port, cooloff="400ms"), host("secondary", secondary.port),
                        concurrency=4)
    w = await start_worker(store, table, reg)
    try:
        first = [note(to=f"u{i}@x.test") for i in range(40)]
        await enqueue_many(store, first)
        w.wake()
        await wait_for(lambda: len(primary.messages) >= 5)
        primary.stop()                                  # mid-run: deliveries in flight
        await wait_for(lambda: len(secondary.messages) >= 1)
        await w.drain()
        assert (await RelayQueue(store).counts())["sent"] == 40
        assert metric(reg, "ticketmx_relay_circuit_state", host="primary") == 2  # open
        got = [r for m in primary.messages + secondary.messages for r in m.rcpt_tos]
        assert set(got) == {f"u{i}@x.test" for i in range(40)}      # nothing lost
        # at-least-once: only a message whose 250 was lost with the connection may arrive twice
        assert len(got) - 40 <= 4

        primary.start()                                  # same port, no restart of the relay
        await asyncio.sleep(0.5)                         # cool-off over: next delivery probes the primary
        before = len(primary.messages)
        await enqueue_many(store, [note(to="probe@x.test")])
        w.wake()
        await wait_for(lambda: len(primary.messages) - before == 1)   # the probe went to the primary
        await w.drain()
        await enqueue_many(store, [note(to=f"v{i}@x.test") for i in range(10)])
        w.wake()
        await wait_for(lambda: len(primary.messages) - before == 11, timeout=5)
        await w.drain()
    finally:
        await w.close()
    assert not any(r.startswith(("v", "probe")) for m in secondary.messages for r in m.rcpt_tos)
    await w.refresh_metrics()
    assert metric(reg, "ticketmx_relay_circuit_state", host="primary") == 0
    failures = {r: metric(reg, "ticketmx_relay_failed_total", host="primary", reason=r)
                for r in ("connect", "disconnected", "closing", "timeout")}
    assert sum(failures.values()) >= 1, failures   # which one depends on where the stop caught it


async def test_all_hosts_down_is_one_temporary_failure_then_delivered(store, sinks):
    port_a, port_b = free_port(), free_port()
    reg = CollectorRegistry()
    table = relay_table(host("a", port_a, max_tries=100), host("b", port_b, max_tries=100), retry="100ms")
    w = await start_worker(store, table, reg)
    try:
        (mid,) = await enqueue_many(store, [note()])
        w.wake()
        q = RelayQueue(store)
        row = await wait_for(lambda: _state(q, mid, "deferred"))
        assert row["attempts"] == 1
        assert "a: cannot connect" in row["last_error"] and "b: cannot connect" in row["last_error"]
        b = sinks(port=port_b)                      # the second host comes up
        row = await wait_for(lambda: _state(q, mid, "sent"))
        assert len(b.messages) == 1
        assert row["last_host"] == "b"
    finally:
        await w.close()
    assert metric(reg, "ticketmx_relay_deferred_total", reason="all_hosts_failed") >= 1


async def _state(q: RelayQueue, mid: int, state: str):
    row = await q.get(mid)
    return row if row and row["state"] == state else None


async def test_4xx_defers_then_delivers(store, sinks):
    p = sinks()
    tries = {"n": 0}

    def rcpt(addr):
        tries["n"] += 1
        return "451 4.3.0 greylisted, try later" if tries["n"] <= 2 else None
    p.handler.rcpt_reply = rcpt
    reg = CollectorRegistry()
    w = await start_worker(store, relay_table(host("primary", p.port)), reg)
    try:
        (mid,) = await enqueue_many(store, [note()])
        w.wake()
        row = await wait_for(lambda: _state(RelayQueue(store), mid, "sent"))
    finally:
        await w.close()
    assert row["attempts"] == 3
    assert len(p.messages) == 1
    assert metric(reg, "ticketmx_relay_deferred_total", reason="rcpt_4xx") == 2
    assert metric(reg, "ticketmx_relay_failed_total", host="primary", reason="rcpt_4xx") == 2
    # a recipient 4xx is an answer: the host's circuit stays closed
    assert metric(reg, "ticketmx_relay_circuit_state", host="primary") == 0


async def test_4xx_on_primary_tries_secondary_in_same_attempt(store, sinks):
    p, s = sinks(), sinks()
    p.handler.rcpt_reply = lambda addr: "452 4.2.2 mailbox full" if addr.startswith("full") else None
    w = await start_worker(store, relay_table(host("p", p.port), host("s", s.port)))
    try:
        (mid,) = await enqueue_many(store, [note(to=["ok@x.test", "full@x.test"])])
        w.wake()
        row = await wait_for(lambda: _state(RelayQueue(store), mid, "sent"))
    finally:
        await w.close()
    assert row["attempts"] == 1
    assert p.handler.recipients() == ["ok@x.test"] and s.handler.recipients() == ["full@x.test"]


async def test_5xx_dead_letters_that_recipient_at_once_and_retry(store, sinks):
    p = sinks()
    p.handler.rcpt_reply = lambda addr: "550 5.1.1 no such user" if addr == "gone@x.test" else None
    reg = CollectorRegistry()
    w = await start_worker(store, relay_table(host("primary", p.port)), reg)
    q = RelayQueue(store)
    try:
        (mid,) = await enqueue_many(store, [note(to=["ok@x.test", "gone@x.test"])])
        w.wake()
        row = await wait_for(lambda: _state(q, mid, "dead"))
        assert row["attempts"] == 1
        st = {x["address"]: (x["state"], x["code"]) for x in row["recipients"]}
        assert st == {"ok@x.test": ("sent", 250), "gone@x.test": ("dead", 550)}
        assert "550" in row["last_error"] and "no such user" in row["last_error"]
        assert p.handler.recipients() == ["ok@x.test"]
        flags = await store.query("SELECT undeliverable FROM relay_contacts WHERE email='gone@x.test'")
        assert flags[0][0] == 1
        assert metric(reg, "ticketmx_relay_dead_total", reason="rejected") == 1

        # replayable: the operator fixed it; only the dead recipient is sent again
        p.handler.rcpt_reply = lambda addr: None
        assert await q.retry(mid)
        w.wake()
        row = await wait_for(lambda: _state(q, mid, "sent"))
    finally:
        await w.close()
    assert p.handler.recipients() == ["ok@x.test", "gone@x.test"]
    flags = await store.query("SELECT undeliverable FROM relay_contacts WHERE email='gone@x.test'")
    assert flags[0][0] == 0


async def test_data_5xx_and_retry_dead(store, sinks):
    p = sinks()
    p.handler.data_reply = lambda env: "554 5.6.0 message content rejected"
    w = await start_worker(store, relay_table(host("primary", p.port)))
    q = RelayQueue(store)
    try:
        ids = await enqueue_many(store, [note(), note()])
        w.wake()
        await wait_for(lambda: _count(q, "dead", 2))
        p.handler.data_reply = lambda env: None
        assert await q.retry_dead() == ids
        w.wake()
        await wait_for(lambda: _count(q, "sent", 2))
    finally:
        await w.close()
    assert len(p.messages) == 2


async def _count(q: RelayQueue, state: str, n: int) -> bool:
    return (await q.counts())[state] == n


async def test_lifetime_expiry_dead_letters(store):
    port = free_port()  # nothing listens
    reg = CollectorRegistry()
    w = await start_worker(store, relay_table(host("a", port, max_tries=1000), retry="50ms",
                                              max_lifetime="300ms"), reg)
    q = RelayQueue(store)
    try:
        (mid,) = await enqueue_many(store, [note()])
        w.wake()
        row = await wait_for(lambda: _state(q, mid, "dead"))
    finally:
        await w.close()
    assert row["attempts"] >= 3
    assert row["last_error"].startswith("expired after")
    assert row["recipients"][0]["state"] == "dead"
    assert metric(reg, "ticketmx_relay_dead_total", reason="expired") == 1


async def test_connection_reuse(store, sinks):
    p = sinks()
    base = p.handler.connections  # the Controller's own readiness check connects once
    w = await start_worker(store, relay_table(host("primary", p.port, concurrency=1)))
    try:
        await enqueue_many(store, [note(to=f"r{i}@x.test") for i in range(20)])
        w.wake()
        await wait_for(lambda: len(p.messages) == 20)
    finally:
        await w.close()
    assert p.handler.connections - base == 1


async def test_throttle_spaces_messages(store, sinks):
    p = sinks()
    times: list[float] = []
    p.handler.on_message = lambda r: times.append(time.monotonic())
    w = await start_worker(store, relay_table(host("primary", p.port, throttle=600)))  # one per 100 ms
    try:
        await enqueue_many(store, [note(to=f"r{i}@x.test") for i in range(4)])
        w.wake()
        await wait_for(lambda: len(p.messages) == 4)
    finally:
        await w.close()
    gaps = [b - a for a, b in zip(times, times[1:])]
    # measured at the sink, so each gap carries the jitter of two sends (a busy machine, PostgreSQL on
    # the same cores): the span shows the spacing, the smallest gap that no two went out together
    assert times[-1] - times[0] >= 0.27 and min(gaps) >= 0.04, gaps


async def test_concurrency_limit_per_host(store, sinks):
    p = sinks()
    active = {"now": 0, "max": 0}
    orig = p.handler.handle_DATA

    async def data(server, session, envelope):
        active["now"] += 1
        active["max"] = max(active["max"], active["now"])
        await asyncio.sleep(0.02)
        active["now"] -= 1
        return await orig(server, session, envelope)
    p.handler.handle_DATA = data
    w = await start_worker(store, relay_table(host("primary", p.port, concurrency=2), concurrency=10))
    try:
        await enqueue_many(store, [note(to=f"r{i}@x.test") for i in range(10)])
        w.wake()
        await wait_for(lambda: len(p.messages) == 10)
    finally:
        await w.close()
    assert active["max"] == 2


async def test_skip_window_uses_secondary_without_counting_a_failure(store, sinks):
    p, s = sinks(), sinks()
    base = p.handler.connections
    now = datetime.now()
    start = (now - timedelta(minutes=1)).strftime("%H:%M")
    end = (now + timedelta(minutes=2)).strftime("%H:%M")
    reg = CollectorRegistry()
    w = await start_worker(store, relay_table(host("p", p.port, skip_times=f"{start}-{end}"), host("s", s.port)),
                           reg)
    try:
        await enqueue_many(store, [note()])
        w.wake()
        await wait_for(lambda: len(s.messages) == 1)
    finally:
        await w.close()
    assert not p.messages and p.handler.connections == base
    assert metric(reg, "ticketmx_relay_failed_total", host="p", reason="connect") == 0


async def test_no_host_available_claims_nothing(store):
    port = free_port()
    w = await start_worker(store, relay_table(host("a", port, max_tries=1, cooloff="10s"), retry="10ms"))
    q = RelayQueue(store)
    try:
        (mid,) = await enqueue_many(store, [note()])
        w.wake()
        await wait_for(lambda: _state(q, mid, "deferred"))
        await asyncio.sleep(0.2)  # circuit open: the worker must not burn attempts meanwhile
        row = await q.get(mid)
    finally:
        await w.close()
    assert row["attempts"] == 1
