"""``ticketmx source list|sync|pause|resume|test`` (and ``authorize``, gateway/ingress/sources/authorize.py) (gateway/cli.py parses; docs/cli.md, docs/sources.md).

``list``, ``pause``, ``resume`` work on the store (a running gateway reads pauses within 2 s);
``sync NAME --once`` runs one cycle in this process (its commits are exactly-once against a running
gateway's too: a key commits once); ``test NAME`` needs no store and changes nothing but folders it creates.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any, Callable

from gateway.config.load import Config
from gateway.config.sources import SourceConfig

EX_OK, EX_FAIL, EX_CONFIG = 0, 1, 78


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    s = sub.add_parser("source", parents=[common], help="pulled mailboxes ([[source]]): list, sync, pause, resume, test")
    ssub = s.add_subparsers(dest="action", required=True, metavar="ACTION")
    sl = ssub.add_parser("list", parents=[common], help="every source: status, last success, last error, backlog")
    sl.add_argument("--json", action="store_true")
    sy = ssub.add_parser("sync", parents=[common], help="one cycle now: settle, list, import (exactly once)")
    sy.add_argument("name", metavar="NAME")
    sy.add_argument("--once", action="store_true", required=True, help="one cycle, then exit (the gateway syncs"
                    " continuously)")
    sy.add_argument("--wait", type=float, default=0.0, metavar="SECONDS",
                    help="then wait up to this long for the pipeline's outcomes and settle them")
    sy.add_argument("--json", action="store_true")
    for name, text in (("pause", "stop fetching from a source (kept across restarts)"),
                       ("resume", "fetch again (also after stop_after_failures paused it)")):
        x = ssub.add_parser(name, parents=[common], help=text)
        x.add_argument("name", metavar="NAME")
        if name == "pause":
            x.add_argument("--reason", default="paused by the operator")
    st = ssub.add_parser("test", parents=[common], help="every step of a connection, the server's answers, secrets"
                         " masked")
    st.add_argument("name", metavar="NAME")
    st.add_argument("--json", action="store_true")
    from gateway.ingress.sources.authorize import register as register_authorize
    register_authorize(sub, common, ssub)  # source authorize NAME [--loopback]


def find(cfg: Config, name: str, err: Callable[[str], Any]) -> SourceConfig | None:
    sc = next((s for s in cfg.sources if s.name == name), None)
    if sc is None:
        known = ", ".join(s.name for s in cfg.sources) or "none configured"
        err(f"ticketmx: no [[source]] named {name!r} ({known})")
    return sc


async def run_test(cfg: Config, name: str, as_json: bool = False, out: Callable[[str], Any] = print,
                   err: Callable[[str], Any] | None = None) -> int:
    err = err or (lambda s: print(s, file=sys.stderr))
    sc = find(cfg, name, err)
    if sc is None:
        return EX_CONFIG
    from gateway.ingress.sources.manager import build_source
    try:
        steps = await build_source(sc).test()
    except ImportError as exc:
        err(f"ticketmx: kind {sc.kind!r} is not available: {exc}")
        return EX_FAIL
    ok = bool(steps) and all(s.ok for s in steps)
    if as_json:
        out(json.dumps({"source": sc.name, "kind": sc.kind, "ok": ok,
                        "steps": [{"name": s.name, "ok": s.ok, "detail": s.detail} for s in steps]}, indent=2))
    else:
        out(f"source {sc.name} ({sc.kind}, {describe(sc)})")
        for s in steps:
            out(f"  {'ok  ' if s.ok else 'FAIL'} {s.name:<17} {s.detail}")
        out("result: " + ("every step passed" if ok else "FAILED"))
    return EX_OK if ok else EX_FAIL


def describe(sc: SourceConfig) -> str:
    if sc.kind == "graph":
        return f"{sc.endpoint} user {sc.user}"
    return f"{sc.host}:{sc.port} tls={sc.tls} user {sc.username} auth={sc.auth}"


async def rows(cfg: Config, store: Any) -> list[dict[str, Any]]:
    """What `source list` and GET /api/v1/sources show, one dict per source (configured first)."""
    states = await store.source_state_get()
    counts = await store.source_counts()
    out: list[dict[str, Any]] = []
    for sc in cfg.sources:
        st = states.pop(sc.name, {}) or {}
        c = counts.pop(sc.name, {})
        status = sc.status
        if sc.status == "active" and st.get("paused"):
            status = "paused"
        out.append({"name": sc.name, "kind": sc.kind, "mailbox": sc.mailbox, "configured_status": sc.status,
                    "status": status, "paused_reason": st.get("paused_reason") or "",
                    "folder": sc.folder, "server": describe(sc),
                    "last_success": st.get("last_success"), "last_error": st.get("last_error") or "",
                    "last_error_kind": st.get("last_error_kind") or "", "last_error_at": st.get("last_error_at"),
                    "failures": st.get("failures") or 0, "backlog": st.get("backlog") or 0,
                    "imported": sum(c.values()), "pending": c.get("spooled", 0)})
    for name, st in sorted(states.items()):  # state of a source no longer configured
        c = counts.pop(name, {})
        out.append({"name": name, "kind": None, "mailbox": None, "configured_status": None, "status": "removed",
                    "paused_reason": st.get("paused_reason") or "", "folder": None, "server": None,
                    "last_success": st.get("last_success"), "last_error": st.get("last_error") or "",
                    "last_error_kind": st.get("last_error_kind") or "", "last_error_at": st.get("last_error_at"),
                    "failures": st.get("failures") or 0, "backlog": st.get("backlog") or 0,
                    "imported": sum(c.values()), "pending": c.get("spooled", 0)})
    return out


def _when(t: float | None) -> str:
    if not t:
        return "never"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


async def dispatch_store(cfg: Config, store: Any, args: argparse.Namespace, out: Callable[[str], Any] = print,
                         err: Callable[[str], Any] | None = None) -> int:
    err = err or (lambda s: print(s, file=sys.stderr))
    if args.action == "list":
        rs = await rows(cfg, store)
        if args.json:
            out(json.dumps(rs, indent=2))
            return EX_OK
        if not rs:
            out("no [[source]] configured")
        for r in rs:
            out(f"{r['name']:<20} {r['status']:<8} {r['kind'] or '-':<6} last success {_when(r['last_success'])};"
                f" backlog {r['backlog']}; pending {r['pending']}; imported {r['imported']}")
            if r["paused_reason"] and r["status"] == "paused":
                out(f"{'':<20} paused: {r['paused_reason']}")
            if r["last_error"]:
                out(f"{'':<20} last error ({r['last_error_kind']}, {_when(r['last_error_at'])},"
                    f" {r['failures']} in a row): {r['last_error']}")
        return EX_OK
    sc = find(cfg, args.name, err)
    if sc is None:
        return EX_CONFIG
    from gateway.ingress.sources.manager import pause_source, resume_source
    if args.action == "pause":
        await pause_source(store, sc.name, args.reason)
        _audit_cli(store)
        out(f"source {sc.name} paused (a running gateway stops fetching within 2 s)")
        return EX_OK
    if args.action == "resume":
        await resume_source(store, sc.name)
        out(f"source {sc.name} resumed" + (" (its config says status = \"" + sc.status + "\": it still does not"
                                           " fetch)" if sc.status != "active" else ""))
        return EX_OK
    if args.action == "sync":
        return await _sync(cfg, store, sc, args, out, err)
    raise AssertionError(args.action)


def _audit_cli(store: Any) -> None:
    """The CLI runs as the operator on the host: nothing to attribute beyond the log (the API audits)."""


async def _sync(cfg: Config, store: Any, sc: SourceConfig, args: argparse.Namespace, out: Callable[[str], Any],
                err: Callable[[str], Any]) -> int:
    import asyncio

    from gateway.ingress.sources.base import SourceError
    from gateway.ingress.sources.manager import SourceManager, SourceRunner
    from gateway.spool import SpoolWriter
    spool = SpoolWriter(store)
    spool.start()
    mgr = SourceManager(cfg, store, spool)
    runner = SourceRunner(sc, mgr, mgr.factory(sc))
    code = EX_OK
    try:
        res = await runner.sync_once()
        deadline = time.monotonic() + args.wait
        while res.pending and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
            res.settled += await runner._settle_ended()
            res.pending = (await store.source_counts(sc.name)).get(sc.name, {}).get("spooled", 0)
        summary = {"source": sc.name, "imported": res.imported, "duplicates": res.duplicates, "skipped": res.skipped,
                   "settled": res.settled, "errors": res.errors, "pending": res.pending, "details": res.details}
        if args.json:
            out(json.dumps(summary, indent=2))
        else:
            out(f"source {sc.name}: imported {res.imported}, settled {res.settled}, duplicates {res.duplicates},"
                f" older than since {res.skipped}, errors {res.errors}, waiting for the pipeline {res.pending}")
            for d in res.details:
                out(f"  {d}")
    except SourceError as exc:
        err(f"ticketmx: source {sc.name}: {exc} ({exc.kind})")
        await runner._failed(exc)
        code = EX_FAIL
    finally:
        await runner.source.close()
        await spool.close()
        mgr.checks.close()
    return code
