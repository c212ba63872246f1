"""Inbound rate limits per client IP and per sender address (450 4.7.1 at MAIL FROM).

Sliding-window counters in memory (per node). Off unless configured, so loopback
load tests run untouched.
"""
from __future__ import annotations

import re
import time
from collections import deque
from dataclasses import dataclass

from .units import parse_duration

_RATE = re.compile(r"^\s*(\d+)\s*/\s*(\S+)\s*$")


@dataclass(frozen=True, slots=True)
class Rate:
    count: int
    window: float

    def __str__(self) -> str:
        return f"{self.count} per {self.window:g}s"


def parse_rate(value: object) -> Rate | None:
    """``"100/1m"`` -> Rate(100, 60.0); ``""`` -> None (no limit)."""
    if value == "" or value is None:
        return None
    if not isinstance(value, str):
        raise TypeError("expected a rate like \"100/1m\"")
    m = _RATE.match(value)
    if not m:
        raise ValueError(f"invalid rate {value!r} (use e.g. \"100/1m\", \"20/10m\")")
    window = parse_duration(m.group(2) if m.group(2)[0].isdigit() else "1" + m.group(2))
    if int(m.group(1)) < 1 or window <= 0:
        raise ValueError(f"invalid rate {value!r}: count and window must be positive")
    return Rate(int(m.group(1)), window)


class SlidingWindow:
    """At most ``rate.count`` events per ``rate.window`` seconds for each key."""

    MAX_KEYS = 100_000  # bound memory under a flood of distinct keys

    def __init__(self, rate: Rate) -> None:
        self.rate = rate
        self.events: dict[str, deque[float]] = {}

    def _trim(self, key: str, now: float) -> deque[float]:
        q = self.events.get(key)
        if q is None:
            if len(self.events) >= self.MAX_KEYS:
                self._sweep(now)
            q = self.events[key] = deque()
        cutoff = now - self.rate.window
        while q and q[0] <= cutoff:
            q.popleft()
        return q

    def _sweep(self, now: float) -> None:
        cutoff = now - self.rate.window
        for key in [k for k, q in self.events.items() if not q or q[-1] <= cutoff]:
            del self.events[key]

    def allowed(self, key: str, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        return len(self._trim(key, now)) < self.rate.count

    def hit(self, key: str, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        self._trim(key, now).append(now)

    def retry_after(self, key: str, now: float | None = None) -> float:
        """Seconds until ``key`` may have one more event (0 when it may now)."""
        now = time.monotonic() if now is None else now
        q = self._trim(key, now)
        return 0.0 if len(q) < self.rate.count else max(0.0, q[0] + self.rate.window - now)
