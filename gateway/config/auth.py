"""Auth policy: the ``[auth]`` table, and a ``[[mailbox]]``'s ``auth`` sub-table overriding it.

Keys (all optional; the defaults honour the sender domain's published DMARC policy):

``enabled`` (bool, default ``true``)
    Run SPF/DKIM/DMARC/ARC at all. ``false``: accept without checks; the Authentication-Results
    header says ``none`` and ``may_act`` follows ``require_dmarc_for_actions``.
``honour_dmarc_policy`` (bool, default ``true``)
    Act on the published DMARC policy (p=/sp=, after pct=). ``false``: evaluate and record
    DMARC but treat every record as p=none (monitor mode).
``dmarc_reject`` ("reject" | "quarantine" | "tag", default ``"reject"``)
    What a DMARC failure under an effective p=reject does: refuse at DATA with
    ``550 5.7.1``; or accept, flag the ticket suspicious and forbid it to act; or only record.
``dmarc_quarantine`` ("reject" | "quarantine" | "tag", default ``"quarantine"``)
    The same for an effective p=quarantine.
``spf_fail`` ("reject" | "quarantine" | "tag", default ``"tag"``)
    What an SPF ``fail`` of the MAIL FROM identity (the HELO identity for the null sender)
    does when DMARC did not pass. ``reject`` answers ``550 5.7.23`` (RFC 7372); an SPF
    temperror then defers with ``451 4.7.24`` unless DMARC passed.
``dns_temperror`` ("defer" | "accept", default ``"defer"``)
    When a temporary DNS failure leaves an outcome open that could have been a reject or
    quarantine: answer ``451 4.7.0`` (``451 4.7.24`` when SPF is the cause) so the sender
    retries, or accept and record the temperror (the mail may then not act).
``malformed_from`` ("reject" | "quarantine" | "tag", default ``"reject"``)
    A message with no From field, several From fields, or a From without a usable domain
    cannot be DMARC-evaluated (RFC 7489 6.6.1 recommends rejecting it): ``550 5.7.1``.
``require_dmarc_for_actions`` (bool, default ``false``)
    Later stages read ``AuthVerdict.may_act``: with ``true`` only mail whose DMARC result is
    pass (or a trusted ARC sealer vouched for it) may append to tickets or run commands.
    Mail accepted as suspicious may never act.
``check_helo`` (bool, default ``true``)
    Also run SPF for the HELO identity (RFC 7208 2.3) when MAIL FROM is not null. For the
    null sender the HELO identity is always checked (it is the MAIL FROM identity then).
``trusted_relays`` (list of CIDR strings, default ``[]``)
    The organisation's own MTAs. When the SMTP client is one of them its address is not the
    SPF identity: SPF is checked for the first untrusted hop found in the Received fields it
    added (``spf.via_trusted_relay``), or gives ``none`` when no such hop is found.
``trusted_arc_sealers`` (list of domains, default ``[]``)
    ARC sealers (the ARC-Seal ``d=``, or a subdomain of a listed domain) whose
    ARC-Authentication-Results may override a DMARC failure caused by forwarding: when the
    ARC chain validates, the newest set was sealed by a trusted sealer, and its A-R says
    ``dmarc=pass`` for the same From domain (or an aligned ``dkim=pass``/``spf=pass``), the
    message is treated as DMARC pass (``dmarc.override = "arc"``). E.g. ``["google.com",
    "microsoft.com"]`` for Google Workspace and Microsoft 365 (check the d= your forwarders
    use).
"""
from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, fields, replace
from typing import Any

from gateway.runtime.netaddr import ip_in_networks
from gateway.config.errors import ConfigError

from gateway.config.domains import to_ascii_domain

__all__ = ["AuthPolicy", "parse_auth_policy", "ACTIONS"]

ACTIONS = ("reject", "quarantine", "tag")

_DOMAIN_RE = re.compile(r"^(?=.{1,253}$)(?:[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9])?\.)*"
                        r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")


@dataclass(frozen=True)
class AuthPolicy:
    enabled: bool = True
    honour_dmarc_policy: bool = True
    dmarc_reject: str = "reject"
    dmarc_quarantine: str = "quarantine"
    spf_fail: str = "tag"
    dns_temperror: str = "defer"
    malformed_from: str = "reject"
    require_dmarc_for_actions: bool = False
    check_helo: bool = True
    trusted_relays: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    trusted_arc_sealers: tuple[str, ...] = ()

    def is_trusted_relay(self, ip: str) -> bool:
        return ip_in_networks(ip, self.trusted_relays)

    def is_trusted_sealer(self, domain: str) -> bool:
        d = domain.lower().rstrip(".")
        return any(d == s or d.endswith("." + s) for s in self.trusted_arc_sealers)


_CHOICES = {
    "dmarc_reject": ACTIONS,
    "dmarc_quarantine": ACTIONS,
    "spf_fail": ACTIONS,
    "malformed_from": ACTIONS,
    "dns_temperror": ("defer", "accept"),
}
_BOOLS = {"enabled", "honour_dmarc_policy", "require_dmarc_for_actions", "check_helo"}
_KNOWN = {f.name for f in fields(AuthPolicy)}


def _key(prefix: str, k: str) -> str:
    return f"{prefix}.{k}" if prefix else k


def parse_auth_policy(table: dict, key_prefix: str, base: AuthPolicy | None = None) -> AuthPolicy:
    """Validate a TOML table into an AuthPolicy; keys absent from ``table`` keep the value of
    ``base`` (the global policy, for a mailbox override) or the default. Raises
    ConfigError(dotted key, message) for an unknown key or a bad value."""
    if not isinstance(table, dict):
        raise ConfigError(key_prefix or "auth", "must be a table")
    pol = base if base is not None else AuthPolicy()
    changes: dict[str, Any] = {}
    for k, v in table.items():
        key = _key(key_prefix, k)
        if k not in _KNOWN:
            raise ConfigError(key, f"unknown key (known: {', '.join(sorted(_KNOWN))})")
        if k in _BOOLS:
            if not isinstance(v, bool):
                raise ConfigError(key, "must be true or false")
            changes[k] = v
        elif k in _CHOICES:
            if not isinstance(v, str) or v not in _CHOICES[k]:
                raise ConfigError(key, f"must be one of {', '.join(repr(c) for c in _CHOICES[k])}")
            changes[k] = v
        elif k == "trusted_relays":
            if not isinstance(v, list):
                raise ConfigError(key, "must be a list of CIDR strings")
            nets = []
            for i, item in enumerate(v):
                if not isinstance(item, str):
                    raise ConfigError(f"{key}[{i}]", "must be a CIDR string such as \"192.0.2.0/24\"")
                try:
                    nets.append(ipaddress.ip_network(item.strip(), strict=True))
                except ValueError as e:
                    raise ConfigError(f"{key}[{i}]", f"not a network: {e}") from None
            changes[k] = tuple(nets)
        elif k == "trusted_arc_sealers":
            if not isinstance(v, list):
                raise ConfigError(key, "must be a list of domain names")
            doms = []
            for i, item in enumerate(v):
                if not isinstance(item, str):
                    raise ConfigError(f"{key}[{i}]", "must be a domain name")
                try:
                    d = to_ascii_domain(item)
                except ValueError as e:
                    raise ConfigError(f"{key}[{i}]", f"not a domain name: {e}") from None
                if not _DOMAIN_RE.match(d) or "." not in d:
                    raise ConfigError(f"{key}[{i}]", f"not a domain name: {item!r}")
                doms.append(d)
            changes[k] = tuple(dict.fromkeys(doms))
        else:  # pragma: no cover - every field is handled above
            raise ConfigError(key, "unsupported key")
    return replace(pol, **changes) if changes else pol
