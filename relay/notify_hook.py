"""Notifications queued in the same transaction as the ticket change that causes them.

Called by the store for every delivery (inside its transaction): a new ticket gets an
acknowledgement (by default only when its From passed DMARC; rate-limited per recipient, per
client IP and in all; never to automatic or undeliverable senders); an agent's public reply on a
ticket is relayed to the requester and the ticket's other participants. Internal notes and
automatic mail never leave. An acknowledgement not sent says why in the ticket history.

What the customer receives is clean and threaded: command lines never leave, one agent mail makes
one customer mail (a status change it made is said in the reply), and every mail about a ticket
answers a message of the customer's conversation (relay/conversation.py). Delivery status
notifications and read receipts about our mails are recorded here too (relay/reports.py).
"""
from __future__ import annotations

import json
import logging
import sqlite3
import time
from typing import Any

from gateway.config.load import Config, MailboxConfig
from gateway.store.crypto import dec_stored_text
from gateway.store.base import ARTICLE_ADDED, QUARANTINED, TICKET_CREATED, Delivery, DeliveryResult
from relay import agent_notify

log = logging.getLogger(__name__)


class NotifyHook:
    def __init__(self, cfg: Config) -> None:
        from relay.notify import Notifier
        self.cfg = cfg
        self.notifier = Notifier(cfg.relay, hostname=cfg.smtp.hostname)
        self.mailboxes: dict[str, MailboxConfig] = {mb.address: mb for mb in cfg.mailboxes}
        self.own = {a.lower() for mb in cfg.mailboxes for a in mb.addresses()}
        self.queued = 0  # notifications queued by this hook (the relay worker is woken when > 0)
        tw = cfg.twoway
        self.agents = {a.address.lower() for a in tw.agents} if tw is not None else set()
        self.delimiter = tw.command_delimiter if tw is not None else "$"
        self.configured_keys = tw.keys if tw is not None else ()
        # spool id -> why its acknowledgement was not sent. Keyed by spool id so a transaction the store
        # retries (PostgreSQL) does not count twice; the worker takes it after a commit (metrics).
        self.suppressed: dict[str, str] = {}
        self.keys: tuple[bytes, ...] = ()  # threading MAC keys (set by the worker): signed Message-IDs for the team
        # spool id -> "sent" or the reason: every acknowledgement decision (ticketmx_relay_acknowledgements_total)
        self.ack_results: dict[str, str] = {}

    def take_suppressed(self) -> dict[str, str]:
        out, self.suppressed = self.suppressed, {}
        return out

    def take_ack_results(self) -> dict[str, str]:
        out, self.ack_results = self.ack_results, {}
        return out

    def __call__(self, conn: sqlite3.Connection, d: Delivery, r: DeliveryResult) -> None:
        if d.opt_out:  # a verified unsubscribe request (stage unsubscribe): no more acks / status mails
            from relay.notify import set_opt_out
            set_opt_out(conn, d.opt_out, True)
            log.info("%s opted out of acknowledgements and status mails (unsubscribe request)", d.opt_out,
                     extra={"trace_id": d.spool_id})
        if r.state == QUARANTINED:  # by a stage, or by the store (a non-participant, replies only)
            self._team_quarantined(conn, d, r)
        if d.report is not None:
            from relay.reports import apply_report
            apply_report(conn, d.report, d.spool_id, time.time())
            return
        if d.kind != "ticket" or d.article is None or r.ticket_id is None or r.reason == "already delivered":
            return
        if not self.notifier.keys:  # sign our Message-IDs with the threading key (read once it exists)
            from relay.conversation import thread_keys_sync
            self.notifier.keys = thread_keys_sync(conn, self.configured_keys)
        mb = self.mailboxes.get(d.mailbox) or (self.cfg.mailboxes[0] if self.cfg.mailboxes else None)
        if mb is None:
            return
        from relay.conversation import conversation, header_ids
        from relay.notify import ACK_REASON_TEXT, MailboxInfo, TicketInfo, acknowledge
        from gateway.store.relay_queue import enqueue
        from gateway.pipeline.stages.commands import strip_command_lines
        row = conn.execute("SELECT t.subject, t.status, t.queue, t.assignee, c.email, c.name FROM tickets t"
                           " JOIN contacts c ON c.id=t.requester_id WHERE t.id=?", (r.ticket_id,)).fetchone()
        ticket = TicketInfo(r.ticket_id, r.ticket_number or "", dec_stored_text(conn, row[0]), status=row[1],
                            queue=row[2], assignee=row[3], requester=row[4], requester_name=row[5])
        mailbox = MailboxInfo(mb.address, mb.name, mb.language, mb.acknowledge)
        art = d.article
        try:
            manual = agent_notify.manual_handling(conn, d, r)
            held = agent_notify.conflict(conn, self, d, r, ticket, mailbox)
            if r.state == TICKET_CREATED and not d.thread.sender_is_agent and manual:
                self._manual_ack(conn, d, r)
            elif r.state == TICKET_CREATED and not d.thread.sender_is_agent:
                mail_from, peer_ip, auth = self._envelope(conn, d.spool_id)
                decision, mail_id = acknowledge(
                    conn, self.notifier, ticket=ticket, mailbox=mailbox, sender=art.from_addr,
                    headers=d.headers, mail_from=mail_from,
                    inbound_message_id=art.message_id or None, key=d.spool_id, own_addresses=self.own,
                    suspicious="suspicious" in d.ticket_fields.flags, auth=auth, client_ip=peer_ip,
                    references=header_ids(d.headers, "References"), article_id=r.article_id)
                why = getattr(decision, "reason", "")
                detail: dict[str, Any] = {"queued": mail_id is not None, "why": why}
                if why != "already queued":  # a replay was counted the first time
                    self.ack_results[d.spool_id] = "sent" if mail_id is not None else (why or "unknown")
                if mail_id is not None:
                    self.queued += 1
                else:
                    detail["text"] = f"acknowledgement not sent: {ACK_REASON_TEXT.get(why, why.replace('_', ' '))}"
                    self.suppressed[d.spool_id] = why or "unknown"
                    log.info("%s: %s", r.ticket_number, detail["text"], extra={"trace_id": d.spool_id})
                conn.execute("INSERT INTO ticket_history (ticket_id, at, actor, action, detail) VALUES"
                             " (?, ?, 'system', 'acknowledgement', ?)",
                             (r.ticket_id, time.time(), json.dumps(detail)))
            replied = False
            if (r.state == ARTICLE_ADDED and d.thread.sender_is_agent and art.visibility == "public"
                    and not held):
                text = art.new_text or art.body_text
                if strip_command_lines(text, self.delimiter).strip():  # commands only: no reply mail
                    to = [row[4]]
                    cc = [p for (p,) in conn.execute(
                        "SELECT c.email FROM participants p JOIN contacts c ON c.id=p.contact_id WHERE"
                        " p.ticket_id=? AND p.role='cc' AND c.undeliverable=0", (r.ticket_id,))
                          if p not in to and p not in self.own]
                    # the customer message the agent answered (named by the agent's mail client), else the last
                    named = header_ids(d.headers, "In-Reply-To") + header_ids(d.headers, "References")[::-1]
                    th = conversation(conn, r.ticket_id, agents=self.agents, named=named)
                    n = self.notifier.agent_reply(ticket=ticket, mailbox=mailbox, to=to, cc=cc, body_text=text,
                                                  article_id=r.article_id, agent_name=art.from_name,
                                                  in_reply_to=th.in_reply_to, references=th.references,
                                                  answers=th.article_id, command_delimiter=self.delimiter,
                                                  status=self._status_change(conn, d, r))
                    if n is not None:
                        enqueue(conn, n)
                        self.queued += 1
                        replied = True
            if d.thread.sender_is_agent:
                self._commands(conn, d, r, ticket, mailbox, replied, manual)
            elif art.stripped and not manual:
                self._stripped(conn, d, ticket, mailbox, r.article_id)
            self._team(conn, d, r, ticket, mailbox, held)
        except ValueError as exc:  # e.g. a header value refused (injection attempt): record, don't fail
            log.warning("notification for %s not queued: %s", r.ticket_number, exc, extra={"trace_id": d.spool_id})


    @staticmethod
    def _status_change(conn: sqlite3.Connection, d: Delivery, r: DeliveryResult) -> tuple[str, str] | None:
        """(old, new) when this agent mail changed the ticket's status, else None."""
        new = d.updates.get("status")
        if not new:
            return None
        row = conn.execute("SELECT detail FROM ticket_history WHERE ticket_id=? AND action='command'"
                           " ORDER BY id DESC LIMIT 1", (r.ticket_id,)).fetchone()
        old = json.loads(row[0]).get("old_status", "") if row else ""
        return (old, new) if old != new else None

    def _commands(self, conn: sqlite3.Connection, d: Delivery, r: DeliveryResult, ticket: Any, mailbox: Any,
                  replied: bool, manual: bool = False) -> None:
        """The result of an agent's email commands goes back to the agent, once, threaded on the
        agent's mail; a status change they made is announced to the requester in its own mail only
        when no reply went out (the reply says it: one agent mail, one customer mail), never under
        manual handling, never to a contact who opted out."""
        from relay.conversation import conversation, header_ids
        from relay.notify import wants
        from gateway.store.relay_queue import enqueue
        result = next((h["detail"].get("text", "") for h in d.ticket_history if h.get("action") == "command_result"),
                      "")
        if result:
            n = self.notifier.build("commands", ticket=ticket, mailbox=mailbox, to=[d.article.from_addr],
                                    context={"result_text": result, "agent_name": d.article.from_name},
                                    in_reply_to=d.article.message_id or None,
                                    references=header_ids(d.headers, "References"),
                                    dedupe_key=f"commands:{d.spool_id}", lazy=True)
            enqueue(conn, n)
            self.queued += 1
        change = None if replied else self._status_change(conn, d, r)
        if change and ticket.requester and not manual and wants(conn, ticket.requester, "status"):
            th = conversation(conn, r.ticket_id, agents=self.agents)
            enqueue(conn, self.notifier.status_change(ticket=ticket, mailbox=mailbox, to=[ticket.requester],
                                                      old=change[0], new=change[1], in_reply_to=th.in_reply_to,
                                                      references=th.references, answers=th.article_id))
            self.queued += 1

    def _stripped(self, conn: sqlite3.Connection, d: Delivery, ticket: Any, mailbox: Any,
                  article_id: int | None = None) -> None:
        """Tell the sender once which attachments were removed — an automatic reply to the From like
        the acknowledgement, so under the same rules: the mailbox's policy (authenticated From only by
        default), never an automatic sender, and within the acknowledgement rate limits."""
        from relay.conversation import header_ids
        from relay.notify import ack_client_key, auto_reply_decision, record_ack
        from gateway.store.relay_queue import enqueue
        art, now = d.article, time.time()
        mail_from, peer_ip, auth = self._envelope(conn, d.spool_id)
        client = ack_client_key(peer_ip, auth)
        decision = auto_reply_decision(
            conn, self.notifier.cfg, sender=art.from_addr, headers=d.headers, mail_from=mail_from,
            policy=mailbox.acknowledge, auth=auth, client=client, own_addresses=self.own,
            suspicious="suspicious" in d.ticket_fields.flags, now=now)
        if not decision:
            log.info("%s: attachments-removed notice not sent: %s", ticket.number, decision.reason,
                     extra={"trace_id": d.spool_id})
            return
        n = self.notifier.build("stripped", ticket=ticket, mailbox=mailbox, to=[art.from_addr],
                                context={"stripped": [{"filename": s.filename, "reason": s.reason}
                                                      for s in art.stripped]},
                                in_reply_to=art.message_id or None, references=header_ids(d.headers, "References"),
                                dedupe_key=f"stripped:{d.spool_id}", lazy=True, article_id=article_id)
        enqueue(conn, n)
        record_ack(conn, art.from_addr, now, client)
        self.queued += 1

    # -- mail to the team (relay/agent_notify.py) ------------------------------------------
    def _team(self, conn: sqlite3.Connection, d: Delivery, r: DeliveryResult, ticket: Any, mailbox: Any,
              held: bool) -> None:
        """The queue's agent notification for this event, and the on-call alert of an alert rule."""
        q = self.cfg.twoway.queue(ticket.queue) if self.cfg.twoway else None
        event = agent_notify.event_of(conn, d, r, held) if q is not None and q.notify else None
        if event is not None:
            self.queued += agent_notify.notify_agents(conn, self, d, r, ticket, mailbox, event)
        self.queued += agent_notify.alert(conn, self, d, r, ticket, mailbox)

    def _team_quarantined(self, conn: sqlite3.Connection, d: Delivery, r: DeliveryResult) -> None:
        try:
            self.queued += agent_notify.notify_quarantined(conn, self, d, r)
        except ValueError as exc:
            log.warning("quarantine notification not queued: %s", exc, extra={"trace_id": d.spool_id})

    def _manual_ack(self, conn: sqlite3.Connection, d: Delivery, r: DeliveryResult) -> None:
        """A new ticket under manual handling: no acknowledgement, and the history says so."""
        agent_notify.record_manual(conn, d, r)
        self.suppressed[d.spool_id] = "manual_handling"
        conn.execute("INSERT INTO ticket_history (ticket_id, at, actor, action, detail) VALUES"
                     " (?, ?, 'system', 'acknowledgement', ?)",
                     (r.ticket_id, time.time(), json.dumps({"queued": False, "why": "manual_handling",
                                                           "text": "acknowledgement not sent: manual handling"})))
        log.info("%s: acknowledgement not sent: manual handling", r.ticket_number, extra={"trace_id": d.spool_id})

    @staticmethod
    def _envelope(conn: sqlite3.Connection, spool_id: str) -> tuple[str | None, str | None, dict[str, Any] | None]:
        """(MAIL FROM, client IP, SMTP-time auth result) of the spool entry."""
        row = conn.execute("SELECT mail_from, peer_ip, auth FROM spool WHERE id=?", (spool_id,)).fetchone()
        if row is None:
            return None, None, None
        auth = row[2]
        if isinstance(auth, (str, bytes)):
            try:
                auth = json.loads(auth)
            except ValueError:
                auth = None
        return row[0], row[1], auth if isinstance(auth, dict) else None


def config_warnings(cfg: Config) -> list[str]:
    """What ``check-config`` should point out about acknowledgements (legal, but likely not meant)."""
    relay = getattr(cfg, "relay", None)
    if relay is None or not relay.enabled:
        return []
    out = []
    for i, mb in enumerate(cfg.mailboxes):
        enabled = mb.auth.get("enabled", cfg.auth.get("enabled", True)) if isinstance(mb.auth, dict) else True
        if mb.acknowledge == "authenticated" and enabled is False:
            out.append(f"mailbox[{i}].acknowledge: \"authenticated\" with authentication disabled"
                       f" ([auth] enabled = false): {mb.address} will send no acknowledgements")
        elif mb.acknowledge == "always":
            out.append(f"mailbox[{i}].acknowledge: \"always\" acknowledges any From, forged ones included"
                       " (backscatter); only the rate limits bound it")
    return out


def make_hook(cfg: Config) -> Any:
    """The hook when outbound mail is configured, else None."""
    relay = getattr(cfg, "relay", None)
    if relay is None or not relay.enabled:
        return None
    return NotifyHook(cfg)
