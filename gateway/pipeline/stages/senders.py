"""Sender policy: allow and deny lists, what unknown senders get, "replies only" mailboxes.

Stage ``sender_policy``.

* Deny wins: a sender whose From address *or* envelope sender is on ``deny_addresses`` or in
  one of ``deny_domains`` is dropped (``"sender policy: denied ..."``).
* Allowed senders (``allowed_addresses`` / ``allowed_domains``, From address, else envelope
  sender) pass. With ``allowed_requires_dmarc = true`` an allow-list match counts only when
  DMARC passed (``entry.auth["dmarc"]``): a From address is otherwise trivial to forge.
* Everyone else is *unknown* and gets ``unknown``: ``accept`` (default), ``drop`` or
  ``quarantine``. (With no allow lists at all every sender is unknown.)
* ``replies_only = true``: no new tickets by email. The stage continues with
  ``{"replies_only": True, "action": "drop"|"quarantine"}``; the ticket stage must then refuse to
  open a new ticket (a message that threads onto an existing ticket is fine) and end the message
  with that action instead.

A domain entry covers the domain and its subdomains (``example.com`` matches
``mail.example.com``); addresses compare case-insensitively.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gateway.config.pipeline import SenderPolicy, policy_for
from gateway.pipeline.stages.core import CONTINUE, DROP, QUARANTINE, Context, Inbound, Verdict, requester

__all__ = ["SenderPolicyStage", "classify_sender"]


def _norm(addr: str) -> str:
    addr = addr.strip().strip("<>").strip()
    local, at, domain = addr.rpartition("@")
    return f"{local.lower()}@{domain.lower().rstrip('.')}" if at else ""


def _in(domain: str, domains: tuple[str, ...]) -> bool:
    return any(domain == d or domain.endswith("." + d) for d in domains)


def _matches(addr: str, addresses: tuple[str, ...], domains: tuple[str, ...]) -> bool:
    return bool(addr) and (addr in addresses or _in(addr.rpartition("@")[2], domains))


def dmarc_passed(auth: dict[str, Any] | None) -> bool:
    dmarc = (auth or {}).get("dmarc") or {}
    return isinstance(dmarc, dict) and (dmarc.get("result") == "pass" or bool(dmarc.get("override")))


def classify_sender(policy: SenderPolicy, from_addr: str, mail_from: str,
                    auth: dict[str, Any] | None = None) -> tuple[str, str]:
    """("denied" | "allowed" | "unknown", the address that decided)."""
    sender = _norm(from_addr) or _norm(mail_from)
    for addr in dict.fromkeys(a for a in (_norm(from_addr), _norm(mail_from)) if a):
        if _matches(addr, policy.deny_addresses, policy.deny_domains):
            return "denied", addr
    if _matches(sender, policy.allowed_addresses, policy.allowed_domains):
        if not policy.allowed_requires_dmarc or dmarc_passed(auth):
            return "allowed", sender
    return "unknown", sender


class SenderPolicyStage:
    name = "sender_policy"

    def __init__(self, policy: SenderPolicy | None = None,
                 per_mailbox: Mapping[str, SenderPolicy] | None = None) -> None:
        self.policy = policy or SenderPolicy()
        self.per_mailbox = dict(per_mailbox or {})

    async def run(self, msg: Inbound, ctx: Context) -> Verdict:
        policy: SenderPolicy = policy_for(self.policy, self.per_mailbox, msg, ctx)
        if not policy.enabled:
            return Verdict()
        addr, _ = requester(msg)
        status, who = classify_sender(policy, addr, msg.entry.mail_from, msg.entry.auth)
        data: dict[str, Any] = {"sender": status}
        if status == "denied":
            return Verdict(DROP, f"sender policy: denied {who}", data=data)
        if status == "unknown" and policy.unknown != "accept":
            action = DROP if policy.unknown == "drop" else QUARANTINE
            return Verdict(action, f"sender policy: unknown sender {who or '(none)'}", data=data)
        if policy.replies_only:
            data["replies_only"] = True
            data["action"] = policy.replies_only_action
            return Verdict(CONTINUE, "", data=data)
        return Verdict(data=data)
