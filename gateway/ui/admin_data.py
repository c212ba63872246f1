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

async def relay_page(store: Any, state: str | None = None, limit: int = 200) -> dict[str, Any]:
    q = RelayQueue(store)
    rows = [queue_row_json(r) for r in await q.list(state or None, limit)]
    return {"counts": await q.counts(), "oldest_age": await q.oldest_age(), "rows": rows}


async def webhook_page(store: Any, state: str | None = None, limit: int = 200) -> dict[str, Any]:
    box = webhook_outbox.WebhookOutbox(store)
    return {"counts": await box.state_counts(), "oldest_age": await box.oldest_age(),
            "rows": await box.list(state or None, None, limit)}


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


def _bucket_sql(col: str) -> str:
    # integer hours since the window start, the same on SQLite and PostgreSQL (CAST to BIGINT rounds to
    # the millisecond on PostgreSQL, truncates on SQLite; integer division truncates on both)
    return f"(CAST({col} * 1000 AS BIGINT) - ?) / {int(HOUR * 1000)}"


def _depth_sql(col_in: str, col_out: str, ends: list[float]) -> str:
    return ", ".join(f"SUM(CASE WHEN {col_in} < {t!r} AND ({col_out} IS NULL OR {col_out} >= {t!r}) THEN 1 ELSE 0 END)"
                     for t in ends)


async def dashboard(store: Any, now: float | None = None, hours: int = 24) -> Dashboard:
    """Throughput, queue depth and quarantine growth per hour over the last ``hours``, from the store.

    Reads are bounded by the window: the spool by its time-ordered primary key, quarantined entries
    by the state index, the relay queue and webhook outbox by what is live now plus what finished
    in the window (their retention bounds that scan)."""
    now = time.time() if now is None else now
    start = (int(now // HOUR) - hours + 1) * HOUR
    start_ms = int(start * 1000)
    ends = [min(now, start + (i + 1) * HOUR) for i in range(hours)]
    accepted, ticketed, quarantined = [0] * hours, [0] * hours, [0] * hours
    for r in await store.query(
            f"SELECT {_bucket_sql('received_at')} AS h, COUNT(*) AS n,"
            " SUM(CASE WHEN state IN ('ticket_created', 'article_added') THEN 1 ELSE 0 END) AS t"
            " FROM spool WHERE id >= ? GROUP BY 1", (start_ms, spool_id_floor(start))):
        h = int(r[0])
        if 0 <= h < hours:
            accepted[h], ticketed[h] = int(r[1]), int(r[2] or 0)
    for r in await store.query(
            f"SELECT {_bucket_sql('finished_at')} AS h, COUNT(*) FROM spool WHERE state = 'quarantined'"
            " AND finished_at >= ? GROUP BY 1", (start_ms, start)):
        h = int(r[0])
        if 0 <= h < hours:
            quarantined[h] = int(r[1])
    # depth at the end of each hour: received before it and not finished by then
    spool = [0] * hours
    rows = await store.query(f"SELECT {_depth_sql('received_at', 'finished_at', ends)} FROM spool WHERE id >= ?",
                             (spool_id_floor(start),))
    older = await store.query("SELECT COUNT(*) FROM spool WHERE state IN ('queued', 'processing') AND id < ?",
                              (spool_id_floor(start),))
    base = int(older[0][0]) if older else 0
    if rows:
        spool = [int(v or 0) + base for v in tuple(rows[0])]
    relay = await _table_depth(store, "relay_queue", RELAY_LIVE, start, ends)
    hooks = await _table_depth(store, "webhook_outbox", (webhook_outbox.QUEUED, webhook_outbox.LEASED), start, ends)
    counts = await store.spool_counts()
    return Dashboard(hours=hours, start=start,
                     accepted=Series("Messages accepted", start, accepted),
                     ticketed=Series("Messages ticketed", start, ticketed),
                     quarantined=Series("Quarantined", start, quarantined),
                     spool_depth=Series("Spool depth", start, spool, "at the hour's end"),
                     relay_depth=Series("Relay queue depth", start, relay, "at the hour's end"),
                     webhook_depth=Series("Webhook outbox depth", start, hooks, "at the hour's end"),
                     now_counts={"quarantined": int(counts.get(QUARANTINED, 0)),
                                 "spool": int(counts.get("queued", 0)) + int(counts.get("processing", 0)),
                                 "relay": relay[-1] if relay else 0, "webhooks": hooks[-1] if hooks else 0})


async def _table_depth(store: Any, table: str, live: tuple[str, ...], start: float, ends: list[float]) -> list[int]:
    marks = ",".join("?" * len(live))
    rows = await store.query(f"SELECT {_depth_sql('created_at', 'finished_at', ends)} FROM {table}"
                             f" WHERE state IN ({marks}) OR finished_at >= ?", (*live, start))
    return [int(v or 0) for v in tuple(rows[0])] if rows else [0] * len(ends)


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


# -- sources ---------------------------------------------------------------------------------------------

def configured_sources(cfg: Any) -> list[dict[str, Any]]:
    """The pull sources in the running config (issue 23's ``[[source]]``), names and kinds only, for a
    build without the sources service: empty when the config has none."""
    out = []
    for s in getattr(cfg, "sources", ()) or ():
        out.append({"name": getattr(s, "name", "?"), "kind": getattr(s, "kind", getattr(s, "type", "")),
                    "status": "draft" if getattr(s, "draft", False) else "configured"})
    return out


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
                   "relay.retry", "webhook.retry", "source.pause", "source.resume", *extra})
