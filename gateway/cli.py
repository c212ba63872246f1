"""The ``ticketmx`` command line. JSON output (``--json``) is a documented contract (docs/cli.md)."""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import time
from datetime import datetime, timezone
from typing import Any, Awaitable, Callable

from gateway.config.load import Config, load_config
from gateway.config.errors import ConfigErrors
from gateway.runtime.logsetup import setup_logging
from gateway.store import open_store
from gateway.store.base import ALL_STATES, SpoolEntry, SpoolQuery, Store, TicketQuery
from gateway.store.render import iso, spool_dict
from gateway.pipeline.runner import spool_ops
from gateway.pipeline.runner.spool_ops import has_raw, release_plan
from gateway.runtime.whoami import operator

EX_OK, EX_FAIL, EX_USAGE, EX_CONFIG = 0, 1, 2, 78
TICKET_STATUSES = ("new", "open", "pending", "resolved", "closed")
_SINCE_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def _since(text: str) -> float:
    """``--since``: a duration back from now ("90m", "2d", "1w") or an ISO date/time (UTC unless it
    says otherwise: "2026-11-20", "2026-11-20T10:00", "2026-11-20T10:00+01:00"). Epoch seconds."""
    value = text.strip()
    unit = value[-1:].lower()
    if unit in _SINCE_UNITS and value[:-1].replace(".", "", 1).isdigit():
        return time.time() - float(value[:-1]) * _SINCE_UNITS[unit]
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is neither a duration like 2d, 12h, 90m, 1w nor an ISO date "
                                          "like 2026-11-20 or 2026-11-20T10:00") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return when.timestamp()


def _positive(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return n


def _operator() -> str:
    """Who runs this command, for the audit lines: the OS user (and who used sudo to become it)."""
    return operator()


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
    tl = tsub.add_parser("list", parents=[common], help="list tickets, newest first")
    tl.add_argument("--json", action="store_true", help="JSON array output")
    tl.add_argument("--status", choices=TICKET_STATUSES)
    tl.add_argument("--queue", metavar="NAME")
    tl.add_argument("--assignee", metavar="WHO")
    tl.add_argument("--requester", metavar="ADDR")
    tl.add_argument("--since", type=_since, metavar="WHEN", help="created since: 2d, 12h, 90m, 1w or an ISO date")
    tl.add_argument("--limit", type=_positive, default=None, metavar="N")
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
    sf = ssub.add_parser("find", parents=[common], help="trace a message: spool entries matching every criterion,"
                                                        " newest first")
    sf.add_argument("--message-id", metavar="ID", help="the Message-ID (with or without <>)")
    sf.add_argument("--from", dest="sender", metavar="ADDR", help="envelope sender or header From address")
    sf.add_argument("--rcpt", metavar="ADDR", help="envelope recipient (or the mailbox it reached)")
    sf.add_argument("--since", type=_since, metavar="WHEN", help="received since: 2d, 12h, 90m, 1w or an ISO date")
    sf.add_argument("--limit", type=_positive, default=50, metavar="N", help="at most N entries (default 50)")
    sf.add_argument("--json", action="store_true")
    srl = ssub.add_parser("release", parents=[common], help="process a quarantined entry as if it had passed the"
                                                            " stage that held it (recorded)")
    srl.add_argument("id")
    srl.add_argument("--force", action="store_true",
                     help="release from the identity check too (the From DMARC evaluated becomes the requester;"
                          " handled as suspicious mail)")
    srl.add_argument("--json", action="store_true")
    sd = ssub.add_parser("delete", parents=[common], help="delete the raw message of a quarantined or suppressed"
                                                          " entry (recorded)")
    sd.add_argument("id")
    sd.add_argument("--json", action="store_true")

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
    from gateway.contacts_cli import register as register_contacts
    register_contacts(sub, common)  # contacts optout|show
    from gateway.webhooks.cli import register as register_webhooks
    register_webhooks(sub, common)  # webhook list|test|retry
    from gateway.http.token_cli import register as register_tokens
    register_tokens(sub, common)  # token create|list|revoke
    from gateway.ui.user_cli import register as register_users
    register_users(sub, common)  # user add|list|disable|passwd
    from gateway.ingress.sources.cli import register as register_sources
    register_sources(sub, common)  # source list|sync|pause|resume|test|authorize

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
    if args.command == "spool" and args.action == "find" and not (args.message_id or args.sender or args.rcpt
                                                                   or args.since is not None):
        parser.error("spool find: give at least one of --message-id, --from, --rcpt, --since")
    if args.command == "dkim" and args.action == "keygen":
        from relay.cli import dkim_keygen
        return dkim_keygen(args.domain, args.selector, args.algo, args.out, args.bits, group=args.group) or EX_OK
    if args.command == "relay" and args.action == "test":
        from relay.cli import relay_test
        if cfg.relay is None or not cfg.relay.smarthosts:
            print("ticketmx: no [[relay.smarthost]] configured", file=sys.stderr)
            return EX_CONFIG
        return asyncio.run(relay_test(cfg.relay, args.to, args.host, hostname=cfg.smtp.hostname)) or EX_OK
    if args.command == "source" and args.action == "authorize":
        from gateway.ingress.sources.authorize import authorize
        return asyncio.run(authorize(cfg, args.name, args.loopback, timeout=args.timeout, port=args.port,
                                     login_hint=args.login_hint))
    if args.command == "webhook" and args.action == "test":
        from gateway.webhooks.cli import run_test
        return run_test(cfg, args.name)
    if args.command == "source" and args.action == "test":
        from gateway.ingress.sources.cli import run_test as source_test
        return asyncio.run(source_test(cfg, args.name, args.json))
    if args.command == "store" and args.action == "genkey":
        from gateway.store.crypto import generate_key
        key = generate_key()
        if not args.out:
            print(key)  # into the operator's own shell redirection: prefer --out (mode 0600)
            return EX_OK
        from gateway.config.secretfile import create_private
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
        from relay.notify import deep_check
        if errors := deep_check(cfg):  # every notification template rendered once
            for err in errors:
                print(f"ticketmx: config error: {err}", file=sys.stderr)
            return EX_CONFIG
        from relay.notify_hook import config_warnings
        for warning in config_warnings(cfg):
            print(f"ticketmx: warning: {warning}", file=sys.stderr)
        print(f"{cfg.source or '(embedded defaults)'}: OK ({len(cfg.mailboxes)} mailboxes)")
        return EX_OK
    if args.command == "serve":
        from gateway.runtime.allocator import tune
        tune()  # before the first large buffer (gateway/runtime/allocator.py)
        setup_logging(cfg.log.level, cfg.log.json)
        from gateway.app import serve
        try:
            from gateway.runtime.eventloop import run
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
        ("spool", "find"): _spool_find, ("spool", "release"): _spool_release_cmd, ("spool", "delete"): _spool_delete,
        ("store", "rotate-key"): _rotate_key,
        ("relay", "queue"): _relay_store, ("relay", "retry"): _relay_store,
        ("pipeline", "status"): _pipeline, ("pipeline", "pause"): _pipeline, ("pipeline", "resume"): _pipeline,
    }
    from gateway.contacts_cli import HANDLERS as contacts_handlers
    handlers.update(contacts_handlers)
    if args.command == "source":
        from gateway.ingress.sources.cli import dispatch_store as source_cmd
        return asyncio.run(_with_store(cfg, args, lambda store, a: source_cmd(cfg, store, a)))
    if args.command == "webhook":
        from gateway.webhooks.cli import dispatch_store as webhook_cmd
        return asyncio.run(_with_store(cfg, args, lambda store, a: webhook_cmd(cfg, store, a)))
    from gateway.http.token_cli import HANDLERS as token_handlers
    handlers.update(token_handlers)
    from gateway.ui.user_cli import HANDLERS as user_handlers
    handlers.update(user_handlers)
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
    query = TicketQuery(status=args.status or "", queue=args.queue or "", assignee=args.assignee or "",
                        requester=args.requester or "", since=args.since, limit=args.limit, newest_first=True)
    tickets = await store.tickets_list(query=query)
    if args.json:
        _dump(tickets)
        return EX_OK
    print(f"{'NUMBER':<12} {'STATUS':<8} {'QUEUE':<12} {'CREATED (UTC)':<16} {'REQUESTER':<32} SUBJECT")
    for t in tickets:
        created = (t["created_at"] or "")[:16].replace("T", " ")
        print(f"{t['number']:<12} {t['status']:<8} {t['queue']:<12} {created:<16} {t['requester']:<32} "
              f"{t['subject'][:60]}")
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
    d = await _spool_object(store, entry)
    if args.json:
        _dump(d)
        return EX_OK
    for k, v in d.items():
        print(f"{k:>22}: {v}")
    return EX_OK


async def _spool_object(store: Store, entry: SpoolEntry) -> dict[str, Any]:
    """``spool show/find --json``: the spool object with its ticket number and operator audit lines."""
    d = spool_dict(entry)
    if entry.ticket_id is not None:
        t = await store.ticket_get(str(entry.ticket_id))
        d["ticket_number"] = t["number"] if t else None
    d["raw_kept"] = has_raw(entry)
    d["audit"] = await store.spool_audit(entry.id)
    return d


async def _spool_find(store: Store, args: argparse.Namespace) -> int:
    mid = (args.message_id or "").strip()
    if mid.startswith("<") and mid.endswith(">"):
        mid = mid[1:-1].strip()
    entries = await store.spool_find(SpoolQuery(message_id=mid, mail_from=(args.sender or "").strip(),
                                                rcpt=(args.rcpt or "").strip(), since=args.since, limit=args.limit))
    objects = [await _spool_object(store, e) for e in entries]
    if args.json:
        _dump(objects)
        return EX_OK
    print(f"{'ID':<19} {'RECEIVED (UTC)':<19} {'STATE':<14} {'TICKET':<10} {'FROM':<30} {'MESSAGE-ID':<36} REASON")
    for d in objects:
        received = (d["received_at"] or "")[:19].replace("T", " ")
        print(f"{d['id']:<19} {received:<19} {d['state']:<14} {d['ticket_number'] or '-':<10} "
              f"{d['mail_from'] or '<>':<30} {d['message_id'][:36]:<36} {d['reason']}")
    if not objects:
        print("(no matching spool entry)", file=sys.stderr)
    return EX_OK


async def _spool_release_cmd(store: Store, args: argparse.Namespace) -> int:
    entry = await store.spool_get(args.id)
    stage, why = release_plan(entry, args.force)
    if stage is None or entry is None:
        print(f"ticketmx: cannot release {args.id}: {why}", file=sys.stderr)
        return EX_FAIL
    who, now = _operator(), time.time()
    record = await spool_ops.release(store, entry, stage, args.force, who, now)
    if record is None:
        print(f"ticketmx: cannot release {args.id}: it changed meanwhile (no longer quarantined)", file=sys.stderr)
        return EX_FAIL
    if args.json:
        _dump({"released": entry.id, "stage": stage, "by": who, "at": iso(now), "forced": record["forced"]})
    else:
        print(f"released {entry.id}: the {stage} stage is skipped once (recorded as released by {who}); the running "
              "gateway picks it up within its poll interval")
    return EX_OK


async def _spool_delete(store: Store, args: argparse.Namespace) -> int:
    entry = await store.spool_get(args.id)
    why = spool_ops.delete_refusal(entry)
    if not why and entry is not None and not await spool_ops.delete(store, entry, _operator()):
        why = "it changed meanwhile"
    if why or entry is None:
        print(f"ticketmx: cannot delete {args.id}: {why}", file=sys.stderr)
        return EX_FAIL
    who = _operator()
    if args.json:
        _dump({"deleted": entry.id, "by": who})
    else:
        print(f"deleted the raw message of {entry.id} ({entry.size} bytes; the entry and its history stay, "
              f"recorded as deleted by {who})")
    return EX_OK


async def _spool_replay(store: Store, args: argparse.Namespace) -> int:
    if args.quarantined:
        ids = await store.spool_replay_quarantined()
    else:
        entry = await store.spool_get(args.id)
        if entry is not None and not has_raw(entry) and entry.state not in ("queued", "processing"):
            print(f"ticketmx: cannot replay {args.id}: its raw message was deleted", file=sys.stderr)
            return EX_FAIL
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
    from gateway.pipeline.runner.worker import PAUSE_KEY
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
