"""CLI functions behind ``ticketmx relay …`` and ``ticketmx dkim keygen``.

``gateway/cli.py`` owns argument parsing and the store's lifecycle; these functions do the work
and return an exit code (0 ok, 1 failure). ``register(sub, common)`` adds the subcommands to the
gateway's argparse tree and ``dispatch(cfg, args)`` runs one (see docs/relay.md, "Integration").
"""
from __future__ import annotations

import argparse
import json
import os
import stat
import sys
from typing import Any, Callable

from gateway.store.relay_queue import STATES, RelayQueue, queue_row_json

EX_OK, EX_FAIL, EX_USAGE = 0, 1, 2


def _print(obj: Any, out: Callable[[str], Any]) -> None:
    out(json.dumps(obj, ensure_ascii=False, indent=2))


async def relay_queue(store: Any, json_out: bool = False, state: str | None = None, limit: int | None = None,
                      out: Callable[[str], Any] = print) -> int:
    """List outbound notifications (every state unless ``state``), oldest first."""
    q = RelayQueue(store)
    rows = [queue_row_json(r) for r in await q.list(state, limit)]
    if json_out:
        _print(rows, out)
        return EX_OK
    counts = await q.counts()
    out("  ".join(f"{s}={counts[s]}" for s in STATES) + f"  oldest={await q.oldest_age():.0f}s")
    for r in rows:
        rcpts = ", ".join(f"{x['address']}({x['state']})" for x in r["recipients"])
        when = r["next_attempt_at"] or r["sent_at"] or r["finished_at"] or ""
        out(f"{r['id']:>6}  {r['state']:<8} {r['event']:<10} try {r['attempts']:<3} {when:<24} {rcpts}")
        if r["last_error"] and r["state"] != "sent":
            out(f"        last error: {r['last_error']}")
    return EX_OK


async def relay_retry(store: Any, mail_id: int | None = None, dead: bool = False, json_out: bool = False,
                      out: Callable[[str], Any] = print, err: Callable[[str], Any] | None = None) -> int:
    """Queue a dead/deferred notification again (``mail_id``), or every dead letter (``dead``)."""
    err = err or (lambda s: print(s, file=sys.stderr))
    q = RelayQueue(store)
    if dead:
        ids = await q.retry_dead()
    elif mail_id is not None:
        if await q.retry(mail_id):
            ids = [mail_id]
        else:
            row = await q.get(mail_id)
            why = "no such notification" if row is None else f"it is {row['state']}"
            err(f"ticketmx: cannot retry {mail_id}: {why}")
            return EX_FAIL
    else:
        err("ticketmx: relay retry needs an ID or --dead")
        return EX_FAIL
    if json_out:
        _print({"retried": ids}, out)
    else:
        out(f"queued {len(ids)} notification{'s' if len(ids) != 1 else ''} again: the running gateway sends "
            "them within its poll interval")
    return EX_OK


async def relay_test(cfg: Any, to: str, host: str | None = None, out: Callable[[str], Any] = print,
                     hostname: str | None = None) -> int:
    """``ticketmx relay test --to ADDR [--host NAME]``; ``cfg`` is the RelayConfig."""
    from relay.worker import relay_test as run
    return await run(cfg, to, host, out=out, hostname=hostname)


SERVICE_GROUP = "ticketmx"


def dkim_keygen(domain: str, selector: str, algo: str = "rsa", out_path: str = "", bits: int = 2048,
                out: Callable[[str], Any] = print, err: Callable[[str], Any] | None = None,
                group: str = SERVICE_GROUP) -> int:
    """Write a key to ``out_path`` and print the TXT record to publish and the config lines that use it.

    The key file is ``0640`` with group ``group`` (the service's) when that group exists and may be
    given to the file, so the gateway reads a key it cannot rewrite; else ``0600``. There is no
    default file name: a key written silently into whatever directory the admin stood in is a key
    nobody finds again (or everybody can read)."""
    from relay.dkim import keygen
    err = err or (lambda s: print(s, file=sys.stderr))
    if not out_path:
        err("ticketmx: dkim keygen needs --out FILE (e.g. /etc/ticketmx/dkim/SELECTOR.DOMAIN.key)")
        return EX_USAGE
    gid = _group_id(group)
    try:
        record = keygen(domain, selector, algo, out_path, bits, group=gid)
    except FileExistsError:
        err(f"ticketmx: {out_path} exists; not overwriting a key")
        return EX_FAIL
    except (OSError, ValueError) as exc:
        err(f"ticketmx: cannot create the key: {exc}")
        return EX_FAIL
    st = os.stat(out_path)
    mode = stat.S_IMODE(st.st_mode)
    owner = f"group {group}, mode {mode:04o}" if mode != 0o600 and st.st_gid == gid else f"mode {mode:04o}"
    out(f"; private key written to {out_path} ({owner})")
    out("; publish this TXT record, then add to the config:")
    out(f';   [[relay.dkim]]\n;   domain = "{domain}"\n;   selector = "{selector}"\n;   key_file = "{out_path}"')
    out(record)
    return EX_OK


def _group_id(name: str) -> int | None:
    """The gid of ``name``, or None when there is no such group (the key stays 0600)."""
    if not name:
        return None
    import grp
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        return None


# -- argparse wiring for gateway/cli.py --------------------------------------------------------------

def register(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add ``relay {test,queue,retry}`` and ``dkim keygen`` to the gateway's subparsers."""
    r = sub.add_parser("relay", parents=[common], help="outbound notifications: test, queue, retry")
    rsub = r.add_subparsers(dest="action", required=True, metavar="ACTION")
    rt = rsub.add_parser("test", parents=[common], help="send a sample mail and print every SMTP step")
    rt.add_argument("--to", required=True, metavar="ADDR")
    rt.add_argument("--host", metavar="NAME", help="only this smarthost (default: in order until one works)")
    rq = rsub.add_parser("queue", parents=[common], help="list outbound notifications")
    rq.add_argument("--json", action="store_true")
    rq.add_argument("--state", choices=STATES)
    rq.add_argument("--limit", type=int, default=None)
    rr = rsub.add_parser("retry", parents=[common], help="queue a dead or deferred notification again")
    g = rr.add_mutually_exclusive_group(required=True)
    g.add_argument("id", nargs="?", type=int)
    g.add_argument("--dead", action="store_true", help="every dead letter")
    rr.add_argument("--json", action="store_true")
    d = sub.add_parser("dkim", parents=[common], help="DKIM keys for outbound signing")
    dsub = d.add_subparsers(dest="action", required=True, metavar="ACTION")
    k = dsub.add_parser("keygen", parents=[common], help="create a key and print the DNS TXT record")
    k.add_argument("--domain", required=True)
    k.add_argument("--selector", required=True)
    k.add_argument("--algo", choices=("rsa", "ed25519"), default="rsa")
    k.add_argument("--bits", type=int, default=2048)
    k.add_argument("--out", metavar="FILE", required=True,
                   help="the new key file (never overwritten): mode 0640 with group --group when that group "
                        "exists, else 0600")
    k.add_argument("--group", metavar="NAME", default=SERVICE_GROUP,
                   help=f"the service's group, which may read the key (default {SERVICE_GROUP})")


NEEDS_STORE = {("relay", "queue"), ("relay", "retry")}


async def dispatch_store(store: Any, args: argparse.Namespace) -> int:
    if args.action == "queue":
        return await relay_queue(store, args.json, args.state, args.limit)
    return await relay_retry(store, args.id, args.dead, args.json)


__all__ = ["relay_queue", "relay_retry", "relay_test", "dkim_keygen", "register", "dispatch_store", "NEEDS_STORE"]
