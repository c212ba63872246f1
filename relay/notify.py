"""Notifications: Jinja2 templates -> RFC 5322 messages, and when (not) to acknowledge.

Templates live under ``[relay] templates`` (default ``conf/templates``), editable by the operator::

    <templates>/<mailbox address>/<lang>/<event>.<part>     per mailbox and language
    <templates>/<mailbox address>/<event>.<part>            per mailbox, any language
    <templates>/default/<lang>/<event>.<part>               per language
    <templates>/default/<default language>/<event>.<part>   fallback

``<part>`` is ``subject`` (one line), ``txt`` (text/plain) and ``html`` (text/html alternative,
autoescaped; optional). ``signature.txt`` / ``signature.html`` are found the same way and included
by the shipped templates as ``{% include signature_txt %}``. Events: ``ack`` (ticket created),
``reply`` (agent public reply), ``status`` (status change), ``escalation`` (SLA breach), ``test``.

Every automatic mail carries ``Auto-Submitted`` (``auto-replied`` for the acknowledgement,
``auto-generated`` otherwise; RFC 3834), ``X-Auto-Response-Suppress: All`` (Exchange), our loop
marker ``X-Ticketmx-Loop: <hostname>``, a Message-ID with the ticket number, In-Reply-To /
References, Reply-To of the mailbox and the subject token ``[HD-1042]``. Agent replies are written
by a person: they carry the loop marker and threading headers but no Auto-Submitted.

No header injection: a CR, LF or NUL in any value that reaches a header (subject, names,
addresses, message ids - after rendering) raises :class:`HeaderInjection`; nothing is sent.
"""
from __future__ import annotations

import base64
import email.policy
import ipaddress
from email.charset import QP, Charset
from email.mime.multipart import MIMEMultipart
from email.mime.nonmultipart import MIMENonMultipart
import os
import re
import secrets
import sqlite3
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email.utils import format_datetime, formataddr, parseaddr
from typing import Any, Collection, Iterable, Mapping, Sequence

import jinja2
from jinja2.sandbox import SandboxedEnvironment

from gateway.config.errors import ConfigError
from gateway.config.load import Config
from gateway.config.relay import RelayConfig, resolve_templates_dir
from gateway.store.relay_queue import Notification, enqueue

EVENTS = ("ack", "reply", "status", "escalation", "test", "commands", "stripped", "paused")
AUTO_SUBMITTED = {"ack": "auto-replied", "status": "auto-generated", "escalation": "auto-generated",
                  "commands": "auto-replied", "stripped": "auto-replied", "paused": "auto-generated",
                  "test": "auto-generated"}
# Mail to the team (relay/agent_notify.py): agent notifications, on-call alerts, conflicts.
EVENTS += ("notify", "alert", "conflict")
AUTO_SUBMITTED.update({"notify": "auto-generated", "alert": "auto-generated", "conflict": "auto-generated"})
NON_CRITICAL = frozenset({"ack", "status"})  # a contact may opt out of these; they carry List-Unsubscribe
WIRE = email.policy.compat32.clone(linesep="\r\n")
_UTF8_QP = Charset("utf-8")
_UTF8_QP.body_encoding = QP
_ASCII = Charset("us-ascii")


class HeaderInjection(ValueError):
    """A value destined for a header contains CR, LF or NUL."""


def _safe(value: str, what: str) -> str:
    if any(c in value for c in "\r\n\0"):
        raise HeaderInjection(f"line break in {what}: refused")
    return value


_ADDR = re.compile(r"^[^@\s<>()\[\],;:\\\"\x00-\x1f\x7f]+@[A-Za-z0-9._-]+\.[A-Za-z0-9-]+$")
_MSGID = re.compile(r"^[^<>\s\x00-\x1f\x7f]+@[^<>\s\x00-\x1f\x7f]+$")


def _addr(value: str, what: str) -> str:
    _safe(value, what)
    if not _ADDR.match(value):
        raise ValueError(f"{what}: {value!r} is not an email address")
    return value


def _msgid(value: str, what: str) -> str:
    _safe(value, what)
    value = value.strip().strip("<>")
    if not _MSGID.match(value):
        raise ValueError(f"{what}: {value!r} is not a message id")
    return value


@dataclass(frozen=True, slots=True)
class MailboxInfo:
    address: str
    name: str = ""
    language: str | None = None
    acknowledge: str | bool = "authenticated"   # "authenticated" | "always" | "never" (bools: see ack_policy)


@dataclass(frozen=True, slots=True)
class TicketInfo:
    id: int | None
    number: str
    subject: str
    status: str = "new"
    queue: str = ""
    assignee: str = ""
    sla_due: float | None = None
    requester: str = ""
    requester_name: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)

    def context(self) -> dict[str, Any]:
        due = (datetime.fromtimestamp(self.sla_due, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
               if self.sla_due else "")
        return {"id": self.id, "number": self.number, "subject": self.subject, "status": self.status,
                "queue": self.queue, "assignee": self.assignee, "sla_due": due, "requester": self.requester,
                "requester_name": self.requester_name, **dict(self.extra)}


def default_templates_dir() -> str:
    """``conf/templates`` of the source tree (where the shipped templates are)."""
    return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "conf", "templates")


class Notifier:
    """Renders notifications for one relay configuration."""

    def __init__(self, cfg: RelayConfig, hostname: str | None = None, templates: str | None = None) -> None:
        self.cfg = cfg
        self.hostname = _safe(hostname or cfg.hostname or "localhost", "hostname")
        # The threading MAC keys (set by the pipeline worker once loaded): with them, acknowledgements
        # and status mails to one recipient carry a signed List-Unsubscribe (see unsubscribe_uri).
        self.unsubscribe_keys: tuple[bytes, ...] = ()
        path = templates or cfg.templates
        if not os.path.isdir(path) and not os.path.isabs(path):
            # a relative path that is not below the working directory: try the source tree's
            path = resolve_templates_dir(path) or default_templates_dir()
        self.templates_dir = path
        # Threading MAC keys (first signs): when set, a mail about a ticket gets a signed Message-ID
        # (gateway/pipeline/stages/tokens.py: mint_message_id) that inbound threading verifies.
        self.keys: tuple[bytes, ...] = ()
        self.env = SandboxedEnvironment(
            loader=jinja2.FileSystemLoader(path),
            autoescape=jinja2.select_autoescape(enabled_extensions=("html",), default_for_string=False,
                                                default=False),
            keep_trailing_newline=True, trim_blocks=True, lstrip_blocks=True,
            auto_reload=False,  # templates are read once (restart or SIGHUP to pick up edits)
        )

    # -- templates --------------------------------------------------------------------------------
    def _candidates(self, event: str, part: str, mailbox: str, lang: str) -> list[str]:
        default_lang = self.cfg.language
        names = [f"{mailbox}/{lang}/{event}.{part}", f"{mailbox}/{event}.{part}",
                 f"default/{lang}/{event}.{part}", f"default/{default_lang}/{event}.{part}"]
        return list(dict.fromkeys(n for n in names if ".." not in n))

    def _template(self, event: str, part: str, mailbox: str, lang: str) -> jinja2.Template | None:
        try:
            return self.env.select_template(self._candidates(event, part, mailbox, lang))
        except jinja2.TemplatesNotFound:
            return None

    def render(self, event: str, mailbox: str, lang: str, context: dict[str, Any]) -> tuple[str, str, str]:
        """(subject, text, html) for ``event``; html is ``""`` when the event has no HTML template."""
        if event not in EVENTS:
            raise ValueError(f"unknown event {event!r}")
        ctx = dict(context)
        ctx.setdefault("signature_txt", self._candidates("signature", "txt", mailbox, lang))
        ctx.setdefault("signature_html", self._candidates("signature", "html", mailbox, lang))
        subj_t = self._template(event, "subject", mailbox, lang)
        text_t = self._template(event, "txt", mailbox, lang)
        if subj_t is None or text_t is None:
            raise FileNotFoundError(f"no {event}.subject/{event}.txt template for {mailbox} ({lang}) under "
                                    f"{self.templates_dir}")
        html_t = self._template(event, "html", mailbox, lang)
        subject = " ".join(subj_t.render(ctx).split())  # one line; a template cannot fold it
        return subject, text_t.render(ctx), html_t.render(ctx) if html_t else ""

    # -- messages ---------------------------------------------------------------------------------
    def build(self, event: str, *, ticket: TicketInfo, mailbox: MailboxInfo, to: Sequence[str],
              cc: Sequence[str] = (), bcc: Sequence[str] = (), lang: str | None = None,
              context: Mapping[str, Any] | None = None, in_reply_to: str | None = None,
              references: Sequence[str] = (), dedupe_key: str | None = None, coalesce_key: str | None = None,
              not_before: float = 0.0, automatic: bool | None = None, now: float | None = None,
              lazy: bool = False, message_id: str | None = None, article_id: int | None = None) -> Notification:
        """Validate everything that reaches a header and make the notification.

        ``lazy=True`` renders nothing now: the notification carries a render spec (JSON-able: event,
        ticket and mailbox fields, recipients, threading ids, its Message-ID and Date) and the relay
        worker renders it at send time - so queuing inside the ticket transaction costs microseconds,
        not the milliseconds of Jinja2 + MIME. Either way the Message-ID is fixed now (it goes into
        ``message_ids`` for threading).
        """
        now = time.time() if now is None else now
        lang = lang or mailbox.language or self.cfg.language
        if not re.match(r"^[A-Za-z]{2,3}(?:[-_][A-Za-z0-9]{2,8})?$", lang):
            raise ValueError(f"bad language tag {lang!r}")
        mbox = _addr(mailbox.address, "mailbox address").lower()
        to = [_addr(a, "To") for a in to]
        cc = [_addr(a, "Cc") for a in cc]
        bcc = [_addr(a, "Bcc") for a in bcc]
        _safe(ticket.number, "ticket number")
        _safe(mailbox.name, "mailbox name")
        from_name, from_addr = parseaddr(self.cfg.from_addr) if self.cfg.from_addr else (mailbox.name, mbox)
        _addr(from_addr, "From")
        # ids from inbound mail are the sender's: one too long to fit a header line is left out
        refs = [m for m in (_msgid(r, "References") for r in references if r) if len(m) <= MAX_MSGID]
        irt = _msgid(in_reply_to, "In-Reply-To") if in_reply_to else None
        irt = irt if irt and len(irt) <= MAX_MSGID else None
        num = re.sub(r"[^A-Za-z0-9._-]", "", ticket.number) or "ticket"
        if message_id:  # the caller's own (agent notifications sign theirs)
            message_id = _msgid(message_id, "Message-ID")
        elif self.keys and ticket.id is not None:
            from gateway.pipeline.stages.tokens import mint_message_id
            message_id = mint_message_id(ticket.id, self.keys, self.hostname).strip("<>")
        else:  # no ticket (system mail) or no key yet: unsigned, still unique
            message_id = f"{num}.{event}.{secrets.token_hex(8)}@{self.hostname}"
        auto = AUTO_SUBMITTED.get(event) if automatic is None else ("auto-generated" if automatic else None)
        tctx = ticket.context()
        spec = {"v": 1, "event": event, "lang": lang, "mailbox": {"address": mbox, "name": mailbox.name},
                "ticket": tctx, "context": dict(context or {}), "to": to, "cc": cc,
                "from": [from_name or mailbox.name, from_addr], "in_reply_to": irt, "references": refs,
                "auto": auto, "message_id": message_id, "date": now}
        if event in NON_CRITICAL and len(to) == 1 and not cc and self.unsubscribe_keys:
            spec["unsubscribe"] = unsubscribe_uri(mbox, to[0], self.unsubscribe_keys)
        raw = b"" if lazy else self.render_message(spec)
        return Notification(event=event, mail_from=self.cfg.mail_from or from_addr,
                            recipients=tuple(dict.fromkeys(to + cc)), bcc=tuple(bcc), message=raw,
                            message_id=message_id, ticket_id=ticket.id, mailbox=mbox, dedupe_key=dedupe_key,
                            coalesce_key=coalesce_key, not_before=not_before, render=spec if lazy else None,
                            article_id=article_id)

    def render_message(self, spec: Mapping[str, Any]) -> bytes:
        """The RFC 5322 bytes of a render spec (see :meth:`build`)."""
        event, lang = spec["event"], spec["lang"]
        mbox, mname = spec["mailbox"]["address"], spec["mailbox"]["name"]
        ctx: dict[str, Any] = {"ticket": spec["ticket"], "mailbox": {"address": mbox, "name": mname},
                               "event": event, "hostname": self.hostname, "language": lang, **spec["context"]}
        subject, text, html = self.render(event, mbox, lang, ctx)
        token = f"[{spec['ticket']['number']}]"
        subject = bound_subject(subject, token)
        if token not in subject:
            subject = f"{subject} {token}".strip()
        from_name, from_addr = spec["from"]
        to, cc = spec["to"], spec["cc"]
        headers: list[tuple[str, Any]] = [
            ("From", _mailbox_header(_safe(from_name, "From name"), from_addr)),
            ("To", ", ".join(to) if to else "undisclosed-recipients:;"),
        ]
        if cc:
            headers.append(("Cc", ", ".join(cc)))
        headers += [
            ("Reply-To", _mailbox_header(_safe(mname, "mailbox name"), mbox)),
            ("Subject", _text_header(_safe(subject, "Subject"))),
            ("Date", format_datetime(datetime.fromtimestamp(spec["date"], timezone.utc))),
            ("Message-ID", f"<{spec['message_id']}>"),
        ]
        refs = list(spec["references"])
        if spec["in_reply_to"]:
            headers.append(("In-Reply-To", f"<{spec['in_reply_to']}>"))
            if spec["in_reply_to"] not in refs:
                refs.append(spec["in_reply_to"])
        if refs:
            headers.append(("References", " ".join(f"<{r}>" for r in refs[-20:])))
        if spec["auto"]:
            headers += [("Auto-Submitted", spec["auto"]), ("X-Auto-Response-Suppress", "All")]
        headers += unsubscribe_headers(spec.get("unsubscribe"), spec.get("unsubscribe_https"))
        headers += [(self.cfg.loop_marker, self.hostname), ("Content-Language", lang)]
        return compose(headers, text, html)

    def acknowledgement(self, *, ticket: TicketInfo, mailbox: MailboxInfo, to: str,
                        inbound_message_id: str | None = None, references: Sequence[str] = (),
                        key: str | None = None, now: float | None = None,
                        context: Mapping[str, Any] | None = None, lazy: bool = False,
                        article_id: int | None = None) -> Notification:
        """The "we got your message" mail; ``key`` (e.g. the spool id) makes it idempotent."""
        now = time.time() if now is None else now
        return self.build("ack", ticket=ticket, mailbox=mailbox, to=[to], in_reply_to=inbound_message_id,
                          references=references, context=context, now=now, lazy=lazy, article_id=article_id,
                          dedupe_key=f"ack:{key if key is not None else ticket.id}",
                          not_before=now + self.cfg.ack_delay if self.cfg.ack_delay else 0.0)

    def agent_reply(self, *, ticket: TicketInfo, mailbox: MailboxInfo, to: Sequence[str], body_text: str,
                    body_html: str = "", cc: Sequence[str] = (), article_id: int | None = None,
                    internal: bool = False, agent_name: str = "", in_reply_to: str | None = None,
                    references: Sequence[str] = (), now: float | None = None, command_delimiter: str = "$",
                    status: tuple[str, str] | None = None, answers: int | None = None) -> Notification | None:
        """An agent's public reply; internal notes never leave (None).

        Command lines (``$Field=Value$``, ``command_delimiter``) are taken out of the text and the
        HTML: they are instructions to us, not words for the customer. ``status`` = (old, new) when
        the same mail changed the ticket's status: the reply says so (one mail, not a second
        status mail). ``answers`` is the customer article it answers (threading)."""
        if internal:
            return None
        from gateway.pipeline.stages.commands import strip_command_html, strip_command_lines
        body_text = strip_command_lines(body_text, command_delimiter)
        if body_html:
            import nh3  # agents' HTML goes out as written, minus scripts, handlers and other active content
            body_html = strip_command_html(nh3.clean(body_html), command_delimiter)
        context: dict[str, Any] = {"body_text": body_text, "body_html": body_html, "agent_name": agent_name}
        if status:
            context.update(old_status=status[0], new_status=status[1])
        return self.build("reply", ticket=ticket, mailbox=mailbox, to=to, cc=cc, in_reply_to=in_reply_to,
                          references=references, automatic=False, now=now, context=context,
                          dedupe_key=f"reply:{article_id}" if article_id is not None else None, article_id=answers)

    def status_change(self, *, ticket: TicketInfo, mailbox: MailboxInfo, to: Sequence[str], old: str, new: str,
                      references: Sequence[str] = (), now: float | None = None, in_reply_to: str | None = None,
                      answers: int | None = None) -> Notification:
        """Status changes of one ticket within ``[relay] coalesce`` make one mail (the latest state)."""
        now = time.time() if now is None else now
        return self.build("status", ticket=ticket, mailbox=mailbox, to=to, references=references, now=now,
                          in_reply_to=in_reply_to, article_id=answers,
                          context={"old_status": old, "new_status": new},
                          coalesce_key=f"status:{ticket.id}" if self.cfg.coalesce else None,
                          not_before=now + self.cfg.coalesce if self.cfg.coalesce else 0.0)

    def escalation(self, *, ticket: TicketInfo, mailbox: MailboxInfo, to: Sequence[str], level: int,
                   target: str, bcc: Sequence[str] = (), now: float | None = None, in_reply_to: str | None = None,
                   references: Sequence[str] = ()) -> Notification:
        """SLA breach (``target`` = first_response | resolution) at escalation ``level`` (1 agent, 2 manager…)."""
        return self.build("escalation", ticket=ticket, mailbox=mailbox, to=to, bcc=bcc, now=now,
                          in_reply_to=in_reply_to, references=references,
                          context={"level": level, "target": target},
                          dedupe_key=f"escalation:{ticket.id}:{target}:{level}")


def unsubscribe_uri(mailbox: str, recipient: str, keys: Sequence[bytes]) -> str:
    """``mailto:<mailbox>?subject=unsubscribe%20<token>`` (RFC 2369, RFC 6068): the mail a client sends
    for the recipient's "unsubscribe" button; the signed token names the recipient (stage unsubscribe)."""
    from gateway.pipeline.stages.tokens import unsubscribe_token
    return f"mailto:{_addr(mailbox, 'mailbox address')}?subject=unsubscribe%20{unsubscribe_token(recipient, keys)}"


def unsubscribe_headers(mailto: str | None, https: str | None = None) -> list[tuple[str, str]]:
    """``List-Unsubscribe`` (RFC 2369) and, only together with an HTTPS URI, ``List-Unsubscribe-Post:
    List-Unsubscribe=One-Click`` (RFC 8058 3.1: the one-click POST goes to an HTTPS URI, which "MUST"
    be present; the mailto form alone is not one-click). The HTTPS URI comes with the HTTP API."""
    uris = [u for u in (https, mailto) if u]
    if not uris:
        return []
    for u in uris:
        _safe(u, "List-Unsubscribe")
        if any(c in u for c in " <>,\t"):
            raise HeaderInjection("List-Unsubscribe URI with a space, comma or angle bracket: refused")
    out = [("List-Unsubscribe", ", ".join(f"<{u}>" for u in uris))]
    if https:
        if not https.startswith("https://"):
            raise ValueError("the one-click unsubscribe URI must be https://")
        out.append(("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"))
    return out


MAX_SUBJECT = 900          # characters of a notification's Subject (before the ticket token)
MAX_NAME = 200             # characters of a display name in From / Reply-To
MAX_MSGID = 250            # characters of a Message-ID we copy into In-Reply-To / References
_WORD_BYTES = 39           # UTF-8 bytes per encoded word: "=?utf-8?b?" + 52 base64 chars + "?=" = 64 <= 75,
#                            short enough to share the first line with "Subject: " or "Reply-To: "
_PLAIN_WORD = 60           # an ASCII word longer than this cannot be folded well: it is encoded instead


def encoded_words(text: str) -> str:
    """``text`` as RFC 2047 "B" encoded words of at most 75 characters each, separated by spaces.

    Words are cut between characters, never inside a UTF-8 sequence; decoders drop the spaces
    between adjacent encoded words, so the text decodes back exactly (its own spaces are inside
    the words). The generator then folds at those spaces: every line stays under 78 octets.
    """
    words: list[str] = []
    chunk = bytearray()
    for ch in text:
        b = ch.encode("utf-8", "surrogatepass")
        if len(chunk) + len(b) > _WORD_BYTES:
            words.append(f"=?utf-8?b?{base64.b64encode(bytes(chunk)).decode()}?=")
            chunk.clear()
        chunk += b
    if chunk or not words:
        words.append(f"=?utf-8?b?{base64.b64encode(bytes(chunk)).decode()}?=")
    return " ".join(words)


def _needs_encoding(value: str) -> bool:
    """Non-ASCII, a word too long to fold, or text a decoder would take for an encoded word."""
    return (not value.isascii() or "=?" in value or any(len(w) > _PLAIN_WORD for w in value.split())
            or any(c < " " and c != "\t" or c == "\x7f" for c in value))


def bound_subject(subject: str, token: str) -> str:
    """At most :data:`MAX_SUBJECT` characters plus the ticket token, which truncation never drops."""
    subject = " ".join(subject.split())
    if len(subject) <= MAX_SUBJECT:
        return subject
    cut = subject[:MAX_SUBJECT].rstrip() + "…"
    return cut if token in cut else f"{cut} {token}"


def _mailbox_header(name: str, addr: str) -> str:
    """``Name <addr>``: an ASCII name quoted as needed, any other as encoded words (RFC 2047 5(3))."""
    name = " ".join(name.split())[:MAX_NAME]
    if not name:
        return addr
    if _needs_encoding(name):
        return f"{encoded_words(name)} <{addr}>"
    return formataddr((name, addr))


def _text_header(value: str) -> str:
    """An unstructured field (Subject): ASCII as is when the generator can fold it at its spaces,
    anything else as encoded words of <= 75 characters; no line of the field exceeds 78 octets."""
    return encoded_words(value) if _needs_encoding(value) else value


def _part(body: str, subtype: str) -> MIMENonMultipart:
    body = body.replace("\r\n", "\n")
    part = MIMENonMultipart("text", subtype)
    del part["MIME-Version"]  # once, at the top
    if body.isascii() and all(len(line) <= 900 for line in body.split("\n")):
        part.set_payload(body, _ASCII)
    else:
        part.set_payload(body, _UTF8_QP)
    return part


def compose(headers: list[tuple[str, Any]], text: str, html: str = "") -> bytes:
    """RFC 5322 bytes with CRLF line ends: text/plain, or multipart/alternative with an HTML part.

    Built with the compat32 classes: ten times faster than ``EmailMessage`` with the modern policy
    (which parses every header it is given), and every value here is already validated.
    """
    if html:
        msg: Any = MIMEMultipart("alternative")
        msg.attach(_part(text, "plain"))
        msg.attach(_part(html, "html"))
    else:
        msg = _part(text, "plain")
    body_headers = list(msg.items())
    for k in list(msg.keys()):
        del msg[k]
    for name, value in headers:  # our headers first, then MIME-Version / Content-*
        msg[name] = value
    for name, value in body_headers:
        msg[name] = value
    return msg.as_bytes(policy=WIRE)


# -- when to acknowledge --------------------------------------------------------------------------

_NOREPLY = re.compile(
    r"^(?:no[-_.]?reply|do[-_.]?not[-_.]?reply|donotreply|noreply[-_.+].*|.*[-_.+]noreply|mailer[-_.]?daemon|"
    r"postmaster|bounces?|bounces?[-_.+].*|.*[-_.+]bounces?|.*-request|owner-.*|.*-owner|listserv|majordomo|"
    r"auto[-_.]?reply|autoresponder|auto[-_.]?confirm|notifications?|notify|alerts?|daemon|nobody|root|"
    r"system|automated|unsubscribe)$", re.I)
_AUTORESPONDER_HEADERS = ("x-autoreply", "x-autorespond", "x-autogenerated", "x-autoreply-from",
                          "x-mail-autoreply", "x-auto-reply")
_LIST_HEADERS = ("list-id", "list-unsubscribe", "list-post", "list-help")


# Why no acknowledgement went out, in words, for the ticket history and the log (the label is the key).
ACK_REASON_TEXT = {
    "disabled": "acknowledgements are off for this mailbox",
    "unauthenticated": "From did not pass DMARC",
    "rate_limited": "rate limit per recipient",
    "rate_limited_ip": "rate limit per client IP",
    "rate_limited_global": "global rate limit",
    "suspicious": "the message is suspicious",
    "opted_out": "the contact opted out of acknowledgements and status mails",
}
ACK_POLICIES = ("authenticated", "always", "never")
GLOBAL_ACK_KEY = "*"   # relay_ack_log key of the global counter (never an address: no "@")


def ack_policy(value: str | bool) -> str:
    """A mailbox's acknowledgement policy; the old booleans map to "authenticated" / "never"."""
    if isinstance(value, bool):
        return "authenticated" if value else "never"
    return value if value in ACK_POLICIES else "never"


def from_authenticated(auth: Mapping[str, Any] | None, sender: str) -> bool:
    """Whether ``sender`` is an address the SMTP-time DMARC evaluation vouched for.

    That is ``dmarc=pass`` (DMARC's pass always means an aligned SPF or DKIM pass) or the override
    by a configured trusted ARC sealer, for a message the authenticator did not flag suspicious, and
    ``sender``'s domain is one of the From domains DMARC evaluated - so a pipeline that read another
    From than DMARC did cannot turn one domain's pass into mail to a different domain. ``auth`` is
    the spool entry's ``auth``; None or ``{"disabled": true}`` (``[auth] enabled = false``) is not.
    """
    if not auth or not isinstance(auth, Mapping) or auth.get("disabled"):
        return False
    dmarc = auth.get("dmarc") or {}
    if not (dmarc.get("result") == "pass" or dmarc.get("override") == "arc"):
        return False
    if (auth.get("decision") or {}).get("suspicious"):
        return False
    domains = {str(d).lower().rstrip(".") for d in ((auth.get("from") or {}).get("domains") or ())}
    domain = (sender or "").strip().lower().rpartition("@")[2].rstrip(".")
    return bool(domain) and domain in domains


def ack_client_key(peer_ip: str | None, auth: Mapping[str, Any] | None = None) -> str | None:
    """The counter key of the client a message came from (``ip:<address>``, IPv6 by its /64: one
    host usually has a whole /64), or None for mail that came only through configured trusted
    relays (internal mail: the relay's address would make every colleague share one budget).
    Behind trusted relays the first untrusted hop is the client, as for SPF."""
    spf = (auth or {}).get("spf") if isinstance(auth, Mapping) else None
    ip = peer_ip or ""
    if isinstance(spf, Mapping) and spf.get("via_trusted_relay"):
        ip = str((spf.get("relay") or {}).get("origin_ip") or "")
        if not ip:
            return None
    try:
        addr: Any = ipaddress.ip_address(ip.strip().strip("[]"))
    except ValueError:
        return f"ip:{ip}" if ip else "ip:unknown"
    if addr.version == 6 and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    if addr.version == 6:
        return f"ip:{ipaddress.ip_network(f'{addr}/64', strict=False)}"
    return f"ip:{addr}"


@dataclass(frozen=True, slots=True)
class AckDecision:
    send: bool
    reason: str = ""          # why not (a bounded label, for metrics and the spool history)

    def __bool__(self) -> bool:
        return self.send


def is_noreply(address: str) -> bool:
    local = address.rpartition("@")[0]
    return bool(local) and bool(_NOREPLY.match(local))


def should_acknowledge(sender: str, headers: Iterable[tuple[str, str]], *, mail_from: str | None = None,
                       enabled: bool = True, undeliverable: bool = False, recent: Sequence[float] = (),
                       now: float | None = None, limits: Sequence[tuple[int, float]] = ((10, 600.0), (25, 3600.0)),
                       own_addresses: Collection[str] = (), loop_marker: str = "X-Ticketmx-Loop",
                       suspicious: bool = False, policy: str = "authenticated",
                       authenticated: bool = False) -> AckDecision:
    """Pure: may ``sender`` get an acknowledgement for this inbound message?

    ``recent`` are the times acknowledgements were sent to this sender; ``limits`` are tiers of
    (count, window seconds): at most ``count`` acknowledgements per ``window``. ``policy`` is the
    mailbox's (``ack_policy``); under "authenticated" only a From that passed DMARC
    (``authenticated``, see :func:`from_authenticated`) gets one: anything else could be a forged
    address, and acknowledging it makes us the sender of backscatter.
    """
    now = time.time() if now is None else now
    if not enabled or policy == "never":
        return AckDecision(False, "disabled")
    sender = (sender or "").strip().lower()
    if not sender or "@" not in sender or any(c in sender for c in "\r\n\0 "):
        return AckDecision(False, "no_sender")
    if mail_from is not None and mail_from.strip() in ("", "<>"):
        return AckDecision(False, "null_sender")  # a bounce or a report (RFC 3834 2)
    h: dict[str, list[str]] = {}
    for name, value in headers:
        h.setdefault(name.strip().lower(), []).append(str(value).strip().lower())
    auto = h.get("auto-submitted", [])
    if any(v.split(";")[0].strip() != "no" for v in auto):
        return AckDecision(False, "auto_submitted")
    if any(v in ("bulk", "junk", "list", "auto_reply") for v in h.get("precedence", [])):
        return AckDecision(False, "precedence")
    if any(n in h for n in _LIST_HEADERS):
        return AckDecision(False, "mailing_list")
    if any(n in h for n in _AUTORESPONDER_HEADERS):
        return AckDecision(False, "autoresponder")
    suppress = {p.strip() for v in h.get("x-auto-response-suppress", []) for p in v.split(",")}
    if suppress & {"all", "autoreply", "oof"}:
        return AckDecision(False, "response_suppressed")
    if loop_marker.lower() in h:
        return AckDecision(False, "loop")
    if any(v.startswith("multipart/report") for v in h.get("content-type", [])):
        return AckDecision(False, "report")
    own = {a.lower() for a in own_addresses}
    if sender in own or (mail_from and mail_from.lower() in own):
        return AckDecision(False, "own_address")
    if is_noreply(sender) or (mail_from and is_noreply(mail_from)):
        return AckDecision(False, "noreply")
    if policy != "always" and not authenticated:
        return AckDecision(False, "unauthenticated")
    if undeliverable:
        return AckDecision(False, "undeliverable")
    if suspicious:
        return AckDecision(False, "suspicious")
    for count, window in limits:
        if sum(1 for t in recent if t > now - window) >= count:
            return AckDecision(False, "rate_limited")
    return AckDecision(True)


# -- the store-backed counter, used inside the ticket transaction ---------------------------------

def ack_history(conn: sqlite3.Connection, sender: str, since: float) -> list[float]:
    return [t for (t,) in conn.execute("SELECT sent_at FROM relay_ack_log WHERE sender=? AND sent_at>?",
                                       (sender.lower(), since))]


def record_ack(conn: sqlite3.Connection, sender: str, now: float, client: str | None = None) -> None:
    """Count one automatic reply to ``sender``: rows keyed by the address (per-recipient limit), by
    ``client`` (``ip:...``, per-client limit) and by ``*`` (global limit); none of the last two can
    be an address (no "@"), so the one table and its (sender, sent_at) index serve all three."""
    keys = [sender.lower(), GLOBAL_ACK_KEY] + ([client] if client else [])
    conn.executemany("INSERT INTO relay_ack_log (sender, sent_at) VALUES (?,?)", [(k, now) for k in keys])


def ack_rate_decision(conn: sqlite3.Connection, cfg: RelayConfig, sender: str, client: str | None,
                      now: float) -> AckDecision:
    """The three acknowledgement rate limits, counted in the store inside the caller's transaction.

    One statement counts every tier of the three counters (one round trip on PostgreSQL; the
    (sender, sent_at) index serves it). SQLite serialises write transactions, so the counts are
    exact. On PostgreSQL several nodes deliver at once in READ COMMITTED, where each would count
    without the others' uncommitted rows; a transaction-level advisory lock (taken only for an
    acknowledgement about to be queued, held to the commit) makes the count-then-insert of every node
    happen one after the other.
    """
    checks = [("rate_limited", sender.lower(), cfg.ack_limits), ("rate_limited_ip", client, cfg.ack_limits_per_ip),
              ("rate_limited_global", GLOBAL_ACK_KEY, cfg.ack_limits_global)]
    terms: list[str] = []
    params: list[Any] = []
    limits: list[tuple[str, int]] = []
    keys: list[str] = []
    for reason, key, tiers in checks:
        if not key or not tiers:
            continue
        keys.append(key)
        for count, window in tiers:
            terms.append("COALESCE(SUM(CASE WHEN sender=? AND sent_at>? THEN 1 ELSE 0 END), 0)")
            params += [key, now - window]
            limits.append((reason, count))
    if not terms:
        return AckDecision(True)
    if getattr(conn, "dialect", "sqlite") == "postgresql":
        from gateway.store.postgres_deliver import lock_key
        conn.execute("SELECT pg_advisory_xact_lock(?)", (lock_key("ack", "limits"),))
    horizon = now - max(w for _r, _k, tiers in checks for _c, w in tiers)
    row = conn.execute(f"SELECT {', '.join(terms)} FROM relay_ack_log WHERE sender IN"
                       f" ({', '.join('?' * len(keys))}) AND sent_at>?", (*params, *keys, horizon)).fetchone()
    for (reason, count), n in zip(limits, row):
        if n >= count:
            return AckDecision(False, reason)
    return AckDecision(True)


def auto_reply_decision(conn: sqlite3.Connection, cfg: RelayConfig, *, sender: str,
                        headers: Iterable[tuple[str, str]], mail_from: str | None, policy: str | bool,
                        auth: Mapping[str, Any] | None, client: str | None, own_addresses: Collection[str],
                        suspicious: bool, now: float) -> AckDecision:
    """May an automatic reply (acknowledgement, attachments-removed notice) go to the inbound From?
    The pure rules first (policy, authentication, automatic senders), then the counters."""
    undeliverable, _ = contact_status(conn, sender) if sender else (False, False)
    decision = should_acknowledge(
        sender, headers, mail_from=mail_from, enabled=cfg.enabled, undeliverable=undeliverable,
        now=now, limits=(), own_addresses=own_addresses, loop_marker=cfg.loop_marker, suspicious=suspicious,
        policy=ack_policy(policy), authenticated=from_authenticated(auth, sender))
    if not decision:
        return decision
    return ack_rate_decision(conn, cfg, sender, client, now)


def purge_ack_log(conn: sqlite3.Connection, before: float) -> int:
    return conn.execute("DELETE FROM relay_ack_log WHERE sent_at<?", (before,)).rowcount


def contact_status(conn: sqlite3.Connection, email_addr: str) -> tuple[bool, bool]:
    """(undeliverable, opted out of non-critical notifications)."""
    row = conn.execute("SELECT undeliverable, opt_out FROM relay_contacts WHERE email=?",
                       (email_addr.lower(),)).fetchone()
    undeliverable, opt_out = (bool(row[0]), bool(row[1])) if row else (False, False)
    if not undeliverable:  # the pipeline marks contacts undeliverable from bounces (store v4)
        try:
            c = conn.execute("SELECT undeliverable FROM contacts WHERE email=?", (email_addr.lower(),)).fetchone()
            undeliverable = bool(c and c[0])
        except sqlite3.OperationalError:  # a schema without contacts.undeliverable
            pass
    return undeliverable, opt_out


def set_opt_out(conn: sqlite3.Connection, email_addr: str, opt_out: bool, now: float | None = None) -> None:
    now = time.time() if now is None else now
    conn.execute("INSERT INTO relay_contacts (email, opt_out, updated_at) VALUES (?,?,?) ON CONFLICT(email)"
                 " DO UPDATE SET opt_out=excluded.opt_out, updated_at=excluded.updated_at",
                 (email_addr.lower(), int(opt_out), now))


def wants(conn: sqlite3.Connection, email_addr: str, event: str) -> bool:
    """Whether ``email_addr`` gets ``event`` mails (undeliverable contacts get none automatically)."""
    undeliverable, opt_out = contact_status(conn, email_addr)
    if undeliverable and event != "reply":
        return False
    return not (opt_out and event in NON_CRITICAL)


def acknowledge(conn: sqlite3.Connection, notifier: Notifier, *, ticket: TicketInfo, mailbox: MailboxInfo,
                sender: str, headers: Iterable[tuple[str, str]], mail_from: str | None,
                inbound_message_id: str | None = None, references: Sequence[str] = (), key: str | None = None,
                own_addresses: Collection[str] = (), suspicious: bool = False,
                now: float | None = None, auth: Mapping[str, Any] | None = None,
                client_ip: str | None = None, article_id: int | None = None) -> tuple[AckDecision, int | None]:
    """Decide, render, queue and count an acknowledgement - all inside the caller's transaction.

    ``auth`` is the spool entry's SMTP-time authentication result (see :func:`from_authenticated`;
    without it only an "always" mailbox acknowledges) and ``client_ip`` the SMTP client's address
    (the per-client limit). Returns (decision, notification id or None). A message replayed with the
    same ``key`` (the spool id) returns the already-queued notification without counting it twice.
    """
    now = time.time() if now is None else now
    if key is not None:
        row = conn.execute("SELECT id FROM relay_queue WHERE dedupe_key=?", (f"ack:{key}",)).fetchone()
        if row is not None:
            return AckDecision(True, "already queued"), int(row[0])
    client = ack_client_key(client_ip, auth) if client_ip else None
    decision = auto_reply_decision(
        conn, notifier.cfg, sender=sender, headers=headers, mail_from=mail_from, policy=mailbox.acknowledge,
        auth=auth, client=client, own_addresses={mailbox.address, notifier.cfg.from_address, *own_addresses},
        suspicious=suspicious, now=now)
    if decision and contact_status(conn, sender)[1]:
        decision = AckDecision(False, "opted_out")
    if not decision:
        return decision, None
    n = notifier.acknowledgement(ticket=ticket, mailbox=mailbox, to=sender.strip().lower(),
                                 inbound_message_id=inbound_message_id, references=references, key=key, now=now,
                                 lazy=True, article_id=article_id)
    mail_id = enqueue(conn, n, now)
    record_ack(conn, sender, now, client)
    return decision, mail_id


# Sample data for check_templates: every variable a caller passes for each event (see the callers of
# Notifier.build), so a template that works here gets the same names at send time.
SAMPLE_CONTEXT: dict[str, dict[str, Any]] = {
    "ack": {},
    "reply": {"body_text": "Sample reply.\n", "body_html": "<p>Sample reply.</p>", "agent_name": "Agent Sample"},
    "status": {"old_status": "open", "new_status": "closed"},
    "escalation": {"level": 1, "target": "first_response"},
    "commands": {"result_text": "#status closed: done", "agent_name": "Agent Sample"},
    "stripped": {"stripped": [{"filename": "sample.exe", "reason": "executable"}]},
    "paused": {"reason": "sample reason", "hostname": "mx.example.test"},
    "test": {},
    "notify": {"notify_event": "created", "new_text": "Sample customer text.\n", "truncated": False,
               "author": "customer@example.test", "author_name": "Customer Sample", "visibility": "public",
               "reason": "sample reason", "spool_id": "0" * 19, "mail_from": "customer@example.test",
               "inbound_message_id": "sample@example.test", "target": "first_response", "level": 1},
    "alert": {"rules": ["sample rule"], "new_text": "Sample customer text.\n", "truncated": False,
              "state": "new ticket"},
    "conflict": {"other_name": "Agent Other", "minutes": 3, "new_text": "Sample reply.\n",
                 "agent_name": "Agent Sample"},
}
_TEMPLATE_FILE = re.compile(r"^(?:[^/]+/)?(?:[^/]+/)?(" + "|".join(EVENTS) + r"|signature)\.(subject|txt|html)$")


def check_templates(cfg: RelayConfig, mailboxes: Iterable[MailboxInfo], hostname: str | None = None) -> list[str]:
    """Render every notification template once with sample data; the problems as sentences naming the
    file (empty: every event renders for every mailbox and language). ``check-config`` and a reload run
    this, so a template error is a config error now instead of ``internal error`` in ``relay queue``.

    Two passes: each file under the directory on its own (a syntax error in a template no mailbox uses
    yet is still an error), then each event as each mailbox would send it (the lookup finds a subject
    and a text part, includes resolve, headers are valid)."""
    problems: list[str] = []
    try:
        notifier = Notifier(cfg, hostname=hostname)
    except Exception as exc:  # a bad hostname: reported by its own key
        return [f"cannot load the templates: {exc}"]
    root = notifier.templates_dir
    if not os.path.isdir(root):
        return [f"no templates directory: {root} (copy the shipped conf/templates there)"]
    ticket = TicketInfo(id=1, number="HD-1000", subject="Sample subject", status="open", queue="IT",
                        assignee="agent@example.test", sla_due=1.0e9, requester="customer@example.test",
                        requester_name="Sample Customer")
    base = {"ticket": ticket.context(), "hostname": notifier.hostname, "language": cfg.language}
    for name in sorted(notifier.env.list_templates()):
        m = _TEMPLATE_FILE.match(name)
        if not m:
            continue  # README.md and other files the loader never selects
        event = m.group(1)
        ctx = {**base, "event": event, "mailbox": {"address": "support@example.test", "name": "Support"},
               **SAMPLE_CONTEXT.get(event, {})}
        lang = name.split("/")[-2] if name.count("/") == 2 else cfg.language
        ctx.setdefault("signature_txt", notifier._candidates("signature", "txt", name.split("/")[0], lang))
        ctx.setdefault("signature_html", notifier._candidates("signature", "html", name.split("/")[0], lang))
        try:
            notifier.env.get_template(name).render(ctx)
        except Exception as exc:  # an operator's template may raise anything: report, never crash
            problems.append(f"{os.path.join(root, name)}: {_template_error(exc)}")
    if problems:
        return problems
    seen: set[tuple[str, str]] = set()
    for mb in mailboxes:
        lang = mb.language or cfg.language
        if (mb.address, lang) in seen:
            continue
        seen.add((mb.address, lang))
        for event in EVENTS:
            try:
                notifier.build(event, ticket=ticket, mailbox=mb, to=["customer@example.test"], lang=lang,
                               context=SAMPLE_CONTEXT.get(event, {}), now=1.0e9)
            except Exception as exc:
                problems.append(f"{event} notification for {mb.address} ({lang}): {_template_error(exc)}")
    return problems


def _template_error(exc: BaseException) -> str:
    """One line: the Jinja2 message with its line number when it has one."""
    line = getattr(exc, "lineno", None)
    tb = exc.__traceback__
    while line is None and tb is not None:  # a runtime error: Jinja2 maps the frames to template lines
        if tb.tb_frame.f_code.co_filename.startswith(os.sep) and "/jinja2/" not in tb.tb_frame.f_code.co_filename \
                and not tb.tb_frame.f_code.co_filename.endswith(".py"):
            line = tb.tb_lineno
        tb = tb.tb_next
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return f"{type(exc).__name__}{f' at line {line}' if line else ''}: {text}"


__all__ = ["Notifier", "MailboxInfo", "TicketInfo", "HeaderInjection", "AckDecision", "should_acknowledge",
           "acknowledge", "ack_history", "record_ack", "purge_ack_log", "contact_status", "set_opt_out", "wants",
           "is_noreply", "unsubscribe_uri", "unsubscribe_headers", "NON_CRITICAL", "EVENTS", "ACK_POLICIES",
           "ACK_REASON_TEXT", "ack_policy", "from_authenticated", "ack_client_key", "ack_rate_decision",
           "auto_reply_decision", "check_templates", "SAMPLE_CONTEXT"]


def deep_check(cfg: Config) -> list[ConfigError]:
    """Checks too slow for every load, run by ``check-config`` and by a reload (SIGHUP) before the
    new config replaces the running one: every notification template rendered once with sample
    data (when a smarthost is configured, i.e. notifications are sent). Each problem names
    ``relay.templates`` and the template file."""
    relay = cfg.relay
    if relay is None or not relay.enabled:
        return []
    mailboxes = [MailboxInfo(mb.address, mb.name, mb.language, mb.acknowledge) for mb in cfg.mailboxes]
    return [ConfigError("relay.templates", problem, cfg.source)
            for problem in check_templates(relay, mailboxes, hostname=cfg.smtp.hostname)]
