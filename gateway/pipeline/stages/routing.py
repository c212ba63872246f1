"""Ordered routing rules: conditions on the message, actions on the ticket.

Pure functions, no I/O. Config shape (see docs/threading.md for a ready-to-paste block)::

    [[routing.rule]]
    name = "password reset"                # unique; recorded in the ticket's history when it fires
    match = "any"                          # "all" (default): every condition; "any": at least one
    conditions = [
      { field = "subject", op = "contains", value = ["password reset", "locked out"] },
      { header = "X-Priority", op = "regex", value = "^[12]" },
    ]
    category = "Access"                    # actions: queue, category, priority, assignee,
    tags = ["password"]                    # tags (added), fields = { name = "value" },
    stop = false                           # alert, manual_handling, stop

Semantics: rules run in order; every rule whose conditions hold *fires*. For single-valued
actions (queue, category, priority, assignee, each custom field) the **first** rule that
sets them wins — put specific rules before general ones; tags accumulate; ``alert`` and
``manual_handling`` are set by any rule that fires. ``stop = true`` ends evaluation after
that rule. A rule with no conditions always fires (a default).

A condition has ``field`` (one of FIELDS) or ``header`` (any header name), ``op``
(equals | contains | regex | domain), ``value`` (a string or a list: any may match),
optional ``case_sensitive`` (default false) and ``negate`` (default false). Multi-valued
fields (to, cc, a repeated header) match when any of their values matches (with
``negate``: when none does). ``domain`` matches the domain of an address and its
subdomains (``example.com`` matches ``a@example.com`` and ``a@mail.example.com``).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from email.utils import getaddresses

from gateway.pipeline.parse.model import ParsedMessage
from gateway.config.routing import Condition, FIELDS, OPS, PRIORITIES, Rule, parse_routing

__all__ = ["Condition", "Rule", "RoutingResult", "route", "parse_routing", "FIELDS", "OPS", "PRIORITIES"]

MAX_BODY_CHARS = 100_000          # body conditions see this much of the body


@dataclass(frozen=True, slots=True)
class RoutingResult:
    queue: str | None = None
    category: str | None = None
    priority: str | None = None
    assignee: str | None = None
    tags: tuple[str, ...] = ()
    fields: dict[str, str] = field(default_factory=dict)
    alert: bool = False
    manual_handling: bool = False
    fired: tuple[str, ...] = ()     # names of the rules that fired, in order


def _header_values(parsed: ParsedMessage, name: str, op: str) -> list[str]:
    values = parsed.header_all(name)
    if op == "domain":
        return [addr for _, addr in getaddresses(values) if addr]
    return values


def _field_values(parsed: ParsedMessage, mail_from: str, body: str, cond: Condition) -> list[str]:
    f = cond.field
    if f == "header":
        return _header_values(parsed, cond.header, cond.op)
    if f == "from":
        return [parsed.from_addr or mail_from]
    if f == "mail_from":
        return [mail_from]
    if f == "from_name":
        return [parsed.from_name]
    if f == "to":
        return list(parsed.to)
    if f == "cc":
        return list(parsed.cc)
    if f == "to_or_cc":
        return [*parsed.to, *parsed.cc]
    if f == "reply_to":
        return list(parsed.reply_to)
    if f == "subject":
        return [parsed.subject]
    return [body]


def _fires(rule: Rule, parsed: ParsedMessage, mail_from: str, body: str) -> bool:
    if not rule.conditions:
        return True
    results = (c.matches(_field_values(parsed, mail_from, body, c)) for c in rule.conditions)
    return all(results) if rule.match == "all" else any(results)


def route(parsed: ParsedMessage, mail_from: str, rules: Sequence[Rule], *, body: str | None = None) -> RoutingResult:
    """Run ``rules`` in order over the message; ``mail_from`` is the envelope sender.
    ``body``: the text body conditions see (default ``parsed.body_text``; pass the
    quote-stripped new text to route replies on what was written now)."""
    text = (parsed.body_text if body is None else body)[:MAX_BODY_CHARS]
    queue = category = priority = assignee = None
    tags: dict[str, None] = {}
    fields: dict[str, str] = {}
    alert = manual = False
    fired: list[str] = []
    for rule in rules:
        if not _fires(rule, parsed, mail_from, text):
            continue
        fired.append(rule.name)
        queue = queue if queue is not None else rule.queue
        category = category if category is not None else rule.category
        priority = priority if priority is not None else rule.priority
        assignee = assignee if assignee is not None else rule.assignee
        for t in rule.tags:
            tags.setdefault(t, None)
        for k, v in rule.fields:
            fields.setdefault(k, v)
        alert = alert or rule.alert
        manual = manual or rule.manual_handling
        if rule.stop:
            break
    return RoutingResult(queue=queue, category=category, priority=priority, assignee=assignee,
                         tags=tuple(tags), fields=fields, alert=alert, manual_handling=manual, fired=tuple(fired))


