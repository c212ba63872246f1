"""``ticketmx user add|list|disable|passwd|signature``: people who sign in to the web UI (docs/ui.md, docs/cli.md).

Registered by gateway/cli.py with two lines (``register`` / ``HANDLERS``), like ``ticketmx token``.
The password is read from the terminal (asked twice) or, when stdin is not a terminal, from its first
line (``printf '%s\\n' "$PW" | ticketmx user add …``): never from the command line, where ``ps`` shows it.
Every change is written to the audit log as ``cli:<OS user>``.
"""
from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import sys
from typing import Any, Awaitable, Callable

from gateway.store.render import iso
from gateway.ui import users

EX_OK, EX_FAIL = 0, 1


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add ``user {add,list,disable,passwd}`` to the gateway's subparsers."""
    u = sub.add_parser("user", parents=[common], help="users of the web UI")
    usub = u.add_subparsers(dest="action", required=True, metavar="ACTION")
    a = usub.add_parser("add", parents=[common], help="add a user (the password is asked for, or read from stdin)")
    a.add_argument("--email", required=True, metavar="ADDRESS", help="the address they sign in with")
    a.add_argument("--role", required=True, choices=users.ROLES[::-1],
                   help="admin: everything; agent: read and answer tickets of its queues; viewer: read only")
    a.add_argument("--queue", action="append", default=[], metavar="Q",
                   help="limit the user to this queue (repeat for several; default: every queue)")
    a.add_argument("--name", default="", metavar="NAME", help="display name")
    a.add_argument("--json", action="store_true")
    lst = usub.add_parser("list", parents=[common], help="list users (never their passwords)")
    lst.add_argument("--json", action="store_true")
    d = usub.add_parser("disable", parents=[common], help="disable a user: their sessions end at once")
    d.add_argument("email", metavar="ADDRESS")
    p = usub.add_parser("passwd", parents=[common], help="set a new password: every session of the user ends")
    p.add_argument("email", metavar="ADDRESS")
    s = usub.add_parser("signature", parents=[common],
                        help="show a user's reply signature, or set it from a file (--file -: stdin)")
    s.add_argument("email", metavar="ADDRESS")
    s.add_argument("--file", metavar="F", help="the new signature, UTF-8 plain text ('-' reads stdin)")
    s.add_argument("--clear", action="store_true", help="remove the signature")


def _operator() -> str:
    from gateway.runtime.whoami import operator
    return f"cli:{operator()}"


def read_password() -> str:
    """Twice from a terminal; else the first line of stdin."""
    if sys.stdin.isatty():
        first = getpass.getpass("password: ")
        if getpass.getpass("again: ") != first:
            raise users.UserError("the two passwords differ")
        return first
    return sys.stdin.readline().rstrip("\r\n")


async def _hashed_password() -> str:
    password = read_password()
    users.check_password(password)
    return await asyncio.get_running_loop().run_in_executor(None, users.hash_password, password)


async def _add(store: Any, args: argparse.Namespace) -> int:
    queues = tuple(dict.fromkeys(q.strip() for q in args.queue if q.strip()))
    try:
        users.normalise_email(args.email)
        if args.role == "admin" and queues:
            raise users.UserError("--queue limits a viewer or an agent; an admin sees every queue")
        u = await users.create(store, args.email, args.role, queues, await _hashed_password(), name=args.name,
                               created_by=_operator())
    except users.UserError as exc:
        print(f"ticketmx: user add: {exc}", file=sys.stderr)
        return EX_FAIL
    if args.json:
        print(json.dumps({"email": u.email, "role": u.role, "queues": list(u.queues), "name": u.name}))
    else:
        print(f"user {u.email} ({u.role}, queues: {', '.join(u.queues) or 'all'}) added; they sign in at /ui/")
    return EX_OK


async def _list(store: Any, args: argparse.Namespace) -> int:
    objs = [{"email": u.email, "name": u.name, "role": u.role, "queues": list(u.queues), "created": iso(u.created),
             "created_by": u.created_by, "last_login": iso(u.last_login) if u.last_login else None,
             "disabled": iso(u.disabled) if u.disabled else None} for u in await users.list_users(store)]
    if args.json:
        print(json.dumps(objs, indent=2))
        return EX_OK
    print(f"{'EMAIL':<32} {'ROLE':<7} {'QUEUES':<20} {'LAST SIGN-IN (UTC)':<18} STATE")
    for o in objs:
        print(f"{o['email']:<32} {o['role']:<7} {','.join(o['queues']) or '(all)':<20} "
              f"{(o['last_login'] or '-')[:16].replace('T', ' '):<18} "
              f"{'disabled ' + o['disabled'][:16].replace('T', ' ') if o['disabled'] else 'active'}")
    return EX_OK


async def _disable(store: Any, args: argparse.Namespace) -> int:
    if not await users.disable(store, args.email, _operator()):
        print(f"ticketmx: user disable: no active user {args.email!r}", file=sys.stderr)
        return EX_FAIL
    print(f"disabled {args.email.strip().lower()}: their sessions ended and they cannot sign in")
    return EX_OK


async def _passwd(store: Any, args: argparse.Namespace) -> int:
    if await users.get(store, args.email) is None:
        print(f"ticketmx: user passwd: no user {args.email!r} (`ticketmx user add` makes one)", file=sys.stderr)
        return EX_FAIL
    try:
        hashed = await _hashed_password()
    except users.UserError as exc:
        print(f"ticketmx: user passwd: {exc}", file=sys.stderr)
        return EX_FAIL
    await users.set_password(store, args.email, hashed, _operator())
    print(f"new password set for {args.email.strip().lower()}; their sessions ended")
    return EX_OK


async def _signature(store: Any, args: argparse.Namespace) -> int:
    u = await users.get(store, args.email)
    if u is None:
        print(f"ticketmx: user signature: no user {args.email!r}", file=sys.stderr)
        return EX_FAIL
    if args.file is None and not args.clear:
        if u.signature:
            print(u.signature)
        else:
            print(f"{u.email} has no signature", file=sys.stderr)
        return EX_OK
    if args.file is not None and args.clear:
        print("ticketmx: user signature: --file and --clear exclude each other", file=sys.stderr)
        return EX_FAIL
    try:
        if args.clear:
            raw = ""
        elif args.file == "-":
            raw = sys.stdin.read(4 * users.MAX_SIGNATURE + 1)
        else:
            with open(args.file, encoding="utf-8") as f:
                raw = f.read(4 * users.MAX_SIGNATURE + 1)
        if len(raw) > 4 * users.MAX_SIGNATURE:
            raise users.UserError(f"the signature is over {users.MAX_SIGNATURE:,} characters")
        text = users.clean_signature(raw)
    except (OSError, UnicodeDecodeError) as exc:
        print(f"ticketmx: user signature: --file {args.file}: {exc}", file=sys.stderr)
        return EX_FAIL
    except users.UserError as exc:
        print(f"ticketmx: user signature: {exc}", file=sys.stderr)
        return EX_FAIL
    await users.set_signature(store, u.email, text, _operator())
    print(f"signature of {u.email} {'removed' if not text else f'set ({len(text)} characters)'}")
    return EX_OK


HANDLERS: dict[tuple[str, str], Callable[[Any, argparse.Namespace], Awaitable[int]]] = {
    ("user", "add"): _add, ("user", "list"): _list, ("user", "disable"): _disable, ("user", "passwd"): _passwd,
    ("user", "signature"): _signature,
}

__all__ = ["register", "HANDLERS"]
