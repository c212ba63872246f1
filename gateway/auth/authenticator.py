"""The SMTP-time authentication check: SPF, DKIM, DMARC and ARC → one :class:`AuthVerdict`.

SMTP replies (every one a value: code, RFC 3463 enhanced code, text):

========================================  =====  ========  ===========================================
situation                                 code   enhanced  why this code
========================================  =====  ========  ===========================================
DMARC fail, effective p=reject            550    5.7.1     issue #3; RFC 3463 "delivery not authorized"
SPF fail with ``spf_fail = "reject"``     550    5.7.23    RFC 7372 "SPF validation failed"
no / several From fields, no domain       550    5.7.1     RFC 7489 6.6.1 recommends rejecting them
DNS temperror that decides SPF            451    4.7.24    RFC 7372 "SPF validation error" (temporary)
DNS temperror that decides DMARC/DKIM     451    4.7.0     RFC 3463 "other security status"; RFC 7372
                                                           registers no temporary DKIM/DMARC code
========================================  =====  ========  ===========================================

A temporary DNS failure never produces a 5xx. It produces a 451 only when it leaves open an
outcome that policy would act on (a published p=reject/quarantine with actions not "tag", or
``spf_fail = "reject"``) and ``dns_temperror = "defer"``; otherwise the mail is accepted with the
temperror recorded (and ``may_act`` false when DMARC is required).
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import ipaddress
import logging
import random
import re
import time
from dataclasses import dataclass, field
from typing import IO, Any, Callable

import authres
import authres.arc
import authres.dmarc

from gateway.auth import dkimcheck
from gateway.config.auth import AuthPolicy
from gateway.auth.dmarc import (Discovery, DmarcDomainResult, FromInfo, OrgDomains, aligned, discover_policy,
                    evaluate_domain, parse_from)
from gateway.auth.dns import Resolver
from gateway.auth.headers import header_values, prepend_header, strip_forged_authres
from gateway.auth.spfcheck import SpfCache, SpfResult, check_spf, helo_is_domain

__all__ = ["Authenticator", "AuthVerdict", "stamp"]

log = logging.getLogger(__name__)

_SEVERITY = {"accept": 0, "quarantine": 1, "defer": 2, "reject": 3}


@dataclass(frozen=True)
class AuthVerdict:
    """The outcome of :meth:`Authenticator.check`.

    ``action``: "accept" | "quarantine" (accept, flag the ticket suspicious) | "defer" (answer
    ``reply``, a 4xx) | "reject" (answer ``reply``, a 5xx). ``reply`` is None for accept and
    quarantine. ``may_act``: whether this mail may append to existing tickets or run commands.
    ``header_value``: the Authentication-Results value to prepend (authserv-id = our hostname).
    ``auth``: JSON-able structured results (spf, dkim[], dmarc, arc, from, decision).
    """

    action: str
    reply: tuple[int, str, str] | None
    suspicious: bool
    may_act: bool
    header_value: str
    auth: dict = field(default_factory=dict)

    @property
    def accepted(self) -> bool:
        return self.action in ("accept", "quarantine")


def stamp(raw: bytes, verdict: AuthVerdict, hostname: str) -> bytes:
    """Remove forged Authentication-Results claiming ``hostname`` and prepend ours."""
    return prepend_header(strip_forged_authres(raw, hostname), "Authentication-Results", verdict.header_value)


# --------------------------------------------------------------------------- helpers
_RECEIVED_IP = re.compile(r"\[(?:IPv6:)?([0-9A-Fa-f:.]+)\]")
_PAREN_IP = re.compile(r"\(\s*([0-9A-Fa-f:.]{3,})\s*\)")


def _received_hop(value: str) -> tuple[str | None, str | None]:
    """(client ip, helo) from the 'from' clause of a Received field, if any."""
    m = re.search(r"\bfrom\s+(\S+)(.*?)(?:\sby\s|;|$)", value, re.I | re.S)
    if not m:
        return None, None
    helo, rest = m.group(1), m.group(2)
    for rx in (_RECEIVED_IP, _PAREN_IP):
        for ipm in rx.finditer(helo + " " + rest):
            try:
                return str(ipaddress.ip_address(ipm.group(1))), helo.strip("()[]")
            except ValueError:
                continue
    try:
        return str(ipaddress.ip_address(helo.strip("[]"))), helo
    except ValueError:
        return None, helo


MAX_TRUSTED_HOPS = 20   # Received fields read; a message with more is never "only trusted hops"


def only_trusted_hops(raw: bytes, peer_ip: str, policy: AuthPolicy) -> str | None:
    """Why this message never crossed an untrusted hop, or None when it may have.

    It must come from a configured trusted relay (the SMTP client, after PROXY protocol), and every
    Received field in it must be either that relay's own local trace - a field with no ``from``
    clause, as an MTA writes for mail it generated itself (a DSN, a locally submitted mail) - or a
    hop from an address in ``trusted_relays``. A ``from`` clause without a readable address counts as
    untrusted, and so does a message with more than :data:`MAX_TRUSTED_HOPS` Received fields: only
    what our own MTAs wrote can make this true. (An outsider's mail relayed by the front MTA carries
    the front MTA's ``Received: from <outsider> [ip]``, an untrusted hop.)"""
    if not policy.trusted_relays or not policy.is_trusted_relay(peer_ip):
        return None
    fields = header_values(raw, "Received")
    if len(fields) > MAX_TRUSTED_HOPS:
        return None
    for f in fields:
        text = f.text()
        if not re.match(r"from\s", text, re.I):
            continue  # "by host (…) id …": written by the MTA for mail it generated
        ip, _helo = _received_hop(text)
        if ip is None or not policy.is_trusted_relay(ip):
            return None
    return f"client {peer_ip} is a trusted relay and no Received hop is untrusted ({len(fields)} read)"


_NOT_IN_COMMENT = re.compile(r"[^\x20-\x7e]|[()\\;]")   # non-printable-ASCII, or comment syntax
_NOT_IN_REASON = re.compile(r"[^\x20-\x7e]|[\"\\@]")
_SPACES = re.compile(r"\s+")


def _provider_override(raw: bytes, authserv_id: str, results: list[DmarcDomainResult]) -> str | None:
    """Why a trusted provider's verdict makes every failing From domain pass, or None: the topmost
    Authentication-Results field naming ``authserv_id`` must report ``dmarc=pass`` with
    ``header.from`` equal to each domain that did not pass here."""
    want = authserv_id.strip().lower()
    for f in header_values(raw, "Authentication-Results")[:MAX_TRUSTED_HOPS]:
        try:
            parsed = authres.parse_value(f.text())
        except Exception:  # noqa: BLE001 - a malformed field is not a verdict
            continue
        if str(parsed.authserv_id or "").lower() != want:
            continue
        passed = {str(props.get(("header", "from")) or "").lower().rstrip(".")
                  for res in parsed.results if res.method == "dmarc" and res.result == "pass"
                  for props in [{(pp.type, pp.name): (pp.value or "") for pp in res.properties}]}
        if all(r.result == "pass" or r.domain in passed for r in results):
            return f"trusted provider {want} reported dmarc=pass"
        return None  # only the topmost field of that provider counts
    return None


def _clean_comment(s: str, limit: int = 120) -> str:
    return _SPACES.sub(" ", _NOT_IN_COMMENT.sub(" ", s)).strip()[:limit]


def _clean_reason(s: str, limit: int = 120) -> str:
    return _SPACES.sub(" ", _NOT_IN_REASON.sub(" ", s)).strip()[:limit]


_DOM = re.compile(r"^[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,251}[A-Za-z0-9])?$")
_ATOM = re.compile(r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*$")


def _safe_domain(d: str | None) -> str | None:
    if d and _DOM.match(d) and ".." not in d:
        return d
    return None


def _safe_mailbox(addr: str) -> str | None:
    """An RFC 8601 pvalue for a mailbox: dot-atom or quoted local-part, @, a domain."""
    if "@" not in addr:
        return None
    local, dom = addr.rsplit("@", 1)
    if not _safe_domain(dom):
        return None
    if _ATOM.match(local):
        return f"{local}@{dom}"
    if all(32 <= ord(c) < 127 for c in local):
        q = local.replace("\\", "\\\\").replace('"', '\\"')
        return f'"{q}"@{dom}'
    return None


def from_record(info: FromInfo) -> dict:
    """What the spool row keeps of the From reading DMARC evaluated: its domains, its addresses (the
    pipeline's requester is the first one, docs/security.md) and why DMARC could not apply, if so."""
    return {"domains": list(info.domains), "addresses": list(info.addresses), "error": info.error}


def _normalise_sender(mail_from: str) -> str:
    s = (mail_from or "").strip()
    if s.startswith("<") and s.endswith(">"):
        s = s[1:-1].strip()
    return s


# --------------------------------------------------------------------------- authenticator
class Authenticator:
    """SPF, DKIM, DMARC and ARC for one gateway.

    ``resolver``: every DNS question goes through it. ``hostname``: our authserv-id.
    ``executor``: bounded executor (thread or process pool) for DKIM/ARC canonicalisation and
    hashing; None → a private 2-thread pool (closed by :meth:`close`). Messages up to
    ``inline_max_bytes`` with few signatures are verified inline (0.2 ms for 4 KB, 0.5 ms for 60 KB:
    less than an executor round trip, and no thread holding the GIL while the loop waits for it);
    larger ones go to the executor, and those over
    ``large_message_bytes`` also take a slot of a small semaphore so huge messages can never
    occupy every executor worker at once (a message-size-aware budget).
    """

    def __init__(
        self,
        resolver: Resolver,
        hostname: str,
        executor: concurrent.futures.Executor | None = None,
        *,
        psl=None,
        rng: random.Random | None = None,
        inline_max_bytes: int = 128 * 1024,
        large_message_bytes: int = 1024 * 1024,
        large_concurrency: int = 1,
        spf_timeout: float = 20.0,
    ) -> None:
        self.resolver = resolver
        self.hostname = hostname.strip().rstrip(".").lower()
        self._own_executor = executor is None
        self.executor = executor or concurrent.futures.ThreadPoolExecutor(
            max_workers=2, thread_name_prefix="auth-crypto")
        self.org = OrgDomains(psl)
        self.rng = rng or random.Random()
        self.inline_max_bytes = inline_max_bytes
        self.large_message_bytes = large_message_bytes
        self._large_sem: asyncio.Semaphore | None = None
        self._large_concurrency = max(1, large_concurrency)
        self.spf_timeout = spf_timeout
        self.spf_cache = SpfCache()  # repeated (IP, sender, HELO): no second pyspf evaluation

    def close(self) -> None:
        if self._own_executor:
            self.executor.shutdown(wait=False, cancel_futures=True)

    # ------------------------------------------------------------------ crypto
    async def _crypto(self, raw: bytes, p: dkimcheck.Plan, check_arc: bool,
                      body: IO[bytes] | None = None, body_size: int = 0) -> dict:
        if not p.sigs and not check_arc:
            return {"sigs": [], "arc": None, "missing": []}  # unsigned mail: nothing to hash or verify
        keys: dict = {}
        hashes = None
        if body is not None:  # a large message: body hashes from its file, off the loop, in one pass
            loop = asyncio.get_running_loop()
            _, hashes = await asyncio.gather(
                dkimcheck.fetch_keys(self.resolver, p.key_names(), keys),
                loop.run_in_executor(None, dkimcheck.file_body_hashes, raw, body, body_size))
        else:
            await dkimcheck.fetch_keys(self.resolver, p.key_names(), keys)
        n_crypto = sum(1 for s in p.sigs if s.key_name) + (2 * len(p.arc_keys) if check_arc else 0)
        for _ in range(4):
            if hashes is None and len(raw) <= self.inline_max_bytes and n_crypto <= 4:
                res = dkimcheck.verify_sync(raw, p.sigs, keys, check_arc, body_keys=p.body_keys)
            else:
                res = await self._in_executor(raw, p, keys, check_arc, hashes)
            missing = [m for m in res["missing"] if m not in keys]
            if not missing:
                return res
            await dkimcheck.fetch_keys(self.resolver, missing, keys)
        return res

    def _answers_cached(self, p: dkimcheck.Plan, from_info, spf_ip: str, sender: str, mf_helo: str,
                        origin_helo: str, relay: dict | None, policy: AuthPolicy) -> bool:
        """True when SPF (both identities), the DKIM/ARC keys and the DMARC records most likely need
        no DNS question: SPF results are kept in the SPF cache (their freshness is checked once, by
        check_spf itself), the other answers are in the resolver's cache."""
        if relay is None or relay["origin_ip"] is not None:
            cache, me = self.spf_cache, self.hostname
            if sender and SpfCache.key(spf_ip, sender, mf_helo, me) not in cache:
                return False
            if (not sender or policy.check_helo) and helo_is_domain(origin_helo) and \
                    SpfCache.key(spf_ip, "", origin_helo, me) not in cache:
                return False
        cached = self.resolver.cached
        for name in p.key_names():
            if cached((name.decode("ascii", "replace").rstrip(".").lower(), "TXT")) is None:
                return False
        if not from_info.error:
            for d in from_info.domains:
                for dom in {d, self.org(d)}:
                    if cached((f"_dmarc.{dom}".lower().rstrip("."), "TXT")) is None:
                        return False
        return True

    async def _in_executor(self, raw: bytes, p: dkimcheck.Plan, keys: dict, check_arc: bool,
                           hashes: dict | None = None) -> dict:
        loop = asyncio.get_running_loop()
        try:
            if len(raw) > self.large_message_bytes:
                if self._large_sem is None:
                    self._large_sem = asyncio.Semaphore(self._large_concurrency)
                async with self._large_sem:
                    return await loop.run_in_executor(self.executor, dkimcheck.verify_sync, raw, p.sigs, keys,
                                                      check_arc, hashes, p.body_keys)
            return await loop.run_in_executor(self.executor, dkimcheck.verify_sync, raw, p.sigs, keys, check_arc,
                                              hashes, p.body_keys)
        except (RuntimeError, concurrent.futures.BrokenExecutor) as e:
            # executor shut down or broken (a crashed worker process): verify with the default
            # thread pool rather than turn an infrastructure fault into an auth result
            log.warning("auth executor unusable (%r); using the loop's default executor", e)
            return await loop.run_in_executor(None, dkimcheck.verify_sync, raw, p.sigs, keys, check_arc, hashes,
                                              p.body_keys)

    # ------------------------------------------------------------------ check
    async def check(self, *, peer_ip: str, helo: str, mail_from: str, raw: bytes,
                    policy: AuthPolicy, body: IO[bytes] | None = None, body_size: int = 0,
                    spf: bool = True, unverifiable: str = "",
                    trusted_authserv_id: str | tuple[str, ...] = "") -> AuthVerdict:
        """``body``: a large message's body in a file (``raw`` is then its header section only).

        For mail that did not come from the sender's MTA (HTTP inbound, docs/auth.md "HTTP inbound"):
        ``spf=False`` checks no SPF (the client is not the sending MTA; DMARC then aligns DKIM only);
        ``unverifiable``: why signatures cannot verify (a message rebuilt from a provider's fields): the
        DMARC result is recorded but its disposition is not applied; ``trusted_authserv_id``: the
        provider whose own ``dmarc=pass`` for the From domain (its Authentication-Results field, the
        topmost with that authserv-id) counts as a DMARC pass, like a trusted ARC sealer's."""
        t0 = time.perf_counter()
        sender = _normalise_sender(mail_from)
        helo = (helo or "").strip()
        if not policy.enabled:  # the From reading is still recorded: the pipeline's requester is this one
            return AuthVerdict("accept", None, False, not policy.require_dmarc_for_actions,
                               f"{self.hostname}; none", {"disabled": True, "from": from_record(parse_from(raw))})

        # --- SPF identity (trusted relays are not the SPF client)
        spf_ip, origin_helo, relay = peer_ip, helo, None
        if policy.trusted_relays and policy.is_trusted_relay(peer_ip):
            relay = {"relay_ip": peer_ip, "origin_ip": None, "origin_helo": None}
            for f in header_values(raw, "Received")[:20]:
                ip, h = _received_hop(f.text())
                if ip is None:
                    continue
                if policy.is_trusted_relay(ip):
                    continue
                relay.update(origin_ip=ip, origin_helo=h)
                spf_ip, origin_helo = ip, (h or "")
                break

        from_info = parse_from(raw)
        p = dkimcheck.plan(raw, check_arc=True)
        check_arc = p.arc_present  # no ARC header: cv=none without parsing the message again

        async def spf_mailfrom() -> SpfResult | None:
            if not sender or not spf:
                return None
            if relay is not None and relay["origin_ip"] is None:
                return SpfResult("none", "mailfrom", sender.rsplit("@", 1)[-1].lower(), sender, peer_ip, helo,
                                 reason="client is a trusted relay and no untrusted hop was found")
            return await check_spf(self.resolver, ip=spf_ip, sender=sender, helo=origin_helo or helo,
                                   receiver=self.hostname, timeout=self.spf_timeout, cache=self.spf_cache)

        async def spf_helo() -> SpfResult | None:
            if (sender and not policy.check_helo) or not spf:
                return None
            if relay is not None and relay["origin_ip"] is None:
                return SpfResult("none", "helo", helo.lower(), "", peer_ip, helo,
                                 reason="client is a trusted relay and no untrusted hop was found")
            return await check_spf(self.resolver, ip=spf_ip, sender="", helo=origin_helo,
                                   receiver=self.hostname, timeout=self.spf_timeout, cache=self.spf_cache)

        async def dmarc_discovery() -> dict[str, Discovery]:
            if from_info.error:
                return {}
            if len(from_info.domains) == 1:
                d = from_info.domains[0]
                return {d: await discover_policy(self.resolver, d, self.org)}
            found = await asyncio.gather(*(discover_policy(self.resolver, d, self.org)
                                           for d in from_info.domains))
            return dict(zip(from_info.domains, found))

        if body is None and self._answers_cached(p, from_info, spf_ip, sender, origin_helo or helo,
                                                 origin_helo, relay, policy):
            # Every DNS answer is at hand: nothing below suspends, so awaiting one after the other
            # costs no task, no gather and no extra loop iteration (about 45 µs per message).
            # Were a prediction wrong, this is still correct, only the lookups would not overlap.
            spf_mf = await spf_mailfrom()
            spf_h = await spf_helo()
            crypto = await self._crypto(raw, p, check_arc, body, body_size)
            discoveries = await dmarc_discovery()
        else:
            spf_mf, spf_h, crypto, discoveries = await asyncio.gather(
                spf_mailfrom(), spf_helo(), self._crypto(raw, p, check_arc, body, body_size), dmarc_discovery())

        sigs: list[dkimcheck.SigPlan] = crypto["sigs"]
        arc = crypto["arc"] or {"result": "none", "reason": "", "instances": 0, "sets": []}
        dkim_dicts = [s.as_dict() for s in sigs]

        # The SPF identity for DMARC: MAIL FROM domain, or the HELO domain for the null sender
        spf_for_dmarc = spf_mf if sender else spf_h
        spf_domain = spf_for_dmarc.domain if spf_for_dmarc else None
        spf_res = spf_for_dmarc.result if spf_for_dmarc else None

        # --- DMARC
        domain_results: list[DmarcDomainResult] = []
        for d in from_info.domains:
            disc = discoveries.get(d)
            if disc is None:
                continue
            domain_results.append(evaluate_domain(d, disc, spf_result=spf_res, spf_domain=spf_domain,
                                                  dkim=dkim_dicts, org=self.org, rng=self.rng))
        for sd in dkim_dicts:
            sd["aligned"] = bool(sd.get("d")) and any(
                aligned(sd["d"], r.domain, r.adkim, self.org) for r in domain_results)

        dmarc = self._combine_dmarc(from_info, domain_results)

        # --- ARC override by a trusted sealer
        override = None
        if dmarc["result"] in ("fail", "temperror") and arc["result"] == "pass" and policy.trusted_arc_sealers:
            override = self._arc_override(arc, domain_results, policy)
            if override:
                dmarc["override"] = "arc"
                dmarc["override_reason"] = override
        arc["trusted_sealer"] = bool(arc.get("sets")) and policy.is_trusted_sealer(
            arc["sets"][-1].get("as_d") or "")

        trusted_ids = (trusted_authserv_id,) if isinstance(trusted_authserv_id, str) else trusted_authserv_id
        for authserv_id in trusted_ids:  # several: a pulled source's provider may sign with more than one id
            if override is not None or not authserv_id or dmarc["result"] == "pass" or not domain_results:
                break
            override = _provider_override(raw, authserv_id, domain_results)
            if override:
                dmarc["override"] = "provider"
                dmarc["override_reason"] = override
        effective_pass = dmarc["result"] == "pass" or override is not None

        # --- decision
        action, reply, reasons = "accept", None, []

        def propose(act: str, rep, why: str) -> None:
            nonlocal action, reply
            reasons.append(f"{act}: {why}")
            if _SEVERITY[act] > _SEVERITY[action]:
                action, reply = act, rep

        if from_info.error:
            act = policy.malformed_from
            if act == "reject":
                propose("reject", (550, "5.7.1", "Message refused: it must have exactly one From header "
                                                  "field with a valid address (RFC 5322, RFC 7489 6.6.1)"),
                        from_info.error)
            elif act == "quarantine":
                propose("quarantine", None, from_info.error)
        internal = (unverifiable or only_trusted_hops(raw, peer_ip, policy)) if not effective_pass else None
        if internal:  # our own MTAs made it (e.g. the front MTA's DSN): no DMARC policy refuses it
            dmarc["policy_not_applied"] = internal
            reasons.append(f"accept: DMARC policy not applied: {internal}")
        elif not effective_pass:
            for r in domain_results:
                if r.result == "fail" and policy.honour_dmarc_policy:
                    if r.disposition == "reject":
                        act = policy.dmarc_reject
                    elif r.disposition == "quarantine":
                        act = policy.dmarc_quarantine
                    else:
                        act = "tag"
                    if act == "reject":
                        propose("reject", (550, "5.7.1",
                                           f"Message rejected: unauthenticated email from {r.domain} is not "
                                           f"accepted due to the domain's DMARC policy (p={r.policy})"),
                                f"DMARC fail for {r.domain}, disposition {r.disposition}")
                    elif act == "quarantine":
                        propose("quarantine", None, f"DMARC fail for {r.domain}, disposition {r.disposition}")
                elif r.result == "temperror" and policy.honour_dmarc_policy and policy.dns_temperror == "defer":
                    # defer only when the policy could have led to an action
                    pol = r.policy
                    could_act = (pol is None  # record lookup itself failed: unknown policy
                                 or (pol == "reject" and policy.dmarc_reject != "tag")
                                 or (pol == "quarantine" and policy.dmarc_quarantine != "tag"))
                    if could_act:
                        propose("defer", (451, "4.7.0", f"Temporary DNS failure while authenticating mail from "
                                                         f"{r.domain} (DMARC); please try again later"),
                                f"DMARC temperror for {r.domain}: {r.reason}")

        if spf_for_dmarc is not None and not effective_pass and policy.spf_fail != "tag":
            if spf_for_dmarc.result == "fail":
                if policy.spf_fail == "reject":
                    propose("reject", (550, "5.7.23", f"SPF validation failed: {spf_ip} is not allowed to send "
                                                       f"mail for {spf_for_dmarc.domain}"),
                            f"SPF fail for {spf_for_dmarc.domain}")
                else:
                    propose("quarantine", None, f"SPF fail for {spf_for_dmarc.domain}")
            elif spf_for_dmarc.result == "temperror" and policy.dns_temperror == "defer":
                propose("defer", (451, "4.7.24", f"Temporary DNS failure during SPF validation of "
                                                  f"{spf_for_dmarc.domain}; please try again later"),
                        f"SPF temperror for {spf_for_dmarc.domain}")

        suspicious = action == "quarantine"
        may_act = (action == "accept" and not from_info.error
                   and (effective_pass or not policy.require_dmarc_for_actions))

        spf_dict = {
            **({} if spf else {"checked": False, "reason": "not the sending MTA's connection (HTTP inbound)"}),
            "result": spf_for_dmarc.result if spf_for_dmarc else "none",
            "domain": spf_domain,
            "identity": "mailfrom" if sender else "helo",
            "client_ip": spf_ip,
            "via_trusted_relay": relay is not None,
            "relay": relay,
            "mailfrom": spf_mf.as_dict() if spf_mf else None,
            "helo": spf_h.as_dict() if spf_h else None,
        }
        auth = {
            "spf": spf_dict,
            "dkim": dkim_dicts,
            "dmarc": dmarc,
            "arc": arc,
            "from": from_record(from_info),
            "decision": {"action": action, "suspicious": suspicious, "may_act": may_act, "reasons": reasons,
                         "reply": list(reply) if reply else None},
            "elapsed_us": int((time.perf_counter() - t0) * 1e6),
        }
        header = self._header(peer_ip, sender, helo, spf_mf, spf_h, sigs, dmarc, domain_results, arc)
        return AuthVerdict(action, reply, suspicious, may_act, header, auth)

    # ------------------------------------------------------------------ parts
    @staticmethod
    def _combine_dmarc(from_info: FromInfo, results: list[DmarcDomainResult]) -> dict:
        if from_info.error:
            return {"result": "permerror", "reason": from_info.error, "domains": [], "override": None}
        rs = [r.result for r in results]
        if not rs:
            overall = "none"
        elif "fail" in rs:
            overall = "fail"
        elif "temperror" in rs:
            overall = "temperror"
        elif all(r == "pass" for r in rs) and not from_info.unevaluated:
            overall = "pass"   # never while a From address at a single-label domain went unevaluated
        else:
            overall = "none"
        # the strictest disposition among failing domains (RFC 7489 6.6.1)
        order = {"none": 0, "quarantine": 1, "reject": 2}
        fails = [r for r in results if r.result == "fail"]
        disposition = max((r.disposition for r in fails), key=lambda x: order[x], default="none")
        first = results[0] if results else None
        return {
            "result": overall,
            "header_from": first.domain if first else None,
            "policy": first.policy if first else None,
            "disposition": disposition,
            "domains": [r.as_dict() for r in results],
            "override": None,
        }

    def _arc_override(self, arc: dict, results: list[DmarcDomainResult], policy: AuthPolicy) -> str | None:
        sets = arc.get("sets") or []
        if not sets:
            return None
        top = sets[-1]
        sealer = (top.get("as_d") or "").lower()
        if not policy.is_trusted_sealer(sealer):
            return None
        aar = top.get("aar") or ""
        value = re.sub(r"^\s*i\s*=\s*\d+\s*;", "", aar, count=1)
        try:
            parsed = authres.parse_value(value)
        except Exception:  # noqa: BLE001 - a malformed AAR just gives no override
            return None
        for r in results:
            if r.result == "pass":
                continue
            ok = False
            for res in parsed.results:
                props = {(pp.type, pp.name): (pp.value or "") for pp in res.properties}
                if res.method == "dmarc" and res.result == "pass":
                    hf = props.get(("header", "from"), "").lower().rstrip(".")
                    if hf == r.domain:
                        ok = True
                elif res.method == "dkim" and res.result == "pass":
                    d = props.get(("header", "d")) or props.get(("header", "i"), "").rsplit("@", 1)[-1]
                    if d and aligned(d, r.domain, r.adkim, self.org):
                        ok = True
                elif res.method == "spf" and res.result == "pass":
                    mf = props.get(("smtp", "mailfrom"), "")
                    dom = mf.rsplit("@", 1)[-1] if mf else ""
                    if dom and aligned(dom, r.domain, r.aspf, self.org):
                        ok = True
            if not ok:
                return None
        return f"trusted ARC sealer {sealer} (i={top.get('i')}) reported authentication pass"

    def _header(self, peer_ip, sender, helo, spf_mf, spf_h, sigs, dmarc, domain_results, arc) -> str:
        results: list = []  # authres results, or the str() of one built earlier from the same inputs
        host = self.hostname
        if spf_mf is not None:
            mb = _safe_mailbox(sender)
            results.append(_rendered(
                ("spf", host, mb, *_spf_key(spf_mf)),
                lambda: authres.SPFAuthenticationResult(result=spf_mf.result, result_comment=_spf_comment(host, spf_mf),
                                                        **({"smtp_mailfrom": mb} if mb else {}))))
        if spf_h is not None:
            # The HELO name that was checked: behind a trusted relay that is the origin hop's (from its
            # Received field), not the relay's own - the header names what SPF evaluated.
            checked = spf_h.helo or ""
            ok_helo = bool(_safe_domain(checked))
            results.append(_rendered(
                ("spf-helo", host, checked if ok_helo else None, *_spf_key(spf_h)),
                lambda: authres.SPFAuthenticationResult(result=spf_h.result, result_comment=_spf_comment(host, spf_h),
                                                        **({"smtp_helo": checked} if ok_helo else {}))))
        for s in sigs:
            results.append(_dkim_result(s))
        if dmarc["result"] == "permerror":
            results.append(authres.dmarc.DMARCAuthenticationResult(
                result="permerror", result_comment=_clean_comment(dmarc.get("reason") or "")))
        for r in domain_results:
            comment = []
            if r.p:
                comment.append(f"p={r.p.upper()}")
                comment.append(f"sp={(r.sp or r.p).upper()}")
                comment.append(f"dis={r.disposition.upper()}")
            if dmarc.get("override") and r.result != "pass":
                comment.append("override=trusted ARC sealer" if dmarc["override"] == "arc"
                               else "override=trusted provider")
            kw = {"header_from": r.domain} if _safe_domain(r.domain) else {}
            if r.policy and r.result != "pass":
                kw["policy"] = r.policy
            text = " ".join(comment) or None
            results.append(_rendered(
                ("dmarc", r.result, text, tuple(kw.items())),
                lambda r=r, text=text, kw=kw: authres.dmarc.DMARCAuthenticationResult(
                    result=r.result, result_comment=text, **kw)))
        if arc.get("result") and (arc.get("result") != "none" or arc.get("instances")):
            kw = {}
            try:
                ipaddress.ip_address(peer_ip)
                kw["smtp_remote_ip"] = peer_ip
            except ValueError:
                pass
            comment = f"i={arc.get('instances')}" if arc.get("instances") else None
            if arc.get("trusted_sealer"):
                comment = (comment + " " if comment else "") + "trusted sealer"
            results.append(authres.arc.ARCAuthenticationResult(result=arc["result"], result_comment=comment, **kw))
        if not results:
            return f"{self.hostname}; none"
        h = authres.AuthenticationResultsHeader(authserv_id=self.hostname, results=results)
        return h.header_value()


def _dkim_result_object(s: dkimcheck.SigPlan, b: str | None) -> Any:
    """The authres result of one DKIM signature (``b``: the header.b value to show, if any)."""
    kw = {}
    if _safe_domain(s.d):
        kw["header_d"] = s.d
    if s.s and _safe_domain(s.s):
        kw["header_s"] = s.s
    if s.a in ("rsa-sha256", "ed25519-sha256", "rsa-sha1"):
        kw["header_a"] = s.a
    props = [authres.AuthenticationResultProperty("header", "b", b)] if b is not None else []
    r = authres.DKIMAuthenticationResult(result=s.result or "permerror", properties=props, **kw)
    if s.reason:
        r.reason = authres.QuotableValue(_clean_reason(s.reason))
    if s.key_bits and s.result in ("pass", "policy", "fail"):
        r.result_comment = f"{s.key_bits}-bit key"
    return r


_B_SHOWN = re.compile(r"[A-Za-z0-9+/=]+")
_B_TOKEN = re.compile(r"[A-Za-z0-9+]+")  # base64 characters that need no quoting (RFC 2045 token)
_B_MARK = "ticketmxBvalue"


def _dkim_result(s: dkimcheck.SigPlan) -> str:
    """``str()`` of :func:`_dkim_result_object`. Every message carries its own signature, so only its
    header.b differs from the last message of the same signer: the rest is rendered by authres once
    per (result, reason, key size, d, s, a) with a marker where header.b goes, and the marker is
    replaced by the value as authres writes it (bare when it is a token, else quoted; base64 holds no
    character that quoting escapes). ``tests/auth/test_authres_render.py`` compares both ways."""
    b = s.b[:8] if s.b and _B_SHOWN.fullmatch(s.b) else None
    if b is None:
        return str(_dkim_result_object(s, None))
    template = _rendered(("dkim-b", s.result, s.reason, s.key_bits, s.d, s.s, s.a),
                         lambda: _dkim_result_object(s, _B_MARK))
    if template.count(_B_MARK) != 1:
        return str(_dkim_result_object(s, b))
    return template.replace(_B_MARK, b if _B_TOKEN.fullmatch(b) else f'"{b}"')


_RENDERED: dict[tuple, str] = {}
_RENDERED_MAX = 4096


def _rendered(key: tuple, build: Callable[[], Any]) -> str:
    """``str(build())`` of an authres result, remembered by ``key`` (everything the result is made
    from): a busy MX writes the same SPF and DMARC results for message after message, and authres
    quotes and formats each part anew (about a sixth of the authentication's CPU). The header is
    still assembled by authres, which takes a result's text as it is."""
    hit = _RENDERED.get(key)
    if hit is None:
        hit = str(build())
        if len(_RENDERED) >= _RENDERED_MAX:
            _RENDERED.clear()
        _RENDERED[key] = hit
    return hit


def _spf_key(r: SpfResult) -> tuple:
    """What ``_spf_comment`` and the result read of an SpfResult."""
    return (r.result, r.identity, r.sender, r.helo, r.client_ip, r.reason)


def _spf_comment(hostname: str, r: SpfResult) -> str:
    ident = r.sender if r.identity == "mailfrom" else r.helo
    ident = (_safe_mailbox(ident) if "@" in ident else _safe_domain(ident)) or "an invalid identity"
    verb = {
        "pass": "designates", "fail": "does not designate", "softfail": "does not designate",
        "neutral": "neither permits nor denies", "none": "has no SPF record for",
    }.get(r.result)
    if r.result in ("temperror", "permerror"):
        text = f"{hostname}: {r.result} checking {ident}: {r.reason}"
    elif verb and r.result != "none":
        text = f"{hostname}: domain of {ident} {verb} {r.client_ip} as permitted sender"
    else:
        text = f"{hostname}: {r.reason or 'no SPF record'} ({ident})" if r.reason else f"{hostname}: no SPF record for {ident}"
    return _clean_comment(text)
