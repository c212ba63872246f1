"""Async DNS for the auth checks, with a TTL-respecting positive and negative cache.

Every DNS question asked by SPF, DKIM, DMARC and ARC goes through one :class:`Resolver`, so a
test (or an operator's ``[dns] nameservers``) decides who answers. Three outcomes are kept
apart, because the auth results depend on the difference:

* an answer with records (``status == "ok"``);
* a definite "no such data" — NXDOMAIN (``"nxdomain"``), NOERROR without records
  (``"nodata"``) or a name that cannot exist on the wire (``"invalid"``: empty or over-long
  label). These are cached for the SOA-derived negative TTL (RFC 2308);
* a temporary failure — timeout, SERVFAIL/REFUSED from every server, unparsable reply — raised
  as :class:`DnsTempError` and never cached, never turned into "no record".

Concurrent questions for the same (name, type) share one query in flight.
"""
from __future__ import annotations

import asyncio
import ipaddress
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable

import dns.asyncresolver
import dns.exception
import dns.message
import dns.name
import dns.nameserver
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.resolver
from gateway.config.domains import to_ascii_domain

__all__ = ["DnsTempError", "DnsAnswer", "Resolver", "to_ascii_domain"]

SUPPORTED_TYPES = ("A", "AAAA", "MX", "PTR", "TXT")


class DnsTempError(Exception):
    """A temporary DNS failure (timeout, SERVFAIL, no usable server): retry later."""

    def __init__(self, name: str, rdtype: str, reason: str) -> None:
        self.name = name
        self.rdtype = rdtype
        self.reason = reason
        super().__init__(f"{name}/{rdtype}: {reason}")


@dataclass(frozen=True, slots=True)
class DnsAnswer:
    """The answer to one question.

    ``records`` by type: A/AAAA → address strings; MX → (preference, exchange) with the
    exchange lower-cased and without the final dot; PTR → target names likewise; TXT → one
    tuple of byte strings per record (the character-strings, not yet joined).
    """

    name: str
    rdtype: str
    status: str  # "ok" | "nodata" | "nxdomain" | "invalid"
    records: tuple = ()
    ttl: int = 0

    @property
    def exists(self) -> bool:
        return self.status == "ok" and bool(self.records)


@dataclass
class ResolverStats:
    queries: int = 0
    cache_hits: int = 0
    shared_inflight: int = 0
    temp_errors: int = 0
    negative: int = 0
    by_type: dict = field(default_factory=dict)


class Resolver:
    """Async stub resolver over dnspython.

    ``nameservers``: ((ip, port), ...); an empty tuple means the system configuration
    (/etc/resolv.conf). ``timeout``: seconds for one question, all servers and retries included.
    """

    def __init__(
        self,
        nameservers: tuple[tuple[str, int], ...] = (),
        timeout: float = 5.0,
        *,
        max_entries: int = 50_000,
        max_ttl: int = 86_400,
        negative_ttl_default: int = 300,
        negative_ttl_max: int = 3_600,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        self.nameservers = tuple(nameservers)
        self.timeout = float(timeout)
        self._max_entries = max_entries
        self._max_ttl = max_ttl
        self._neg_default = negative_ttl_default
        self._neg_max = negative_ttl_max
        self._clock = clock
        self._cache: OrderedDict[tuple[str, str], tuple[float, DnsAnswer]] = OrderedDict()
        self._inflight: dict[tuple[str, str], asyncio.Future] = {}
        self.stats = ResolverStats()
        self._config_error: str | None = None
        try:
            r = dns.asyncresolver.Resolver(configure=not self.nameservers)
        except dns.resolver.NoResolverConfiguration as e:  # no /etc/resolv.conf
            r = dns.asyncresolver.Resolver(configure=False)
            self._config_error = f"no resolver configuration: {e}"
        if self.nameservers:
            r.nameservers = [dns.nameserver.Do53Nameserver(str(ipaddress.ip_address(ip)), int(port))
                             for ip, port in self.nameservers]
        r.cache = None
        r.lifetime = self.timeout
        # per-server attempt timeout: leave room for a second try / server within the lifetime
        r.timeout = max(self.timeout / 2, 0.05) if len(r.nameservers) > 1 else self.timeout
        r.retry_servfail = False
        r.search = []
        r.use_search_by_default = False
        self._r = r

    # ------------------------------------------------------------------ cache
    def cache_clear(self) -> None:
        self._cache.clear()

    def cache_size(self) -> int:
        return len(self._cache)

    def _cache_get(self, key: tuple[str, str]) -> DnsAnswer | None:
        hit = self._cache.get(key)
        if hit is None:
            return None
        expires, ans = hit
        if self._clock() >= expires:
            del self._cache[key]
            return None
        self._cache.move_to_end(key)
        return ans

    def _cache_put(self, key: tuple[str, str], ans: DnsAnswer) -> None:
        if ans.ttl <= 0:
            return
        self._cache[key] = (self._clock() + ans.ttl, ans)
        self._cache.move_to_end(key)
        while len(self._cache) > self._max_entries:
            self._cache.popitem(last=False)

    def cached(self, key: tuple[str, str]) -> DnsAnswer | None:
        """The fresh cached answer for ``(name, TYPE)`` as the cache keys it (lower case, no final
        dot, A-label), without counting a query: for callers that check an answer is still current."""
        return self._cache_get(key)

    # ------------------------------------------------------------------ queries
    def peek(self, name: str, rdtype: str) -> DnsAnswer | None:
        """The fresh cached answer, if any, without awaiting (for synchronous callers)."""
        key = (name.lower().rstrip("."), rdtype.upper())
        hit = self._cache_get(key)
        if hit is not None:
            self.stats.queries += 1
            self.stats.cache_hits += 1
        return hit

    async def query(self, name: str, rdtype: str) -> DnsAnswer:
        """Answer one question, from the cache when fresh. Raises DnsTempError."""
        rdtype = rdtype.upper()
        if rdtype not in SUPPORTED_TYPES:
            raise ValueError(f"unsupported type {rdtype}")
        fast = self.peek(name, rdtype) if name.isascii() else None
        if fast is not None:
            return fast
        try:
            qname = to_ascii_domain(name)
            dname = dns.name.from_text(qname + ".")
        except (ValueError, dns.exception.DNSException):
            return DnsAnswer(str(name), rdtype, "invalid")
        key = (qname, rdtype)
        self.stats.queries += 1
        self.stats.by_type[rdtype] = self.stats.by_type.get(rdtype, 0) + 1
        hit = self._cache_get(key)
        if hit is not None:
            self.stats.cache_hits += 1
            return hit
        fut = self._inflight.get(key)
        if fut is not None:
            self.stats.shared_inflight += 1
            return await asyncio.shield(fut)
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self._inflight[key] = fut
        try:
            ans = await self._resolve(qname, dname, rdtype)
        except BaseException as e:
            if not fut.done():
                if isinstance(e, (DnsTempError, asyncio.CancelledError)):
                    fut.set_exception(e if isinstance(e, DnsTempError) else DnsTempError(qname, rdtype, "cancelled"))
                else:
                    fut.set_exception(DnsTempError(qname, rdtype, f"resolver error: {e!r}"))
                fut.exception()  # mark retrieved: waiters may be none
            raise
        else:
            self._cache_put(key, ans)
            fut.set_result(ans)
            return ans
        finally:
            self._inflight.pop(key, None)

    async def _resolve(self, qname: str, dname: dns.name.Name, rdtype: str) -> DnsAnswer:
        if self._config_error and not self._r.nameservers:
            self.stats.temp_errors += 1
            raise DnsTempError(qname, rdtype, self._config_error)
        rdt = dns.rdatatype.from_text(rdtype)
        try:
            ans = await self._r.resolve(dname, rdt, raise_on_no_answer=False, search=False)
        except dns.resolver.NXDOMAIN as e:
            self.stats.negative += 1
            resp = None
            try:
                resp = e.response(dname)
            except Exception:
                pass
            return DnsAnswer(qname, rdtype, "nxdomain", (), self._negative_ttl(resp))
        except dns.resolver.YXDOMAIN:
            self.stats.negative += 1
            return DnsAnswer(qname, rdtype, "invalid", (), self._neg_default)
        except dns.exception.Timeout as e:
            self.stats.temp_errors += 1
            raise DnsTempError(qname, rdtype, f"timeout after {self.timeout:g}s") from e
        except dns.resolver.NoNameservers as e:
            self.stats.temp_errors += 1
            raise DnsTempError(qname, rdtype, _servfail_reason(e)) from e
        except dns.exception.DNSException as e:
            self.stats.temp_errors += 1
            raise DnsTempError(qname, rdtype, f"{type(e).__name__}: {e}") from e
        except OSError as e:
            self.stats.temp_errors += 1
            raise DnsTempError(qname, rdtype, f"network error: {e}") from e
        rrset = ans.rrset
        if rrset is None or len(rrset) == 0:
            self.stats.negative += 1
            return DnsAnswer(qname, rdtype, "nodata", (), self._negative_ttl(ans.response))
        ttl = min(int(rrset.ttl), self._max_ttl)
        # the TTL of the whole CNAME chain is the smallest one in it
        try:
            for rr in ans.response.answer:
                ttl = min(ttl, int(rr.ttl))
        except Exception:
            pass
        return DnsAnswer(qname, rdtype, "ok", _convert(rdtype, rrset), max(ttl, 0))

    def _negative_ttl(self, response: dns.message.Message | None) -> int:
        """RFC 2308 5: min(SOA TTL, SOA MINIMUM) from the authority section."""
        if response is not None:
            for rrset in response.authority:
                if rrset.rdtype == dns.rdatatype.SOA and len(rrset):
                    soa = next(iter(rrset))
                    return max(0, min(int(rrset.ttl), int(soa.minimum), self._neg_max))
        return self._neg_default

    # ------------------------------------------------------------------ helpers
    async def a(self, name: str) -> list[str]:
        return list((await self.query(name, "A")).records)

    async def aaaa(self, name: str) -> list[str]:
        return list((await self.query(name, "AAAA")).records)

    async def mx(self, name: str) -> list[tuple[int, str]]:
        return list((await self.query(name, "MX")).records)

    async def ptr(self, name_or_ip: str) -> list[str]:
        """PTR targets for a reverse name, or for an IP address (its in-addr/ip6 name)."""
        try:
            name = ipaddress.ip_address(name_or_ip).reverse_pointer
        except ValueError:
            name = name_or_ip
        return list((await self.query(name, "PTR")).records)

    async def txt_strings(self, name: str) -> list[tuple[bytes, ...]]:
        return list((await self.query(name, "TXT")).records)

    async def txt_bytes(self, name: str) -> list[bytes]:
        """TXT records, each record's strings joined (RFC 7208 3.3, RFC 6376 3.6.2.2)."""
        return [b"".join(r) for r in (await self.query(name, "TXT")).records]

    async def txt(self, name: str) -> list[str]:
        """TXT records as text (UTF-8, undecodable bytes replaced)."""
        return [b.decode("utf-8", "replace") for b in await self.txt_bytes(name)]


def _servfail_reason(e: dns.resolver.NoNameservers) -> str:
    try:
        errs = e.kwargs.get("errors") or []
        for err in errs:
            # (server, tcp, port, exception-or-answer, ...)
            for item in err:
                if isinstance(item, dns.message.Message):
                    return f"{dns.rcode.to_text(item.rcode())} from {err[0]}"
            if len(err) > 3 and err[3] is not None:
                return f"{err[3]} from {err[0]}"
    except Exception:
        pass
    return "no nameserver answered (SERVFAIL/REFUSED)"


def _convert(rdtype: str, rrset) -> tuple:
    if rdtype in ("A", "AAAA"):
        return tuple(r.address for r in rrset)
    if rdtype == "MX":
        return tuple(sorted((int(r.preference), r.exchange.to_text(omit_final_dot=True).lower())
                            for r in rrset))
    if rdtype == "PTR":
        return tuple(r.target.to_text(omit_final_dot=True).lower() for r in rrset)
    if rdtype == "TXT":
        return tuple(tuple(r.strings) for r in rrset)
    raise ValueError(rdtype)  # pragma: no cover
