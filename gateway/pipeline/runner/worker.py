"""The pipeline worker: claims spooled messages, runs the stages, commits the outcome.

It runs either inside the SMTP process (``[pipeline] processes = 0``) or, by
default, in worker processes of its own (:mod:`gateway.pipeline.runner.process`) so
MIME parsing and ticket writes use the second core and never stall the SMTP
loop. Parsing runs in a bounded executor; all outcomes of a batch are written
in one store transaction that also marks the spool entries done.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
import traceback
from dataclasses import replace
from typing import Callable, Iterable, Protocol

from gateway.config.load import Config
from gateway.runtime.metrics import Metrics
from gateway.config.recipients import RecipientMap
from gateway.store.base import QUARANTINED, Delivery, SpoolEntry, Store
from gateway.pipeline.parse.bigmime import LargePartSplitter
from gateway.pipeline.runner.budget import STEP_PARSE, BudgetExceeded, Meter, Slots
from gateway.pipeline.parse.mime import parse_message
from gateway.pipeline.runner.assemble import build_pipeline
from gateway.pipeline.stages.core import CONTINUE, DROP, QUARANTINE, TICKET, Context, Inbound, Stage

log = logging.getLogger(__name__)


PAUSE_KEY = "pipeline_paused"


class StatsSink(Protocol):
    """Where a worker reports what it did (the Prometheus metrics, directly or via the parent)."""

    def outcome(self, state: str, latency: float | None) -> None: ...
    def error(self) -> None: ...
    def batch(self, seconds: float) -> None: ...
    def consecutive_failures(self, n: int) -> None: ...
    def notifications_queued(self, n: int) -> None: ...
    def budget_exceeded(self) -> None: ...
    def acks_suppressed(self, reasons: dict[str, int]) -> None: ...
    def acknowledgements(self, results: dict[str, int]) -> None: ...


class MetricsSink:
    """Reports straight into a :class:`Metrics` (in-process worker, or the parent applying reports)."""

    def __init__(self, metrics: Metrics, on_notify: "Callable[[], None] | None" = None) -> None:
        self.metrics = metrics
        self.on_notify = on_notify  # wakes the relay worker

    def notifications_queued(self, n: int) -> None:
        if self.on_notify is not None:
            self.on_notify()

    def acks_suppressed(self, reasons: dict[str, int]) -> None:
        for reason, n in reasons.items():
            self.metrics.acks_suppressed.labels(reason=reason).inc(n)

    def acknowledgements(self, results: dict[str, int]) -> None:
        for result, n in results.items():
            self.metrics.acks.labels(result=result).inc(n)

    def outcome(self, state: str, latency: float | None) -> None:
        self.metrics.outcomes.labels(state=state).inc()
        if latency is not None:
            self.metrics.processing_latency.observe(latency)

    def error(self) -> None:
        self.metrics.pipeline_errors.inc()

    def batch(self, seconds: float) -> None:
        self.metrics.stage_duration.observe(seconds)

    def consecutive_failures(self, n: int) -> None:
        self.metrics.consecutive_failures.set(n)

    def budget_exceeded(self) -> None:
        self.metrics.budget_exceeded.inc()


# Messages up to this size are parsed on the worker's loop: 0.12 ms for 4 KB, 1.7 ms for 60 KB. A hop to
# the parse thread costs more than that for small mail, and while the thread parses it holds the GIL the
# loop needs for the batch's other messages. Larger ones go to the thread so the loop stays responsive.
INLINE_PARSE_MAX = 256 * 1024


def make_executor() -> concurrent.futures.Executor:
    """One parse thread per worker: keeps a huge message's parse off the worker's event loop."""
    return concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="parse")


class Worker:
    def __init__(self, cfg: Config, store: Store, stats: StatsSink, executor: concurrent.futures.Executor,
                 stage_names: Iterable[str] | None = None, owner: str = "", slots: Slots | None = None,
                 inline_parse_max: int = INLINE_PARSE_MAX) -> None:
        self.cfg = cfg
        # Up to this size a message is parsed on this worker's own loop. Inside the SMTP process
        # ([pipeline] processes = 0) that loop answers SMTP clients: 0 there, so no parse runs on it.
        self.inline_parse_max = inline_parse_max
        self.store = store
        self.stats = stats
        self.owner = owner
        self.executor = executor
        self.stages: list[Stage] = build_pipeline(cfg, tuple(stage_names) if stage_names else None)
        # Busy time per message ([pipeline] message_budget); ``slots`` is shared with the supervisor,
        # which kills this process if one message keeps it busy too long (gateway/pipeline/runner/budget.py).
        self.meter = Meter(cfg.pipeline.message_budget, slots)
        self.meter.step_names = ("parse", *(st.name for st in self.stages))
        from relay.notify_hook import make_hook
        self.hook = make_hook(cfg)  # acknowledgements / agent replies, queued in the delivery transaction
        self.ctx = Context(cfg=cfg, recipients=RecipientMap(cfg.mailboxes))
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self.consecutive_failures = 0
        self._keys_loaded = False
        # Claimed by this worker, not settled: a store error cut the batch short (the outcome and the
        # fallback retry/quarantine write both failed). Kept here and put back before the next claim,
        # retried with backoff until the store takes writes again (issue 25, item 4).
        self._unsettled: set[str] = set()
        self._errors_seen: set[str] = set()  # store error kinds already logged with their traceback

    def wake(self) -> None:
        """New mail was spooled: look now rather than at the next poll."""
        self._wake.set()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="pipeline-worker")

    async def close(self) -> None:
        """Finish the batch in hand, then stop (what is still queued waits for the next start)."""
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        if self._unsettled:
            try:
                await self._put_back()
            except Exception as exc:  # left processing: the next start recovers them
                log.warning("could not put back %d spool entries at stop: %s", len(self._unsettled), exc)

    async def _run(self) -> None:
        failures = 0
        while not self._stopping:
            try:
                n = await self.run_once()
            except Exception as exc:
                failures += 1
                self._log_failure(failures, exc)
                # Back off 0.1 s, 0.2 s, ... up to the poll interval: a store that takes writes again is
                # seen within that, and a long outage costs one attempt per interval.
                await self._sleep(min(self.cfg.pipeline.poll_interval, 0.05 * 2 ** min(failures, 10)))
                continue
            if failures:
                log.warning("pipeline batches work again after %d failed attempt(s)%s", failures,
                            "" if not self._unsettled else f"; {len(self._unsettled)} entries still to put back")
                failures = 0
            if self._stopping:
                continue
            if n >= self.cfg.pipeline.batch_size:
                continue  # a backlog: the next full batch at once
            if n == 0:
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), self.cfg.pipeline.poll_interval)
                except asyncio.TimeoutError:
                    continue
            await self._let_batch_fill()

    def _log_failure(self, failures: int, exc: Exception) -> None:
        """The first failure with its traceback, then one line at the 2nd, 4th, 8th ... in a row: a store
        that refuses writes for an hour leaves a dozen lines, not one per poll."""
        if failures == 1:
            log.exception("pipeline batch failed; retrying with backoff")
        elif failures & (failures - 1) == 0:
            log.error("pipeline batch failed %d times in a row: %s: %s%s", failures, type(exc).__name__,
                      " ".join(str(exc).split())[:300],
                      f" ({len(self._unsettled)} entries wait to be put back)" if self._unsettled else "")

    async def _sleep(self, seconds: float) -> None:
        """Sleep, but not past a stop."""
        if self._stopping:
            return
        self._wake.clear()
        try:
            await asyncio.wait_for(self._wake.wait(), seconds)
        except asyncio.TimeoutError:
            pass

    async def _put_back(self) -> None:
        """Release the entries a failed batch left ``processing`` (attempt refunded: the store failed,
        not the message). Raises while the store still refuses; the ids stay for the next try."""
        ids = tuple(sorted(self._unsettled))
        n = await self.store.spool_release(ids, self.owner, refund=True)
        self._unsettled.difference_update(ids)
        log.warning("put back %d spool entries left processing by a failed batch (%d already settled)",
                    n, len(ids) - n)

    async def _let_batch_fill(self) -> None:
        """Woken by a commit, or the last batch was short: let more mail arrive before claiming.

        Each batch costs two transactions (claim, deliver; the second with an fsync) whatever its
        size. Claiming at every wake-up gave one-message batches under load (a worker claimed as
        soon as the SMTP side committed one message), so those costs were paid per message.
        ``[pipeline] batch_wait`` (20 ms) lets a batch fill up; a ticket waits at most that much longer.
        Fewer, larger delivery transactions also leave the store's write lock to the SMTP side's spool
        commits more often: with 5 ms, p99 EOD->250 was 27-35 ms at half load, with 20 ms 12-22 ms."""
        wait = self.cfg.pipeline.batch_wait
        if wait > 0 and not self._stopping:
            await asyncio.sleep(wait)

    async def run_once(self) -> int:
        """Process one batch of due entries; returns how many were claimed."""
        started = time.perf_counter()
        if not self._keys_loaded:
            from gateway.pipeline.stages.twoway import thread_keys
            from gateway.config.twoway import TwoWayConfig
            self.ctx = replace(self.ctx, keys=await thread_keys(self.cfg.twoway or TwoWayConfig(), self.store))
            if self.hook is not None:
                self.hook.keys = self.ctx.keys  # mail to the team carries Message-IDs signed for its ticket
            self._keys_loaded = True
            if self.hook is not None:  # List-Unsubscribe tokens are signed with the threading key
                self.hook.notifier.unsubscribe_keys = self.ctx.keys
        if self._unsettled:
            await self._put_back()  # before claiming more: nothing of ours stays stranded
        if await self.store.control_get(PAUSE_KEY):
            return 0  # paused (repeated failures or an operator): `ticketmx pipeline resume` continues
        entries = await self.store.spool_claim(self.cfg.pipeline.batch_size, time.time(), self.owner)
        if not entries:
            return 0
        try:
            deliveries: list[Delivery] = []
            # Every message's task ends before a failure is raised: none runs on behind a failed batch.
            results = await asyncio.gather(*(self._within_budget(e) for e in entries), return_exceptions=True)
            for outcome in results:
                if isinstance(outcome, BaseException):
                    raise outcome
            for entry, outcome in zip(entries, results):
                if outcome is not None:
                    deliveries.append(outcome)
            if deliveries:
                await self._deliver(deliveries)
        except BaseException:
            # Whatever is still processing and ours goes back (the settled ones are not touched).
            self._unsettled.update(e.id for e in entries)
            raise
        self.stats.batch(time.perf_counter() - started)
        return len(entries)

    async def _within_budget(self, entry: SpoolEntry) -> Delivery | None:
        """:meth:`_process`, its busy time metered; over the budget between two steps: quarantined."""
        meter = self.meter
        try:
            return await meter.run(entry.id, self._process(entry))
        except BudgetExceeded as exc:
            self.stats.budget_exceeded()
            log.warning("%s: %s", entry.id, exc.reason, extra={"trace_id": entry.id})
            return Delivery(entry.id, "quarantine", reason=exc.reason,
                            history=({"stage": meter.step_name(meter.steps.get(entry.id, -1)),
                                      "action": "quarantine", "reason": exc.reason},))
        finally:
            meter.forget(entry.id)

    async def _process(self, entry: SpoolEntry) -> Delivery | None:
        """The delivery for one entry, or None when it was rescheduled after an error."""
        max_attempts = self.cfg.pipeline.max_attempts
        if entry.attempts > max_attempts:
            # Claimed more often than allowed without finishing: it crashed its worker each time.
            return Delivery(entry.id, "quarantine", reason=f"failed {entry.attempts - 1} times: "
                            f"{entry.last_error or 'processing crashed'}")
        if entry.interrupted > max_attempts:
            # Found processing at more service starts than that: most likely it takes the whole service
            # down (an OOM kill of the process group, a crash of the in-process worker).
            return Delivery(entry.id, "quarantine", reason=f"interrupted {entry.interrupted} times: the service "
                            "stopped or crashed each time while processing it")
        try:
            self.meter.step(entry.id, STEP_PARSE)
            if entry.chunked:
                delivery = await self._run_stages(await self._large(entry))
            elif len(entry.raw) <= self.inline_parse_max:
                delivery = await self._run_stages(Inbound(entry, parse_message(entry.raw)))
            else:
                loop = asyncio.get_running_loop()
                parsed = await loop.run_in_executor(self.executor, self.meter.in_thread(entry.id, STEP_PARSE,
                                                                                        parse_message), entry.raw)
                delivery = await self._run_stages(Inbound(entry, parsed))
            if self.consecutive_failures:
                self.consecutive_failures = 0
                self.stats.consecutive_failures(0)
            return delivery
        except Exception as exc:
            self.stats.error()
            self.consecutive_failures += 1
            self.stats.consecutive_failures(self.consecutive_failures)
            limit = self.cfg.pipeline.pause_after_failures
            if limit and self.consecutive_failures >= limit:
                await self.store.control_set(PAUSE_KEY, f"{self.consecutive_failures} consecutive failures, "
                                                        f"last: {type(exc).__name__}: {exc}"[:500])
                log.error("pipeline paused after %d consecutive failures; resume with `ticketmx pipeline "
                          "resume`", self.consecutive_failures)
                await self._tell_admin(f"{self.consecutive_failures} consecutive failures, last: "
                                       f"{type(exc).__name__}: {exc}"[:300])
            error = f"{type(exc).__name__}: {exc}"[:500]
            trace = traceback.format_exc()[-20000:]  # kept with the quarantined entry, never logged
            log.warning("pipeline error on %s (attempt %d/%d): %s", entry.id, entry.attempts, max_attempts,
                        error, extra={"trace_id": entry.id})
            if entry.attempts >= max_attempts:
                return Delivery(entry.id, "quarantine", reason=f"failed {entry.attempts} times: {error}",
                                traceback=trace)
            await self.store.spool_retry(entry.id, error, time.time() + self.cfg.pipeline.retry_delay)
            return None

    async def _large(self, entry: SpoolEntry) -> Inbound:
        """A chunked entry, streamed: its chunks go one at a time through the splitter, which decodes
        large attachments as they pass and leaves a small skeleton for the MIME parser. Memory stays
        near one copy of the attachments instead of many copies of the whole message."""
        loop = asyncio.get_running_loop()
        splitter = LargePartSplitter()
        feed = self.meter.in_thread(entry.id, STEP_PARSE, splitter.feed)
        await loop.run_in_executor(self.executor, feed, entry.raw)
        async for chunk in self.store.spool_body_chunks(entry):
            await loop.run_in_executor(self.executor, feed, chunk)
            del chunk
        skeleton, elided = await loop.run_in_executor(self.executor,
                                                      self.meter.in_thread(entry.id, STEP_PARSE, splitter.finish))
        parsed = await loop.run_in_executor(self.executor, self.meter.in_thread(entry.id, STEP_PARSE, parse_message),
                                            skeleton, elided)
        del elided
        store = self.store
        return Inbound(replace(entry, raw=skeleton), parsed, load_original=lambda: store.spool_full_raw(entry))

    async def _tell_admin(self, reason: str) -> None:
        """Optional admin notification when processing pauses (``[pipeline] admin_address``)."""
        admin = self.cfg.pipeline.admin_address
        if not admin or self.hook is None or not hasattr(self.store, "transaction"):
            return
        from relay.notify import MailboxInfo, TicketInfo
        from gateway.store.relay_queue import enqueue
        mb = self.cfg.mailboxes[0] if self.cfg.mailboxes else None
        n = self.hook.notifier.build(
            "paused", ticket=TicketInfo(None, "pipeline", "paused"),
            mailbox=MailboxInfo(mb.address if mb else self.cfg.relay.from_address, mb.name if mb else ""),
            to=[admin], context={"reason": reason, "hostname": self.cfg.smtp.hostname},
            dedupe_key=f"paused:{int(time.time() // 3600)}")  # at most one an hour
        try:
            await self.store.transaction(lambda conn: enqueue(conn, n))
            self.stats.notifications_queued(1)
        except Exception:
            log.exception("could not queue the admin notification")

    async def _run_stages(self, msg: Inbound) -> Delivery:
        history: list[dict[str, str]] = []
        contact_updates: list[tuple[str, bool, str]] = []
        sid = msg.entry.id
        step = self.meter.step
        skip, msg = _released(msg)
        for index, stage in enumerate(self.stages, 1):
            if skip is not None and stage.name == skip["stage"]:
                # An operator released the entry from this stage's quarantine (`ticketmx spool release`): once.
                history.append({"stage": stage.name, "action": "released", "reason": skip["reason"]})
                skip = None
                continue
            step(sid, index)
            verdict = await stage.run(msg, self.ctx)
            history.append({"stage": stage.name, "action": verdict.action, "reason": verdict.reason})
            if verdict.data:
                msg.findings[stage.name] = verdict.data
            if verdict.contact_updates:
                contact_updates += verdict.contact_updates
            if verdict.action == CONTINUE:
                continue
            common = {"reason": verdict.reason, "history": tuple(history), "contact_updates": tuple(contact_updates)}
            if verdict.action == DROP:
                if stage.name == "bounce" and "bounce" in verdict.data:
                    return Delivery(sid, "suppress", report={"type": "dsn", **verdict.data["bounce"]}, **common)
                if stage.name == "bounce" and "mdn" in verdict.data:
                    return Delivery(sid, "suppress", report={"type": "mdn", **verdict.data["mdn"]}, **common)
                if verdict.data.get("opt_out"):  # stage unsubscribe: recorded by the notification hook
                    return Delivery(sid, "suppress", opt_out=verdict.data["opt_out"], **common)
                return Delivery(sid, "suppress", **common)
            if verdict.action == QUARANTINE:
                return Delivery(sid, "quarantine", **common)
            if verdict.action == TICKET and verdict.ticket is not None:
                t = verdict.ticket
                return Delivery(sid, "note" if t.note else "ticket", queue=t.queue, mailbox=t.mailbox,
                                article=t.article, thread=t.thread, ticket_fields=t.fields,
                                participants=t.participants, updates=t.updates, ticket_history=t.history,
                                headers=msg.parsed.headers, **common)
            raise ValueError(f"stage {stage.name} returned an invalid verdict {verdict.action!r}")
        return Delivery(sid, "quarantine", reason="no stage reached a final verdict", history=tuple(history),
                        contact_updates=tuple(contact_updates))

    async def _deliver(self, deliveries: list[Delivery]) -> None:
        now = time.time()
        try:
            before = self.hook.queued if self.hook is not None else 0
            if self.hook is not None:
                self.hook.take_suppressed()  # only what this transaction commits is counted
                self.hook.take_ack_results()
            results = await self.store.deliver(deliveries, now, on_delivered=self.hook)
            if self.hook is not None and self.hook.queued > before:
                self.stats.notifications_queued(self.hook.queued - before)
            if self.hook is not None and (suppressed := self.hook.take_suppressed()):
                by_reason: dict[str, int] = {}
                for reason in suppressed.values():
                    by_reason[reason] = by_reason.get(reason, 0) + 1
                report = getattr(self.stats, "acks_suppressed", None)
                if report is not None:
                    report(by_reason)
            if self.hook is not None and (decided := self.hook.take_ack_results()):
                by_result: dict[str, int] = {}
                for result in decided.values():
                    by_result[result] = by_result.get(result, 0) + 1
                report = getattr(self.stats, "acknowledgements", None)
                if report is not None:
                    report(by_result)
        except Exception as exc:
            if len(deliveries) == 1:
                d = deliveries[0]
                # The traceback once per kind of error: a full disk rejects every outcome alike.
                kind = type(exc).__name__
                log.error("store rejected the outcome of %s: %s: %s", d.spool_id, kind, " ".join(str(exc).split())[:300],
                          exc_info=kind not in self._errors_seen, extra={"trace_id": d.spool_id})
                self._errors_seen.add(kind)
                entry = await self.store.spool_get(d.spool_id)
                attempts = entry.attempts if entry else self.cfg.pipeline.max_attempts
                if attempts >= self.cfg.pipeline.max_attempts or d.kind == "quarantine":
                    await self.store.deliver([Delivery(d.spool_id, "quarantine",
                                                       reason="store error while saving the outcome")], now)
                    self.stats.outcome(QUARANTINED, None)
                else:
                    await self.store.spool_retry(d.spool_id, "store error while saving the outcome",
                                                 now + self.cfg.pipeline.retry_delay)
                return
            for d in deliveries:  # isolate the one that fails
                await self._deliver([d])
            return
        for r in results:
            received = _received_at(r.spool_id)
            self.stats.outcome(r.state, max(0.0, now - received) if received else None)
            log.info("%s -> %s%s%s", r.spool_id, r.state, f" {r.ticket_number}" if r.ticket_number else "",
                     f" ({r.reason})" if r.reason else "", extra={"trace_id": r.spool_id})


def _released(msg: Inbound) -> tuple[dict[str, str] | None, Inbound]:
    """The stage an operator's release skips once, with the history reason naming who and when.

    A forced release from the identity check (the From read two ways) makes the sender the From DMARC
    evaluated, but never trusted: the message is handled as suspicious mail (its own ticket, flagged,
    never acting as an agent or on an existing ticket)."""
    rel = msg.entry.released
    if not rel or not rel.get("stage"):
        return None, msg
    from gateway.store.render import iso
    stage = str(rel["stage"])
    reason = f"skipped once: released by {rel.get('by', '?')} at {iso(float(rel.get('at') or 0))}"
    if rel.get("forced"):
        reason += " (--force)"
    if stage == "identity" and "suspicious" not in msg.entry.flags:
        msg = replace(msg, entry=replace(msg.entry, flags=(*msg.entry.flags, "suspicious")))
        reason += "; handled as suspicious mail"
    return {"stage": stage, "reason": reason}, msg


def _received_at(spool_id: str) -> float:
    """Receive time encoded in the spool id (ms since epoch in the first 11 hex digits)."""
    try:
        return int(spool_id[:11], 16) / 1000.0
    except ValueError:
        return 0.0
