"""Two-way mail stages: quotes, forwards, threading, routing, commands, redaction.

Each reports in ``Verdict.data``; the ticket stage turns the findings into one ticket
action. Threading decisions that need the store (is the sender a participant? is the
ticket closed?) are made atomically by the store from the hints computed here.
"""
from __future__ import annotations

import base64
import secrets
from typing import Any

from gateway.runtime.netaddr import ip_in_networks
from gateway.store.base import Store
from gateway.config.twoway import AgentConfig, TwoWayConfig
from gateway.pipeline.stages.commands import DEFAULT_FIELDS, format_result, parse_commands
from gateway.pipeline.stages.forwards import find_forwarded
from gateway.pipeline.stages.importance import importance
from gateway.pipeline.stages.quotes import split_reply
from gateway.pipeline.stages.redact import DEFAULT_RULES, redact
from gateway.pipeline.stages.routing import route
from gateway.pipeline.stages.core import Context, Inbound, Verdict, requester
from gateway.pipeline.stages.subjects import subject_key
from gateway.pipeline.stages.tokens import trusted_numbers, verify_message_id

KEY_CONTROL = "threading_key"


async def ensure_thread_key(store: Store) -> None:
    """Without configured [threading] keys, a random key is generated once and kept in the store, so
    tokens are unforgeable from the first start (invariant 6) and survive restarts."""
    if await store.control_get(KEY_CONTROL) is None:
        await store.control_set(KEY_CONTROL, base64.b64encode(secrets.token_bytes(32)).decode())


async def thread_keys(cfg_twoway: TwoWayConfig, store: Store) -> tuple[bytes, ...]:
    if cfg_twoway.keys:
        return cfg_twoway.keys
    stored = await store.control_get(KEY_CONTROL)
    return (base64.b64decode(stored),) if stored else ()


def _tw(ctx: Context) -> TwoWayConfig:
    return ctx.cfg.twoway or TwoWayConfig()


def acting_agent(msg: Inbound, ctx: Context) -> tuple[AgentConfig | None, str]:
    """(the configured agent this message acts as, "") or (None, why it may not act as one).

    An agent acts as an agent only when authenticated (invariant 6): its From — the one DMARC evaluated —
    passed DMARC (aligned SPF or DKIM, or a trusted ARC sealer's override), or the message came from an
    SMTP client in ``[threading] agent_trusted_networks``. Mail flagged suspicious never acts. Anyone
    else writing an agent's address in From is handled as any other sender (a non-participant)."""
    ident = msg.identity()
    tw = _tw(ctx)
    agent = tw.agent(ident.addr) if ident.source == "from" else None
    if agent is None:
        return None, ""
    if "suspicious" in msg.entry.flags:
        return None, f"{ident.addr} is an agent address, but the mail failed its domain's DMARC policy"
    if tw.agent_trusted_networks and ip_in_networks(msg.entry.peer_ip, tw.agent_trusted_networks):
        return agent, ""
    auth = msg.entry.auth or {}
    dmarc = auth.get("dmarc") or {}
    if auth.get("disabled"):
        return None, (f"{ident.addr} is an agent address, but authentication is disabled and the client is not "
                      "in [threading] agent_trusted_networks")
    if dmarc.get("result") == "pass" or (dmarc.get("override") and dmarc.get("result") != "fail"
                                         and not auth.get("decision", {}).get("suspicious")):
        domain = ident.addr.rpartition("@")[2].lower()
        passed = {str(d.get("domain", "")).lower() for d in dmarc.get("domains", []) if d.get("result") == "pass"}
        if domain in passed or dmarc.get("override"):
            return agent, ""
    return None, (f"{ident.addr} is an agent address, but the mail is not authenticated as theirs "
                  f"(dmarc={dmarc.get('result', 'none')})")


def _is_agent_with(ctx: Context, msg: Inbound, permission: str) -> bool:
    agent, _why = acting_agent(msg, ctx)
    return agent is not None and permission in agent.permissions


class QuotesStage:
    """Split the reply into what was written now and the quoted history / signature."""

    name = "quotes"

    async def run(self, msg: Inbound, ctx: Context) -> Verdict:
        p = msg.parsed
        parts = split_reply(p.body_text, p.body_html or None, sender=p.from_addr)
        new_text = parts.new_text.strip() or p.body_text  # a mail that is all history: show it whole
        return Verdict(data={"new_text": new_text, "has_quote": parts.has_quote, "marker": parts.marker})


class ForwardStage:
    """An agent forwarding a customer's mail in: the original sender becomes the requester."""

    name = "forward"

    async def run(self, msg: Inbound, ctx: Context) -> Verdict:
        if not _is_agent_with(ctx, msg, "forward"):
            return Verdict()
        original = find_forwarded(msg.parsed)
        if original is None or not original.from_addr or _tw(ctx).agent(original.from_addr):
            return Verdict()
        return Verdict(reason=f"forward by agent: requester is {original.from_addr}", data={
            "from_addr": original.from_addr.lower(), "from_name": original.from_name,
            "subject": original.subject, "body": original.body, "note": original.note,
            "agent": requester(msg)[0]})


class ThreadStage:
    """Where the message may thread: our Message-IDs (MAC verified), received Message-IDs, subject
    tokens (bare: participants only; signed: per policy), optionally subject + requester."""

    name = "thread"

    async def run(self, msg: Inbound, ctx: Context) -> Verdict:
        tw, p = _tw(ctx), msg.parsed
        keys = ctx.keys
        ticket_ids: list[int] = []
        refs: list[str] = []
        for mid in dict.fromkeys((*p.in_reply_to, *reversed(p.references))):
            tid = verify_message_id(mid, keys) if keys else None
            if tid is not None and tid.isdigit():
                ticket_ids.append(int(tid))
            else:
                refs.append(mid)
        number, verified = None, False
        if tw.style is not None:
            signed, bare = trusted_numbers(p.subject, keys or None, tw.style)
            if signed:
                number, verified = signed[0], tw.trust_signed_subject
            elif bare:
                number = bare[0]
        agent, refused = acting_agent(msg, ctx)
        perms = agent.permissions if agent is not None else frozenset()
        # Per action: a public reply needs "reply"; an internal note (the comment address, or any mail of an
        # agent who may only write notes) needs "note". An agent with neither acts as a plain sender.
        comment = _comment_address(msg, tw)
        internal = "note" in perms and (comment or "reply" not in perms)
        as_agent = internal or (not comment and "reply" in perms)
        reason = refused
        if agent is not None and not as_agent:
            reason = f"{agent.address} may not reply or write notes by mail (permissions: {sorted(perms)})"
        elif agent is not None and internal and not comment:
            reason = f"{agent.address} may write notes but not public replies: kept as an internal note"
        data = {
            "ticket_ids": ticket_ids, "refs": refs, "number": number, "number_verified": verified,
            "subject_key": subject_key(p.subject, tw.style) if tw.style is not None else "",
            "subject_days": tw.subject_match_days, "agent": as_agent, "internal": bool(as_agent and internal),
            "on_stranger": tw.non_participant,
        }
        if reason:
            data["agent_refused"] = reason
        return Verdict(reason=reason, data=data)


def _comment_address(msg: Inbound, tw: TwoWayConfig) -> bool:
    """Sent to a mailbox's comment address (support+comment@…)?"""
    tag = f"+{tw.comment_tag}@"
    return any(tag in r.lower() for r in msg.entry.rcpt_tos)


class RouteStage:
    """Ordered routing rules: queue, category, priority, tags, assignee, fields, alert/manual flags."""

    name = "route"

    async def run(self, msg: Inbound, ctx: Context) -> Verdict:
        tw = _tw(ctx)
        level = importance(msg.parsed)
        if not tw.routing:
            return Verdict(data={"importance": level})
        res = route(msg.parsed, msg.entry.mail_from, tw.routing)
        data: dict[str, Any] = {"importance": level, "fired": list(res.fired), "queue": res.queue,
                                "category": res.category, "priority": res.priority, "assignee": res.assignee,
                                "tags": list(res.tags), "fields": dict(res.fields), "alert": res.alert,
                                "manual_handling": res.manual_handling}
        return Verdict(reason=f"rules fired: {', '.join(res.fired)}" if res.fired else "", data=data)


class CommandStage:
    """``$Field=Value$`` lines from an authorised sender: a configured agent with the commands
    permission whose mail passed DMARC. Anyone else's command lines are ignored (and recorded)."""

    name = "commands"

    async def run(self, msg: Inbound, ctx: Context) -> Verdict:
        tw = _tw(ctx)
        if not tw.commands_enabled:
            return Verdict()
        text = (msg.findings.get("quotes") or {}).get("new_text", msg.parsed.body_text)
        if tw.command_delimiter not in text:
            return Verdict()
        commands = parse_commands(text, DEFAULT_FIELDS, tw.command_delimiter)
        if not commands:
            return Verdict()
        addr, _ = requester(msg)
        agent, refused = acting_agent(msg, ctx)
        if refused:
            return Verdict(reason="commands refused: the agent's mail is not authenticated",
                           data={"ignored": f"{refused}: commands refused"})
        if agent is None or "commands" not in agent.permissions:
            return Verdict(reason="commands ignored: sender is not an agent allowed to send commands",
                           data={"ignored": f"{addr} is not an agent allowed to send commands"})
        updates: dict[str, Any] = {}
        for fld, value in commands.applied.items():
            key = fld.lower()
            if key == "operation":
                updates["status"] = {"CloseRequest": "closed", "PickupRequest": "open"}.get(value, updates.get(
                    "status"))
                if value == "PickupRequest":
                    updates.setdefault("assignee", addr)
                updates = {k: v for k, v in updates.items() if v is not None}
            elif key in ("status", "priority"):
                updates[key] = value.lower()
            elif key in ("assignee", "category"):
                updates[key] = value
        return Verdict(reason=f"commands: applied {sorted(updates)}" if updates else "commands: none applied",
                       data={"updates": updates, "applied": dict(commands.applied),
                             "refused": [list(x) for x in commands.refused],
                             "result_text": format_result(commands)})


class RedactStage:
    """Redact card numbers (Luhn-checked) and configured patterns from the stored text."""

    name = "redact"

    async def run(self, msg: Inbound, ctx: Context) -> Verdict:
        rules = _tw(ctx).redaction
        rules = DEFAULT_RULES if rules is None else rules
        if not rules:
            return Verdict()
        f = msg.findings
        texts = {"body_text": (f.get("forward") or {}).get("body") or msg.parsed.body_text,
                 "new_text": (f.get("quotes") or {}).get("new_text", "")}
        out: dict[str, Any] = {}
        counts: dict[str, int] = {}
        for k, text in texts.items():
            red, n = redact(text, rules)
            out[k] = red
            for rule, c in n.items():
                counts[rule] = counts.get(rule, 0) + c
        if not any(counts.values()):
            return Verdict()
        return Verdict(reason=f"redacted {counts}", data={**out, "counts": counts})


TWOWAY_STAGES = (QuotesStage, ForwardStage, ThreadStage, RouteStage, CommandStage, RedactStage)
