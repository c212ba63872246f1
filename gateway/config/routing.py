"""`[[routing.rule]]`: conditions on a mail and the queue, category, priority, assignee and tags they set (gateway/pipeline/stages/routing.py evaluates them)."""
from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from gateway.config.errors import ConfigError


FIELDS = ("from", "from_name", "mail_from", "to", "cc", "to_or_cc", "reply_to", "subject", "body")


ADDRESS_FIELDS = frozenset({"from", "mail_from", "to", "cc", "to_or_cc", "reply_to"})


OPS = ("equals", "contains", "regex", "domain")


PRIORITIES = ("low", "normal", "high", "urgent")


_CONDITION_KEYS = frozenset({"field", "header", "op", "value", "case_sensitive", "negate"})


_RULE_KEYS = frozenset({"name", "match", "conditions", "queue", "category", "priority", "assignee", "tags",
                        "fields", "alert", "manual_handling", "stop"})


@dataclass(frozen=True, slots=True)
class Condition:
    field: str                      # one of FIELDS, or "header"
    op: str                         # one of OPS
    values: tuple[str, ...]
    header: str = ""                # the header name when field == "header"
    case_sensitive: bool = False
    negate: bool = False
    patterns: tuple[re.Pattern[str], ...] = ()   # compiled values for op == "regex"

    def matches(self, candidates: Sequence[str]) -> bool:
        hit = any(self._one(c) for c in candidates)
        return not hit if self.negate else hit

    def _one(self, text: str) -> bool:
        if self.op == "regex":
            return any(p.search(text) for p in self.patterns)
        if self.op == "domain":
            domain = _domain_of(text)
            return bool(domain) and any(domain == v or domain.endswith("." + v) for v in self.values)
        t = text if self.case_sensitive else text.casefold()
        if self.op == "equals":
            t = t.strip()
            return any(t == v for v in self.values)
        return any(v in t for v in self.values)          # contains


@dataclass(frozen=True, slots=True)
class Rule:
    name: str
    conditions: tuple[Condition, ...] = ()
    match: str = "all"              # "all" | "any"
    queue: str | None = None
    category: str | None = None
    priority: str | None = None
    assignee: str | None = None
    tags: tuple[str, ...] = ()
    fields: tuple[tuple[str, str], ...] = ()
    alert: bool = False
    manual_handling: bool = False
    stop: bool = False


def _domain_of(text: str) -> str:
    addr = text.strip().strip("<>")
    if "@" not in addr:
        return ""
    return addr.rpartition("@")[2].strip().rstrip(".").lower()


# --------------------------------------------------------------------------- #
# Config
# --------------------------------------------------------------------------- #
def _opt_str(table: Mapping[str, Any], name: str, key: str) -> str | None:
    if name not in table:
        return None
    v = table[name]
    if not isinstance(v, str) or not v.strip():
        raise ConfigError(key, "expected a non-empty string")
    return v.strip()


def _bool(table: Mapping[str, Any], name: str, key: str) -> bool:
    v = table.get(name, False)
    if not isinstance(v, bool):
        raise ConfigError(key, "expected true or false")
    return v


def _parse_condition(c: Any, key: str) -> Condition:
    if not isinstance(c, dict):
        raise ConfigError(key, "expected a table such as { field = \"subject\", op = \"contains\", value = \"…\" }")
    for name in c:
        if name not in _CONDITION_KEYS:
            raise ConfigError(f"{key}.{name}", "unknown key")
    if ("field" in c) == ("header" in c):
        raise ConfigError(key, "give exactly one of field or header")
    header = ""
    if "header" in c:
        header = _opt_str(c, "header", f"{key}.header") or ""
        if not re.fullmatch(r"[!-9;-~]+", header):
            raise ConfigError(f"{key}.header", f"not a header name: {header!r}")
        fname = "header"
    else:
        fname = c["field"]
        if not isinstance(fname, str) or fname.lower() not in FIELDS:
            raise ConfigError(f"{key}.field", f"unknown field {fname!r} (one of {', '.join(FIELDS)}; "
                              "or use header = \"Name\")")
        fname = fname.lower()
    op = c.get("op")
    if not isinstance(op, str) or op.lower() not in OPS:
        raise ConfigError(f"{key}.op", f"expected one of {', '.join(OPS)}")
    op = op.lower()
    if op == "domain" and fname not in ADDRESS_FIELDS and fname != "header":
        raise ConfigError(f"{key}.op", f"domain applies to address fields ({', '.join(sorted(ADDRESS_FIELDS))}) "
                          "or a header")
    if "value" not in c:
        raise ConfigError(f"{key}.value", "missing")
    raw = c["value"]
    values_in = [raw] if isinstance(raw, str) else raw
    if not isinstance(values_in, list) or not values_in or not all(isinstance(v, str) and v for v in values_in):
        raise ConfigError(f"{key}.value", "expected a non-empty string or a non-empty list of strings")
    case = _bool(c, "case_sensitive", f"{key}.case_sensitive")
    negate = _bool(c, "negate", f"{key}.negate")
    patterns: list[re.Pattern[str]] = []
    if op == "regex":
        for i, v in enumerate(values_in):
            try:
                patterns.append(re.compile(v, 0 if case else re.IGNORECASE))
            except re.error as exc:
                where = f"{key}.value" if isinstance(raw, str) else f"{key}.value[{i}]"
                raise ConfigError(where, f"invalid regex: {exc}") from None
        values = tuple(values_in)
    elif op == "domain":
        values = tuple(v.strip().lstrip("@").rstrip(".").lower() for v in values_in)
    else:
        values = tuple(v if case else v.casefold() for v in values_in)
        if op == "equals":
            values = tuple(v.strip() for v in values)
    return Condition(field=fname, op=op, values=values, header=header, case_sensitive=case, negate=negate,
                     patterns=tuple(patterns))


def _parse_rule(t: Any, key: str, index: int) -> Rule:
    if not isinstance(t, dict):
        raise ConfigError(key, "expected a table")
    for name in t:
        if name not in _RULE_KEYS:
            raise ConfigError(f"{key}.{name}", "unknown key")
    name = _opt_str(t, "name", f"{key}.name")
    if name is None:
        raise ConfigError(f"{key}.name", "missing (every rule needs a name for the ticket history)")
    match = t.get("match", "all")
    if match not in ("all", "any"):
        raise ConfigError(f"{key}.match", "expected \"all\" or \"any\"")
    conds_raw = t.get("conditions", [])
    if not isinstance(conds_raw, list):
        raise ConfigError(f"{key}.conditions", "expected a list of tables")
    conditions = tuple(_parse_condition(c, f"{key}.conditions[{j}]") for j, c in enumerate(conds_raw))
    priority = _opt_str(t, "priority", f"{key}.priority")
    if priority is not None:
        priority = priority.lower()
        if priority not in PRIORITIES:
            raise ConfigError(f"{key}.priority", f"expected one of {', '.join(PRIORITIES)}")
    tags_raw = t.get("tags", [])
    if isinstance(tags_raw, str):
        tags_raw = [tags_raw]
    if not isinstance(tags_raw, list) or not all(isinstance(x, str) and x.strip() for x in tags_raw):
        raise ConfigError(f"{key}.tags", "expected a list of non-empty strings")
    fields_raw = t.get("fields", {})
    if not isinstance(fields_raw, dict):
        raise ConfigError(f"{key}.fields", "expected a table of name = value")
    fields: list[tuple[str, str]] = []
    for fname, fval in fields_raw.items():
        if isinstance(fval, bool):
            fval = "true" if fval else "false"
        elif isinstance(fval, (int, float)):
            fval = str(fval)
        if not isinstance(fval, str):
            raise ConfigError(f"{key}.fields.{fname}", "expected a string, number or boolean")
        fields.append((str(fname), fval))
    rule = Rule(
        name=name, conditions=conditions, match=match,
        queue=_opt_str(t, "queue", f"{key}.queue"), category=_opt_str(t, "category", f"{key}.category"),
        priority=priority, assignee=_opt_str(t, "assignee", f"{key}.assignee"),
        tags=tuple(dict.fromkeys(x.strip() for x in tags_raw)), fields=tuple(fields),
        alert=_bool(t, "alert", f"{key}.alert"), manual_handling=_bool(t, "manual_handling", f"{key}.manual_handling"),
        stop=_bool(t, "stop", f"{key}.stop"))
    if not any((rule.queue, rule.category, rule.priority, rule.assignee, rule.tags, rule.fields, rule.alert,
                rule.manual_handling, rule.stop)):
        raise ConfigError(key, "rule has no action (queue, category, priority, assignee, tags, fields, alert, "
                          "manual_handling or stop)")
    return rule


def parse_routing(list_of_tables: Any, prefix: str) -> tuple[Rule, ...]:
    """Rules from config: ``list_of_tables`` is the ``[[routing.rule]]`` array, ``prefix``
    its dotted key (e.g. ``"routing.rule"``). Raises ConfigError naming the dotted key
    (``routing.rule[2].conditions[0].value``) on unknown keys, bad values, bad regexes."""
    if list_of_tables is None:
        return ()
    if not isinstance(list_of_tables, list):
        raise ConfigError(prefix, "expected an array of tables ([[…]])")
    rules = tuple(_parse_rule(t, f"{prefix}[{i}]", i) for i, t in enumerate(list_of_tables))
    seen: set[str] = set()
    for i, r in enumerate(rules):
        if r.name in seen:
            raise ConfigError(f"{prefix}[{i}].name", f"duplicate rule name {r.name!r}")
        seen.add(r.name)
    return rules
