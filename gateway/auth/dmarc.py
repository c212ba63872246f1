"""DMARC (RFC 7489): Author Domain extraction, policy discovery, alignment, p/sp/pct.

Our own implementation over the SPF and DKIM results; only the Public Suffix List comes from
a library (publicsuffixlist, ICANN and private sections).
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass, field

from gateway.auth.dns import DnsTempError, Resolver, to_ascii_domain
from gateway.auth.fromfield import read_mailboxes, simple_from
from gateway.auth.headers import header_values

__all__ = [
    "FromInfo", "parse_from", "DmarcRecord", "parse_dmarc_record", "OrgDomains",
    "discover_policy", "Discovery", "DmarcDomainResult", "evaluate_domain", "aligned",
]

_LABEL_RE = re.compile(r"^[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?$")


def valid_domain(d: str) -> bool:
    if not d or len(d) > 253 or "." not in d:
        return False
    return all(_LABEL_RE.match(x) for x in d.split("."))


# --------------------------------------------------------------------------- From
@dataclass(frozen=True)
class FromInfo:
    """The RFC5322.From domains. ``error`` is set when DMARC cannot be applied (RFC 7489
    6.6.1: no From, several From fields, or no usable domain). ``unevaluated``: single-label
    domains (``root@localhost``): readable, but no DMARC policy can exist for them, so the
    message is unauthenticated (dmarc=none, never pass), not malformed."""

    domains: tuple[str, ...] = ()
    addresses: tuple[str, ...] = ()
    error: str | None = None
    unevaluated: tuple[str, ...] = ()   # single-label domains (root@localhost): no DMARC, no error


def parse_from(raw: bytes) -> FromInfo:
    """The From DMARC evaluates, read by :func:`gateway.auth.fromfield.read_mailboxes` (the reader
    the MIME parser uses too). A single-label domain (``root@localhost`` from a monitoring system
    behind an internal relay) is a readable address that DMARC cannot evaluate: it is listed in
    ``unevaluated``, not an error, and the message is simply unauthenticated (dmarc=none)."""
    fields_ = header_values(raw, "From")
    if not fields_:
        return FromInfo(error="no From header field")
    if len(fields_) > 1:
        return FromInfo(error=f"{len(fields_)} From header fields")
    pairs, problem = read_mailboxes(fields_[0].text())
    if problem is not None:
        return FromInfo(error=problem)
    addrs = [a for _n, a in pairs]
    if not addrs:
        return FromInfo(error="From header field has no address")
    domains: list[str] = []
    unevaluated: list[str] = []
    for a in addrs:
        if "@" not in a:
            return FromInfo(addresses=tuple(addrs), error=f"From address without a domain: {_printable(a)}")
        dom = a.rsplit("@", 1)[1].strip().strip("[]").rstrip(".")
        try:
            dom = to_ascii_domain(dom)
        except ValueError:
            return FromInfo(addresses=tuple(addrs), error=f"From domain is not a valid domain: {_printable(dom)}")
        if valid_domain(dom):
            if dom not in domains:
                domains.append(dom)
        elif _LABEL_RE.match(dom) and not dom.isdigit():
            if dom not in unevaluated:
                unevaluated.append(dom)
        else:
            return FromInfo(addresses=tuple(addrs), error=f"From domain is not a valid domain: {_printable(dom)}")
    return FromInfo(domains=tuple(domains), addresses=tuple(addrs), unevaluated=tuple(unevaluated))


# Kept here for the tests that compare the fast path with getaddresses.
def _simple_from(value: str) -> list[str] | None:
    pairs = simple_from(value)
    return None if pairs is None else [a for _n, a in pairs]


def _printable(s: str) -> str:
    return "".join(c if 32 < ord(c) < 127 else "?" for c in s)[:100]


# --------------------------------------------------------------------------- records
@dataclass(frozen=True)
class DmarcRecord:
    p: str  # none | quarantine | reject
    sp: str | None
    adkim: str = "r"
    aspf: str = "r"
    pct: int = 100
    raw: str = ""


_POLICIES = ("none", "quarantine", "reject")
_DMARC_V = re.compile(r"^\s*v\s*=\s*DMARC1\s*(;|$)")


def is_dmarc_record(txt: str) -> bool:
    return bool(_DMARC_V.match(txt))


def parse_dmarc_record(txt: str) -> DmarcRecord | None:
    """None when the record must be ignored (not v=DMARC1 first, or no valid p= and no rua=,
    RFC 7489 6.3). An invalid p= with a valid rua= is read as p=none."""
    if not is_dmarc_record(txt):
        return None
    tags: dict[str, str] = {}
    for part in txt.split(";")[1:]:
        if "=" not in part:
            continue
        k, v = part.split("=", 1)
        k = k.strip().lower()
        if k and k not in tags:
            tags[k] = v.strip()
    p = tags.get("p", "").lower()
    sp = tags.get("sp", "").lower() or None
    has_rua = any(u.strip().lower().startswith("mailto:") for u in tags.get("rua", "").split(","))
    if p not in _POLICIES or (sp is not None and sp not in _POLICIES):
        if not has_rua:
            return None
        if p not in _POLICIES:
            p = "none"
        if sp is not None and sp not in _POLICIES:
            sp = None
    adkim = tags.get("adkim", "r").lower()
    aspf = tags.get("aspf", "r").lower()
    try:
        pct = int(tags.get("pct", "100"))
        if not 0 <= pct <= 100:
            pct = 100
    except ValueError:
        pct = 100
    return DmarcRecord(p=p, sp=sp, adkim=adkim if adkim in ("r", "s") else "r",
                       aspf=aspf if aspf in ("r", "s") else "r", pct=pct, raw=txt)


# --------------------------------------------------------------------------- org domain
class OrgDomains:
    """Organizational Domain (RFC 7489 3.2) from a Public Suffix List."""

    def __init__(self, psl=None) -> None:
        if psl is None:
            from publicsuffixlist import PublicSuffixList

            psl = PublicSuffixList()
        self._psl = psl
        self._memo: dict[str, str] = {}

    def __call__(self, domain: str) -> str:
        domain = domain.lower().rstrip(".")
        got = self._memo.get(domain)
        if got is None:
            try:
                got = self._psl.privatesuffix(domain) or domain
            except Exception:
                got = domain
            if len(self._memo) > 100_000:
                self._memo.clear()
            self._memo[domain] = got
        return got


def aligned(identifier: str, from_domain: str, mode: str, org: OrgDomains) -> bool:
    a = identifier.lower().rstrip(".")
    b = from_domain.lower().rstrip(".")
    if not a or not b:
        return False
    if mode == "s":
        return a == b
    return a == b or org(a) == org(b)


# --------------------------------------------------------------------------- discovery
@dataclass(frozen=True)
class Discovery:
    status: str  # "found" | "none" | "temperror"
    record: DmarcRecord | None = None
    record_domain: str | None = None  # where the record was found
    reason: str = ""


_PARSED: dict[str, "DmarcRecord | None"] = {}


def _parsed_record(txt: str) -> DmarcRecord | None:
    """parse_dmarc_record, remembered per record text (bounded): a busy MX sees the same few
    records on every message, and DmarcRecord is immutable, so one parse serves them all."""
    try:
        return _PARSED[txt]
    except KeyError:
        pass
    rec = parse_dmarc_record(txt)
    if len(txt) <= 2048:
        if len(_PARSED) >= 1024:
            _PARSED.clear()
        _PARSED[txt] = rec
    return rec


async def _records_at(resolver: Resolver, domain: str) -> list[str]:
    txts = await resolver.txt(f"_dmarc.{domain}")
    return [t for t in txts if is_dmarc_record(t)]


async def discover_policy(resolver: Resolver, from_domain: str, org: OrgDomains) -> Discovery:
    """RFC 7489 6.6.3: the Author Domain, then (only when it has no record) the Organizational
    Domain. A DNS temporary failure is ``temperror``, never "no record"."""
    org_domain = org(from_domain)
    for dom in ((from_domain,) if org_domain == from_domain else (from_domain, org_domain)):
        try:
            recs = await _records_at(resolver, dom)
        except DnsTempError as e:
            return Discovery("temperror", reason=f"DMARC lookup for {dom}: {e.reason}")
        if len(recs) > 1:
            return Discovery("none", reason=f"{len(recs)} DMARC records at _dmarc.{dom}")
        if len(recs) == 1:
            rec = _parsed_record(recs[0])
            if rec is None:
                return Discovery("none", reason=f"unusable DMARC record at _dmarc.{dom} (no valid p=)")
            return Discovery("found", rec, dom)
    return Discovery("none", reason="no DMARC record")


# --------------------------------------------------------------------------- evaluation
@dataclass
class DmarcDomainResult:
    domain: str
    org_domain: str
    result: str  # pass | fail | none | temperror
    record_domain: str | None = None
    p: str | None = None
    sp: str | None = None
    policy: str | None = None  # the policy that applies (p, or sp for a subdomain)
    disposition: str = "none"  # what the policy asks after pct= sampling: none|quarantine|reject
    pct: int = 100
    adkim: str = "r"
    aspf: str = "r"
    dkim_aligned: list[str] = field(default_factory=list)  # d= of aligned passing signatures
    spf_aligned: bool = False
    reason: str = ""

    def as_dict(self) -> dict:
        return {
            "domain": self.domain, "org_domain": self.org_domain, "result": self.result,
            "record_domain": self.record_domain, "p": self.p, "sp": self.sp, "policy": self.policy,
            "disposition": self.disposition, "pct": self.pct, "adkim": self.adkim, "aspf": self.aspf,
            "dkim_aligned": list(self.dkim_aligned), "spf_aligned": self.spf_aligned, "reason": self.reason,
        }


_DOWNGRADE = {"reject": "quarantine", "quarantine": "none", "none": "none"}


def evaluate_domain(
    from_domain: str,
    disc: Discovery,
    *,
    spf_result: str | None,
    spf_domain: str | None,
    dkim: list[dict],
    org: OrgDomains,
    rng: random.Random,
) -> DmarcDomainResult:
    """Alignment and policy for one Author Domain. ``spf_result``/``spf_domain``: the SPF result
    for the RFC5321.MailFrom domain (or the HELO domain for the null sender); ``dkim``: one dict
    per signature with ``d`` and ``result``."""
    out = DmarcDomainResult(domain=from_domain, org_domain=org(from_domain), result="none")
    if disc.status == "temperror":
        out.result = "temperror"
        out.reason = disc.reason
        return out
    if disc.status != "found" or disc.record is None:
        out.reason = disc.reason
        # alignment is still informative (may_act uses only the result)
        return out
    rec = disc.record
    out.record_domain = disc.record_domain
    out.p, out.sp, out.pct, out.adkim, out.aspf = rec.p, rec.sp, rec.pct, rec.adkim, rec.aspf
    is_sub = disc.record_domain != from_domain
    out.policy = (rec.sp or rec.p) if is_sub else rec.p
    temp = False
    for sig in dkim:
        d = sig.get("d") or ""
        if not d or not aligned(d, from_domain, rec.adkim, org):
            continue
        if sig.get("result") == "pass":
            out.dkim_aligned.append(d)
        elif sig.get("result") == "temperror":
            temp = True
    if spf_domain and aligned(spf_domain, from_domain, rec.aspf, org):
        if spf_result == "pass":
            out.spf_aligned = True
        elif spf_result == "temperror":
            temp = True
    if out.dkim_aligned or out.spf_aligned:
        out.result = "pass"
        out.reason = "aligned " + " and ".join(
            x for x in (("DKIM" if out.dkim_aligned else ""), ("SPF" if out.spf_aligned else "")) if x)
        return out
    if temp:
        out.result = "temperror"
        out.reason = "no aligned pass; an aligned identifier had a temporary DNS failure"
        return out
    out.result = "fail"
    out.reason = "no aligned SPF or DKIM pass"
    disposition = out.policy or "none"
    if disposition != "none" and rec.pct < 100 and rng.random() * 100 >= rec.pct:
        disposition = _DOWNGRADE[disposition]  # RFC 7489 6.6.4: not sampled → next lower policy
        out.reason += f"; not sampled by pct={rec.pct}"
    out.disposition = disposition
    return out
