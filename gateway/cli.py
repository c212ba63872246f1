"""The ``ticketmx`` command line. JSON output (``--json``) is a documented contract (docs/cli.md)."""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from typing import Any, Awaitable, Callable

from .config import Config, load_config
from .errors import ConfigErrors
from .logsetup import setup_logging
from .store import open_store
from .store.base import ALL_STATES, Store
from .store.render import spool_dict

EX_OK, EX_FAIL, EX_USAGE, EX_CONFIG = 0, 1, 2, 78


class _ConfigOption(argparse.Action):
    """``--config FILE`` wherever it is given (before the command, after it, after the action).

    argparse copies a subcommand's defaults over what the main parser parsed, so a plain option in
    both places let the subcommand's default (None) silently win over ``ticketmx --config FILE
    COMMAND``. This action never writes a default: it records every value given, in ``seen`` (one
    action object is shared by every parser that has ``common`` as a parent), and :func:`main`
    decides (two different files: a usage error naming both)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.seen: list[str] = []

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        self.seen.append(str(values))


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("ticketmx")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "unknown (not installed)"


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    config = common.add_argument("--config", "-c", metavar="FILE", action=_ConfigOption, default=argparse.SUPPRESS,
                                 help="TOML config file, before or after the command (default: $TICKETMX_CONFIG,"
                                      " else the embedded defaults)")
    p = argparse.ArgumentParser(prog="ticketmx", description="Self-hosted mail-to-ticket gateway.",
                                parents=[common])
    p.set_defaults(config_seen=config.seen)  # type: ignore[attr-defined]
    p.add_argument("--version", action="version", version=f"ticketmx {_version()}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("serve", parents=[common], help="run the gateway (SMTP, pipeline, metrics)")
    sub.add_parser("check-config", parents=[common], help="validate the config and exit (0 ok, 78 bad)")

    t = sub.add_parser("tickets", parents=[common], help="list and show tickets")
    tsub = t.add_subparsers(dest="action", required=True, metavar="ACTION")
    tl = tsub.add_parser("list", parents=[common], help="list tickets")
    tl.add_argument("--json", action="store_true", help="JSON array output")
    tl.add_argument("--limit", type=int, default=None)
    ts = tsub.add_parser("show", parents=[common], help="show one ticket with its articles")
    ts.add_argument("id", help="numeric id or ticket number (e.g. HD-1042)")
    ts.add_argument("--json", action="store_true", help="JSON object output")

    s = sub.add_parser("spool", parents=[common], help="inspect and replay the spool")
    ssub = s.add_subparsers(dest="action", required=True, metavar="ACTION")
    sl = ssub.add_parser("list", parents=[common], help="list spool entries (all states by default)")
    sl.add_argument("--state", choices=ALL_STATES)
    sl.add_argument("--limit", type=int, default=None)
    sl.add_argument("--json", action="store_true")
    ss = ssub.add_parser("show", parents=[common], help="show one spool entry")
    ss.add_argument("id")
    ss.add_argument("--json", action="store_true")
    ss.add_argument("--raw", action="store_true", help="print the raw message as spooled")
    sr = ssub.add_parser("replay", parents=[common], help="re-run the pipeline on an entry (idempotent)")
    g = sr.add_mutually_exclusive_group(required=True)
    g.add_argument("id", nargs="?")
    g.add_argument("--quarantined", action="store_true", help="replay every quarantined entry")
    sr.add_argument("--json", action="store_true")

    st = sub.add_parser("store", parents=[common], help="encryption keys of the store")
    stsub = st.add_subparsers(dest="action", required=True, metavar="ACTION")
    gk = stsub.add_parser("genkey", parents=[common],
                          help="a new encryption key (for [store] encryption_key_file): printed, or --out FILE")
    gk.add_argument("--out", metavar="FILE", default="",
                    help="write the key to a new FILE created mode 0600 whatever the umask (never overwritten)")
    stsub.add_parser("rotate-key", parents=[common],
                     help="re-encrypt everything with the first key of the key file")

    from relay.cli import register as register_relay
    register_relay(sub, common)  # relay test|queue|retry, dkim keygen

    pl = sub.add_parser("pipeline", parents=[common], help="pause / resume message processing")
    plsub = pl.add_subparsers(dest="action", required=True, metavar="ACTION")
    for name, text in (("status", "show whether processing is paused and why"),
                       ("pause", "stop processing (SMTP keeps accepting into the spool)"),
                       ("resume", "resume processing")):
        x = plsub.add_parser(name, parents=[common], help=text)
        x.add_argument("--json", action="store_true")
    return p


def _config_file(parser: argparse.ArgumentParser, seen: list[str]) -> str | None:
    """The one config file named on the command line (None: $TICKETMX_CONFIG or the defaults)."""
    distinct = list(dict.fromkeys(seen))
    if len(distinct) > 1:
        parser.error("--config given twice with different files: " + " and ".join(repr(f) for f in distinct)
                     + "; give it once")
    return distinct[0] if distinct else None


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    args.config = _config_file(parser, args.config_seen)
    try:
        cfg = load_config(args.config)
    except ConfigErrors as exc:
        for err in exc.errors:
            print(f"ticketmx: config error: {err}", file=sys.stderr)
        return EX_CONFIG
    if args.command == "dkim" and args.action == "keygen":
        from relay.cli import dkim_keygen
        return dkim_keygen(args.domain, args.selector, args.algo, args.out, args.bits) or EX_OK
    if args.command == "relay" and args.action == "test":
        from relay.cli import relay_test
        if cfg.relay is None or not cfg.relay.smarthosts:
            print("ticketmx: no [[relay.smarthost]] configured", file=sys.stderr)
            return EX_CONFIG
        return asyncio.run(relay_test(cfg.relay, args.to, args.host, hostname=cfg.smtp.hostname)) or EX_OK
    if args.command == "store" and args.action == "genkey":
        from .store.crypto import generate_key
        key = generate_key()
        if not args.out:
            print(key)  # into the operator's own shell redirection: prefer --out (mode 0600)
            return EX_OK
        from .secretfile import create_private
        try:
            create_private(args.out, (key + "\n").encode())
        except FileExistsError:
            print(f"ticketmx: {args.out} exists; not overwriting a key", file=sys.stderr)
            return EX_FAIL
        except OSError as exc:
            print(f"ticketmx: cannot write {args.out}: {exc.strerror}", file=sys.stderr)
            return EX_FAIL
        print(f"ticketmx: key written to {args.out} (mode 0600)", file=sys.stderr)
        return EX_OK
    if args.command == "check-config":
        from .pipeline.notify_hook import config_warnings
        for warning in config_warnings(cfg):
            print(f"ticketmx: warning: {warning}", file=sys.stderr)
        print(f"{cfg.source or '(embedded defaults)'}: OK ({len(cfg.mailboxes)} mailboxes)")
        return EX_OK
    if args.command == "serve":
        from .allocator import tune
        tune()  # before the first large buffer (gateway/allocator.py)
        setup_logging(cfg.log.level, cfg.log.json)
        from .app import serve
        try:
            from .eventloop import run
            code = run(serve(cfg, args.config), cfg.smtp.event_loop)
        except OSError as exc:
            print(f"ticketmx: cannot start: {exc}", file=sys.stderr)
            code = EX_FAIL
        if code != EX_OK:
            # A failed start (75 store unavailable, 1 other): exit now, whatever thread a half-opened
            # resource left behind; a non-daemon one would keep the process alive forever.
            logging.shutdown()
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
        return code
    handlers: dict[tuple[str, str], Callable[[Store, argparse.Namespace], Awaitable[int]]] = {
        ("tickets", "list"): _tickets_list, ("tickets", "show"): _tickets_show,
        ("spool", "list"): _spool_list, ("spool", "show"): _spool_show, ("spool", "replay"): _spool_replay,
        ("store", "rotate-key"): _rotate_key,
        ("relay", "queue"): _relay_store, ("relay", "retry"): _relay_store,
        ("pipeline", "status"): _pipeline, ("pipeline", "pause"): _pipeline, ("pipeline", "resume"): _pipeline,
    }
    return asyncio.run(_with_store(cfg, args, handlers[(args.command, args.action)]))


async def _with_store(cfg: Config, args: argparse.Namespace,
                      fn: Callable[[Store, argparse.Namespace], Awaitable[int]]) -> int:
    path = None if cfg.store.is_postgres else cfg.sqlite_path()
    if path is not None and not path.exists():
        print(f"ticketmx: no store at {path} ([store] url = {cfg.store.url!r}); has the gateway run?",
              file=sys.stderr)
        return EX_FAIL
    store = open_store(cfg)
    await store.open()
    try:
        return await fn(store, args)
    finally:
        await store.close()


def _dump(obj: Any) -> None:
    print(json.dumps(obj, ensure_ascii=False, indent=2))


async def _tickets_list(store: Store, args: argparse.Namespace) -> int:
    tickets = await store.tickets_list(args.limit)
    if args.json:
        _dump(tickets)
        return EX_OK
    for t in tickets:
        print(f"{t['number']:<12} {t['status']:<8} {t['queue']:<12} {t['requester']:<32} {t['subject'][:60]}")
    return EX_OK


async def _tickets_show(store: Store, args: argparse.Namespace) -> int:
    ticket = await store.ticket_get(args.id)
    if ticket is None:
        print(f"ticketmx: no ticket {args.id}", file=sys.stderr)
        return EX_FAIL
    if args.json:
        _dump(ticket)
        return EX_OK
    print(f"{ticket['number']}  [{ticket['status']}]  queue={ticket['queue']}  requester={ticket['requester']}")
    print(f"Subject: {ticket['subject']}\n")
    for a in ticket["articles"]:
        print(f"--- article {a['id']} from {a['from']} at {a['created_at']} (spool {a['spool_id']})")
        print(a["body_text"].rstrip())
        for att in a["attachments"]:
            print(f"    [attachment] {att['filename']} {att['content_type']} {att['size']} bytes "
                  f"sha256={att['sha256']}")
    return EX_OK


async def _spool_list(store: Store, args: argparse.Namespace) -> int:
    entries = await store.spool_list(args.state, args.limit)
    if args.json:
        _dump([spool_dict(e) for e in entries])
        return EX_OK
    for e in entries:
        print(f"{e.id}  {e.state:<15} {e.mail_from or '<>':<32} {e.message_id[:40]:<40} {e.reason}")
    return EX_OK


async def _spool_show(store: Store, args: argparse.Namespace) -> int:
    entry = await store.spool_get(args.id)
    if entry is None:
        print(f"ticketmx: no spool entry {args.id}", file=sys.stderr)
        return EX_FAIL
    if args.raw:
        sys.stdout.buffer.write(entry.raw)
        async for chunk in store.spool_body_chunks(entry):  # a large message: streamed, not joined
            sys.stdout.buffer.write(chunk)
        return EX_OK
    d = spool_dict(entry)
    if entry.ticket_id is not None:
        t = await store.ticket_get(str(entry.ticket_id))
        d["ticket_number"] = t["number"] if t else None
    if args.json:
        _dump(d)
        return EX_OK
    for k, v in d.items():
        print(f"{k:>22}: {v}")
    return EX_OK


async def _spool_replay(store: Store, args: argparse.Namespace) -> int:
    if args.quarantined:
        ids = await store.spool_replay_quarantined()
    else:
        ids = [args.id] if await store.spool_replay(args.id) else []
        if not ids:
            entry = await store.spool_get(args.id)
            why = "no such entry" if entry is None else f"entry is {entry.state}"
            print(f"ticketmx: cannot replay {args.id}: {why}", file=sys.stderr)
            return EX_FAIL
    if args.json:
        _dump({"replayed": ids})
    else:
        print(f"queued {len(ids)} entr{'y' if len(ids) == 1 else 'ies'} for replay: the running gateway picks "
              "them up within its poll interval")
    return EX_OK


async def _pipeline(store: Store, args: argparse.Namespace) -> int:
    from .pipeline.worker import PAUSE_KEY
    if args.action == "pause":
        await store.control_set(PAUSE_KEY, "paused by an operator")
    elif args.action == "resume":
        await store.control_set(PAUSE_KEY, None)
    reason = await store.control_get(PAUSE_KEY)
    if args.json:
        _dump({"paused": reason is not None, "reason": reason or ""})
    else:
        print(f"paused: {reason}" if reason else "running")
    return EX_OK


async def _rotate_key(store: Store, args: argparse.Namespace) -> int:
    if not getattr(store, "cipher", None) or not store.cipher.enabled:
        print("ticketmx: no [store] encryption_key_file configured: nothing to rotate to", file=sys.stderr)
        return EX_FAIL
    counts = await store.rotate_key()
    print(f"re-encrypted with the first key: {counts}")
    return EX_OK


async def _relay_store(store: Store, args: argparse.Namespace) -> int:
    from relay.cli import dispatch_store
    return await dispatch_store(store, args)
