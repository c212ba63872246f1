"""Spam rules: conditions on headers, addresses, subject and body; actions drop / quarantine / tag.

Stage ``spam``. Rules (``[[pipeline.spam.rule]]``) are evaluated in order. The first rule
that matches with action ``drop`` or ``quarantine`` decides; ``tag`` rules only add their tag
and evaluation goes on. The result of a message that is not dropped/quarantined is
``continue`` with ``{"tags": [...], "rules": [...]}`` when any rule matched (the ticket stage
adds the tags to the ticket's flags).

An upstream filter's verdict (``X-Spam-Flag: YES``, ``X-Spam-Status: Yes, ...``, ``X-Spam: Yes``)
counts only when the SMTP client (``entry.peer_ip``) is one of ``trusted_relays``: anyone else
can write those headers.

Condition semantics (all case-insensitive unless ``case_sensitive = true``):

* ``equals``: the whole value; ``contains``: a substring; ``regex``: ``re.search``;
  ``exists``: the field has at least one non-empty value.
* ``domain``: for address fields the address's domain is the value or a subdomain of it;
  for text fields (subject, body, html, headers) any host named in a URL or address in it.
* A field with several values (To, a repeated header) matches when any value matches;
  ``negate = true`` inverts the condition's result.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from email.utils import getaddresses
from typing import Any

from gateway.pipeline.parse.model import ParsedMessage
from gateway.config.pipeline import SpamCondition, SpamPolicy, SpamRule, policy_for
from gateway.pipeline.stages.core import CONTINUE, DROP, QUARANTINE, Context, Inbound, Verdict
from gateway.store.base import SpoolEntry

__all__ = ["evaluate", "SpamResult", "SpamStage", "upstream_verdict", "field_values"]

_ADDRESS_FIELDS = frozenset({"from", "to", "cc", "rcpt", "mail_from", "reply_to"})
_HOSTS = re.compile(r"(?i)(?:[a-z][a-z0-9+.-]*://(?:[^/\s@?#]*@)?|@|\bwww\.)"
                    r"((?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z][a-z0-9-]{0,62}[a-z0-9])")


class SpamResult:
    __slots__ = ("action", "rule", "tags", "matched")

    def __init__(self) -> None:
        self.action = CONTINUE
        self.rule = ""
        self.tags: list[str] = []
        self.matched: list[str] = []


def _addr_domain(addr: str) -> str:
    return addr.rpartition("@")[2].strip().strip(">").rstrip(".").lower()


def _in_domain(host: str, domain: str) -> bool:
    return host == domain or host.endswith("." + domain)


def field_values(fld: str, parsed: ParsedMessage, entry: SpoolEntry | None, max_chars: int) -> list[str]:
    """The values a condition on ``fld`` looks at."""
    if fld.startswith("header:"):
        return parsed.header_all(fld[7:])
    if fld == "from":
        return [parsed.from_addr] if parsed.from_addr else []
    if fld == "from_name":
        return [parsed.from_name] if parsed.from_name else []
    if fld == "to":
        return list(parsed.to)
    if fld == "cc":
        return list(parsed.cc)
    if fld == "reply_to":
        return list(parsed.reply_to)
    if fld == "rcpt":
        return list(entry.rcpt_tos) if entry else []
    if fld == "mail_from":
        return [entry.mail_from] if entry and entry.mail_from else []
    if fld == "subject":
        return [parsed.subject]
    if fld == "body":
        return [parsed.body_text[:max_chars]]
    if fld == "html":
        return [parsed.body_html[:max_chars]] if parsed.body_html else []
    if fld == "attachment":
        return [a.filename for a in parsed.attachments if a.filename]
    return []                                                   # pragma: no cover - validated at load


def _domains_of(fld: str, values: list[str]) -> list[str]:
    if fld in _ADDRESS_FIELDS:
        return [_addr_domain(v) for v in values if "@" in v]
    hosts: list[str] = []
    for v in values:
        if fld.startswith("header:") and "@" in v:
            try:
                hosts.extend(_addr_domain(a) for _, a in getaddresses([v]) if "@" in a)
            except Exception:
                pass
        hosts.extend(h.lower() for h in _HOSTS.findall(v))
    return hosts


def _condition(cond: SpamCondition, parsed: ParsedMessage, entry: SpoolEntry | None, max_chars: int) -> bool:
    values = field_values(cond.field, parsed, entry, max_chars)
    if cond.op == "exists":
        hit = any(v.strip() for v in values)
    elif cond.op == "domain":
        hit = any(_in_domain(h, cond.value) for h in _domains_of(cond.field, values))
    elif cond.op == "regex":
        assert cond.pattern is not None
        hit = any(cond.pattern.search(v) for v in values)
    else:
        if not cond.case_sensitive:
            values = [v.lower() for v in values]
        if cond.op == "equals":
            hit = any(v.strip() == cond.value for v in values)
        else:
            hit = any(cond.value in v for v in values)
    return hit != cond.negate


def rule_matches(rule: SpamRule, parsed: ParsedMessage, entry: SpoolEntry | None, max_chars: int) -> bool:
    results = (_condition(c, parsed, entry, max_chars) for c in rule.conditions)
    return all(results) if rule.match == "all" else any(results)


def upstream_verdict(parsed: ParsedMessage) -> str | None:
    """The header that says "spam" (``X-Spam-Flag: YES`` and friends), or None."""
    for value in parsed.header_all("X-Spam-Flag"):
        if value.strip().lower().startswith(("yes", "true")):
            return "X-Spam-Flag"
    for value in parsed.header_all("X-Spam-Status"):
        if value.strip().lower().startswith("yes"):
            return "X-Spam-Status"
    for value in parsed.header_all("X-Spam"):
        if value.strip().lower().startswith("yes"):
            return "X-Spam"
    return None


def evaluate(policy: SpamPolicy, parsed: ParsedMessage, entry: SpoolEntry | None) -> SpamResult:
    """Run the rules (and the trusted upstream verdict) over one message. Pure."""
    res = SpamResult()
    if entry is not None and policy.upstream_action != "ignore" and policy.trusted_relays \
            and policy.is_trusted_relay(entry.peer_ip):
        header = upstream_verdict(parsed)
        if header:
            res.matched.append(f"upstream:{header}")
            if policy.upstream_action == "tag":
                res.tags.append(policy.upstream_tag)
            else:
                res.action = DROP if policy.upstream_action == "drop" else QUARANTINE
                res.rule = f"upstream {header} from trusted relay {entry.peer_ip}"
                return res
    for rule in policy.rules:
        if not rule_matches(rule, parsed, entry, policy.max_body_chars):
            continue
        res.matched.append(rule.name)
        if rule.action == "tag":
            tag = rule.tag or rule.name
            if tag not in res.tags:
                res.tags.append(tag)
            continue
        res.action = DROP if rule.action == "drop" else QUARANTINE
        res.rule = f"rule {rule.name}"
        return res
    return res


class SpamStage:
    name = "spam"

    def __init__(self, policy: SpamPolicy | None = None,
                 per_mailbox: Mapping[str, SpamPolicy] | None = None) -> None:
        self.policy = policy or SpamPolicy()
        self.per_mailbox = dict(per_mailbox or {})

    async def run(self, msg: Inbound, ctx: Context) -> Verdict:
        policy: SpamPolicy = policy_for(self.policy, self.per_mailbox, msg, ctx)
        if not policy.enabled:
            return Verdict()
        res = evaluate(policy, msg.parsed, msg.entry)
        data: dict[str, Any] = {}
        if res.tags:
            data["tags"] = list(res.tags)
        if res.matched:
            data["rules"] = list(res.matched)
        if res.action == CONTINUE:
            return Verdict(CONTINUE, f"spam: tagged {', '.join(res.tags)}" if res.tags else "", data=data)
        return Verdict(res.action, f"spam: {res.rule}", data=data)
