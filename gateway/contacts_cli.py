"""``ticketmx contacts optout ADDR [--undo]`` and ``ticketmx contacts show ADDR [--json]``.

Kept apart from gateway/cli.py, which registers it with two lines (``register`` / ``HANDLERS``).
An opt-out stops acknowledgements and status mails to the address (the mails that carry
``List-Unsubscribe``); an agent's reply still goes — it is the conversation the contact is in. It is
the same flag an unsubscribe mail sets (stage ``unsubscribe``), in ``relay_contacts``, shared by every
node; an address never seen before can be opted out ahead of its first mail.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import time
from typing import Any, Awaitable, Callable

EX_OK, EX_FAIL, EX_USAGE = 0, 1, 2
_ADDR = re.compile(r"^[^@\s<>()\[\],;:\\\"\x00-\x1f\x7f]+@[^@\s<>()\[\],;:\\\"\x00-\x1f\x7f]+$")


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add ``contacts {optout,show}`` to the gateway's subparsers."""
    c = sub.add_parser("contacts", parents=[common], help="a contact's opt-out and delivery status")
    csub = c.add_subparsers(dest="action", required=True, metavar="ACTION")
    o = csub.add_parser("optout", parents=[common],
                        help="stop acknowledgements and status mails to ADDR (agent replies still go)")
    o.add_argument("address", metavar="ADDR")
    o.add_argument("--undo", action="store_true", help="mail ADDR automatically again")
    o.add_argument("--json", action="store_true")
    s = csub.add_parser("show", parents=[common], help="what ticketmx knows of ADDR and sends to it")
    s.add_argument("address", metavar="ADDR")
    s.add_argument("--json", action="store_true")


def _address(value: str) -> str | None:
    addr = value.strip().lower()
    return addr if _ADDR.match(addr) and len(addr) <= 320 else None


async def contact_status(store: Any, addr: str) -> dict[str, Any]:
    """The stable JSON shape of ``contacts show --json`` (docs/cli.md)."""
    from gateway.store.render import iso
    rel = await store.query("SELECT undeliverable, reason, opt_out, updated_at FROM relay_contacts WHERE email=?",
                            (addr,))
    con = await store.query("SELECT id, name, undeliverable, undeliverable_reason FROM contacts WHERE email=?",
                            (addr,))
    tickets: list[str] = []
    if con:
        tickets = [r[0] for r in await store.query(
            "SELECT number FROM tickets WHERE requester_id=? ORDER BY id", (con[0][0],))]
    undeliverable = bool((rel and rel[0][0]) or (con and con[0][2]))
    reason = (con[0][3] if con and con[0][2] else "") or (rel[0][1] if rel and rel[0][0] else "")
    return {"address": addr, "known": bool(con or rel), "name": con[0][1] if con else "",
            "opt_out": bool(rel and rel[0][2]), "undeliverable": undeliverable,
            "undeliverable_reason": reason, "updated_at": iso(rel[0][3]) if rel else None,
            "tickets": tickets}


async def _optout(store: Any, args: argparse.Namespace) -> int:
    addr = _address(args.address)
    if addr is None:
        print(f"ticketmx: {args.address!r} is not an email address", file=sys.stderr)
        return EX_USAGE
    from relay.notify import set_opt_out
    now = time.time()
    await store.transaction(lambda conn: set_opt_out(conn, addr, not args.undo, now))
    if args.json:
        print(json.dumps(await contact_status(store, addr), ensure_ascii=False, indent=2))
    elif args.undo:
        print(f"{addr}: acknowledgements and status mails are sent again")
    else:
        print(f"{addr}: opted out of acknowledgements and status mails (agent replies still go)")
    return EX_OK


async def _show(store: Any, args: argparse.Namespace) -> int:
    addr = _address(args.address)
    if addr is None:
        print(f"ticketmx: {args.address!r} is not an email address", file=sys.stderr)
        return EX_USAGE
    d = await contact_status(store, addr)
    if args.json:
        print(json.dumps(d, ensure_ascii=False, indent=2))
        return EX_OK
    if not d["known"]:
        print(f"{addr}: unknown (never mailed us, never opted out)")
        return EX_OK
    print(f"{addr}" + (f" ({d['name']})" if d["name"] else ""))
    print(f"  opt-out:        {'yes: no acknowledgements or status mails' if d['opt_out'] else 'no'}")
    print(f"  undeliverable:  {'yes: ' + d['undeliverable_reason'] if d['undeliverable'] else 'no'}")
    print(f"  tickets:        {', '.join(d['tickets']) or '-'}")
    return EX_OK


HANDLERS: dict[tuple[str, str], Callable[[Any, argparse.Namespace], Awaitable[int]]] = {
    ("contacts", "optout"): _optout, ("contacts", "show"): _show,
}

__all__ = ["register", "HANDLERS", "contact_status"]
