"""Mail to the team (issue 19): agent notifications, on-call alerts, manual handling, agent conflicts.

Called by :class:`relay.notify_hook.NotifyHook` inside the delivery transaction, so a
notification commits with the ticket change that causes it, or not at all.

* **Agent notifications.** ``[[queue]] notify`` lists who is told about the queue's tickets (agents
  and group addresses), ``notify_events`` on what. One mail per language, the recipients in Bcc
  (To: ``undisclosed-recipients:;``), so no agent sees another's address. The mail carries the ticket
  token in its Subject, a Message-ID we MAC-sign for the ticket (``<t{id}.k{mac}.r{random}@host>``,
  gateway/pipeline/stages/tokens.py) and References to the ticket's messages: an agent's reply from a mail
  client threads onto the ticket (and acts as an agent reply only if it authenticates as one).
  It quotes the customer's new text (quotes stripped) and names the requester.
* **Alert.** A routing rule with ``alert = true`` mails ``[routing] alert_to`` at once, within
  ``[routing] alert_limits`` (counted in ``relay_ack_log`` under the key ``alert``).
* **Manual handling.** A ticket flagged ``manual_handling`` gets no acknowledgement and no other
  automatic mail to its requester (attachments notice, status mails); the history says so. Agent
  notifications, alerts and the agents' own replies still go.
* **Conflicts.** A second agent's public answer to the same customer message within
  ``[threading] agent_conflict_window`` of another agent's is held as an internal note, and its
  author is told.
"""
from __future__ import annotations

import json
import logging
import re
import time
from typing import Any, Iterable

from gateway.store.base import ARTICLE_ADDED, TICKET_CREATED, Delivery, DeliveryResult
from gateway.config.twoway import QueueConfig, TwoWayConfig

log = logging.getLogger(__name__)

CLOSED = ("resolved", "closed")
ALERT_KEY = "alert"              # relay_ack_log key of the alert counter (no "@": never an address)
MAX_QUOTED = 4000                # characters of the customer's text quoted in a notification
_ID = re.compile(r"<([^<>\s]{1,250})>")


def _history(conn: Any, ticket_id: int, action: str, detail: dict[str, Any], actor: str = "system") -> None:
    conn.execute("INSERT INTO ticket_history (ticket_id, at, actor, action, detail) VALUES (?, ?, ?, ?, ?)",
                 (ticket_id, time.time(), actor, action, json.dumps(detail, ensure_ascii=False)))


def _tw(hook: Any) -> TwoWayConfig:
    return hook.cfg.twoway or TwoWayConfig()


# -- manual handling ------------------------------------------------------------------------------

def manual_handling(conn: Any, d: Delivery, r: DeliveryResult) -> bool:
    """Whether the ticket (or this message, by a routing rule) is under manual handling."""
    if "manual_handling" in d.ticket_fields.flags:
        return True
    if r.state == TICKET_CREATED:
        return False
    row = conn.execute("SELECT flags FROM tickets WHERE id=?", (r.ticket_id,)).fetchone()
    try:
        return bool(row) and "manual_handling" in json.loads(row[0] or "[]")
    except ValueError:
        return False


def record_manual(conn: Any, d: Delivery, r: DeliveryResult) -> None:
    """The history entry of a new ticket under manual handling (once: at creation)."""
    rules = [h.get("detail", {}).get("rule") for h in d.ticket_history if h.get("action") == "rule"]
    _history(conn, r.ticket_id, "manual_handling", {
        "text": "manual handling: no acknowledgement and no other automatic mail to the requester",
        "rules": [x for x in rules if x]})


# -- agent notifications --------------------------------------------------------------------------

def event_of(conn: Any, d: Delivery, r: DeliveryResult, held: bool) -> str | None:
    """The notify event this delivery is, if any."""
    art = d.article
    if r.state == TICKET_CREATED:
        return "created"
    if r.state != ARTICLE_ADDED or art is None:
        return None
    if d.thread.sender_is_agent:
        return "agent_reply" if art.visibility == "public" and not held else None
    if r.reopened:
        return "reopened"
    row = conn.execute("SELECT status FROM tickets WHERE id=?", (r.ticket_id,)).fetchone()
    if row and row[0] in CLOSED:
        return None  # a "thanks, works now" on a resolved ticket: added, nobody disturbed
    return "customer_reply"


def _language(hook: Any, address: str, queue: QueueConfig | None, mailbox: Any) -> str:
    agent = _tw(hook).agent(address)
    return ((agent.language if agent else None) or (queue.language if queue else None) or mailbox.language
            or hook.notifier.cfg.language)


def _by_language(hook: Any, addresses: Iterable[str], queue: QueueConfig | None, mailbox: Any) -> dict[str, list[str]]:
    groups: dict[str, list[str]] = {}
    for a in addresses:
        groups.setdefault(_language(hook, a, queue, mailbox), []).append(a)
    return groups


def _threading(conn: Any, ticket_id: int) -> list[str]:
    """The Message-IDs of the ticket's articles, oldest first, at most 20 (References)."""
    rows = conn.execute("SELECT message_id FROM articles WHERE ticket_id=? AND message_id<>'' ORDER BY id DESC"
                        " LIMIT 20", (ticket_id,)).fetchall()
    return [m for (m,) in reversed(rows) if m]


def _message_id(hook: Any, ticket_id: int | None) -> str | None:
    """A MAC-signed Message-ID for the ticket (verifiable by the thread stage), when keys are loaded."""
    if ticket_id is None or not hook.keys:
        return None
    from gateway.pipeline.stages.tokens import mint_message_id
    return mint_message_id(ticket_id, hook.keys, hook.notifier.hostname)


def _team_mail(conn: Any, hook: Any, event: str, *, ticket: Any, mailbox: Any, to: list[str],
               queue: QueueConfig | None, context: dict[str, Any], dedupe: str, about_article: int | None = None,
               in_reply_to: str | None = None) -> int:
    """Queue one Bcc mail per language to ``to``; returns how many were queued."""
    from gateway.store.relay_queue import enqueue
    refs = _threading(conn, ticket.id) if ticket.id is not None else []
    queued = 0
    for lang, group in sorted(_by_language(hook, to, queue, mailbox).items()):
        n = hook.notifier.build(event, ticket=ticket, mailbox=mailbox, to=[], bcc=group, lang=lang,
                                context=context, in_reply_to=in_reply_to, references=refs,
                                message_id=_message_id(hook, ticket.id), dedupe_key=f"{dedupe}:{lang}", lazy=True)
        enqueue(conn, n)
        if about_article is not None:  # a reply to this mail answers that customer article (conflicts)
            conn.execute("UPDATE message_ids SET article_id=? WHERE message_id=? AND article_id IS NULL",
                         (about_article, n.message_id))
        queued += 1
    return queued


def notify_agents(conn: Any, hook: Any, d: Delivery, r: DeliveryResult, ticket: Any, mailbox: Any,
                  event: str) -> int:
    """Tell the ticket's queue's ``notify`` list about ``event`` (if it is one of its ``notify_events``)."""
    q = _tw(hook).queue(ticket.queue)
    if q is None or not q.notify or event not in q.notify_events:
        return 0
    art = d.article
    author = (art.from_addr if art else "").lower()
    to = [a for a in q.notify if a != author]
    if not to:
        return 0
    text = (art.new_text or art.body_text) if art else ""
    context = {"notify_event": event, "new_text": text[:MAX_QUOTED], "truncated": len(text) > MAX_QUOTED,
               "author": art.from_addr if art else "", "author_name": art.from_name if art else "",
               "visibility": art.visibility if art else "public"}
    return _team_mail(conn, hook, "notify", ticket=ticket, mailbox=mailbox, to=to, queue=q, context=context,
                      dedupe=f"notify:{event}:{d.spool_id}", about_article=r.article_id if event != "agent_reply"
                      else None, in_reply_to=(art.message_id or None) if art else None)


def notify_quarantined(conn: Any, hook: Any, d: Delivery, r: DeliveryResult) -> int:
    """A quarantined message of a queue with ``quarantined`` in its notify_events: tell its notify list."""
    from relay.notify import MailboxInfo, TicketInfo
    row = conn.execute("SELECT mailboxes, mail_from, message_id FROM spool WHERE id=?", (d.spool_id,)).fetchone()
    if row is None:
        return 0
    try:
        boxes = json.loads(row[0]) if isinstance(row[0], str) else list(row[0] or ())
    except ValueError:
        boxes = []
    mb = next((hook.mailboxes[b] for b in boxes if b in hook.mailboxes), None)
    q = _tw(hook).queue(mb.queue) if mb is not None else None
    if mb is None or q is None or not q.notify or "quarantined" not in q.notify_events:
        return 0
    ticket = TicketInfo(None, "quarantine", "quarantined mail", queue=q.name)
    mailbox = MailboxInfo(mb.address, mb.name, mb.language, mb.acknowledge)
    context = {"notify_event": "quarantined", "reason": (r.reason or d.reason)[:500], "spool_id": d.spool_id,
               "mail_from": row[1] or "<>", "inbound_message_id": row[2] or ""}
    return _team_mail(conn, hook, "notify", ticket=ticket, mailbox=mailbox, to=list(q.notify), queue=q,
                      context=context, dedupe=f"notify:quarantined:{d.spool_id}")


class Team:
    """What the functions here need of a NotifyHook, for callers without one (the SLA timer)."""

    def __init__(self, cfg: Any, notifier: Any, conn: Any = None) -> None:
        import base64
        self.cfg, self.notifier, self.queued = cfg, notifier, 0
        self.keys: tuple[bytes, ...] = tuple((cfg.twoway.keys if cfg.twoway else ()) or ())
        if not self.keys and conn is not None:
            row = conn.execute("SELECT value FROM control WHERE key='threading_key'").fetchone()
            self.keys = (base64.b64decode(row[0]),) if row and row[0] else ()


def sla_warning(conn: Any, hook: Any, ticket: Any, mailbox: Any, target: str, level: int) -> int:
    """An SLA escalation fired: the queue's notify list is told too, when it asked for ``sla_warning``."""
    q = _tw(hook).queue(ticket.queue)
    if q is None or not q.notify or "sla_warning" not in q.notify_events:
        return 0
    return _team_mail(conn, hook, "notify", ticket=ticket, mailbox=mailbox, to=list(q.notify), queue=q,
                      context={"notify_event": "sla_warning", "target": target, "level": level},
                      dedupe=f"notify:sla:{ticket.id}:{target}:{level}")


# -- alert ----------------------------------------------------------------------------------------

def alert(conn: Any, hook: Any, d: Delivery, r: DeliveryResult, ticket: Any, mailbox: Any) -> int:
    """A message that fired an ``alert`` rule: mail ``[routing] alert_to`` at once, within its limits."""
    if "alert" not in d.ticket_fields.flags or d.thread.sender_is_agent:
        return 0
    tw = _tw(hook)
    rules = [h.get("detail", {}).get("rule") for h in d.ticket_history if h.get("action") == "rule"]
    if not tw.alert_to:
        _history(conn, r.ticket_id, "alert", {"queued": False, "text": "alert not sent: no [routing] alert_to"})
        return 0
    now = time.time()
    for count, window in tw.alert_limits:
        n = conn.execute("SELECT COUNT(*) FROM relay_ack_log WHERE sender=? AND sent_at>?",
                         (ALERT_KEY, now - window)).fetchone()[0]
        if n >= count:
            _history(conn, r.ticket_id, "alert", {"queued": False, "text": "alert not sent: [routing] alert_limits"})
            log.warning("%s: alert not sent: rate limit (%d per %gs)", ticket.number, count, window,
                        extra={"trace_id": d.spool_id})
            return 0
    art = d.article
    text = (art.new_text or art.body_text) if art else ""
    context = {"rules": [x for x in rules if x], "new_text": text[:MAX_QUOTED], "truncated": len(text) > MAX_QUOTED,
               "state": "new ticket" if r.state == TICKET_CREATED else "reply"}
    queued = _team_mail(conn, hook, "alert", ticket=ticket, mailbox=mailbox, to=list(tw.alert_to), queue=None,
                        context=context, dedupe=f"alert:{d.spool_id}", about_article=r.article_id,
                        in_reply_to=(art.message_id or None) if art else None)
    conn.execute("INSERT INTO relay_ack_log (sender, sent_at) VALUES (?,?)", (ALERT_KEY, now))
    _history(conn, r.ticket_id, "alert", {"queued": True, "recipients": len(tw.alert_to), "rules": context["rules"]})
    return queued


# -- several agents at once -----------------------------------------------------------------------

def answered_article(conn: Any, d: Delivery, r: DeliveryResult, agents: Any) -> tuple[int, str] | None:
    """(id, message id) of the customer article an agent's reply answers: the one its In-Reply-To names
    (directly, or through our notification about it), else the ticket's latest customer article."""
    irt = next((v for k, v in d.headers if k.lower() == "in-reply-to"), "")
    m = _ID.search(irt or "")
    if m:
        row = conn.execute("SELECT a.id, a.from_addr, a.message_id FROM message_ids mi JOIN articles a"
                           " ON a.id=mi.article_id WHERE mi.message_id=? AND mi.ticket_id=?",
                           (m.group(1), r.ticket_id)).fetchone()
        if row is not None and agents(row[1]) is None and row[0] != r.article_id:
            return row[0], row[2]
    for aid, sender, mid in conn.execute(
            "SELECT id, from_addr, message_id FROM articles WHERE ticket_id=? AND id<? AND kind='email'"
            " ORDER BY id DESC LIMIT 50", (r.ticket_id, r.article_id)).fetchall():
        if agents(sender) is None:
            return aid, mid
    return None


def conflict(conn: Any, hook: Any, d: Delivery, r: DeliveryResult, ticket: Any, mailbox: Any) -> bool:
    """Hold an agent's public reply as an internal note when another agent answered the same customer
    message within ``[threading] agent_conflict_window``; tell its author. True when held."""
    tw = _tw(hook)
    art = d.article
    if (tw.agent_conflict_window <= 0 or r.state != ARTICLE_ADDED or art is None or not d.thread.sender_is_agent
            or art.visibility != "public" or r.article_id is None):
        return False
    target = answered_article(conn, d, r, tw.agent)
    if target is None:
        return False
    me = art.from_addr.lower()
    since = time.time() - tw.agent_conflict_window
    other = None
    for sender, name, at in conn.execute(
            "SELECT from_addr, from_name, created_at FROM articles WHERE ticket_id=? AND id>? AND id<?"
            " AND visibility='public' AND kind='email' AND created_at>=? ORDER BY id",
            (r.ticket_id, target[0], r.article_id, since)).fetchall():
        if sender.lower() != me and tw.agent(sender) is not None:
            other = (sender, tw.agent(sender).name or name, at)  # the configured name first
            break
    if other is None:
        return False
    conn.execute("UPDATE articles SET visibility='internal' WHERE id=?", (r.article_id,))
    minutes = max(0, round((time.time() - other[2]) / 60))
    who = other[1] or "another agent"
    text = (f"reply held as an internal note: {who} answered the same customer message {minutes} min earlier"
            f" (window {tw.agent_conflict_window / 60:g} min)")
    _history(conn, r.ticket_id, "agent_conflict", {"text": text, "article_id": r.article_id, "other": other[0],
                                                   "answered": target[0]}, actor=me)
    from gateway.store.relay_queue import enqueue
    n = hook.notifier.build("conflict", ticket=ticket, mailbox=mailbox, to=[me],
                            lang=_language(hook, me, tw.queue(ticket.queue), mailbox),
                            context={"other_name": who, "minutes": minutes, "new_text": (art.new_text or art.body_text)[:MAX_QUOTED],
                                     "agent_name": art.from_name},
                            in_reply_to=art.message_id or None, references=_threading(conn, ticket.id),
                            message_id=_message_id(hook, ticket.id), dedupe_key=f"conflict:{d.spool_id}", lazy=True)
    enqueue(conn, n)
    hook.queued += 1
    log.info("%s: %s", ticket.number, text, extra={"trace_id": d.spool_id})
    return True
