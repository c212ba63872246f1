"""SLA escalation: first-response and resolution targets per queue, multi-level.

A ticket of a queue with a target that is still open past created_at + target × level gets an
escalation mail to that level's address (level 1: the team/agent, level 2: a manager, …), once
per level (the level is stored on the ticket and the relay de-duplicates per ticket/target/level).
Runs in the SMTP process on a timer; with several nodes on one PostgreSQL database only the holder
of the "sla" lease runs it (gateway/app.py), and the transaction is the store's (on PostgreSQL through
gateway.store.pg_sync).
"""
from __future__ import annotations

import json
import logging
import sqlite3
import time
from typing import Any

from gateway.config.load import Config
from gateway.store.crypto import dec_stored_text

log = logging.getLogger(__name__)
OPEN = ("new", "open", "pending")
TARGETS = (("first_response", "sla_first_level", "first_response_at IS NULL"),
           ("resolution", "sla_resolution_level", "closed_at IS NULL"))


def escalate(conn: sqlite3.Connection, cfg: Config, notifier: Any, now: float) -> int:
    """Queue the escalations due at ``now`` inside the caller's transaction; returns how many."""
    from relay.conversation import conversation, thread_keys_sync
    from relay.notify import MailboxInfo, TicketInfo
    from gateway.store.relay_queue import enqueue
    from relay.agent_notify import Team, sla_warning
    if not getattr(notifier, "keys", True):  # sign the Message-IDs as every mail about a ticket
        notifier.keys = thread_keys_sync(conn, cfg.twoway.keys if cfg.twoway else ())
    agents = {a.address.lower() for a in cfg.twoway.agents} if cfg.twoway else set()
    mailboxes = {mb.address: mb for mb in cfg.mailboxes}
    sent = 0
    team: Team | None = None
    for q in (cfg.twoway.queues if cfg.twoway else ()):
        for target, column, pending in TARGETS:
            seconds = getattr(q, target)
            if not seconds or not q.escalation:
                continue
            rows = conn.execute(
                f"SELECT t.id, t.number, t.subject, t.status, t.queue, t.assignee, t.mailbox, t.created_at,"
                f" t.{column}, c.email, c.name FROM tickets t JOIN contacts c ON c.id=t.requester_id"
                f" WHERE t.queue=? AND t.status IN ('new','open','pending') AND {pending}"
                f" AND t.{column} < ? AND t.created_at + CAST(? AS DOUBLE PRECISION) * (t.{column} + 1) <= ?"
                f" ORDER BY t.id",
                (q.name, len(q.escalation), float(seconds), now)).fetchall()
            for tid, number, subject, status, queue, assignee, mbox, created, level, req, req_name in rows:
                level += 1
                mb = mailboxes.get(mbox)
                ticket = TicketInfo(tid, number, dec_stored_text(conn, subject), status=status, queue=queue,
                                    assignee=assignee, requester=req, requester_name=req_name,
                                    sla_due=created + seconds * level)
                mailbox = MailboxInfo(mbox, mb.name if mb else "", mb.language if mb else None)
                th = conversation(conn, tid, agents=agents)  # threads on the customer's last message
                enqueue(conn, notifier.escalation(ticket=ticket, mailbox=mailbox, to=[q.escalation[level - 1]],
                                                  level=level, target=target, now=now, in_reply_to=th.in_reply_to,
                                                  references=th.references))
                conn.execute(f"UPDATE tickets SET {column}=? WHERE id=?", (level, tid))
                conn.execute("INSERT INTO ticket_history (ticket_id, at, actor, action, detail) VALUES"
                             " (?, ?, 'system', 'escalated', ?)",
                             (tid, now, json.dumps({"target": target, "level": level,
                                                    "to": q.escalation[level - 1]}, separators=(",", ":"))))
                sent += 1
                if q.notify and "sla_warning" in q.notify_events:  # the queue's notify list asked to be told
                    team = team or Team(cfg, notifier, conn)
                    sla_warning(conn, team, ticket, mailbox, target, level)
    return sent


async def run_once(store: Any, cfg: Config, notifier: Any, now: float | None = None) -> int:
    now = time.time() if now is None else now
    return await store.transaction(lambda conn: escalate(conn, cfg, notifier, now))
