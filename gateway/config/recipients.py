"""Recipient -> mailbox mapping: the only addresses ticketmx accepts mail for."""
from __future__ import annotations

from gateway.config.load import MailboxConfig


class RecipientMap:
    """Maps RCPT TO addresses to configured mailboxes.

    Matching is case-insensitive (our own mailboxes, so the local part too) and a
    ``+tag`` subaddress maps to its base mailbox. Anything else is unknown: never relay.
    """

    def __init__(self, mailboxes: tuple[MailboxConfig, ...]) -> None:
        self.mailboxes = mailboxes
        self._by_addr: dict[str, MailboxConfig] = {}
        self._order: dict[str, int] = {}
        for i, mb in enumerate(mailboxes):
            self._order[mb.address] = i
            for addr in mb.addresses():
                self._by_addr[addr.lower()] = mb

    def lookup(self, address: str) -> MailboxConfig | None:
        local, at, domain = address.strip().rpartition("@")
        if not at or not local:
            return None
        local = local.lower()
        if local.startswith('"') and local.endswith('"') and len(local) > 1:
            local = local[1:-1]
        base, plus, _tag = local.partition("+")
        key_domain = domain.lower().rstrip(".")
        hit = self._by_addr.get(f"{local}@{key_domain}")
        if hit is None and plus and base:
            hit = self._by_addr.get(f"{base}@{key_domain}")
        return hit

    def primary(self, mailboxes: list[MailboxConfig]) -> MailboxConfig:
        """The first matching mailbox in config order: it decides the queue of the ticket."""
        return min(mailboxes, key=lambda mb: self._order[mb.address])
