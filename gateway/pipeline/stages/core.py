"""Pipeline stages: small named classes, one async ``run`` each, no shared state.

A stage reads the immutable :class:`Inbound` and the :class:`Context` and
returns a :class:`Verdict`: continue, drop (suppress with reason), quarantine
(with reason) or a ticket action. The runner stops at the first final verdict.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from collections.abc import Mapping
from typing import Any, Awaitable, Callable, Protocol

from gateway.config.load import Config, MailboxConfig
from gateway.config.recipients import RecipientMap
from gateway.store.base import (ArticleDraft, AttachmentDraft, SpoolEntry, StrippedAttachment, ThreadHints,
                          TicketFields)
from gateway.pipeline.parse.model import ParsedMessage
from gateway.config.pipeline import HtmlPolicy, policy_for

CONTINUE = "continue"
DROP = "drop"
QUARANTINE = "quarantine"
TICKET = "ticket"


@dataclass(frozen=True, slots=True)
class Inbound:
    """One spooled message with its parsed form.

    ``findings`` holds what earlier stages reported (their ``Verdict.data``, keyed by
    stage name) — the one explicit channel from a stage to the ones after it; e.g. the
    attachments stage lists what it stripped and the ticket stage stores that list.
    """

    entry: SpoolEntry
    parsed: ParsedMessage
    findings: dict[str, dict[str, Any]] = field(default_factory=dict)
    # A large (chunked) entry arrives with ``entry.raw`` = the message with its large attachments'
    # bodies elided (see bigmime); this loads the original from the store, whole, when a stage
    # really needs it.
    load_original: Callable[[], Awaitable[bytes]] | None = None
    _memo: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def identity(self) -> Identity:
        """Who sent this message, as authenticated at DATA (computed once per message)."""
        got = self._memo.get("identity")
        if got is None:
            got = self._memo["identity"] = sender_identity(self.entry, self.parsed)
        return got

    async def original(self) -> bytes:
        """The message exactly as spooled (loads a large one from the store: memory-heavy)."""
        if self.entry.chunked and self.load_original is not None:
            return await self.load_original()
        return self.entry.raw


@dataclass(frozen=True, slots=True)
class Context:
    """Everything a stage may consult, passed explicitly (no globals)."""

    cfg: Config
    recipients: RecipientMap
    clock: Any = None
    keys: tuple[bytes, ...] = ()   # threading MAC keys (first signs, all verify)


@dataclass(frozen=True, slots=True)
class Verdict:
    """A stage's decision. ``data`` goes to ``msg.findings[stage.name]`` for later stages;
    ``contact_updates`` are applied whatever the final verdict (e.g. a bounce marks a contact
    undeliverable and is then suppressed)."""

    action: str = CONTINUE
    reason: str = ""
    data: dict[str, Any] = field(default_factory=dict)
    contact_updates: tuple[tuple[str, bool, str], ...] = ()
    ticket: TicketAction | None = None   # with action == TICKET


@dataclass(frozen=True, slots=True)
class TicketAction:
    """What a ticket verdict asks the store to do (see gateway.store.base.Delivery)."""

    queue: str
    mailbox: str
    article: ArticleDraft
    thread: ThreadHints = ThreadHints()
    fields: TicketFields = TicketFields()
    participants: tuple[tuple[str, str, str], ...] = ()
    updates: dict[str, Any] = field(default_factory=dict)
    history: tuple[dict[str, Any], ...] = ()
    note: bool = False   # automatic mail: only an internal note on the ticket it answers


class Stage(Protocol):
    name: str

    async def run(self, msg: Inbound, ctx: Context) -> Verdict: ...


@dataclass(frozen=True, slots=True)
class Identity:
    """The sender a message acts as. ``source``: "from" (the From address DMARC evaluated at DATA),
    "mail_from" (only for a message without a From field), or "" (none). ``problem``: why the
    pipeline's own reading of From disagrees with that one; the identity stage quarantines then."""

    addr: str
    name: str = ""
    source: str = ""
    problem: str = ""


NO_FROM_FIELD = "no From header field"   # gateway.auth.dmarc.parse_from's error for a message without From


def _norm_addr(addr: str) -> str:
    local, _, domain = addr.strip().rpartition("@")
    return f"{local}@{domain.lower()}" if local else addr.strip()


def sender_identity(entry: SpoolEntry, parsed: ParsedMessage) -> Identity:
    """The requester is the From that DMARC evaluated (invariant 8): the addresses the SMTP side read
    (``auth["from"]``, recorded with every spooled message; re-read with the same function from the same
    bytes for rows spooled before it was recorded). The parser's reading of From must agree with it;
    MAIL FROM stands in only when the message has no From field at all."""
    rec = (entry.auth or {}).get("from")
    if not isinstance(rec, dict) or "addresses" not in rec:
        from gateway.auth.dmarc import parse_from
        info = parse_from(entry.raw)
        addresses, error = list(info.addresses), info.error
    else:
        addresses, error = [str(a) for a in rec.get("addresses") or ()], rec.get("error")
    parsed_addr = parsed.from_addr
    if addresses:
        addr = _norm_addr(addresses[0])
        if parsed_addr.lower() != addr.lower():
            return Identity(addr, "", "from", f"From read two ways: {_shown(addr)} at DATA (what DMARC "
                                              f"evaluated), {_shown(parsed_addr)} by the MIME parser")
        return Identity(addr, parsed.from_name, "from")
    if error and error != NO_FROM_FIELD:
        return Identity("", "", "", f"From header field cannot be read: {_shown(error)}")
    if parsed_addr:
        return Identity("", "", "", f"the MIME parser found a From address ({_shown(parsed_addr)}) "
                                    "where the SMTP side found no From field")
    mail_from = entry.mail_from
    if mail_from and "@" in mail_from:
        return Identity(_norm_addr(mail_from), "", "mail_from")
    return Identity("")


def _shown(text: str) -> str:
    """A sender-controlled value made safe and short for a reason string."""
    text = "".join(c if c.isprintable() else "?" for c in text)
    return repr(text[:120] + ("…" if len(text) > 120 else ""))


def requester(msg: Inbound) -> tuple[str, str]:
    """(address, display name) of the requester: the authenticated From (see :func:`sender_identity`)."""
    ident = msg.identity()
    return ident.addr, ident.name


class IdentityStage:
    """Quarantine a message whose From the MIME parser reads differently from the SMTP side (which
    DMARC evaluated), or whose From field names no address. Always runs first (build_pipeline)."""

    name = "identity"

    async def run(self, msg: Inbound, ctx: Context) -> Verdict:
        ident = msg.identity()
        if ident.problem:
            return Verdict(QUARANTINE, f"sender identity: {ident.problem}")
        return Verdict(data={"addr": ident.addr, "source": ident.source})


class SenderStage:
    """Quarantine mail that names no sender at all: nobody to answer, nobody to own the ticket."""

    name = "sender"

    async def run(self, msg: Inbound, ctx: Context) -> Verdict:
        addr, _ = requester(msg)
        if not addr:
            return Verdict(QUARANTINE, "no sender: neither From nor MAIL FROM names an address")
        return Verdict()


class TicketStage:
    """Map the message into a ticket action, honouring what earlier stages found.

    The queue comes from the first matching mailbox in config order; threading candidates are the
    In-Reply-To and References ids (newest first). Findings honoured:
    ``automatic`` (policy note) -> only an internal note on the ticket it answers;
    ``sender_policy.replies_only`` -> never a new ticket; ``spam``/``rspamd`` tags -> ticket flags;
    ``attachments`` -> kept parts under safe names, TNEF contents, stripped ones listed;
    ``html`` -> the sanitised HTML is what is stored and shown.
    """

    name = "ticket"

    async def run(self, msg: Inbound, ctx: Context) -> Verdict:
        p, e, f = msg.parsed, msg.entry, msg.findings
        mailboxes = [mb for mb in (ctx.recipients.lookup(a) for a in e.rcpt_tos) if mb is not None]
        primary: MailboxConfig | None = ctx.recipients.primary(mailboxes) if mailboxes else None
        if primary is None:
            return Verdict(QUARANTINE, "no configured mailbox among the recipients (config changed?)")
        over = next((d for d in p.defects if d.startswith("mime-parts-limit:")), None)
        if over is not None:  # the parser stopped early: what it read is not the whole message
            return Verdict(QUARANTINE, f"too many MIME parts ({over.partition(':')[2]})")
        addr, name = requester(msg)
        subject = p.subject or "(no subject)"
        attachments, stripped = _attachments(p, f.get("attachments"))
        body_text, body_html = p.body_text, p.body_html
        tnef = (f.get("attachments") or {}).get("tnef_body")
        if tnef and not body_text.strip():
            body_text = tnef.get("text") or body_text
            body_html = tnef.get("html") or body_html
        if "html" in f:
            body_html = f["html"].get("html", "")
        elif body_html:
            from gateway.pipeline.stages.htmlsafe import sanitize_html
            body_html = sanitize_html(body_html)  # never store or show unsanitised HTML
        new_text = (f.get("quotes") or {}).get("new_text", "")
        participants: list[tuple[str, str, str]] = []
        history: list[dict[str, Any]] = []
        forward = f.get("forward")
        if forward:  # an agent forwarded a customer's mail: the customer is the requester
            addr, name = forward["from_addr"], forward["from_name"]
            subject = forward.get("subject") or subject
            body_text = new_text = forward.get("body") or body_text
            body_html = ""
            participants.append((forward["agent"], "", "agent"))
            history.append({"actor": forward["agent"], "action": "forwarded", "detail": {"requester": addr}})
        if "redact" in f:
            body_text = f["redact"].get("body_text", body_text)
            new_text = f["redact"].get("new_text", new_text)
            body_html = ""  # the HTML would still hold what was redacted: keep only the redacted text
            history.append({"actor": "system", "action": "redacted", "detail": f["redact"].get("counts", {})})
        automatic = f.get("automatic", {}).get("automatic", False)
        th = f.get("thread") or {}
        tw = ctx.cfg.twoway
        internal = automatic or bool(th.get("internal"))
        if th.get("agent_refused"):  # an agent address that may not act (unauthenticated, or a permission)
            history.append({"actor": requester(msg)[0], "action": "agent_refused",
                            "detail": {"reason": th["agent_refused"]}})
        article = ArticleDraft(
            from_addr=addr, from_name=name, subject=subject, body_text=body_text,
            body_html=body_html, message_id=p.message_id, to_addrs=p.to, cc_addrs=p.cc, rcpt_tos=e.rcpt_tos,
            attachments=attachments, stripped=stripped, new_text=new_text,
            visibility="internal" if internal else "public", kind="note" if automatic else "email")
        flags = [fl for fl in e.flags if fl == "suspicious"]
        for stage_name in ("spam", "rspamd"):
            flags += [str(t) for t in (f.get(stage_name) or {}).get("tags", [])]
        rt = f.get("route") or {}
        if rt.get("alert"):
            flags.append("alert")
        if rt.get("manual_handling"):
            flags.append("manual_handling")
        for rule in rt.get("fired", []):
            history.append({"actor": f"rule:{rule}", "action": "rule", "detail": {"rule": rule}})
        queue = primary.queue
        if rt.get("queue"):
            queue = rt["queue"]
        priority = rt.get("priority") or ("high" if rt.get("importance") == "high" else
                                          "low" if rt.get("importance") == "low" else None)
        custom = dict(rt.get("fields", {}))
        template = primary.template
        if template is not None and template.fields:
            from gateway.pipeline.stages.template import fill
            values, error = fill(template, p)
            if error:
                return Verdict(QUARANTINE, error)
            custom = {**values, **custom}  # routing rules win over the template's mapping
        if template is not None and template.attach_original:
            import hashlib
            raw = await msg.original()
            attachments = (*attachments, AttachmentDraft("original.eml", "message/rfc822",
                                                         hashlib.sha256(raw).hexdigest(), raw))
            article = replace(article, attachments=attachments)
        fields = TicketFields(priority=priority, category=rt.get("category"), assignee=rt.get("assignee"),
                              tags=tuple(rt.get("tags", ())), fields=custom,
                              flags=tuple(dict.fromkeys(flags)))
        if tw is not None and tw.cc_participants and not automatic:
            ours = {a.lower() for mb in ctx.cfg.mailboxes for a in mb.addresses()}
            participants += [(c, "", "cc") for c in p.cc if c.lower() not in ours and c.lower() != addr]
        cmd = f.get("commands") or {}
        if cmd.get("result_text"):
            history.append({"actor": "system", "action": "command_result", "detail": {"text": cmd["result_text"]}})
        if cmd.get("refused") or cmd.get("ignored"):
            history.append({"actor": addr, "action": "command_refused",
                            "detail": {"refused": cmd.get("refused", []), "ignored": cmd.get("ignored", "")}})
        # A message authentication says may not act (DMARC failure under p=quarantine, or no DMARC pass
        # where the mailbox requires it) never appends to an existing ticket: it opens its own.
        may_act = "suspicious" not in e.flags and "may_not_act" not in e.flags
        sender_policy = f.get("sender_policy") or {}
        on_no_match = sender_policy.get("action", "drop") if sender_policy.get("replies_only") else "new"
        if th:
            thread = ThreadHints(
                ticket_ids=tuple(th["ticket_ids"]) if may_act else (), refs=tuple(th["refs"]) if may_act else (),
                number=th["number"] if may_act else None, number_verified=th["number_verified"],
                subject_key=th["subject_key"], subject_days=th["subject_days"], sender_is_agent=th["agent"],
                may_act=may_act, may_reopen=not automatic, reopen_days=tw.reopen_days if tw else 14.0,
                on_no_match=on_no_match, on_stranger=th.get("on_stranger", "new"),
                internal_queues=tuple(q.name for q in tw.queues if not q.email_updates) if tw else (),
                reopen_days_by_queue=tuple((q.name, q.reopen_days) for q in tw.queues
                                           if q.reopen_days is not None) if tw else (),
                thanks_only=_thanks_only(new_text, name, tw) if not th["agent"] and not automatic else False)
        else:
            refs = tuple(dict.fromkeys((*p.in_reply_to, *reversed(p.references))))
            thread = ThreadHints(refs=refs if may_act else (), may_act=may_act, may_reopen=not automatic,
                                 on_no_match=on_no_match)
        return Verdict(TICKET, reason=f.get("automatic", {}).get("reason", ""), ticket=TicketAction(
            queue=queue, mailbox=primary.address, article=article, thread=thread, fields=fields,
            participants=tuple(participants), updates=dict(cmd.get("updates") or {}), history=tuple(history),
            note=automatic))


class HtmlStage:
    """Stage ``html``: the sanitised body_html (gateway/pipeline/stages/htmlsafe.py) the ticket stores and shows."""

    name = "html"

    def __init__(self, policy: HtmlPolicy | None = None, per_mailbox: Mapping[str, HtmlPolicy] | None = None) -> None:
        self.policy = policy or HtmlPolicy()
        self.per_mailbox = dict(per_mailbox or {})

    async def run(self, msg: Inbound, ctx: Context) -> Verdict:
        from gateway.pipeline.stages.htmlsafe import sanitize_html_report
        policy: HtmlPolicy = policy_for(self.policy, self.per_mailbox, msg, ctx)
        if not policy.enabled or not msg.parsed.body_html:
            return Verdict()
        html, blocked = sanitize_html_report(msg.parsed.body_html, policy.allow_remote_images,
                                             allow_data_images=policy.allow_data_images)
        return Verdict(data={"html": html, "remote_images_blocked": blocked})


def _thanks_only(new_text: str, name: str, tw: Any) -> bool:
    """Whether a customer's reply only thanks / confirms ([threading] thanks_phrases; see pipeline/thanks.py)."""
    from gateway.pipeline.stages.thanks import is_thanks_only
    if tw is None:
        return is_thanks_only(new_text, sender_name=name)
    return is_thanks_only(new_text, sender_name=name, phrases=tw.thanks_phrases, filler=tw.thanks_filler,
                          max_chars=tw.thanks_max_chars)


def _attachments(p: ParsedMessage, found: dict[str, Any] | None
                 ) -> tuple[tuple[AttachmentDraft, ...], tuple[StrippedAttachment, ...]]:
    """The attachments to store (safe names, TNEF contents) and the stripped ones, per the
    attachments stage; every parsed attachment when that stage did not run."""
    if found is None:
        return tuple(AttachmentDraft(a.filename, a.content_type, a.sha256, a.content, a.inline, a.content_id)
                     for a in p.attachments), ()
    kept = []
    for index, safe_name in found.get("kept", []):
        a = p.attachments[index]
        kept.append(AttachmentDraft(safe_name, a.content_type, a.sha256, a.content, a.inline, a.content_id))
    for x in found.get("extracted", []):
        kept.append(AttachmentDraft(x["filename"], x["content_type"], x["sha256"], x["content"]))
    stripped = []
    for x in found.get("stripped", []):
        index = x.get("index")
        ctype = p.attachments[index].content_type if index is not None else ""
        stripped.append(StrippedAttachment(x["filename"], ctype, x["size"], x["sha256"], x["reason"]))
    return tuple(kept), tuple(stripped)
