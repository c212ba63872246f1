"""What the mail-admin pages show, read from the store and the running config (no FastAPI, no
templates here, so each function is tested against a real store).

Every write the pages make goes through the API's own functions (gateway/http/api_admin.py, which
call gateway/pipeline/runner/spool_ops.py): nothing here changes state except
:func:`webhook_retry`, which is the outbox's own ``retry`` plus its audit row in one transaction, as
``ticketmx webhook retry`` does without the audit.
"""
from __future__ import annotations

import dataclasses
import json
import re
import time
from dataclasses import dataclass, field
from typing import Any, Iterable
from urllib.parse import urlsplit, urlunsplit

from gateway.auth.headers import header_section_end
from gateway.http import tokens
from gateway.pipeline.runner import spool_ops
from gateway.store.base import QUARANTINED, SpoolEntry, SpoolQuery, spool_id_floor
from gateway.store.relay_queue import LIVE as RELAY_LIVE
from gateway.store.relay_queue import STATES as RELAY_STATES
from gateway.store.relay_queue import RelayQueue, queue_row_json
from gateway.store.render import iso
from gateway.webhooks import outbox as webhook_outbox

HOUR = 3600.0


# -- authentication in a few words -------------------------------------------------------------------

def auth_summary(auth: dict[str, Any] | None) -> list[tuple[str, str]]:
    """``[("SPF", "pass"), ("DKIM", "pass example.com"), ("DMARC", "fail"), ("ARC", "none")]`` from the
    SMTP-time evaluation stored with the entry; ``[]`` when the entry was never evaluated."""
    if not auth:
        return []
    out: list[tuple[str, str]] = []
    spf = auth.get("spf") or {}
    if spf:
        out.append(("SPF", " ".join(x for x in (str(spf.get("result") or "none"), str(spf.get("domain") or "")) if x)))
    dkim = auth.get("dkim") or []
    if isinstance(dkim, list) and dkim:
        out.append(("DKIM", ", ".join(" ".join(x for x in (str(d.get("result") or "none"), str(d.get("domain") or ""))
                                               if x) for d in dkim if isinstance(d, dict))))
    else:
        out.append(("DKIM", "none"))
    dmarc = auth.get("dmarc") or {}
    if dmarc:
        out.append(("DMARC", str(dmarc.get("result") or "none")))
    arc = auth.get("arc")
    if isinstance(arc, dict) and arc:
        out.append(("ARC", str(arc.get("result") or arc.get("chain") or "none")))
    decision = auth.get("decision")
    if isinstance(decision, dict) and decision.get("action"):
        reasons = decision.get("reasons") or []
        out.append(("Decision", str(decision["action"]) + (", suspicious" if decision.get("suspicious") else "")
                    + (": " + "; ".join(str(r) for r in reasons) if isinstance(reasons, list) and reasons else "")))
    return out


def auth_text(auth: dict[str, Any] | None) -> str:
    return " · ".join(f"{k} {v}" for k, v in auth_summary(auth) if k != "Decision") or "not evaluated"


# -- quarantine ----------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class QuarantineRow:
    id: str
    reason: str
    sender: str
    recipients: tuple[str, ...]
    received_at: str
    auth: str
    raw_kept: bool
    stage: str | None        # the stage a release skips; None: a release is refused (``why``)
    why: str
    forced_needed: bool      # held by the identity check: a release needs "force"


def quarantine_row(e: SpoolEntry) -> QuarantineRow:
    stage, why = spool_ops.holding_stage(e, UI_HOW)
    return QuarantineRow(id=e.id, reason=e.reason, sender=e.mail_from or "<>", recipients=tuple(e.rcpt_tos),
                         received_at=iso(e.received_at) or "", auth=auth_text(e.auth),
                         raw_kept=spool_ops.has_raw(e), stage=stage, why=why, forced_needed=stage == "identity")


async def quarantine_page(store: Any, before: str = "", limit: int = 50) -> tuple[list[QuarantineRow], str | None]:
    """Quarantined entries newest first and the ``before=`` of the next page (None: the last page)."""
    entries = await store.spool_find(SpoolQuery(state=QUARANTINED, before=before, limit=limit))
    rows = [quarantine_row(e) for e in entries]
    return rows, (rows[-1].id if len(rows) == limit else None)


UI_HOW = spool_ops.How(replay="the Replay button", delete="the Delete button",
                       force="Tick “force (identity check)” and release again")


def header_text(e: SpoolEntry, limit: int = 256 * 1024) -> str:
    """The raw header section as spooled (our prepended fields first), as text for an escaped
    ``<pre>``: undecodable bytes are shown as replacement characters, never interpreted."""
    if not spool_ops.has_raw(e):
        return ""
    raw = e.raw
    end = header_section_end(raw)
    head = raw[:end if end is not None and end >= 0 else len(raw)][:limit]
    return head.decode("utf-8", "replace").replace("\r\n", "\n")


# -- trace: notifications and webhook events of a ticket -----------------------------------------------

async def notifications_for(store: Any, ticket_id: int | None, limit: int = 50) -> list[dict[str, Any]]:
    """The relay queue's notifications of a ticket (acknowledgement, replies …), oldest first."""
    if ticket_id is None:
        return []
    ids = tuple(int(r[0]) for r in await store.query(
        "SELECT id FROM relay_queue WHERE ticket_id=? ORDER BY id LIMIT ?", (ticket_id, limit)))
    return [queue_row_json(r) for r in await RelayQueue(store).list(ids=ids)] if ids else []


async def webhooks_for(store: Any, ticket_id: int | None, limit: int = 50) -> list[dict[str, Any]]:
    if ticket_id is None:
        return []
    ids = tuple(int(r[0]) for r in await store.query(
        "SELECT id FROM webhook_outbox WHERE ticket_id=? ORDER BY id LIMIT ?", (ticket_id, limit)))
    return await webhook_outbox.WebhookOutbox(store).list(ids=ids) if ids else []


# -- outbound: relay queue and webhook outbox -----------------------------------------------------------

RELAY_OPEN = ("deferred", "queued", "sending", "dead", "bounced")   # what needs an eye (not "sent")
WEBHOOK_OPEN = ("queued", "leased", "dead")                          # not "delivered"
COUNT_CAP = 10_000   # the outbound page's counts by state stop here ("10,000+")


async def capped_counts(store: Any, table: str, states: Iterable[str], cap: int = COUNT_CAP) -> dict[str, str]:
    """Rows of ``table`` by state for the page, each counted up to ``cap`` ("10,000+" above it).

    ``GROUP BY state`` read every index entry of the table at each page view (two 300,000-row scans:
    33 of the outbound page's 36 ms at 1,000,000 tickets, bench/bench_ui_admin.py); a bounded count
    per state walks at most ``cap`` + 1 entries of the state's index. The exact figures stay in the API
    and the CLI. ``table`` is one of ours, never user input."""
    states = tuple(states)
    sql = "SELECT " + ", ".join(f"(SELECT COUNT(*) FROM (SELECT 1 FROM {table} WHERE state=? LIMIT ?) AS c{i})"
                                 for i in range(len(states)))
    params: list[Any] = []
    for st in states:
        params += [st, cap + 1]
    row = (await store.query(sql, tuple(params)))[0]
    return {st: (f"{cap:,}+" if int(n) > cap else f"{int(n):,}") for st, n in zip(states, tuple(row))}


async def relay_page(store: Any, state: str | None = None, limit: int = 200) -> dict[str, Any]:
    """The relay queue: counts by state and the notifications in ``state`` — by default every one not
    sent (each state read through its index, oldest first), never the bulk of the sent ones."""
    q = RelayQueue(store)
    rows: list[dict[str, Any]] = []
    for s in ((state,) if state else RELAY_OPEN):
        rows += [queue_row_json(r) for r in await q.list(s, limit - len(rows))] if len(rows) < limit else []
    return {"counts": await capped_counts(store, "relay_queue", RELAY_STATES), "oldest_age": await q.oldest_age(),
            "rows": rows}


async def webhook_page(store: Any, state: str | None = None, limit: int = 200) -> dict[str, Any]:
    """The webhook outbox likewise (by default every event not delivered)."""
    box = webhook_outbox.WebhookOutbox(store)
    rows: list[dict[str, Any]] = []
    for s in ((state,) if state else WEBHOOK_OPEN):
        rows += await box.list(s, None, limit - len(rows)) if len(rows) < limit else []
    return {"counts": await capped_counts(store, "webhook_outbox", webhook_outbox.STATES),
            "oldest_age": await box.oldest_age(), "rows": rows}


async def webhook_retry(store: Any, row_id: int, actor: str, role: str, client: str) -> str:
    """Queue a dead webhook event again (``ticketmx webhook retry ID``) with its audit row
    (``webhook.retry``) in one transaction; "" when done, else why not."""
    now = time.time()

    def fn(conn: Any) -> bool:
        done = webhook_outbox.retry(conn, row_id, now)
        if done:
            tokens.write_audit(conn, now, actor, role, "webhook.retry", str(row_id), {}, client)
        return done
    if await store.transaction(fn):
        return ""
    row = await webhook_outbox.WebhookOutbox(store).get(row_id)
    return "no such event" if row is None else f"it is {row['state']} (only a dead event is retried)"


# -- dashboard ------------------------------------------------------------------------------------------

@dataclass
class Series:
    """One small chart: ``values[i]`` belongs to the hour starting at ``start + i * HOUR``."""
    title: str
    start: float
    values: list[int]
    unit: str = "per hour"

    @property
    def total(self) -> int:
        return sum(self.values)

    @property
    def peak(self) -> int:
        return max(self.values, default=0)


@dataclass
class Dashboard:
    hours: int
    start: float
    accepted: Series
    ticketed: Series
    quarantined: Series
    spool_depth: Series
    relay_depth: Series
    webhook_depth: Series
    now_counts: dict[str, int] = field(default_factory=dict)


MARGIN = 6 * 3600.0   # rows received up to 6 h before the window are read too (finished inside it)
_SHIFT_H = 24 * 40  # buckets are counted from 40 days before the window, so integer division is a floor


def _bucket_sql(col: str) -> str:
    """Whole hours from the window's start, the same on SQLite and PostgreSQL: CAST to BIGINT rounds to
    the millisecond (PostgreSQL) or truncates (SQLite), integer division truncates on both, so the
    value is shifted to be positive first (a floor, also for times before the window). NULL stays NULL."""
    return f"((CAST({col} * 1000 AS BIGINT) - ?) / {int(HOUR * 1000)} - {_SHIFT_H})"


def _depths(rows: list[tuple[int, int | None, int]], base: int, hours: int) -> list[int]:
    """Depth at each hour's end from (hour in, hour out or None, count) and what was there before."""
    out = []
    for i in range(hours):
        out.append(base + sum(n for h_in, h_out, n in rows if h_in <= i and (h_out is None or h_out > i)))
    return out


async def _first_id_since(store: Any, table: str, ts: float, fanout: int = 64) -> int | None:
    """An id such that the rows of ``table`` (integer ids, ``created_at`` growing with them) from it on
    are those created at or after ``ts``: a search on the primary key that reads ``fanout`` evenly spaced
    ids per query (about four queries for a million rows) instead of scanning; where the probes fall
    in a gap (purged rows), the next existing row decides."""
    # (MIN and MAX in one SELECT would scan the table; each alone is one step down the primary key)
    r = await store.query(f"SELECT (SELECT MIN(id) FROM {table}), (SELECT MAX(id) FROM {table})")
    if not r or r[0][0] is None:
        return None
    lo, hi = int(r[0][0]), int(r[0][1]) + 1   # below lo: created before ts; from hi on: at or after it
    while lo < hi:
        step = max(1, (hi - lo) // fanout)
        probes = tuple(range(lo, hi, step))   # at most 2 * fanout ids
        found = await store.query(f"SELECT id, created_at FROM {table} WHERE id IN ({','.join('?' * len(probes))})",
                                  probes)
        before = [int(x[0]) for x in found if x[1] < ts]
        after = [int(x[0]) for x in found if x[1] >= ts]
        new_lo = max(before) + 1 if before else lo
        new_hi = min(after) if after else hi
        if step == 1:                        # every id left was read: no row between new_lo and new_hi
            return new_lo
        if (new_lo, new_hi) == (lo, hi):     # none of the probes exists (purged): the next row that does
            nxt = await store.query(f"SELECT id, created_at FROM {table} WHERE id >= ? ORDER BY id LIMIT 1", (lo,))
            if not nxt or nxt[0][1] >= ts:
                return lo
            new_lo = int(nxt[0][0]) + 1
        lo, hi = new_lo, new_hi
    return lo


async def dashboard(store: Any, now: float | None = None, hours: int = 24) -> Dashboard:
    """Throughput, queue depth and quarantine growth per hour over the last ``hours``, from the store.

    Each table is read once over the window (plus a day before it), grouped by the hour a row came in
    and the hour it finished: the spool by its time-ordered primary key, the relay queue and the webhook
    outbox from their first row of that period (found by :func:`_first_id_since`). What is still live
    from before that is counted from the state indexes; rows from before it that finished inside the
    window are not seen (an early hour's depth can be a little low)."""
    now = time.time() if now is None else now
    start = (int(now // HOUR) - hours + 1) * HOUR
    shift_ms = int((start - _SHIFT_H * HOUR) * 1000)
    accepted, ticketed, quarantined = [0] * hours, [0] * hours, [0] * hours
    spool_rows: list[tuple[int, int | None, int]] = []
    unfinished = 0
    for r in await store.query(
            f"SELECT {_bucket_sql('received_at')} AS h_in, {_bucket_sql('finished_at')} AS h_out,"
            " CASE WHEN state IN ('ticket_created', 'article_added') THEN 1 WHEN state = 'quarantined' THEN 2"
            " ELSE 0 END AS k, COUNT(*) FROM spool WHERE id >= ? GROUP BY 1, 2, 3",
            (shift_ms, shift_ms, spool_id_floor(start - MARGIN))):
        h_in, h_out, k, n = int(r[0]), (None if r[1] is None else int(r[1])), int(r[2]), int(r[3])
        if 0 <= h_in < hours:
            accepted[h_in] += n
            if k == 1:
                ticketed[h_in] += n
        if k == 2 and h_out is not None and 0 <= h_out < hours:
            quarantined[h_out] += n
        if h_out is None:
            unfinished += n
        spool_rows.append((h_in, h_out, n))
    live = await store.query("SELECT COUNT(*) FROM spool WHERE state IN ('queued', 'processing')")
    live_now = int(live[0][0]) if live else 0
    spool = _depths(spool_rows, max(0, live_now - unfinished), hours)
    held = await store.query("SELECT COUNT(*) FROM spool WHERE state = 'quarantined'")
    relay = await _table_depth(store, "relay_queue", RELAY_LIVE, start, hours, shift_ms)
    hooks = await _table_depth(store, "webhook_outbox", (webhook_outbox.QUEUED, webhook_outbox.LEASED), start, hours,
                               shift_ms)
    return Dashboard(hours=hours, start=start,
                     accepted=Series("Messages accepted", start, accepted),
                     ticketed=Series("Messages ticketed", start, ticketed),
                     quarantined=Series("Quarantined", start, quarantined),
                     spool_depth=Series("Spool depth", start, spool, "at the hour's end"),
                     relay_depth=Series("Relay queue depth", start, relay, "at the hour's end"),
                     webhook_depth=Series("Webhook outbox depth", start, hooks, "at the hour's end"),
                     now_counts={"quarantined": int(held[0][0]) if held else 0, "spool": live_now,
                                 "relay": relay[-1] if relay else 0, "webhooks": hooks[-1] if hooks else 0})


async def _table_depth(store: Any, table: str, live: tuple[str, ...], start: float, hours: int, shift_ms: int
                       ) -> list[int]:
    marks = ",".join("?" * len(live))
    total = await store.query(f"SELECT COUNT(*) FROM {table} WHERE state IN ({marks})", live)
    live_now = int(total[0][0]) if total else 0
    first = await _first_id_since(store, table, start - MARGIN)
    if first is None:
        return [live_now] * hours
    rows, unfinished = [], 0
    for r in await store.query(
            f"SELECT {_bucket_sql('created_at')}, {_bucket_sql('finished_at')}, COUNT(*) FROM {table}"
            f" WHERE id >= ? AND (finished_at IS NULL OR finished_at >= ?) GROUP BY 1, 2",
            (shift_ms, shift_ms, first, start)):
        h_out = None if r[1] is None else int(r[1])
        rows.append((int(r[0]), h_out, int(r[2])))
        if h_out is None:
            unfinished += int(r[2])
    return _depths(rows, max(0, live_now - unfinished), hours)


# -- configuration, secrets masked ----------------------------------------------------------------------

MASK = "•••••• (hidden)"
_SECRET_NAME = re.compile(r"(password|passwd|secret|token|private_key|api_key|^keys?$|_keys?$|credentials?)$", re.I)
_NOT_SECRET = re.compile(r"(_file|_url|_path|_dir|_style|_length|_pattern|_env)$|^rate_", re.I)


def _secret_name(name: str) -> bool:
    return bool(_SECRET_NAME.search(name)) and not _NOT_SECRET.search(name)


def _mask_url(value: str) -> str:
    """A URL's password (``postgresql://user:pw@host/db``) masked; everything else as written."""
    try:
        parts = urlsplit(value)
    except ValueError:
        return value
    if parts.password is None:
        return value
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:{MASK}@{host}"))


def config_rows(cfg: Any, written: dict[str, Any] | None = None) -> list[tuple[str, str]]:
    """The running configuration as ``(dotted key, value)`` rows, secrets masked: a field kept out of
    ``repr`` (how the config marks secrets), a name that says password/secret/token/key, any bytes
    (key material read from a file), a URL's password. ``*_file`` paths are shown. As a last guard
    every value is checked against the secrets found and masked if it contains one.

    ``written``: the TOML file as parsed (:func:`read_written`); its ``*_file`` and ``*_env`` keys
    are added as written (the running config keeps what they pointed at, not always the path)."""
    rows: list[tuple[str, str]] = []
    secrets: set[str] = set()

    def hide(value: Any) -> str:
        for v in (value if isinstance(value, (list, tuple)) else (value,)):
            if isinstance(v, (bytes, bytearray)):
                if v:
                    secrets.add(bytes(v).decode("utf-8", "replace"))
            elif v not in (None, ""):
                secrets.add(str(v))
        return MASK if value not in (None, "", (), b"") else "(not set)"

    def walk(key: str, value: Any, depth: int = 0) -> None:
        if depth > 8:
            rows.append((key, "…"))
            return
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            for f in dataclasses.fields(value):
                sub = getattr(value, f.name, None)
                name = f"{key}.{f.name}" if key else f.name
                if isinstance(sub, re.Pattern) or (not f.repr and _is_compiled(sub)):
                    continue  # a compiled form of a pattern shown elsewhere
                if (not f.repr) or _secret_name(f.name):
                    rows.append((name, hide(sub)))
                else:
                    walk(name, sub, depth + 1)
            return
        if isinstance(value, dict):
            if not value:
                rows.append((key, "{}"))
            for k, v in value.items():
                name = f"{key}.{k}"
                if _secret_name(str(k)):
                    rows.append((name, hide(v)))
                else:
                    walk(name, v, depth + 1)
            return
        if isinstance(value, (list, tuple)):
            if value and all(dataclasses.is_dataclass(v) or isinstance(v, dict) for v in value):
                for i, v in enumerate(value):
                    walk(f"{key}[{i}]", v, depth + 1)
                return
            if any(isinstance(v, (bytes, bytearray)) for v in value):
                rows.append((key, hide(value)))
                return
            rows.append((key, json.dumps(_plain(value), ensure_ascii=False)))
            return
        if isinstance(value, (bytes, bytearray)):
            rows.append((key, hide(value)))
            return
        rows.append((key, _scalar(value)))

    walk("", cfg)
    if written:
        have = {k for k, _ in rows}
        for k, v in _file_keys("", written):
            if k not in have:
                rows.append((k, _scalar(v)))
    guarded = []
    for k, v in rows:
        if v != MASK and any(s and len(s) >= 4 and s in v for s in secrets):
            v = MASK
        guarded.append((k, v))
    return guarded


def _file_keys(prefix: str, data: Any) -> list[tuple[str, Any]]:
    """(dotted key, value) of every ``*_file`` / ``*_env`` key in a parsed TOML document."""
    out: list[tuple[str, Any]] = []
    if isinstance(data, dict):
        for k, v in data.items():
            name = f"{prefix}.{k}" if prefix else str(k)
            if str(k).endswith(("_file", "_env")) and isinstance(v, str):
                out.append((name, v))
            else:
                out += _file_keys(name, v)
    elif isinstance(data, list):
        for i, v in enumerate(data):
            out += _file_keys(f"{prefix}[{i}]", v)
    return out


def read_written(path: str | None) -> dict[str, Any]:
    """The config file as parsed (blocking: call it in a thread); {} when there is none to read."""
    import tomllib
    if not path:
        return {}
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except (OSError, ValueError):
        return {}


def _is_compiled(v: Any) -> bool:
    return isinstance(v, re.Pattern) or (isinstance(v, tuple) and bool(v) and all(isinstance(x, re.Pattern) for x in v))


def _scalar(v: Any) -> str:
    if v is None:
        return "(not set)"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return _mask_url(v) if "://" in v else v
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, re.Pattern):
        return v.pattern
    if isinstance(v, (list, tuple)):
        return json.dumps(_plain(v), ensure_ascii=False)
    return str(v)


def _plain(v: Any) -> Any:
    """A value as JSON can show it (tuples as lists, numbers as numbers, anything else as text)."""
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if v is None or isinstance(v, (bool, int, float)):
        return v
    return _scalar(v)


# -- audit -------------------------------------------------------------------------------------------------

async def audit_page(store: Any, *, actor: str = "", action: str = "", target: str = "", since: float | None = None,
                     until: float | None = None, before: int | None = None, limit: int = 100
                     ) -> tuple[list[dict[str, Any]], int | None]:
    """Audit rows newest first (every change through the API, the UI and the token commands)."""
    rows = await tokens.audit_list(store, actor=actor, action=action, target=target, since=since, until=until,
                                   before_id=before, limit=limit)
    for r in rows:
        r["at_iso"] = iso(r["at"])
        r["detail_text"] = json.dumps(r["detail"], ensure_ascii=False, sort_keys=True) if r["detail"] else ""
    return rows, (rows[-1]["id"] if len(rows) == limit else None)


def audit_actions(extra: Iterable[str] = ()) -> list[str]:
    """The actions the filter offers (docs/api.md's table plus the UI's)."""
    return sorted({"token.create", "token.revoke", "message.release", "message.replay", "message.delete",
                   "relay.retry", "webhook.retry", "source.test", "source.pause", "source.resume", *extra})
