"""`[ticket_template]`: the typed fields a ticket gets from a mail (gateway/pipeline/stages/template.py fills them)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from gateway.config.errors import ConfigError


TYPES = ("str", "int", "bool", "choice")


SOURCES = ("subject", "body", "sender", "sender_name", "importance", "attachments", "to", "cc")


@dataclass(frozen=True, slots=True)
class FieldSpec:
    name: str
    type: str = "str"
    source: str = ""
    required: bool = False
    default: Any = None
    choices: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class TicketTemplate:
    fields: tuple[FieldSpec, ...] = ()
    attach_original: bool = False


def parse_template(table: Any, prefix: str) -> TicketTemplate:
    if not table:
        return TicketTemplate()
    if not isinstance(table, dict):
        raise ConfigError(prefix, "expected a table")
    for k in table:
        if k not in ("fields", "attach_original"):
            raise ConfigError(f"{prefix}.{k}", "unknown key (known: attach_original, fields)")
    attach = table.get("attach_original", False)
    if not isinstance(attach, bool):
        raise ConfigError(f"{prefix}.attach_original", "expected true or false")
    specs = []
    raw = table.get("fields", [])
    if not isinstance(raw, list):
        raise ConfigError(f"{prefix}.fields", "expected a list of tables")
    for i, f in enumerate(raw):
        key = f"{prefix}.fields[{i}]"
        if not isinstance(f, dict) or not isinstance(f.get("name"), str) or not f["name"]:
            raise ConfigError(f"{key}.name", "required")
        for k in f:
            if k not in ("name", "type", "source", "required", "default", "choices"):
                raise ConfigError(f"{key}.{k}", "unknown key")
        typ = f.get("type", "str")
        if typ not in TYPES:
            raise ConfigError(f"{key}.type", f"expected one of {', '.join(TYPES)}")
        src = f.get("source", "")
        if src and src not in SOURCES and not (isinstance(src, str) and src.lower().startswith("header:")):
            raise ConfigError(f"{key}.source", f"expected one of {', '.join(SOURCES)} or header:<Name>")
        choices = tuple(f.get("choices", ()))
        if typ == "choice" and not choices:
            raise ConfigError(f"{key}.choices", "required for type = \"choice\"")
        spec = FieldSpec(f["name"], typ, src, bool(f.get("required", False)), f.get("default"), choices)
        if spec.default is not None:
            try:
                convert(spec, spec.default)
            except ValueError as exc:
                raise ConfigError(f"{key}.default", str(exc)) from None
        specs.append(spec)
    return TicketTemplate(tuple(specs), attach)


def convert(spec: FieldSpec, value: Any) -> Any:
    if spec.type == "int":
        try:
            return int(str(value).strip())
        except ValueError:
            raise ValueError(f"{spec.name}: {value!r} is not an integer") from None
    if spec.type == "bool":
        s = str(value).strip().lower()
        if s in ("1", "true", "yes", "on"):
            return True
        if s in ("0", "false", "no", "off", ""):
            return False
        raise ValueError(f"{spec.name}: {value!r} is not true/false")
    if spec.type == "choice":
        for c in spec.choices:
            if str(value).strip().lower() == c.lower():
                return c
        raise ValueError(f"{spec.name}: {value!r} is not one of {', '.join(spec.choices)}")
    return str(value)
