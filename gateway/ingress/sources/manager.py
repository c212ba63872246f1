"""The source manager: one task per active ``[[source]]``, all concurrent, each import exactly once.

One cycle of a source (:meth:`SourceRunner.sync_once`):

1. **settle** what the pipeline has ended: every ``source_messages`` row still ``spooled`` whose spool entry
   is terminal is moved on the server (ticket -> success_folder, quarantined -> failure_folder,
   suppressed -> exclusion_folder; "" = flag \\Seen and leave), then marked ``settled``;
2. **list** the folder's keys and look them up: a key in ``source_messages`` is never imported again,
   whatever its \\Seen flag says (our state, not the server's);
3. **import** each new key: fetch, the intake checks (gateway/ingress/service.py IntakeChecks: what SMTP
   runs at DATA), and one spool commit that holds the entry **and** its (source, key) row. A refused
   message is spooled as quarantined with its reason (pulled mail cannot be answered 5xx), so it reaches
   the failure folder like any other quarantined one.

Nothing is moved or flagged before step 3's commit, and a key is committed only once (its primary key
refuses a second commit), so a crash anywhere (before the commit, between the commit and the move, between
the move and ``settled``) leaves either nothing imported (fetched again next time) or a spooled key
(settled next time; a move of a message already moved is a no-op). A message whose bytes this source
already imported under another key (an IMAP UIDVALIDITY change, a POP3 UIDL reset) is recognised by its
SHA-256 and recorded as one more key of the first import.

Failures (connect, login, listing, fetch, spool, settle) count per source; one message that cannot be
fetched is skipped for this cycle and the rest go on. ``stop_after_failures`` failures in a row pause that
source only (source_state.paused, kept across restarts), set ``ticketmx_source_paused`` and tell the admin
(``[pipeline] admin_address``, through the relay: the ``notify`` callback gateway/app.py gives).
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

from prometheus_client import CollectorRegistry, Counter, Gauge

from gateway.config.load import Config
from gateway.config.schedule import in_window, window_end
from gateway.config.sources import SourceConfig
from gateway.ingress.http_inbound import message_sender
from gateway.ingress.service import IntakeChecks, Refused
from gateway.ingress.sources.base import (CONNECTION_KINDS, QUARANTINED, SUPPRESSED, TICKET, Fetched, Source,
                                         SourceError, fetch_many, settle_many)
from gateway.spool import SpoolWriter
from gateway.store.base import (ARTICLE_ADDED, QUARANTINED as SPOOL_QUARANTINED, SUPPRESSED as SPOOL_SUPPRESSED,
                                TICKET_CREATED, SpoolEntry, Store)

log = logging.getLogger(__name__)

IMPORT_BATCH = 64            # messages fetched and committed together (bounded by base.FETCH_BUDGET bytes)
MAX_CONCURRENT_SYNCS = 16    # sources listing/fetching at once (IDLE waits hold a connection, not a slot)
SETTLE_WAIT = 0.2            # how often a source looks for pipeline outcomes while some are pending
ROUND_RETRY = 5.0            # seconds before a round that raised unexpectedly starts again
STATE_POLL = 2.0             # how often runtime pauses/resumes from the CLI (another process) are read
OUTCOME = {TICKET_CREATED: TICKET, ARTICLE_ADDED: TICKET, SPOOL_SUPPRESSED: SUPPRESSED,
           SPOOL_QUARANTINED: QUARANTINED, "": TICKET}  # "": the spool row was purged (it had ended)


class SourceMetrics:
    """Per-source series (docs/metrics.md, "Pull sources"); registered once per gateway."""

    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.fetched = Counter("ticketmx_source_fetched_total", "Messages a source imported into the spool.",
                               ["source"], registry=r)
        self.settled = Counter("ticketmx_source_settled_total", "Messages moved or flagged on the server after the"
                               " pipeline's outcome (ticket, quarantined, suppressed).", ["source", "outcome"],
                               registry=r)
        self.errors = Counter("ticketmx_source_errors_total", "Source errors by kind: connect, tls, auth, folder,"
                              " protocol, fetch, settle, spool, token, throttled, refused, uidvalidity.",
                              ["source", "kind"], registry=r)
        self.last_success = Gauge("ticketmx_source_last_success_timestamp_seconds",
                                  "When the source last completed a cycle (listing, imports, settling).",
                                  ["source"], registry=r)
        self.backlog = Gauge("ticketmx_source_backlog", "Messages in the source's folder not yet imported, at the"
                             " last listing.", ["source"], registry=r)
        self.pending = Gauge("ticketmx_source_pending", "Imported messages waiting for the pipeline's outcome"
                             " or for their move on the server.", ["source"], registry=r)
        self.failures = Gauge("ticketmx_source_consecutive_failures", "Failures in a row (stop_after_failures"
                              " pauses the source).", ["source"], registry=r)
        self.paused = Gauge("ticketmx_source_paused", "1 when the source is paused (by the operator, by"
                            " stop_after_failures or status = \"paused\").", ["source"], registry=r)
        self.poll_interval = Gauge("ticketmx_source_poll_interval_seconds", "The source's poll_interval (for the"
                                   " stale-source alert).", ["source"], registry=r)
        self.token_expiry = Gauge("ticketmx_source_token_expiry_timestamp_seconds", "When the source's current"
                                  " OAuth access token expires (0: no token yet; absent: not OAuth).", ["source"],
                                  registry=r)
        self.token_refresh_failures = Counter("ticketmx_source_token_refresh_failures_total",
                                              "Failed OAuth token requests of a source.", ["source"], registry=r)

    def forget(self, name: str) -> None:
        """A source removed by a reload: its gauges go (counters stay, as Prometheus expects)."""
        for g in (self.last_success, self.backlog, self.pending, self.failures, self.paused, self.poll_interval,
                  self.token_expiry):
            try:
                g.remove(name)
            except KeyError:
                pass


def build_source(cfg: SourceConfig) -> Source:
    """The kind module's class for one source (imported lazily: a kind's library only when used)."""
    if cfg.kind == "imap":
        from gateway.ingress.sources.imap import ImapSource
        return ImapSource(cfg, token=_token_provider(cfg))
    if cfg.kind == "pop3":
        from gateway.ingress.sources.pop3 import Pop3Source
        return Pop3Source(cfg, token=_token_provider(cfg))
    if cfg.kind == "graph":
        from gateway.ingress.sources.graph import GraphSource
        return GraphSource(cfg, token=_token_provider(cfg))
    raise ValueError(f"unknown source kind {cfg.kind!r}")


def _token_provider(cfg: SourceConfig) -> Any:
    """The OAuth access-token provider of an ``auth = "xoauth2"`` source (gateway/ingress/sources/oauth.py,
    H8's); None for password sources or until that module exists."""
    if cfg.auth != "xoauth2" or cfg.oauth is None:
        return None
    from gateway.ingress.sources.oauth import token_provider
    return token_provider(cfg)


def _oauth_secrets_changed(sc: SourceConfig, runner: "SourceRunner") -> bool:
    """A new client secret, or a refresh token that is neither the loaded one nor the one the running
    source rotated to (``source authorize`` wrote a new one): the source restarts with it."""
    new, old = sc.oauth, runner.cfg.oauth
    if new is None or old is None:
        return False
    if new.client_secret != old.client_secret:
        return True
    current = getattr(getattr(runner.source, "token", None), "refresh_token", old.refresh_token)
    return bool(new.refresh_token) and new.refresh_token not in (old.refresh_token, current)


@dataclass
class SyncResult:
    imported: int = 0
    duplicates: int = 0         # same bytes already imported under another key
    skipped: int = 0            # older than `since`
    settled: int = 0
    errors: int = 0             # messages that failed this cycle (fetch, spool)
    pending: int = 0
    backlog: int = 0
    details: list[str] = field(default_factory=list)


class SourceRunner:
    """One source: its connection, its cycle, its failures. ``sync_once`` is also `source sync --once`."""

    def __init__(self, cfg: SourceConfig, manager: "SourceManager", source: Source | None = None) -> None:
        self.cfg = cfg
        self.m = manager
        self.source = source or build_source(cfg)
        self.connected = False
        self.paused = cfg.status == "paused"
        self.wake = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.tries = 0               # failed connections in a row (max_tries, then cooloff)
        self.failures = 0            # failures in a row (stop_after_failures)
        self.last_check = 0.0        # monotonic time of the last completed cycle
        self.token_failed_seen = 0   # the token provider's failed_total already counted in the metric

    @property
    def name(self) -> str:
        return self.cfg.name

    # -- the loop --------------------------------------------------------------------------------------
    async def run(self) -> None:
        """The source's task: it ends only when cancelled. Whatever escapes one round (a store error while
        recording a failure or pausing, a kind whose close() raises) is logged and the round starts again
        after a pause: a source task that ended silently would stop fetching with nothing to show."""
        self.m.metrics.poll_interval.labels(self.name).set(self.cfg.poll_interval)
        while True:
            try:
                await self._round()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("source %s: round failed; trying again in %.0f s", self.name,
                              min(self.cfg.poll_interval, ROUND_RETRY))
                self.connected = False
                try:
                    await self.source.close()
                except Exception:  # noqa: BLE001 - closing after a failure
                    pass
                await self._wait(min(self.cfg.poll_interval, ROUND_RETRY))

    async def _round(self) -> None:
        """One cycle and the wait after it."""
        m = self.m
        if self.paused or self.cfg.status != "active":
            m.metrics.paused.labels(self.name).set(1)
            await self._disconnect()
            await self._wait(3600)
            return
        m.metrics.paused.labels(self.name).set(0)
        if self.cfg.skip_times and in_window(self.cfg.skip_times, time.time()):
            await self._disconnect()
            await self._wait(max(1.0, window_end(self.cfg.skip_times, time.time()) - time.time()))
            return
        delay = self.cfg.poll_interval
        try:
            async with m.slots:
                result = await self.sync_once()
            self.tries = 0
            if result.pending:
                delay = SETTLE_WAIT
        except SourceError as exc:
            await self._failed(exc)
            delay = self.cfg.cooloff if self.tries >= self.cfg.max_tries else min(self.cfg.poll_interval,
                                                                                   2.0 ** min(self.tries, 6))
            if self.tries >= self.cfg.max_tries:
                self.tries = 0
            await self._disconnect()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug must not end the task: logged, counted, retried later
            log.exception("source %s: cycle failed", self.name)
            await self._failed(SourceError("internal", f"{type(exc).__name__}: {exc}"))
            await self._disconnect()
        if self.paused:
            return
        if delay <= SETTLE_WAIT or not self.connected:
            await self._wait(delay)
        else:
            await self._wait_for_new(delay)

    async def _wait(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self.wake.wait(), seconds)
        except asyncio.TimeoutError:
            pass
        self.wake.clear()

    async def _wait_for_new(self, seconds: float) -> None:
        """The kind's wait (IMAP IDLE) raced with a wake-up (pause, reload, `source sync`)."""
        waiter = asyncio.ensure_future(self.source.wait_for_new(seconds))
        woken = asyncio.ensure_future(self.wake.wait())
        try:
            done, _ = await asyncio.wait({waiter, woken}, timeout=seconds + self.cfg.timeout,
                                         return_when=asyncio.FIRST_COMPLETED)
            if waiter in done and waiter.exception() is not None:
                exc = waiter.exception()
                log.info("source %s: waiting for new mail failed: %s", self.name, exc)
                self.connected = False
        finally:
            for t in (waiter, woken):
                if not t.done():
                    t.cancel()
            await asyncio.gather(waiter, woken, return_exceptions=True)
            if not waiter.done() or waiter.cancelled():
                self.connected = False  # cancelled in the middle of IDLE: the kind closed its connection
            self.wake.clear()

    async def _disconnect(self) -> None:
        if self.connected:
            self.connected = False
            await self.source.close()

    async def _failed(self, exc: SourceError) -> None:
        m = self.m
        if exc.kind in ("connect", "tls", "auth", "token"):
            self.tries += 1
        self.failures += 1
        m.metrics.errors.labels(self.name, exc.kind).inc()
        m.metrics.failures.labels(self.name).set(self.failures)
        self._token_metrics()
        log.warning("source %s: %s (%s; %d failure(s) in a row)", self.name, exc, exc.kind, self.failures)
        now = time.time()
        try:
            await m.store.source_state_set(self.name, last_error=str(exc)[:500], last_error_kind=exc.kind,
                                           last_error_at=now, failures=self.failures)
        except Exception:
            log.warning("source %s: could not record the error", self.name, exc_info=True)
        limit = self.cfg.stop_after_failures
        if limit and self.failures >= limit and not self.paused:
            reason = f"{self.failures} failures in a row, the last: {exc}"
            await m.pause(self.name, reason, by="stop_after_failures")

    async def _succeeded(self, backlog: int = 0) -> None:
        now = time.time()
        self.last_check = time.monotonic()
        self.failures = 0
        self.m.metrics.failures.labels(self.name).set(0)
        self.m.metrics.last_success.labels(self.name).set(now)
        await self._renew_token()
        await self.m.store.source_state_set(self.name, last_success=now, failures=0, backlog=backlog)

    async def _renew_token(self) -> None:
        """Renew an OAuth token due for renewal now, not when the next login needs it: an IMAP IDLE session
        logs in once, and a refresh token that stopped working must show (metric, alert) before mail stops."""
        tok = getattr(self.source, "token", None)
        if tok is not None and hasattr(tok, "access_token"):
            try:
                await tok.access_token()   # cached unless within its renewal margin
            except Exception as exc:
                log.warning("source %s: OAuth token renewal failed: %s", self.name, exc)
        self._token_metrics()

    def _token_metrics(self) -> None:
        tok = getattr(self.source, "token", None)
        if tok is None or not hasattr(tok, "failed_total"):
            return
        self.m.metrics.token_expiry.labels(self.name).set(tok.expires_at)
        if tok.failed_total > self.token_failed_seen:
            self.m.metrics.token_refresh_failures.labels(self.name).inc(tok.failed_total - self.token_failed_seen)
            self.token_failed_seen = tok.failed_total

    # -- one cycle -----------------------------------------------------------------------------------
    async def sync_once(self) -> SyncResult:
        """Settle what has ended, list, import what is new. Raises :class:`SourceError` when the server
        cannot be used at all; a message that fails alone is counted and skipped."""
        m = self.m
        res = SyncResult()
        if not self.connected:
            await self.source.connect()
            self.connected = True
        res.settled += await self._settle_ended()
        keys = await self.source.keys()
        known = await m.store.source_lookup(self.name, keys)
        new = [k for k in keys if k not in known]
        if new and hasattr(self.source, "prefetch"):
            self.source.prefetch(new)   # graph: fetches a few ahead (one HTTP round trip each) while we commit
        res.backlog = len(new)
        m.metrics.backlog.labels(self.name).set(len(new))
        failed_alone = 0
        queue = list(new)
        while queue:
            # a batch: one fetch (IMAP: one UID FETCH) and one group commit (one fsync) for up to
            # IMPORT_BATCH messages; one commit awaited per message held an initial sync to ~300 msgs/s
            chunk = queue[:IMPORT_BATCH]
            got = await fetch_many(self.source, chunk)
            queue = [k for k in chunk if k not in got] + queue[IMPORT_BATCH:]
            outcomes = await self._import_batch([(k, got[k]) for k in chunk if k in got])
            for key, what in outcomes:
                if isinstance(what, SourceError):
                    if what.kind in CONNECTION_KINDS:
                        raise what  # the connection is gone or changed: the next cycle starts again
                    res.errors += 1
                    failed_alone += 1
                    m.metrics.errors.labels(self.name, what.kind).inc()
                    log.warning("source %s: %s skipped this cycle: %s", self.name, key, what)
                    res.details.append(f"{key}: {what}")
                elif what == "imported":
                    res.imported += 1
                elif what == "duplicate":
                    res.duplicates += 1
                else:
                    res.skipped += 1
            m.metrics.backlog.labels(self.name).set(len(queue))
        res.settled += await self._settle_ended()
        res.pending = (await m.store.source_counts(self.name)).get(self.name, {}).get("spooled", 0)
        m.metrics.pending.labels(self.name).set(res.pending)
        if failed_alone and not res.imported:
            raise SourceError("fetch", f"{failed_alone} message(s) could not be imported: {res.details[-1]}")
        await self._succeeded(backlog=max(0, res.backlog - res.imported - res.duplicates - res.skipped))
        return res

    async def _import_batch(self, batch: list[tuple[str, Fetched | SourceError]]
                            ) -> list[tuple[str, str | SourceError]]:
        """Import fetched messages, in order: "imported", "duplicate", "skipped" or the message's error.
        Those to spool are checked and committed concurrently (the spool writer groups the commits: one
        transaction, one fsync; an entry that fails is retried alone there). A message with the same
        bytes as an earlier one of this batch waits for that one's commit, then is recorded as its alias."""
        out: dict[str, str | SourceError] = {}
        fresh: list[tuple[str, Fetched, str]] = []
        later: list[tuple[str, Fetched, str]] = []
        digests: set[str] = set()
        for key, fetched in batch:
            if isinstance(fetched, SourceError):
                out[key] = fetched
                continue
            digest = hashlib.sha256(fetched.raw).hexdigest()
            if digest in digests:
                later.append((key, fetched, digest))
                continue
            what = await self._known(key, fetched, digest)
            if what:
                out[key] = what
            else:
                digests.add(digest)
                fresh.append((key, fetched, digest))
        results = await asyncio.gather(*(self._spool(k, f, d) for k, f, d in fresh), return_exceptions=True)
        for (key, _f, _d), r in zip(fresh, results):
            if isinstance(r, BaseException) and not isinstance(r, SourceError):
                raise r
            out[key] = r
        for key, fetched, digest in later:
            out[key] = await self._known(key, fetched, digest) or await self._spool(key, fetched, digest)
        return [(key, out[key]) for key, _ in batch]

    async def _known(self, key: str, fetched: Fetched, digest: str) -> str:
        """"skipped" (older than ``since``: recorded, left alone on the server), "duplicate" (these bytes
        were imported under another key: recorded as one more key of that import), or "" (to import)."""
        m = self.m
        if self.cfg.since and fetched.received is not None and fetched.received < self.cfg.since:
            await m.store.source_alias(self.name, key, "", "settled", digest)
            return "skipped"
        first = await m.store.source_digest(self.name, digest)
        if first is not None:
            await m.store.source_alias(self.name, key, first[1], first[2], digest)
            log.info("source %s: %s has the bytes of %s (spool %s), not imported again", self.name, key,
                     first[0], first[1])
            return "duplicate"
        return ""

    async def _spool(self, key: str, fetched: Fetched, digest: str) -> str:
        """The intake checks and the spool commit of one message with its key (one transaction)."""
        m = self.m
        entry = await m.entry_for(self.cfg, fetched.raw, key, digest)
        try:
            await m.spool.commit(entry)
        except Exception:
            if (await m.store.source_lookup(self.name, [key])).get(key):
                return "duplicate"  # committed meanwhile by another syncer (`source sync --once`)
            raise SourceError("spool", f"{key}: the spool commit failed") from None
        m.metrics.fetched.labels(self.name).inc()
        log.info("source %s: imported %s as %s (%d bytes)%s", self.name, key, entry.id, len(fetched.raw),
                 f", quarantined: {entry.reason}" if entry.state == SPOOL_QUARANTINED else "",
                 extra={"trace_id": entry.id})
        return "imported"

    async def _settle_ended(self) -> int:
        """Move (or flag) every imported message whose spool entry has ended; mark it settled."""
        m = self.m
        done = 0
        while True:
            pending = await m.store.source_pending(self.name)
            ended = [(k, st) for k, _sid, st, _r in pending if st not in ("queued", "processing")]
            if not ended:
                return done
            groups: dict[str, list[str]] = {}
            for key, state in ended:
                groups.setdefault(OUTCOME.get(state, TICKET), []).append(key)
            by_outcome: dict[str, list[str]] = {}
            one_by_one: list[tuple[str, str]] = []
            for outcome, keys in groups.items():
                try:  # one command for the group (IMAP: UID MOVE of a set)
                    await settle_many(self.source, keys, outcome)
                except SourceError as exc:
                    if exc.kind in ("connect", "protocol", "auth", "token"):
                        await self._mark(by_outcome)
                        raise
                    one_by_one += [(k, outcome) for k in keys]  # find the one that fails
                    continue
                by_outcome[outcome] = list(keys)
                done += len(keys)
            for key, outcome in one_by_one:
                try:
                    await self.source.settle(key, outcome)
                except SourceError as exc:
                    if exc.kind == "uidvalidity":
                        # the key's UIDVALIDITY is gone: the message is under a new key now, matched by its
                        # bytes at import (source_alias): this key is done
                        pass
                    elif exc.kind in ("connect", "protocol", "auth", "token"):
                        await self._mark(by_outcome)
                        raise
                    else:
                        m.metrics.errors.labels(self.name, exc.kind).inc()
                        log.warning("source %s: settling %s failed (tried again next cycle): %s", self.name, key, exc)
                        await self._mark(by_outcome)
                        return done
                by_outcome.setdefault(outcome, []).append(key)
                done += 1
            await self._mark(by_outcome)
            if len(pending) < 500:
                return done

    async def _mark(self, by_outcome: dict[str, list[str]]) -> None:
        now = time.time()
        for outcome, keys in by_outcome.items():
            await self.m.store.source_settled(self.name, keys, outcome, now)
            self.m.metrics.settled.labels(self.name, outcome).inc(len(keys))
        by_outcome.clear()


class SourceManager:
    """Every ``[[source]]`` of one gateway: started after the spool writer, stopped before it."""

    def __init__(self, cfg: Config, store: Store, spool: SpoolWriter, registry: CollectorRegistry | None = None,
                 executor: concurrent.futures.Executor | None = None, *, metrics: SourceMetrics | None = None,
                 notify: Callable[[str, str], Awaitable[None]] | None = None,
                 factory: Callable[[SourceConfig], Source] | None = None) -> None:
        self.cfg = cfg
        self.store = store
        self.spool = spool
        self.executor = executor
        self.metrics = metrics or SourceMetrics(registry or CollectorRegistry())
        self.notify = notify          # (source name, reason) -> the admin is told (gateway/app.py)
        self.factory = factory or build_source
        self.checks = IntakeChecks(cfg, executor)
        self.slots = asyncio.Semaphore(MAX_CONCURRENT_SYNCS)
        self.runners: dict[str, SourceRunner] = {}
        self._watch: asyncio.Task[None] | None = None

    # -- lifecycle ---------------------------------------------------------------------------------------
    async def start(self) -> None:
        states = await self.store.source_state_get()
        for sc in self.cfg.sources:
            self._add(sc, states.get(sc.name))
        self._watch = asyncio.get_running_loop().create_task(self._watch_state(), name="sources-state")
        if self.runners:
            log.info("sources: %d configured, %d fetching", len(self.runners),
                     sum(1 for r in self.runners.values() if r.cfg.fetches and not r.paused))

    def _add(self, sc: SourceConfig, state: dict[str, Any] | None) -> SourceRunner:
        runner = SourceRunner(sc, self, self.factory(sc))
        if state and state.get("paused"):
            runner.paused = True
        self.runners[sc.name] = runner
        runner.task = asyncio.get_running_loop().create_task(runner.run(), name=f"source-{sc.name}")
        return runner

    async def _stop_runner(self, runner: SourceRunner) -> None:
        if runner.task is not None:
            runner.task.cancel()
            await asyncio.gather(runner.task, return_exceptions=True)
        try:
            await runner.source.close()
        except Exception:  # noqa: BLE001 - closing
            pass

    async def close(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            await asyncio.gather(self._watch, return_exceptions=True)
        await asyncio.gather(*(self._stop_runner(r) for r in self.runners.values()))
        self.runners.clear()
        self.checks.close()

    async def reload(self, cfg: Config) -> None:
        """SIGHUP: added sources start, removed ones stop, changed ones restart with the new settings;
        unchanged ones keep running (and their connection)."""
        old, self.cfg = self.cfg, cfg
        self.checks.close()
        self.checks = IntakeChecks(cfg, self.executor)
        new = {s.name: s for s in cfg.sources}
        states = await self.store.source_state_get()
        for name in list(self.runners):
            runner = self.runners[name]
            if (name not in new or new[name] != runner.cfg or new[name].password != runner.cfg.password
                    or _oauth_secrets_changed(new[name], runner)):
                await self._stop_runner(runner)
                del self.runners[name]
                if name not in new:
                    self.metrics.forget(name)
                    log.info("reload: source %s removed", name)
        for name, sc in new.items():
            if name not in self.runners:
                self._add(sc, states.get(name))
                log.info("reload: source %s %s", name, "started" if sc.fetches else f"configured ({sc.status})")
        del old

    # -- operator actions ----------------------------------------------------------------------------
    async def pause(self, name: str, reason: str, by: str = "operator") -> None:
        await pause_source(self.store, name, reason)
        runner = self.runners.get(name)
        if runner is not None:
            runner.paused = True
            runner.wake.set()
            self.metrics.paused.labels(name).set(1)
        log.warning("source %s paused (%s): %s", name, by, reason)
        if by == "stop_after_failures" and self.notify is not None:
            try:
                await self.notify(name, reason)
            except Exception:
                log.exception("source %s: could not tell the admin", name)

    async def resume(self, name: str) -> None:
        await resume_source(self.store, name)
        runner = self.runners.get(name)
        if runner is not None:
            runner.paused = False
            runner.failures = 0
            runner.tries = 0
            runner.wake.set()
            self.metrics.paused.labels(name).set(0)
            self.metrics.failures.labels(name).set(0)
        log.info("source %s resumed", name)

    async def _watch_state(self) -> None:
        """Pauses and resumes written by `ticketmx source pause|resume` (another process) reach the runners."""
        while True:
            await asyncio.sleep(STATE_POLL)
            try:
                states = await self.store.source_state_get()
            except Exception:
                continue
            for name, runner in self.runners.items():
                paused = bool((states.get(name) or {}).get("paused"))
                if paused != runner.paused:
                    runner.paused = paused
                    if not paused:
                        runner.failures = runner.tries = 0
                    runner.wake.set()
                    log.info("source %s %s (by the CLI)", name, "paused" if paused else "resumed")

    # -- the spool entry -------------------------------------------------------------------------------
    async def entry_for(self, sc: SourceConfig, raw: bytes, key: str, digest: str) -> SpoolEntry:
        """The intake checks on one pulled message -> its spool entry (quarantined when refused)."""
        return await source_entry(self.cfg, self.checks, sc, raw, key, digest)


async def source_entry(cfg: Config, checks: IntakeChecks, sc: SourceConfig, raw: bytes, key: str,
                       digest: str) -> SpoolEntry:
    """Check a pulled message as SMTP would at DATA and build its spool entry with its source key. What SMTP
    would refuse (5xx, and 4xx: pulled mail cannot be retried by its sender) and what is too large are
    quarantined with the reason instead: the message then goes to the failure folder, never lost."""
    mailbox = next((mb for mb in cfg.mailboxes if mb.address == sc.mailbox), None)
    if mailbox is None:
        raise SourceError("folder", f"mailbox {sc.mailbox} is not configured (reload?)", temporary=False)
    limit = sc.max_size or cfg.smtp.max_message_size
    record = ("source", {"name": sc.name, "kind": sc.kind, "key": key, "sha256": digest,
                         "trusted_authserv_ids": list(sc.trusted_authserv_ids) or None})
    received = lambda sid: _received(cfg.smtp.hostname, sc, key, sid)  # noqa: E731
    reason = ""
    from gateway.smtp.checks import header_end
    if len(raw) > limit:
        reason = f"too large: {len(raw)} bytes, over the limit of {limit} (max_size / [smtp] max_message_size)"
    elif header_end(raw) > cfg.smtp.max_header_size:
        reason = f"the header section is over [smtp] max_header_size ({cfg.smtp.max_header_size})"
    if not reason:
        try:
            entry = await checks.entry(mailbox=mailbox, raw=raw, mail_from=message_sender(raw),
                                       trusted_authserv_ids=sc.trusted_authserv_ids,
                                       trusted_arc_sealers=sc.trusted_arc_sealers, record=record,
                                       received=received, source_key=(sc.name, key, digest))
            return entry
        except Refused as exc:
            reason = f"refused at intake ({'temporary' if exc.temporary else 'permanent'}): {exc.reply}"
    from dataclasses import replace

    from gateway.spool import new_spool_id
    sid = new_spool_id()
    head = raw if len(raw) <= limit else raw[:min(header_end(raw) + 2, 256 * 1024)]
    entry = SpoolEntry(id=sid, received_at=time.time(), mail_from=message_sender(raw), rcpt_tos=(sc.mailbox,),
                       mailboxes=(sc.mailbox,), peer_ip="", helo="", tls=None, message_id="",
                       raw=received(sid).encode() + head, auth={record[0]: record[1]}, flags=("suspicious",),
                       source_key=(sc.name, key, digest))
    return replace(entry, state=SPOOL_QUARANTINED, reason=reason[:500])


def _received(hostname: str, sc: SourceConfig, key: str, spool_id: str) -> str:
    """Our trace field: the server we fetched from is named in a comment, it is not a mail hop."""
    where = sc.host or sc.endpoint
    proto = {"imap": "IMAP", "pop3": "POP3", "graph": "HTTPS (Microsoft Graph)"}[sc.kind]
    import email.utils
    return (f"Received: by {hostname} (ticketmx) with {proto} (source {sc.name} from {where} {key})\r\n"
            f"\tid {spool_id}\r\n\tfor <{sc.mailbox}>;\r\n\t{email.utils.formatdate(localtime=False)}\r\n")


async def pause_source(store: Store, name: str, reason: str) -> None:
    await store.source_state_set(name, paused=True, paused_reason=reason[:500], paused_at=time.time())


async def resume_source(store: Store, name: str) -> None:
    await store.source_state_set(name, paused=False, paused_reason="", failures=0)
