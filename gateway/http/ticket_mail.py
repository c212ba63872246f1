"""The mail an API change of a ticket causes, composed by the mail path itself.

An agent's reply by mail reaches the customer through :class:`relay.notify_hook.NotifyHook`
(threading on the customer's conversation, command lines stripped, the agent-conflict hold, the
queue's agent notifications, the relay queue in the ticket's transaction). An API reply or status
change is handed to that same hook, described as the agent mail that would have made it, so the two
paths cannot drift apart: there is no second composer.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from gateway.store.base import ARTICLE_ADDED, ArticleDraft, Delivery, DeliveryResult, ThreadHints


@dataclass(frozen=True, slots=True)
class Agent:
    """Who an API token writes as: a configured two-way agent when the token's name is one (its
    address or its name), else the token's name itself."""

    address: str
    name: str
    configured: bool


def agent_for(cfg: Any, token_name: str) -> Agent:
    tw = getattr(cfg, "twoway", None)
    want = token_name.strip().lower()
    for a in (tw.agents if tw is not None else ()):
        if a.address.lower() == want or (a.name and a.name.lower() == want):
            return Agent(a.address.lower(), a.name, True)
    return Agent(token_name, token_name, False)


SIGNATURE_DELIMITER = "-- "   # RFC 3676 4.3: a line of dash, dash, space; mail readers fold what follows


def with_signature(text: str, signature: str) -> str:
    """``text`` with ``signature`` under the RFC 3676 delimiter line: what an agent's reply from the UI
    hands to the reply function, so the stored article, the relay mail and the audit carry the same
    body. An empty signature leaves the text as it is."""
    if not signature.strip():
        return text
    return f"{text.rstrip()}\n\n{SIGNATURE_DELIMITER}\n{signature.strip(chr(10))}\n"


class TicketMail:
    """Hooks for the store's API writes (run inside their transaction, on SQLite or PostgreSQL)."""

    def __init__(self, cfg: Any) -> None:
        from relay.notify_hook import NotifyHook
        self.cfg = cfg
        self.hook = NotifyHook(cfg)

    @property
    def queued(self) -> int:
        """Notifications queued so far (the caller wakes the relay when this grows)."""
        return self.hook.queued

    def _keys(self, conn: Any) -> None:
        """The threading keys, as the pipeline worker gives them to its hook: signed Message-IDs."""
        if not self.hook.keys:
            from relay.conversation import thread_keys_sync
            keys = thread_keys_sync(conn, self.hook.configured_keys)
            self.hook.keys = keys
            self.hook.notifier.keys = keys
            self.hook.notifier.unsubscribe_keys = keys

    def _run(self, conn: Any, ticket_id: int, article_id: int | None, article: ArticleDraft,
             updates: dict[str, Any]) -> None:
        row = conn.execute("SELECT mailbox, number FROM tickets WHERE id=?", (ticket_id,)).fetchone()
        if row is None:
            return
        self._keys(conn)
        key = f"api-{article_id}" if article_id is not None else f"api-t{ticket_id}-{len(updates)}"
        d = Delivery(key, "ticket", mailbox=row[0], article=article, updates=updates,
                     thread=ThreadHints(sender_is_agent=True))
        self.hook(conn, d, DeliveryResult(key, ARTICLE_ADDED, "", ticket_id, article_id, row[1]))

    def reply_hook(self, article: ArticleDraft) -> Callable[[Any, int, int], None]:
        """For :meth:`Store.ticket_add_article`: the public reply goes to the requester and the ticket's
        other participants exactly as an agent's mail reply would."""
        return lambda conn, ticket_id, article_id: self._run(conn, ticket_id, article_id, article, {})

    def update_hook(self, actor: str, updates: dict[str, Any]) -> Callable[[Any, int], None]:
        """For :meth:`Store.ticket_update`: what the same mail commands would send (the status mail to the
        requester, unless opted out or under manual handling). The article here only carries the actor:
        it is internal and never stored."""
        carrier = ArticleDraft(from_addr=actor, from_name="", subject="", body_text="", body_html="",
                               message_id="", visibility="internal", kind="system")
        return lambda conn, ticket_id: self._run(conn, ticket_id, None, carrier, updates)
