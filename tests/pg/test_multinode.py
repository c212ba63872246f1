"""Two `ticketmx serve` nodes on one PostgreSQL; one is killed with -9 mid-run.

The clients behave like sending MTAs with two MX hosts of equal preference: each session starts on one
node; a message that got no 250 (the node died under it) is sent again to the other node, and one message
in ten is sent to BOTH nodes (an upstream MTA that timed out after the DATA and retried elsewhere).
Afterwards: every 250'd message is exactly one ticket, nothing is left in the spool, the surviving node
took over the dead node's queued and claimed work (claims are leases: see gateway/store/postgres.py).

Until the lead's wiring lands (config.py accepting postgresql:// URLs, open_store dispatching on them),
the nodes run as ``python -m tests.pg_support serve``, which patches exactly that in (see install_shim).
"""
from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiosmtplib
import pytest

pytest.importorskip("asyncpg", reason="asyncpg is not installed (pip install asyncpg): PostgreSQL tests skipped")

from gateway.config.load import StoreConfig  # noqa: E402
from gateway.store.postgres import PostgresStore  # noqa: E402

from ..conftest import ROOT, free_port, queued_id, simple_message, toml_dump, wait_port  # noqa: E402
from ..pg_support import CLAIM_LEASE_ENV  # noqa: E402
from ..test_relay_e2e import CUSTOMER  # noqa: E402

CLAIM_LEASE = 3.0  # seconds: how long the dead node's claims block before the other node takes them


class Node:
    """One `ticketmx serve` process (its own process group, so -9 also kills its worker processes)."""

    def __init__(self, tmp_path: Path, name: str, db_url: str, dns_port: int, processes: int = 1,
                 extra: dict | None = None) -> None:
        self.name = name
        self.port = free_port()
        self.metrics_port = free_port()
        store: dict = {"url": db_url}
        fields = StoreConfig.__dataclass_fields__
        if "claim_lease" in fields:       # the lead's config keys, once they exist
            store["claim_lease"] = CLAIM_LEASE
        if "pool_max" in fields:
            store["pool_max"] = 4
        data = {
            "smtp": {"listen": [f"127.0.0.1:{self.port}"], "hostname": f"{name}.example.test",
                     "shutdown_grace": "5s"},
            "store": store,
            "mailbox": [{"address": "support@example.test", "aliases": ["help@example.test"], "queue": "IT"}],
            "metrics": {"listen": f"127.0.0.1:{self.metrics_port}"},
            "pipeline": {"poll_interval": "200ms", "processes": processes},
            "dns": {"nameservers": [f"127.0.0.1:{dns_port}"], "timeout": "1s"},
            **(extra or {}),
        }
        self.config = tmp_path / f"{name}.toml"
        self.config.write_text(toml_dump(data))
        self.log = tmp_path / f"{name}.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Node":
        env = {**os.environ, "TICKETMX_PG_SHIM": "1", CLAIM_LEASE_ENV: str(CLAIM_LEASE)}
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.pg_support", "serve", "--config", str(self.config)],
                                     cwd=ROOT, stdout=open(self.log, "ab"), stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True)
        try:
            wait_port(self.port, timeout=30)
        except AssertionError:
            raise AssertionError(f"{self.name} did not start:\n{self.log.read_text()[-3000:]}") from None
        return self

    def kill9(self) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)  # the node and its pipeline worker processes, mid-batch
        self.proc.wait(timeout=10)

    def stop(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=60)


@pytest.fixture
def cluster(tmp_path, dns_server, pg_url):
    nodes: list[Node] = []
    dns_server.set_zone({})

    def make(name: str, **kw) -> Node:
        n = Node(tmp_path, name, pg_url, dns_server.port, **kw)
        nodes.append(n)
        return n

    yield make
    for n in nodes:
        if n.proc is not None and n.proc.poll() is None:
            try:
                os.killpg(n.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            n.proc.wait()


async def wait_drained(store: PostgresStore, timeout: float) -> dict[str, int]:
    deadline = time.monotonic() + timeout
    while True:
        counts = await store.spool_counts()
        if counts["queued"] == 0 and counts["processing"] == 0:
            return counts
        if time.monotonic() > deadline:
            raise AssertionError(f"spool did not drain within {timeout}s: {counts}")
        await asyncio.sleep(0.2)


async def test_two_nodes_one_killed_every_250_is_exactly_one_ticket(cluster, pg_url):
    a = cluster("node-a").start()
    b = cluster("node-b").start()
    total, sessions, kill_after = 300, 8, 100
    accepted: dict[str, list[tuple[str, str]]] = {}   # Message-ID -> [(spool id, node)] of every 250
    dead: set[int] = set()

    async def send(port: int, mid: str, i: int) -> str:
        _e, text = await aiosmtplib.send(
            simple_message(subject=f"load {i}", message_id=mid, sender=f"user{i % 17}@customer.test"),
            sender=f"user{i % 17}@customer.test", recipients=["support@example.test"],
            hostname="127.0.0.1", port=port, timeout=10, start_tls=False)
        return queued_id(text)

    async def deliver_one(i: int, first: Node, other: Node) -> None:
        mid = f"mn-{i}@customer.test"
        order = [first, other] if first.port not in dead else [other]
        for node in order:
            try:
                sid = await send(node.port, mid, i)
            except (aiosmtplib.SMTPException, OSError, asyncio.TimeoutError):
                continue  # no 250: the MTA tries the next MX
            accepted.setdefault(mid, []).append((sid, node.name))
            if i % 10 == 0 and node is first and other.port not in dead:
                try:  # the upstream timed out after DATA and retried at the other MX: accepted twice
                    accepted[mid].append((await send(other.port, mid, i), other.name))
                except (aiosmtplib.SMTPException, OSError, asyncio.TimeoutError):
                    pass
            return
        raise AssertionError(f"message {i} refused by every node")

    async def client(k: int) -> None:
        for i in range(k, total, sessions):
            first, other = (a, b) if (i + k) % 2 == 0 else (b, a)
            await deliver_one(i, first, other)

    async def killer() -> None:
        while len(accepted) < kill_after:
            await asyncio.sleep(0.005)
        dead.add(a.port)
        a.kill9()

    store = PostgresStore(pg_url, pool_max=2)
    await store.open()
    try:
        await asyncio.gather(killer(), *(client(k) for k in range(sessions)))
        assert a.proc.returncode == -signal.SIGKILL
        counts = await wait_drained(store, timeout=60 + 4 * CLAIM_LEASE)
        by_node = {n: sum(1 for v in accepted.values() for _s, x in v if x == n) for n in ("node-a", "node-b")}
        assert by_node["node-a"] >= 30 and by_node["node-b"] >= 30, by_node  # the load was spread

        entries = {e.id: e for e in await store.spool_list()}
        twice = [mid for mid, v in accepted.items() if len(v) > 1]
        assert twice, "no message was accepted by both nodes"
        for mid, got in accepted.items():
            for sid, node in got:
                assert sid in entries, f"250'd message {mid} (spool {sid} on {node}) lost"
                assert entries[sid].state in ("ticket_created", "suppressed"), (mid, entries[sid])
            # every spool entry of this message, 250'd or committed just before its node died unanswered
            same = [e for e in entries.values() if e.message_id == mid]
            states = sorted(e.state for e in same)
            assert states.count("ticket_created") == 1, f"{mid}: {states}"
            assert all("duplicate" in e.reason for e in same if e.state == "suppressed"), [e.reason for e in same]
            assert len({e.ticket_id for e in same}) == 1
        # exactly one ticket per Message-ID, for everything in the spool (250'd or not)
        rows = await store.pool.fetch("SELECT a.message_id, count(DISTINCT a.ticket_id) AS n FROM articles a"
                                      " GROUP BY a.message_id")
        assert all(r["n"] == 1 for r in rows)
        spooled_mids = {e.message_id for e in entries.values()}
        tickets = await store.tickets_list()
        assert len(tickets) == len(spooled_mids) == len(rows)
        assert set(accepted) <= spooled_mids
        assert len({t["number"] for t in tickets}) == len(tickets)
        assert counts["quarantined"] == 0
        taken_over = [e for e in entries.values() if e.attempts > 1]
        print(f"\naccepted: {sum(len(v) for v in accepted.values())} 250s for {len(accepted)} messages "
              f"({by_node}); {len(twice)} accepted twice; {len(tickets)} tickets; "
              f"{len(taken_over)} entries re-claimed after node-a died")
        assert b.stop() == 0
    finally:
        await store.close()


async def test_node_restart_keeps_other_nodes_claims(cluster, pg_url):
    """A node that (re)starts runs spool_recover(): it must not release the claims of a live node."""
    store = PostgresStore(pg_url, pool_max=2, claim_lease=60)
    await store.open()
    try:
        from gateway.store.base import SpoolEntry
        await store.spool_insert([SpoolEntry(id="held", received_at=time.time(), mail_from="a@customer.test",
                                             rcpt_tos=("support@example.test",), mailboxes=("support@example.test",),
                                             peer_ip="127.0.0.1", helo="h", tls=None, message_id="held@c.test",
                                             raw=simple_message(message_id="held@c.test"))])
        (claimed,) = await store.spool_claim(1, time.time(), "live-node:w0")  # a live node holds it
        a = cluster("node-a").start()
        await asyncio.sleep(1.5)
        e = await store.spool_get("held")
        assert e.state == "processing", "the starting node released a live node's claim"
        assert a.stop() == 0
    finally:
        await store.close()


class SlowSink:
    """A smarthost (aiosmtpd on 127.0.0.1) that takes 30 ms per message, so sends are in flight when a
    node dies, and records the Message-ID of everything it accepted."""

    def __init__(self) -> None:
        self.received: list[str] = []

    async def handle_DATA(self, server, session, envelope) -> str:  # noqa: ANN001
        await asyncio.sleep(0.03)
        import email
        self.received.append(str(email.message_from_bytes(envelope.original_content)["Message-ID"]).strip("<>"))
        return "250 2.0.0 OK"


async def test_two_nodes_share_the_relay_queue_and_a_killed_node_loses_no_notification(cluster, pg_url,
                                                                                     dns_server):
    """Both nodes relay from one PostgreSQL queue: each acknowledgement is queued once (in the ticket's
    transaction) and sent by one node; when a node dies mid-send, the other takes its rows over once
    their lease has run out. Every acknowledgement arrives; only a row taken over may arrive twice
    (at-least-once, docs/ha.md)."""
    from aiosmtpd.controller import Controller
    sink = SlowSink()
    sink_port = free_port()
    controller = Controller(sink, hostname="127.0.0.1", port=sink_port)
    controller.start()
    # every sender passes DMARC (aligned SPF for 127.0.0.1), and all clients share 127.0.0.1: no per-IP limit
    dns_server.set_zone(CUSTOMER)
    relay = {"relay": {"from": "Support <support@example.test>", "retry": "200ms*5, 1s", "lease": "2s",
                       "poll_interval": "50ms", "concurrency": 4, "ack_limits_per_ip": [],
                       "smarthost": [{"name": "sink", "host": "127.0.0.1", "port": sink_port, "tls": "none",
                                      "auth": "none", "timeout": "5s"}]}}
    a = cluster("node-a", extra=relay).start()
    b = cluster("node-b", extra=relay).start()
    total, sessions = 90, 6

    async def client(k: int) -> None:
        for i in range(k, total, sessions):
            sender = f"user{i}@customer.test"  # one message per sender: no acknowledgement rate limit
            msg = simple_message(subject=f"relay {i}", message_id=f"rl-{i}@customer.test", sender=sender)
            for node in ((a, b) if i % 2 == 0 else (b, a)):
                try:
                    await aiosmtplib.send(msg, sender=sender, recipients=["support@example.test"],
                                          hostname="127.0.0.1", port=node.port, timeout=10, start_tls=False)
                    break
                except (aiosmtplib.SMTPException, OSError, asyncio.TimeoutError):
                    continue  # the node died under us: the other MX

    async def killer() -> None:
        while len(sink.received) < 30:
            await asyncio.sleep(0.005)
        a.kill9()

    store = PostgresStore(pg_url, pool_max=2)
    await store.open()
    try:
        await asyncio.gather(killer(), *(client(k) for k in range(sessions)))
        await wait_drained(store, timeout=60 + 4 * CLAIM_LEASE)
        deadline = time.monotonic() + 60
        while await store.pool.fetchval("SELECT count(*) FROM relay_queue WHERE state IN"
                                        " ('queued', 'sending', 'deferred')"):
            assert time.monotonic() < deadline, await store.pool.fetch("SELECT id, state, lease_owner FROM relay_queue"
                                                                       " WHERE state <> 'sent'")
            await asyncio.sleep(0.1)
        tickets = await store.tickets_list()
        acks = await store.pool.fetch("SELECT ticket_id, message_id, state, attempts FROM relay_queue"
                                      " WHERE event='ack'")
        assert len(tickets) == total  # a message node-a took down with it was sent again to node-b
        assert sorted(r["ticket_id"] for r in acks) == sorted(t["id"] for t in tickets)  # one each
        assert all(r["state"] == "sent" for r in acks), [dict(r) for r in acks if r["state"] != "sent"]
        counts = {mid: sink.received.count(mid) for mid in {r["message_id"] for r in acks}}
        assert all(n >= 1 for n in counts.values()), [m for m, n in counts.items() if n == 0]
        attempts = {r["message_id"]: r["attempts"] for r in acks}
        twice = [m for m, n in counts.items() if n > 1]
        assert all(attempts[m] >= 2 for m in twice), [(m, attempts[m]) for m in twice]
        taken_over = sum(1 for r in acks if r["attempts"] > 1)
        print(f"\n{len(tickets)} tickets, {len(acks)} acknowledgements all sent; {taken_over} taken over after"
              f" node-a died, {len(twice)} of them delivered twice (sent by node-a, result lost with it)")
        assert a.proc.returncode == -signal.SIGKILL
        assert b.stop() == 0
    finally:
        await store.close()
        controller.stop()
