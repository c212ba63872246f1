"""Config of two-way mail: threading, agents, queues, commands, routing, redaction.

Kept apart from gateway/config/load.py because the values are built by the pipeline's own
parsers (token style and keys, routing rules, redaction rules), which raise ConfigError
with the dotted key themselves.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from gateway.config.errors import ConfigError
from gateway.config.units import parse_duration

AGENT_PERMISSIONS = ("reply", "note", "commands", "forward")


@dataclass(frozen=True, slots=True)
class AgentConfig:
    address: str
    name: str = ""
    permissions: frozenset[str] = frozenset(AGENT_PERMISSIONS)
    language: str | None = None        # notifications to this agent (else the queue's, else [relay] language)


@dataclass(frozen=True, slots=True)
class QueueConfig:
    name: str
    reopen_days: float | None = None   # None: [threading] reopen_days
    email_updates: bool = True         # replies by email become public articles (else internal notes)
    first_response: float | None = None  # SLA: seconds until an agent's first public answer
    resolution: float | None = None      # SLA: seconds until resolved/closed
    escalation: tuple[str, ...] = ()     # who is told at level 1, 2, … (agent, then manager, …)
    # Agent notifications (issue 19): who is told about this queue's tickets, on which events, in which language.
    notify: tuple[str, ...] = ()
    notify_events: tuple[str, ...] = ("created", "customer_reply", "reopened")
    language: str | None = None


@dataclass(frozen=True)
class TwoWayConfig:
    style: Any = None                  # gateway.pipeline.stages.tokens.TokenStyle
    keys: tuple[bytes, ...] = ()       # MAC keys (first signs); () = a random key kept in the store
    trust_signed_subject: bool = False
    subject_match_days: float = 0.0
    reopen_days: float = 14.0
    non_participant: str = "new"       # new (a linked ticket) | quarantine
    cc_participants: bool = True
    comment_tag: str = "comment"
    agents: tuple[AgentConfig, ...] = ()
    queues: tuple[QueueConfig, ...] = ()
    commands_enabled: bool = True
    command_delimiter: str = "$"
    routing: tuple[Any, ...] = ()      # gateway.pipeline.stages.routing.Rule
    redaction: tuple[Any, ...] | None = None  # None: the built-in card rule
    agent_index: dict[str, AgentConfig] = field(default_factory=dict)
    # SMTP clients (CIDR) whose mail is trusted to come from the agent its From names without DMARC:
    # an internal submission path that carries only authenticated staff mail, never the MX front.
    agent_trusted_networks: tuple[Any, ...] = ()
    # Several agents at once: a second agent's public answer to the same customer message within this many
    # seconds of another agent's is held as an internal note and its author told (0 = off).
    agent_conflict_window: float = 600.0
    # Reopen with sense: a short reply to a resolved/closed ticket made only of these phrases (and filler:
    # greetings, sign-offs, the sender's name) is added without reopening. {language: phrases}.
    thanks_phrases: dict[str, tuple[str, ...]] | None = None   # None: the built-in lists
    thanks_filler: dict[str, tuple[str, ...]] | None = None
    thanks_max_chars: int = 200
    # Routing action ``alert``: who is mailed at once, and at most how often ("COUNT/WINDOW" tiers).
    alert_to: tuple[str, ...] = ()
    alert_limits: tuple[tuple[int, float], ...] = ((10, 600.0), (30, 3600.0))

    def agent(self, address: str) -> AgentConfig | None:
        return self.agent_index.get(address.lower())

    def queue(self, name: str) -> QueueConfig | None:
        for q in self.queues:
            if q.name == name:
                return q
        return None


def _check_keys(table: dict[str, Any], prefix: str, known: set[str]) -> None:
    for k in table:
        if k not in known:
            raise ConfigError(f"{prefix}.{k}", f"unknown key (known: {', '.join(sorted(known))})")


def _num(v: Any, key: str, lo: float = 0, hi: float = 36500) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi:
        raise ConfigError(key, f"expected a number between {lo:g} and {hi:g}")
    return float(v)


def _bool(v: Any, key: str) -> bool:
    if not isinstance(v, bool):
        raise ConfigError(key, "expected true or false")
    return v


def _str(v: Any, key: str, choices: tuple[str, ...] | None = None) -> str:
    if not isinstance(v, str) or (choices and v not in choices):
        raise ConfigError(key, f"expected one of {', '.join(choices)}" if choices else "expected a string")
    return v


def _networks(v: Any, key: str) -> tuple[Any, ...]:
    import ipaddress
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise ConfigError(key, "expected a list of CIDR strings, e.g. [\"10.1.2.0/24\"]")
    out = []
    for x in v:
        try:
            out.append(ipaddress.ip_network(x.strip(), strict=False))
        except ValueError:
            raise ConfigError(key, f"{x!r} is not an IP network") from None
    return tuple(out)


def parse_twoway(data: dict[str, Any]) -> TwoWayConfig:
    """Build TwoWayConfig from the top-level tables threading, agent, queue, commands, routing, redaction."""
    from gateway.config.redaction import parse_redaction
    from gateway.config.routing import parse_routing
    from gateway.config.threading import parse_keys, parse_token_style

    t = data.get("threading", {})
    if not isinstance(t, dict):
        raise ConfigError("threading", "expected a table")
    _check_keys(t, "threading", {"subject_token", "number_pattern", "mac_length", "keys",
                                 "trust_signed_subject_from_non_participants", "subject_match_days",
                                 "reopen_days", "non_participant", "cc_participants", "comment_tag",
                                 "agent_trusted_networks", "agent_conflict_window", "thanks_phrases",
                                 "thanks_filler", "thanks_max_chars"})
    style = parse_token_style(t, "threading")
    keys = parse_keys(t["keys"], "threading.keys") if t.get("keys") else ()
    cfg: dict[str, Any] = {"style": style, "keys": keys}
    if "trust_signed_subject_from_non_participants" in t:
        cfg["trust_signed_subject"] = _bool(t["trust_signed_subject_from_non_participants"],
                                            "threading.trust_signed_subject_from_non_participants")
    if "subject_match_days" in t:
        cfg["subject_match_days"] = _num(t["subject_match_days"], "threading.subject_match_days")
    if "reopen_days" in t:
        cfg["reopen_days"] = _num(t["reopen_days"], "threading.reopen_days")
    if "non_participant" in t:
        cfg["non_participant"] = _str(t["non_participant"], "threading.non_participant", ("new", "quarantine"))
    if "cc_participants" in t:
        cfg["cc_participants"] = _bool(t["cc_participants"], "threading.cc_participants")
    if "comment_tag" in t:
        cfg["comment_tag"] = _str(t["comment_tag"], "threading.comment_tag").lower()

    if "agent_trusted_networks" in t:
        cfg["agent_trusted_networks"] = _networks(t["agent_trusted_networks"], "threading.agent_trusted_networks")
    if "agent_conflict_window" in t:
        cfg["agent_conflict_window"] = _duration(t["agent_conflict_window"], "threading.agent_conflict_window")
    for name in ("thanks_phrases", "thanks_filler"):
        if name in t:
            cfg[name] = _phrase_table(t[name], f"threading.{name}")
    if "thanks_max_chars" in t:
        cfg["thanks_max_chars"] = int(_num(t["thanks_max_chars"], "threading.thanks_max_chars", 0, 10000))

    agents = []
    raw_agents = data.get("agent", [])
    if not isinstance(raw_agents, list):
        raise ConfigError("agent", "expected an array of tables ([[agent]])")
    for i, a in enumerate(raw_agents):
        key = f"agent[{i}]"
        if not isinstance(a, dict) or "address" not in a:
            raise ConfigError(f"{key}.address", "required")
        _check_keys(a, key, {"address", "name", "permissions", "language"})
        address = _str(a["address"], f"{key}.address").strip().lower()
        if "@" not in address:
            raise ConfigError(f"{key}.address", f"{address!r} is not an email address")
        perms = a.get("permissions", list(AGENT_PERMISSIONS))
        if not isinstance(perms, list) or any(not isinstance(p, str) for p in perms):
            raise ConfigError(f"{key}.permissions", f"expected a list of {', '.join(AGENT_PERMISSIONS)}")
        unknown = [p for p in perms if p not in AGENT_PERMISSIONS]
        if unknown:
            raise ConfigError(f"{key}.permissions", f"unknown permission(s) {', '.join(map(repr, unknown))} "
                                                    f"(known: {', '.join(AGENT_PERMISSIONS)})")
        agents.append(AgentConfig(address, _str(a.get("name", ""), f"{key}.name"), frozenset(perms),
                                  _language(a["language"], f"{key}.language") if "language" in a else None))
    cfg["agents"] = tuple(agents)
    cfg["agent_index"] = {a.address: a for a in agents}

    queues = []
    raw_q = data.get("queue", [])
    if not isinstance(raw_q, list):
        raise ConfigError("queue", "expected an array of tables ([[queue]])")
    for i, q in enumerate(raw_q):
        key = f"queue[{i}]"
        if not isinstance(q, dict) or "name" not in q:
            raise ConfigError(f"{key}.name", "required")
        _check_keys(q, key, {"name", "reopen_days", "email_updates", "first_response", "resolution", "escalation",
                             "notify", "notify_events", "language"})
        sla: dict[str, Any] = {}
        for target in ("first_response", "resolution"):
            if target in q:
                try:
                    sla[target] = parse_duration(q[target])
                except ValueError as exc:
                    raise ConfigError(f"{key}.{target}", str(exc)) from None
        esc = q.get("escalation", [])
        if not isinstance(esc, list) or any(not isinstance(a, str) or "@" not in a for a in esc):
            raise ConfigError(f"{key}.escalation", "expected a list of addresses (level 1, level 2, …)")
        if sla and not esc:
            raise ConfigError(f"{key}.escalation", "required with first_response / resolution targets")
        queues.append(QueueConfig(_str(q["name"], f"{key}.name"),
                                  _num(q["reopen_days"], f"{key}.reopen_days") if "reopen_days" in q else None,
                                  _bool(q.get("email_updates", True), f"{key}.email_updates"),
                                  escalation=tuple(a.strip().lower() for a in esc), **sla, **_queue_notify(q, key)))
    cfg["queues"] = tuple(queues)

    c = data.get("commands", {})
    if not isinstance(c, dict):
        raise ConfigError("commands", "expected a table")
    _check_keys(c, "commands", {"enabled", "delimiter"})
    if "enabled" in c:
        cfg["commands_enabled"] = _bool(c["enabled"], "commands.enabled")
    if "delimiter" in c:
        d = _str(c["delimiter"], "commands.delimiter")
        if not d or len(d) > 3 or any(ch.isalnum() or ch.isspace() for ch in d):
            raise ConfigError("commands.delimiter", "1-3 punctuation characters, e.g. \"$\" or \"#\"")
        cfg["command_delimiter"] = d

    r = data.get("routing", {})
    if not isinstance(r, dict):
        raise ConfigError("routing", "expected a table with [[routing.rule]] entries")
    _check_keys(r, "routing", {"rule", "alert_to", "alert_limits"})
    cfg["routing"] = parse_routing(r.get("rule", []), "routing.rule")
    if "alert_to" in r:
        cfg["alert_to"] = _addresses(r["alert_to"], "routing.alert_to", allow_string=True)
    if "alert_limits" in r:
        from gateway.config.relay import _ack_limits
        try:
            cfg["alert_limits"] = _ack_limits(r["alert_limits"])
        except (TypeError, ValueError) as exc:
            raise ConfigError("routing.alert_limits", str(exc)) from None

    red = data.get("redaction", {})
    if not isinstance(red, dict):
        raise ConfigError("redaction", "expected a table with [[redaction.rule]] entries")
    _check_keys(red, "redaction", {"rule"})
    if "rule" in red:
        cfg["redaction"] = parse_redaction(red["rule"], "redaction.rule")
    return TwoWayConfig(**cfg)


NOTIFY_EVENTS = ("created", "customer_reply", "reopened", "sla_warning", "quarantined", "agent_reply")


def _duration(v: Any, key: str) -> float:
    try:
        return parse_duration(v)
    except ValueError as exc:
        raise ConfigError(key, str(exc)) from None


def _language(v: Any, key: str) -> str:
    import re
    if not isinstance(v, str) or not re.match(r"^[A-Za-z]{2,3}(?:[-_][A-Za-z0-9]{2,8})?$", v):
        raise ConfigError(key, "expected a language tag such as \"en\" or \"de\"")
    return v


def _addresses(v: Any, key: str, allow_string: bool = False) -> tuple[str, ...]:
    if allow_string and isinstance(v, str):
        v = [v]
    if not isinstance(v, list) or any(not isinstance(a, str) or "@" not in a or any(c in a for c in " ,;<>\r\n")
                                      for a in v):
        raise ConfigError(key, "expected a list of email addresses")
    return tuple(dict.fromkeys(a.strip().lower() for a in v))


def _queue_notify(q: dict[str, Any], key: str) -> dict[str, Any]:
    """``notify`` / ``notify_events`` / ``language`` of one [[queue]]."""
    out: dict[str, Any] = {}
    if "notify" in q:
        out["notify"] = _addresses(q["notify"], f"{key}.notify")
    if "notify_events" in q:
        ev = q["notify_events"]
        if not isinstance(ev, list) or any(e not in NOTIFY_EVENTS for e in ev):
            raise ConfigError(f"{key}.notify_events", f"expected a list of {', '.join(NOTIFY_EVENTS)}")
        out["notify_events"] = tuple(dict.fromkeys(ev))
    if "language" in q:
        out["language"] = _language(q["language"], f"{key}.language")
    return out


def _phrase_table(v: Any, key: str) -> dict[str, tuple[str, ...]]:
    """``{en = ["thanks", ...], de = [...]}``: phrases per language."""
    if not isinstance(v, dict):
        raise ConfigError(key, "expected a table of lists per language, e.g. {en = [\"thanks\"], de = [\"danke\"]}")
    out = {}
    for lang, phrases in v.items():
        if not isinstance(phrases, list) or any(not isinstance(p, str) or not p.strip() for p in phrases):
            raise ConfigError(f"{key}.{lang}", "expected a list of non-empty strings")
        out[str(lang)] = tuple(phrases)
    return out


TWOWAY_TABLES = ("threading", "agent", "queue", "commands", "routing", "redaction")
