"""The async Resolver against a real DNS server on 127.0.0.1."""
from __future__ import annotations

import asyncio
import socket

import pytest

from gateway.auth import DnsTempError, Resolver

from .helpers import run


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def test_answers_and_types(dns_server):
    dns_server.set_zone({
        "a.test": [("A", "192.0.2.1"), ("AAAA", "2001:db8::1"), ("MX", (10, "mx.a.test")),
                   ("TXT", ["v=spf1 ", "-all"]), ("TXT", "second")],
        "1.2.0.192.in-addr.arpa": [("PTR", "Host.A.Test")],
        "alias.test": [("CNAME", "a.test")],
        "long.test": [("TXT", "k=" + "x" * 600)],
    })
    r = Resolver(dns_server.nameservers, timeout=1.0)

    async def go():
        assert await r.a("a.test") == ["192.0.2.1"]
        assert await r.aaaa("A.TEST.") == ["2001:db8::1"]
        assert await r.mx("a.test") == [(10, "mx.a.test")]
        assert sorted(await r.txt("a.test")) == ["second", "v=spf1 -all"]
        assert await r.ptr("192.0.2.1") == ["host.a.test"]
        assert await r.a("alias.test") == ["192.0.2.1"]
        assert await r.txt("long.test") == ["k=" + "x" * 600]
        assert await r.a("nonexistent.test") == []
        assert (await r.query("nonexistent.test", "A")).status == "nxdomain"
        assert (await r.query("a.test", "PTR")).status == "nodata"
        assert (await r.query("bad..name", "A")).status == "invalid"
        assert (await r.query("x" * 64 + ".test", "A")).status == "invalid"
    run(go())


def test_positive_and_negative_cache_respect_ttl(dns_server):
    dns_server.set_zone({"c.test": [("A", "192.0.2.7")]})
    dns_server.resolver.ttl = 30
    dns_server.resolver.neg_ttl = 10
    clock = Clock()
    r = Resolver(dns_server.nameservers, timeout=1.0, clock=clock)

    async def go():
        dns_server.queries.clear()
        assert await r.a("c.test") == ["192.0.2.7"]
        assert await r.a("missing.test") == []
        assert len(dns_server.queries) == 2
        clock.t += 9
        assert await r.a("c.test") == ["192.0.2.7"]
        assert await r.a("missing.test") == []
        assert len(dns_server.queries) == 2  # both cached
        clock.t += 2  # negative entry (SOA minimum 10) expired, positive (30) not
        assert await r.a("missing.test") == []
        assert await r.a("c.test") == ["192.0.2.7"]
        assert len(dns_server.queries) == 3
        clock.t += 20
        assert await r.a("c.test") == ["192.0.2.7"]
        assert len(dns_server.queries) == 4
    try:
        run(go())
    finally:
        dns_server.resolver.ttl = 300
        dns_server.resolver.neg_ttl = 60


def test_servfail_and_timeout_are_temporary_and_not_cached(dns_server):
    dns_server.set_zone({"sf.test": [("SERVFAIL", None)], "to.test": [("DROP", None)]})
    r = Resolver(dns_server.nameservers, timeout=0.3)

    async def go():
        with pytest.raises(DnsTempError) as e:
            await r.txt("sf.test")
        assert "SERVFAIL" in e.value.reason
        with pytest.raises(DnsTempError) as e:
            await r.txt("to.test")
        assert "timeout" in e.value.reason
        dns_server.set_zone({"sf.test": [("TXT", "now fine")]})
        assert await r.txt("sf.test") == ["now fine"]  # the failure was not cached
    run(go())


def test_no_server_listening_is_temporary():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    r = Resolver((("127.0.0.1", port),), timeout=0.3)
    with pytest.raises(DnsTempError):
        run(r.a("anything.test"))


def test_concurrent_identical_questions_share_one_query(dns_server):
    dns_server.set_zone({"same.test": [("TXT", "x")]})
    r = Resolver(dns_server.nameservers, timeout=1.0)

    async def go():
        dns_server.queries.clear()
        res = await asyncio.gather(*(r.txt("same.test") for _ in range(20)))
        assert all(x == ["x"] for x in res)
        assert dns_server.queries.count(("same.test", "TXT")) == 1
    run(go())


def test_cache_is_bounded(dns_server):
    dns_server.set_zone({f"h{i}.test": [("A", "192.0.2.1")] for i in range(20)})
    r = Resolver(dns_server.nameservers, timeout=1.0, max_entries=5)

    async def go():
        for i in range(20):
            await r.a(f"h{i}.test")
    run(go())
    assert r.cache_size() == 5
