"""``ticketmx webhook list|test|retry`` (gateway/cli.py parses and owns the store's lifecycle)."""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any, Callable

from gateway.webhooks.outbox import STATES, WebhookOutbox

EX_OK, EX_FAIL, EX_CONFIG = 0, 1, 78


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    w = sub.add_parser("webhook", parents=[common], help="outbound webhooks: list, test, retry")
    wsub = w.add_subparsers(dest="action", required=True, metavar="ACTION")
    wl = wsub.add_parser("list", parents=[common], help="the [[webhook]]s and their outbox rows by state")
    wl.add_argument("--json", action="store_true")
    wt = wsub.add_parser("test", parents=[common], help="send a signed test event now and print the answer")
    wt.add_argument("name", metavar="NAME")
    wr = wsub.add_parser("retry", parents=[common], help="queue a dead event again (ID, or every one with --dead)")
    g = wr.add_mutually_exclusive_group(required=True)
    g.add_argument("id", nargs="?", type=int, metavar="ID")
    g.add_argument("--dead", action="store_true", help="every dead event")
    wr.add_argument("--webhook", metavar="NAME", help="with --dead: only this webhook's")
    wr.add_argument("--json", action="store_true")


def run_test(cfg: Any, name: str, out: Callable[[str], Any] = print,
             err: Callable[[str], Any] | None = None) -> int:
    """No store needed: a test event never enters the outbox."""
    err = err or (lambda s: print(s, file=sys.stderr))
    wh = next((w for w in cfg.webhooks if w.name == name), None)
    if wh is None:
        known = ", ".join(w.name for w in cfg.webhooks) or "none configured"
        err(f"ticketmx: no [[webhook]] named {name!r} ({known})")
        return EX_CONFIG
    from gateway.webhooks.worker import send_test
    return asyncio.run(send_test(wh, out))


async def dispatch_store(cfg: Any, store: Any, args: argparse.Namespace, out: Callable[[str], Any] = print,
                         err: Callable[[str], Any] | None = None) -> int:
    err = err or (lambda s: print(s, file=sys.stderr))
    box = WebhookOutbox(store)
    if args.action == "list":
        counts = await box.counts()
        rows = []
        for w in cfg.webhooks:
            rows.append({"name": w.name, "url": w.url, "format": w.format, "events": list(w.events),
                         "counts": counts.pop(w.name, {s: 0 for s in STATES})})
        for name, c in sorted(counts.items()):  # rows of a webhook no longer configured
            rows.append({"name": name, "url": None, "format": None, "events": [], "counts": c})
        if args.json:
            out(json.dumps(rows, indent=2))
            return EX_OK
        if not rows:
            out("no [[webhook]] configured")
        for r in rows:
            out(f"{r['name']:<16} {r['url'] or '(not configured any more)'}  format={r['format'] or '-'}")
            out(f"{'':<16} events: {', '.join(r['events']) or '-'}")
            out(f"{'':<16} " + "  ".join(f"{s}={r['counts'][s]}" for s in STATES))
        return EX_OK
    if args.webhook and not args.dead:
        err("ticketmx: --webhook goes with --dead")
        return EX_FAIL
    if args.dead:
        if args.webhook and args.webhook not in {w.name for w in cfg.webhooks} | set(await box.counts()):
            err(f"ticketmx: no webhook named {args.webhook!r}")
            return EX_FAIL
        ids = await box.retry_dead(args.webhook)
    elif await box.retry(args.id):
        ids = [args.id]
    else:
        row = await box.get(args.id)
        err(f"ticketmx: cannot retry {args.id}: " + ("no such event row" if row is None else
                                                      f"it is {row['state']} (only dead rows are retried)"))
        return EX_FAIL
    if args.json:
        out(json.dumps({"retried": ids}))
    else:
        out(f"queued {len(ids)} event{'s' if len(ids) != 1 else ''} again: the running gateway sends them"
            " within a second")
    return EX_OK
