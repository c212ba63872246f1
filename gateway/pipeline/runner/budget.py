"""The per-message processing budget (``[pipeline] message_budget``).

A pure-Python loop in a stage or in the stdlib parser cannot be interrupted by
``asyncio.wait_for``, and a thread cannot be killed, so the hard bound is a
process boundary. A worker process records, in a small shared-memory block,
which spool entry its event loop (and its parse thread) is busy with, since
when, and in which step; the supervisor in the main process reads that block a
few times a second and SIGKILLs a worker that has been busy on one message for
longer than the budget (:mod:`gateway.pipeline.runner.process`), quarantines exactly
that message and hands the rest of the batch back.

What is charged to a message is *busy* time: the slices its coroutine runs on
the worker's event loop (its parse when inline, each stage's own code) and its
calls in the parse thread. Waiting for I/O (the store, rspamd, DNS) is not
charged: those have timeouts of their own, and while a message waits the loop
runs the others. Between slices the worker checks the budget itself, so a
message whose many steps add up to more than the budget is quarantined without
a kill — that cooperative check is all the in-process worker
(``[pipeline] processes = 0``) has.

The cost per message is a few attribute writes into a ctypes structure per
slice (about 1 µs; docs/perf.md).
"""
from __future__ import annotations

import ctypes
import time
from typing import Any, Callable, Coroutine, Generator, NamedTuple, TypeVar

T = TypeVar("T")

STEP_NONE = -1
STEP_PARSE = 0  # then 1..n: the worker's stages in order
REASON = "processing budget exceeded"
ENTRY_MAX = 64  # spool ids are far shorter


class Slot(ctypes.Structure):
    """What one thread of a worker is busy with. ``seq`` is odd while the slot is being rewritten."""

    _fields_ = [("seq", ctypes.c_uint64), ("active", ctypes.c_int32), ("step", ctypes.c_int32),
                ("spent", ctypes.c_double), ("since", ctypes.c_double), ("entry", ctypes.c_char * ENTRY_MAX)]


class Slots(ctypes.Structure):
    """A worker's two busy places: its event loop and its parse thread."""

    _fields_ = [("loop", Slot), ("thread", Slot)]


class Busy(NamedTuple):
    """A consistent reading of an active slot."""

    seq: int
    entry: str
    step: int
    spent: float  # busy seconds charged to the entry, including the current slice up to ``now``


def read_slot(slot: Slot, now: float) -> Busy | None:
    """The slot's entry and charge if it is active (None when idle or being rewritten)."""
    seq = slot.seq
    if seq & 1 or not slot.active:
        return None
    busy = Busy(seq, slot.entry.decode("ascii", "replace"), slot.step, slot.spent + max(0.0, now - slot.since))
    return busy if slot.seq == seq else None


class BudgetExceeded(BaseException):
    """Thrown into a message's coroutine when its busy time ran over the budget between two slices.

    A BaseException so the worker's ``except Exception`` (retry on error) does not take it for a failure."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Meter:
    """Charges busy time to spool entries and publishes what is running in ``slots``."""

    def __init__(self, budget: float, slots: Slots | None = None) -> None:
        self.budget = budget
        self.slots = slots if slots is not None else Slots()  # private memory for the in-process worker
        self.spent: dict[str, float] = {}
        self.steps: dict[str, int] = {}
        self.step_names: tuple[str, ...] = ("parse",)

    def step(self, sid: str, index: int) -> None:
        """``sid`` (running on the loop now) starts step ``index``."""
        self.steps[sid] = index
        self.slots.loop.step = index

    def forget(self, sid: str) -> None:
        self.spent.pop(sid, None)
        self.steps.pop(sid, None)

    def step_name(self, index: int) -> str:
        return self.step_names[index] if 0 <= index < len(self.step_names) else "?"

    def reason(self, sid: str) -> str:
        return (f"{REASON}: {self.spent.get(sid, 0.0):.1f}s busy, budget {self.budget:g}s, "
                f"in {self.step_name(self.steps.get(sid, STEP_NONE))}")

    def _begin(self, slot: Slot, sid: str, step: int) -> None:
        slot.seq += 1
        slot.entry = sid.encode("ascii", "replace")[:ENTRY_MAX]
        slot.spent = self.spent.get(sid, 0.0)
        slot.step = step
        slot.since = time.monotonic()
        slot.active = 1
        slot.seq += 1

    def _end(self, slot: Slot, sid: str) -> float:
        spent = slot.spent + (time.monotonic() - slot.since)
        slot.active = 0
        self.spent[sid] = spent
        return spent

    def in_thread(self, sid: str, step: int, fn: Callable[..., T]) -> Callable[..., T]:
        """``fn`` for the parse executor, charged to ``sid`` while it runs there."""
        def run(*args: Any) -> T:
            slot = self.slots.thread
            self._begin(slot, sid, step)
            try:
                return fn(*args)
            finally:
                self._end(slot, sid)
        return run

    def run(self, sid: str, coro: Coroutine[Any, Any, T]) -> "Metered":
        """Await this instead of ``coro``: each of its slices on the loop is charged to ``sid``."""
        return Metered(coro, self, sid)


class Metered:
    """Drives a coroutine slice by slice (as ``await`` would), charging each slice to one entry.

    Between slices, an entry over budget gets :class:`BudgetExceeded` thrown in where it waits."""

    __slots__ = ("coro", "meter", "sid")

    def __init__(self, coro: Coroutine[Any, Any, Any], meter: Meter, sid: str) -> None:
        self.coro, self.meter, self.sid = coro, meter, sid

    def __await__(self) -> Generator[Any, Any, Any]:
        coro, meter, sid = self.coro, self.meter, self.sid
        slot = meter.slots.loop
        value: Any = None
        error: BaseException | None = None
        thrown = False  # BudgetExceeded goes in once; what the coroutine then does is up to it
        while True:
            meter._begin(slot, sid, meter.steps.get(sid, STEP_NONE))
            try:
                out = coro.send(value) if error is None else coro.throw(error)
            except StopIteration as done:
                meter._end(slot, sid)
                return done.value
            except BaseException:
                meter._end(slot, sid)
                raise
            if meter._end(slot, sid) > meter.budget and not thrown:
                thrown = True
                value, error = None, BudgetExceeded(meter.reason(sid))  # it stops waiting and unwinds
                continue
            try:
                value, error = (yield out), None
            except BaseException as exc:  # cancellation, or anything else the task throws in
                value, error = None, exc
