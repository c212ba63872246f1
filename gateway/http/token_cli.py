"""``ticketmx token create|list|revoke``: API tokens for the HTTP API (docs/api.md, "Tokens").

Kept apart from gateway/cli.py, which registers it with two lines (``register`` / ``HANDLERS``).
The token is printed once, on stdout alone (so ``TOKEN=$(ticketmx token create …)`` works); only
its SHA-256 is stored. Creating and revoking are written to the audit log as ``cli:<OS user>``.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from typing import Any, Awaitable, Callable

from gateway.store.render import iso
from gateway.http import tokens

EX_OK, EX_FAIL = 0, 1
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add ``token {create,list,revoke}`` to the gateway's subparsers."""
    t = sub.add_parser("token", parents=[common], help="API tokens of the HTTP API")
    tsub = t.add_subparsers(dest="action", required=True, metavar="ACTION")
    c = tsub.add_parser("create", parents=[common], help="create a token and print it (once: only a hash is kept)")
    c.add_argument("--name", required=True, metavar="NAME", help="unique name (shown in the audit log)")
    c.add_argument("--role", required=True, choices=tokens.ROLES[::-1],
                   help="admin: everything; agent: read and answer tickets of its queues; viewer: read only")
    c.add_argument("--queue", action="append", default=[], metavar="Q",
                   help="limit the token to this queue (repeat for several; default: every queue)")
    c.add_argument("--json", action="store_true")
    lst = tsub.add_parser("list", parents=[common], help="list tokens (never the tokens themselves)")
    lst.add_argument("--json", action="store_true")
    r = tsub.add_parser("revoke", parents=[common], help="revoke a token at once")
    r.add_argument("name", metavar="NAME")


def _operator() -> str:
    from gateway.runtime.whoami import operator
    return operator()


async def _create(store: Any, args: argparse.Namespace) -> int:
    if not _NAME.match(args.name):
        print(f"ticketmx: --name {args.name!r}: use 1-64 letters, digits, '.', '_', '@' or '-'", file=sys.stderr)
        return EX_FAIL
    queues = tuple(dict.fromkeys(q.strip() for q in args.queue if q.strip()))
    try:
        token = await tokens.create(store, args.name, args.role, queues, f"cli:{_operator()}")
    except tokens.TokenExists:
        print(f"ticketmx: a token named {args.name!r} exists (revoked ones too: names stay unique so the audit "
              "log stays unambiguous); choose another name", file=sys.stderr)
        return EX_FAIL
    if args.json:
        print(json.dumps({"name": args.name, "role": args.role, "queues": list(queues), "token": token}))
    else:
        print(token)
        print(f"ticketmx: token {args.name!r} ({args.role}, queues: {', '.join(queues) or 'all'}) created; it is "
              "shown only now", file=sys.stderr)
    return EX_OK


async def _list(store: Any, args: argparse.Namespace) -> int:
    rows = await tokens.list_tokens(store)
    objs = [{"name": r.name, "role": r.role, "queues": list(r.queues), "created": iso(r.created),
             "created_by": r.created_by, "last_used": iso(r.last_used) if r.last_used else None,
             "revoked": iso(r.revoked) if r.revoked else None} for r in rows]
    if args.json:
        print(json.dumps(objs, indent=2))
        return EX_OK
    print(f"{'NAME':<24} {'ROLE':<7} {'QUEUES':<20} {'CREATED (UTC)':<17} {'LAST USED':<17} STATE")
    for o in objs:
        print(f"{o['name']:<24} {o['role']:<7} {','.join(o['queues']) or '(all)':<20} "
              f"{o['created'][:16].replace('T', ' '):<17} {(o['last_used'] or '-')[:16].replace('T', ' '):<17} "
              f"{'revoked ' + o['revoked'][:16].replace('T', ' ') if o['revoked'] else 'active'}")
    return EX_OK


async def _revoke(store: Any, args: argparse.Namespace) -> int:
    if not await tokens.revoke(store, args.name, f"cli:{_operator()}"):
        print(f"ticketmx: no active token named {args.name!r}", file=sys.stderr)
        return EX_FAIL
    print(f"revoked token {args.name!r}: requests with it get 401 from now on")
    return EX_OK


HANDLERS: dict[tuple[str, str], Callable[[Any, argparse.Namespace], Awaitable[int]]] = {
    ("token", "create"): _create, ("token", "list"): _list, ("token", "revoke"): _revoke,
}

__all__ = ["register", "HANDLERS"]
