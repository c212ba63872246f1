"""Per-mailbox ticket template: which ticket fields exist, their type, default, whether required,
and which email property fills them; optionally the original message attached as .eml.

    [[mailbox]]
    address = "support@example.test"
    [mailbox.template]
    attach_original = true
    fields = [
      { name = "priority", source = "importance", type = "choice", choices = ["low", "normal", "high"] },
      { name = "customer_id", source = "header:X-Customer-Id", type = "int", required = true },
      { name = "channel", type = "str", default = "email" },
    ]

Sources: subject, body, sender, sender_name, importance, attachments (count), to, cc, header:<Name>.
A required field without a value (and without a default) quarantines the message with the reason.
"""
from __future__ import annotations

from typing import Any

from gateway.pipeline.stages.importance import importance
from gateway.pipeline.parse.model import ParsedMessage
from gateway.config.template import TicketTemplate, convert


def _source(p: ParsedMessage, source: str) -> Any:
    if source.lower().startswith("header:"):
        return p.header(source.split(":", 1)[1].strip())
    return {"subject": p.subject, "body": p.body_text, "sender": p.from_addr, "sender_name": p.from_name,
            "importance": importance(p), "attachments": len(p.attachments), "to": ", ".join(p.to),
            "cc": ", ".join(p.cc)}.get(source)


def fill(template: TicketTemplate, p: ParsedMessage) -> tuple[dict[str, Any], str]:
    """(field values, error): the first required field without a value names the error."""
    out: dict[str, Any] = {}
    for spec in template.fields:
        value = _source(p, spec.source) if spec.source else None
        if value in (None, ""):
            value = spec.default
        if value in (None, ""):
            if spec.required:
                return out, f"ticket template: required field {spec.name!r} has no value"
            continue
        try:
            out[spec.name] = convert(spec, value)
        except ValueError as exc:
            if spec.required and spec.default is None:
                return out, f"ticket template: {exc}"
            if spec.default is not None:
                out[spec.name] = convert(spec, spec.default)
    return out, ""
