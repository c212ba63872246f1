"""SPF result cache: a hit is what a fresh evaluation would give, and it never outlives its DNS answers.

A real DNS server on 127.0.0.1; the resolver's clock is a variable so TTLs can pass without sleeping.
"""
from __future__ import annotations

import pytest

from gateway.auth.dns import Resolver
from gateway.auth.spfcheck import SpfCache, check_spf

IP = "192.0.2.10"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def world(dns_server):
    clock = Clock()
    dns_server.resolver.ttl = 60
    resolver = Resolver(dns_server.nameservers, 2.0, clock=clock)
    yield dns_server, resolver, clock, SpfCache(clock=clock)
    dns_server.resolver.ttl = 300


async def _check(resolver, cache, sender="alice@example.org", helo="mail.example.org", ip=IP):
    return await check_spf(resolver, ip=ip, sender=sender, helo=helo, receiver="mx.test", cache=cache)


async def test_hit_is_the_same_result_without_dns_or_pyspf(world):
    srv, resolver, clock, cache = world
    srv.set_zone({"example.org": [("TXT", f"v=spf1 include:_s.example.org -all")],
                  "_s.example.org": [("TXT", f"v=spf1 ip4:{IP} -all")]})
    first = await _check(resolver, cache)
    assert first.result == "pass" and len(cache) == 1 and cache.hits == 0
    asked = len(srv.queries)
    for _ in range(5):
        again = await _check(resolver, cache)
        assert again == first
    assert cache.hits == 5 and len(srv.queries) == asked
    # Any other input is another entry: other IP (fail), other HELO, the HELO identity.
    assert (await _check(resolver, cache, ip="198.51.100.1")).result == "fail"
    assert (await _check(resolver, cache, sender="", helo="mail.example.org")).identity == "helo"
    assert len(cache) == 3


async def test_result_follows_the_dns_once_the_answer_expires(world):
    srv, resolver, clock, cache = world
    srv.set_zone({"example.org": [("TXT", f"v=spf1 ip4:{IP} -all")]})
    assert (await _check(resolver, cache)).result == "pass"
    srv.set_zone({"example.org": [("TXT", "v=spf1 -all")]})
    clock.now += 30  # within the TTL: the resolver would hand pyspf the same old record anyway
    assert (await _check(resolver, cache)).result == "pass"
    assert (await check_spf(resolver, ip=IP, sender="alice@example.org", helo="mail.example.org",
                            receiver="mx.test")).result == "pass"  # no cache: same answer from the DNS cache
    clock.now += 31  # the TXT answer expired: the result is computed again, from the new record
    assert (await _check(resolver, cache)).result == "fail"


async def test_an_included_record_expiring_also_invalidates(world):
    srv, resolver, clock, cache = world
    srv.set_zone({"example.org": [("TXT", "v=spf1 include:_s.example.org -all")],
                  "_s.example.org": [("TXT", f"v=spf1 ip4:{IP} -all")]})
    assert (await _check(resolver, cache)).result == "pass"
    srv.set_zone({"example.org": [("TXT", "v=spf1 include:_s.example.org -all")],
                  "_s.example.org": [("TXT", "v=spf1 -all")]})
    resolver._cache.pop(("_s.example.org", "TXT"))  # only the included record leaves the DNS cache
    assert (await _check(resolver, cache)).result == "fail"


async def test_local_part_macros_are_part_of_the_key(world):
    srv, resolver, clock, cache = world
    srv.set_zone({"example.org": [("TXT", "v=spf1 exists:%{l}.ok.example.org -all")],
                  "alice.ok.example.org": [("A", "127.0.0.2")]})
    assert (await _check(resolver, cache, sender="alice@example.org")).result == "pass"
    assert (await _check(resolver, cache, sender="bob@example.org")).result == "fail"
    assert (await _check(resolver, cache, sender="alice@example.org")).result == "pass"


async def test_temporary_errors_are_not_kept(world):
    srv, resolver, clock, cache = world
    srv.set_zone({"example.org": [("SERVFAIL", None)]})
    assert (await _check(resolver, cache)).result == "temperror"
    assert len(cache) == 0
    srv.set_zone({"example.org": [("TXT", f"v=spf1 ip4:{IP} -all")]})
    assert (await _check(resolver, cache)).result == "pass"


async def test_bounded_in_size_and_age(world):
    srv, resolver, clock, cache = world
    srv.set_zone({"example.org": [("TXT", "v=spf1 ip4:192.0.2.0/24 -all")]})
    small = SpfCache(max_entries=3, max_age=10, clock=clock)
    for i in range(5):
        await _check(resolver, small, ip=f"192.0.2.{i + 1}")
    assert len(small) == 3
    await _check(resolver, small, ip="192.0.2.5")
    assert small.hits == 1
    clock.now += 11  # older than max_age: evaluated again even though the DNS answer is still cached
    await _check(resolver, small, ip="192.0.2.5")
    assert small.hits == 1


async def test_an_explanation_with_the_time_macro_is_not_kept(world):
    """RFC 7208 7.3: %{t} is the current time, so a kept result would repeat an old timestamp."""
    srv, resolver, clock, cache = world
    srv.set_zone({"example.org": [("TXT", "v=spf1 -all exp=why.example.org")],
                  "why.example.org": [("TXT", "refused at %{t} for %{i}")]})
    first = await _check(resolver, cache)
    assert first.result == "fail" and "refused at " in first.reason
    assert len(cache) == 0
    again = await _check(resolver, cache)
    assert again.result == "fail" and cache.hits == 0
    # an explanation without the clock is kept as before
    srv.set_zone({"example.net": [("TXT", "v=spf1 -all exp=why.example.net")],
                  "why.example.net": [("TXT", "refused for %{i}")]})
    assert (await _check(resolver, cache, sender="bob@example.net")).result == "fail"
    assert len(cache) == 1
