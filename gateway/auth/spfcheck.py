"""SPF (RFC 7208) over pyspf, with every DNS answer from our async :class:`Resolver`.

pyspf is synchronous and its DNS hook (``spf.DNSLookup``) is a module global. We use neither the
hook nor a thread: :class:`_ReplayQuery` overrides the per-query ``dns`` method and answers only
from a per-check memo of answers. When pyspf asks for something not in the memo, the query is
abandoned (a ``BaseException`` pyspf's ``except TempError/PermError`` cannot swallow; any
question asked inside pyspf's bare ``except:`` blocks is also recorded), the missing answers
are fetched asynchronously, and the whole evaluation is run again from the start. SPF evaluation
is a few microseconds of pure computation and deterministic for a fixed memo, so each replay
goes exactly as far as the last one plus the new answers; a check needing *n* DNS answers takes
*n*+1 cheap passes and never blocks the loop. Each check has its own memo, so concurrent checks
with different resolvers cannot see each other's answers.

Deviation from pyspf, on purpose: an AAAA question that gets NOERROR without records (the name
exists, it just has no IPv6 address) does not count as a *void lookup* (RFC 7208 4.6.4). pyspf
counts it, so an IPv6 client checked against ``a``/``mx`` mechanisms naming IPv4-only hosts hits
the limit of two and gets permerror (pyspf issues #40, #41, #44). NXDOMAIN and empty answers to
every other question still count, so the DoS protection the limit exists for is kept.
"""
from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable

import spf

from gateway.auth.dns import DnsAnswer, DnsTempError, Resolver

__all__ = ["SpfCache", "SpfResult", "check_spf", "helo_is_domain"]

log = logging.getLogger(__name__)

MAX_REPLAYS = 200  # far above what pyspf's own limits allow (10 mechanisms, 10 MX/PTR names each)


class _NeedLookup(BaseException):
    """Raised inside pyspf when an answer is not in the memo (BaseException on purpose)."""


class _Temp:
    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


class _ReplayQuery(spf.query):
    def __init__(self, *args, memo: dict, resolver: Resolver | None = None, **kw) -> None:
        super().__init__(*args, **kw)
        self._memo = memo
        self._resolver = resolver
        self.missing: list[tuple[str, str]] = []
        self.dns_questions = 0

    def dns(self, name, qtype, cnames=None, ignore_void=False):  # noqa: D401 - pyspf API
        if not name:
            raise spf.PermError("Invalid query: empty domain name")
        name = str(name)
        if name.endswith("."):
            name = name[:-1]
        labels = name.split(".")
        if not all(0 < len(x) < 64 for x in labels):
            return []  # invalid DNS name: no answer, as pyspf does
        name = name.lower()
        key = (name, qtype)
        ans = self._memo.get(key)
        if ans is None and self._resolver is not None and qtype in ("A", "AAAA", "MX", "PTR", "TXT"):
            ans = self._resolver.peek(name, qtype)  # cached answers need no replay
            if ans is not None:
                self._memo[key] = ans
        if ans is None:
            self.missing.append(key)
            raise _NeedLookup(key)
        self.dns_questions += 1
        if isinstance(ans, _Temp):
            raise spf.TempError("DNS " + ans.reason)
        result = _to_pyspf(ans)
        if not result and not ignore_void:
            if not (qtype == "AAAA" and ans.status == "nodata"):
                self.void_lookups += 1
                if self.void_lookups > spf.MAX_VOID_LOOKUPS:
                    raise spf.PermError("Void lookup limit of %d exceeded" % spf.MAX_VOID_LOOKUPS)
        return result


def _to_pyspf(ans: DnsAnswer) -> list:
    if ans.status != "ok":
        return []
    if ans.rdtype in ("A", "AAAA", "PTR"):
        return list(ans.records)
    if ans.rdtype == "MX":
        return [(p, h) for p, h in ans.records]
    if ans.rdtype in ("TXT", "SPF"):
        return [tuple(r) for r in ans.records]
    return []


@dataclass(frozen=True)
class SpfResult:
    """One check_host() evaluation."""

    result: str  # none neutral pass fail softfail temperror permerror
    identity: str  # "mailfrom" | "helo"
    domain: str  # the domain checked ("" when none could be derived)
    sender: str  # the <sender> given to check_host (postmaster@helo for the HELO identity)
    client_ip: str
    helo: str
    reason: str = ""
    mechanism: str | None = None
    dns_questions: int = 0
    extra: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        d = {
            "result": self.result,
            "identity": self.identity,
            "domain": self.domain,
            "sender": self.sender,
            "client_ip": self.client_ip,
            "helo": self.helo,
            "reason": self.reason,
            "mechanism": self.mechanism,
        }
        d.update(self.extra)
        return d


_DOMAIN_RE = re.compile(r"^(?=.{1,253}$)([A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?\.)+"
                        r"[A-Za-z0-9-]{1,63}\.?$")


_HELO_SEEN: dict[str, bool] = {}


def helo_is_domain(helo: str) -> bool:
    """True for a plausible FQDN (at least two labels, no address literal).

    Asked twice per message with the session's one HELO name; the answer is remembered (bounded)
    because the ``ipaddress`` attempt alone costs about 10 µs."""
    hit = _HELO_SEEN.get(helo)
    if hit is None:
        hit = _helo_is_domain(helo)
        if len(_HELO_SEEN) >= 4096:
            _HELO_SEEN.clear()
        _HELO_SEEN[helo] = hit
    return hit


def _helo_is_domain(helo: str) -> bool:
    if not helo or helo.startswith("["):
        return False
    try:
        ipaddress.ip_address(helo)
        return False
    except ValueError:
        pass
    try:
        helo.encode("ascii")
    except UnicodeEncodeError:
        return "." in helo.strip(".")
    return bool(_DOMAIN_RE.match(helo))


class SpfCache:
    """check_host() results for inputs seen before, each valid only while every DNS answer it was
    computed from is still the resolver's cached answer (the same object, so within its TTL).

    An MX sees the same (client IP, sender, HELO) again and again: every message of a reused
    connection, and a big sender's few outbound IPs. Evaluating a cached record with pyspf costs
    about 150 µs per identity, two identities per message. The key holds every input of
    check_host() (the local-part too, for %{l} macros), and the check of the answers makes a hit
    exactly what a new evaluation would give. Results that saw a DNS temporary error are not kept, nor
    those whose explanation may use the %{t} macro (the current time).
    """

    def __init__(self, max_entries: int = 10_000, max_age: float = 300.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._entries: OrderedDict[tuple, tuple[float, SpfResult, tuple]] = OrderedDict()
        self.max_entries = max_entries
        self.max_age = max_age
        self._clock = clock
        self.hits = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: tuple) -> bool:
        """A result is kept for ``key`` (not checked for freshness: :meth:`get` does that)."""
        return key in self._entries

    @staticmethod
    def key(ip: str, sender: str, helo: str, receiver: str, default_explanation: str | None = None) -> tuple:
        """Every input of check_host(): what a kept result is looked up by."""
        return (ip, sender, helo, receiver, default_explanation)

    def get(self, resolver: Resolver, key: tuple) -> SpfResult | None:
        hit = self._entries.get(key)
        if hit is None:
            return None
        born, result, deps = hit
        if self._clock() - born > self.max_age or any(resolver.cached(k) is not ans for k, ans in deps):
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return result

    def put(self, resolver: Resolver, key: tuple, result: SpfResult, memo: dict) -> None:
        if result.result == "temperror" or any(isinstance(a, _Temp) for a in memo.values()):
            return
        if _uses_time_macro(key[4], memo):
            return  # an explanation with %{t} reads the clock: a kept copy would carry an old time
        deps = tuple(memo.items())
        if any(resolver.cached(k) is not ans for k, ans in deps):
            return  # an answer the resolver does not keep (TTL 0, invalid name): nothing to vouch for it
        self._entries[key] = (self._clock(), result, deps)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)


def _uses_time_macro(default_explanation: str | None, memo: dict) -> bool:
    """Whether an explanation this evaluation may have expanded contains the %{t} macro (RFC 7208
    7.3: allowed only in exp= text, so any TXT answer carrying it can only be an explanation)."""
    if default_explanation is not None and "%{t" in default_explanation.lower():
        return True
    for (_name, qtype), ans in memo.items():
        if qtype == "TXT" and isinstance(ans, DnsAnswer):
            if any(b"%{t" in b"".join(record).lower() for record in ans.records):
                return True
    return False


async def _fetch(resolver: Resolver, memo: dict, key: tuple[str, str]) -> None:
    name, qtype = key
    if qtype not in ("A", "AAAA", "MX", "PTR", "TXT"):
        memo[key] = DnsAnswer(name, qtype, "nodata")  # type SPF (99) is never asked in strict=True
        return
    try:
        memo[key] = await resolver.query(name, qtype)
    except DnsTempError as e:
        memo[key] = _Temp(e.reason)


async def check_spf(
    resolver: Resolver,
    *,
    ip: str,
    sender: str,
    helo: str,
    receiver: str = "unknown",
    timeout: float = 20.0,
    default_explanation: str | None = None,
    syntax_filter: bool = True,
    cache: SpfCache | None = None,
) -> SpfResult:
    """check_host() for one identity. ``sender`` empty means the HELO identity
    (RFC 7208 2.3: <sender> is postmaster@<helo>). Never raises for DNS trouble: a timeout
    or SERVFAIL gives ``temperror``; ``timeout`` bounds the whole evaluation (RFC 7208 4.6.4
    suggests at least 20 s). ``syntax_filter``: answer ``none`` without DNS for a HELO
    identity that is an address literal or not a dotted name (off for the RFC suite, which
    feeds check_host() directly). ``cache``: reuse the result of the same inputs while its DNS
    answers are still cached (:class:`SpfCache`)."""
    identity = "mailfrom" if sender else "helo"
    if identity == "helo":
        domain = helo.rstrip(".").lower()
        eff_sender = f"postmaster@{domain}" if domain else ""
    else:
        domain = sender.rsplit("@", 1)[1].rstrip(".").lower() if "@" in sender else helo.rstrip(".").lower()
        eff_sender = sender
    if identity == "helo" and syntax_filter and not helo_is_domain(helo):
        return SpfResult("none", identity, "", "", ip, helo, reason="HELO name is not a domain name")
    key = SpfCache.key(ip, sender, helo, receiver, default_explanation)
    if cache is not None:
        hit = cache.get(resolver, key)
        if hit is not None:
            return hit
    memo: dict = {}
    q: _ReplayQuery | None = None
    try:
        async with asyncio.timeout(timeout):
            for _ in range(MAX_REPLAYS):
                q = _ReplayQuery(ip, sender if sender else "", helo, receiver=receiver, memo=memo,
                                 resolver=resolver)
                if default_explanation is not None:
                    q.set_default_explanation(default_explanation)
                try:
                    res, _code, exp = q.check()
                except _NeedLookup:
                    res, exp = None, ""
                if not q.missing:
                    break
                await asyncio.gather(*(_fetch(resolver, memo, k) for k in dict.fromkeys(q.missing)))
            else:
                return SpfResult("permerror", identity, domain, eff_sender, ip, helo,
                                 reason="SPF evaluation did not converge")
    except TimeoutError:
        return SpfResult("temperror", identity, domain, eff_sender, ip, helo,
                         reason=f"SPF evaluation exceeded {timeout:g}s")
    except Exception as e:  # a pyspf bug must not take the SMTP session down
        log.warning("pyspf raised for %s: %r", domain, e)
        return SpfResult("permerror", identity, domain, eff_sender, ip, helo, reason=f"SPF evaluation error: {e}")
    assert q is not None and res is not None
    if res == "ambiguous":  # only in harsh mode, which we never use
        res = "permerror"
    reason = exp or ""
    if res in ("temperror", "permerror"):
        reason = getattr(q, "prob", "") or exp or ""
    mech = q.mechanism if isinstance(q.mechanism, str) else None
    result = SpfResult(res, identity, domain, eff_sender, ip, helo, reason=reason, mechanism=mech,
                       dns_questions=q.dns_questions)
    if cache is not None:
        cache.put(resolver, key, result, memo)
    return result
