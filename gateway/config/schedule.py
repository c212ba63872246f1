"""Retry schedules: interval lists like ``"1m, 5m*2, 30m*3, 2h*10"`` and the next attempt time.

A list item is a duration (``gateway.config.units.parse_duration``: ``ms``/``s``/``m``/``h``/``d``) optionally
followed by ``*N`` (repeat N times). After the n-th failed attempt a notification waits the n-th
interval; past the end of the list the last interval repeats. A notification whose next attempt
would fall after its maximum lifetime gets one last attempt at the expiry time; a failure at or
after the expiry dead-letters it (Postfix ``maximal_queue_lifetime`` semantics).
"""
from __future__ import annotations

import re
from datetime import datetime, tzinfo

from gateway.config.units import parse_duration

_ITEM = re.compile(r"^\s*([0-9.]+\s*[a-zA-Z]*)\s*(?:\*\s*(\d+))?\s*$")
MAX_REPEAT = 10000


def parse_intervals(value: object) -> tuple[float, ...]:
    """``"1m, 5m*2"`` -> ``(60.0, 300.0, 300.0)``. Raises ValueError naming the bad item."""
    if isinstance(value, list):
        value = ", ".join(str(v) for v in value)
    if not isinstance(value, str) or not value.strip():
        raise ValueError('expected an interval list like "1m, 5m*2, 30m*3, 2h*10"')
    out: list[float] = []
    for raw in value.split(","):
        m = _ITEM.match(raw)
        if not m:
            raise ValueError(f"bad interval {raw.strip()!r} (use e.g. \"5m\" or \"5m*2\")")
        seconds = parse_duration(m.group(1).strip())
        if seconds <= 0:
            raise ValueError(f"interval {raw.strip()!r} must be > 0")
        n = int(m.group(2)) if m.group(2) else 1
        if not 1 <= n <= MAX_REPEAT:
            raise ValueError(f"repeat count in {raw.strip()!r} must be between 1 and {MAX_REPEAT}")
        out.extend([seconds] * n)
    return tuple(out)


def delay_after(intervals: tuple[float, ...], failures: int) -> float:
    """Wait after the ``failures``-th failed attempt (1-based); the last interval repeats."""
    if failures < 1:
        return 0.0
    return intervals[min(failures, len(intervals)) - 1]


def next_attempt(intervals: tuple[float, ...], failures: int, started_at: float, now: float,
                 max_lifetime: float) -> float | None:
    """When to try again after a temporary failure, or None: dead-letter (lifetime used up)."""
    expires = started_at + max_lifetime
    if now >= expires:
        return None
    return min(now + delay_after(intervals, failures), expires)


# -- skip windows ------------------------------------------------------------------------------

_WINDOW = re.compile(r"^\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*$")


def parse_skip_times(value: object) -> tuple[tuple[int, int], ...]:
    """``"02:00-04:00"`` (or a list, or a comma-separated string) -> ((120, 240),) minutes of the day.

    A window may wrap midnight (``"22:00-02:00"``). Start is inclusive, end exclusive.
    """
    if isinstance(value, str):
        items = [v for v in value.split(",") if v.strip()]
    elif isinstance(value, list) and all(isinstance(v, str) for v in value):
        items = value
    else:
        raise ValueError('expected "HH:MM-HH:MM" or a list of them')
    out = []
    for item in items:
        m = _WINDOW.match(item)
        if not m:
            raise ValueError(f"bad time window {item.strip()!r} (use \"02:00-04:00\")")
        h1, m1, h2, m2 = (int(x) for x in m.groups())
        if h1 > 23 or h2 > 24 or m1 > 59 or m2 > 59 or (h2 == 24 and m2):
            raise ValueError(f"bad time in {item.strip()!r}")
        start, end = h1 * 60 + m1, h2 * 60 + m2
        if start == end:
            raise ValueError(f"empty window {item.strip()!r}")
        out.append((start, end))
    return tuple(out)


def _minute_of_day(now: float, tz: tzinfo | None) -> float:
    dt = datetime.fromtimestamp(now, tz) if tz is not None else datetime.fromtimestamp(now)
    return dt.hour * 60 + dt.minute + dt.second / 60 + dt.microsecond / 60e6


def in_window(windows: tuple[tuple[int, int], ...], now: float, tz: tzinfo | None = None) -> bool:
    if not windows:
        return False
    m = _minute_of_day(now, tz)
    for start, end in windows:
        if start < end and start <= m < end:
            return True
        if start > end and (m >= start or m < end):
            return True
    return False


def window_end(windows: tuple[tuple[int, int], ...], now: float, tz: tzinfo | None = None) -> float:
    """Epoch time the window containing ``now`` ends (``now`` when not in a window)."""
    t = now
    # step minute by minute at most one day: windows are minute-aligned
    m = _minute_of_day(now, tz)
    step = 60 - (m % 1) * 60  # to the next minute boundary
    for _ in range(24 * 60 + 1):
        if not in_window(windows, t, tz):
            return t
        t += step
        step = 60.0
    return t


__all__ = ["parse_intervals", "delay_after", "next_attempt", "parse_skip_times", "in_window", "window_end"]
