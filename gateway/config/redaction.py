"""`[[redaction.rule]]`: the rules that mask card numbers and other patterns in stored text (gateway/pipeline/stages/redact.py applies them)."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from gateway.config.errors import ConfigError


_CARD = re.compile(r"\d(?<![\d-]\d)(?<!\d \d)(?:[ -]?\d){12,}(?!\d)")


@dataclass(frozen=True, slots=True)
class RedactionRule:
    name: str
    pattern: re.Pattern[str]
    replacement: str = "[redacted]"
    luhn: bool = False      # card rule: the match's digits must be 13-19 long and pass Luhn


CARD_RULE = RedactionRule("card", _CARD, "[card redacted]", luhn=True)


_KEYS = frozenset({"name", "builtin", "pattern", "replacement", "case_sensitive"})


def parse_redaction(list_of_tables: Any, prefix: str) -> tuple[RedactionRule, ...]:
    """Rules from ``[[redaction.rule]]`` tables; ConfigError names the dotted key."""
    if list_of_tables is None:
        return ()
    if not isinstance(list_of_tables, list):
        raise ConfigError(prefix, "expected an array of tables ([[…]])")
    rules: list[RedactionRule] = []
    names: set[str] = set()
    for i, t in enumerate(list_of_tables):
        key = f"{prefix}[{i}]"
        if not isinstance(t, dict):
            raise ConfigError(key, "expected a table")
        for k in t:
            if k not in _KEYS:
                raise ConfigError(f"{key}.{k}", "unknown key")
        name = t.get("name")
        if not isinstance(name, str) or not name.strip():
            raise ConfigError(f"{key}.name", "expected a non-empty string")
        if name in names:
            raise ConfigError(f"{key}.name", f"duplicate rule name {name!r}")
        names.add(name)
        repl = t.get("replacement", "[redacted]")
        if not isinstance(repl, str):
            raise ConfigError(f"{key}.replacement", "expected a string")
        case = t.get("case_sensitive", False)
        if not isinstance(case, bool):
            raise ConfigError(f"{key}.case_sensitive", "expected true or false")
        if ("builtin" in t) == ("pattern" in t):
            raise ConfigError(key, "give exactly one of builtin or pattern")
        if "builtin" in t:
            if t["builtin"] != "card":
                raise ConfigError(f"{key}.builtin", "unknown builtin (available: card)")
            rules.append(RedactionRule(name, _CARD, t.get("replacement", CARD_RULE.replacement), luhn=True))
            continue
        pat = t["pattern"]
        if not isinstance(pat, str) or not pat:
            raise ConfigError(f"{key}.pattern", "expected a non-empty string")
        try:
            compiled = re.compile(pat, 0 if case else re.IGNORECASE)
        except re.error as exc:
            raise ConfigError(f"{key}.pattern", f"invalid regex: {exc}") from None
        if compiled.fullmatch("") is not None:
            raise ConfigError(f"{key}.pattern", "pattern matches the empty string")
        for ref in re.findall(r"\\g<([^>]*)>|\\(\d+)", repl):
            name_ref, num_ref = ref
            target = name_ref or num_ref
            ok = (int(target) <= compiled.groups if target.isdigit()
                  else target in compiled.groupindex)
            if not ok:
                raise ConfigError(f"{key}.replacement", f"refers to group {target!r}, which the pattern lacks")
        rules.append(RedactionRule(name, compiled, repl))
    return tuple(rules)
