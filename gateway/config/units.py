"""Parsing of human-friendly sizes and durations used in the TOML config."""
from __future__ import annotations

import re

from gateway.runtime.ratelimit import Rate

_SIZE_UNITS = {
    "": 1, "b": 1,
    "k": 1000, "kb": 1000, "kib": 1024,
    "m": 1000**2, "mb": 1000**2, "mib": 1024**2,
    "g": 1000**3, "gb": 1000**3, "gib": 1024**3,
}
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_NUM_UNIT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


def parse_size(value: object) -> int:
    """``"25MiB"`` -> 26214400; a bare int is bytes. Raises ValueError with a readable reason."""
    if isinstance(value, bool):
        raise ValueError("expected a size like \"25MiB\", got a boolean")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("size must not be negative")
        return value
    if not isinstance(value, str):
        raise ValueError(f"expected a size like \"25MiB\", got {type(value).__name__}")
    m = _NUM_UNIT.match(value)
    if not m or m.group(2).lower() not in _SIZE_UNITS:
        raise ValueError(f"invalid size {value!r} (use e.g. \"512KiB\", \"25MiB\", \"1GB\")")
    return int(float(m.group(1)) * _SIZE_UNITS[m.group(2).lower()])


def parse_duration(value: object) -> float:
    """``"2s"``, ``"500ms"``, ``"5m"``, ``"1h"`` -> seconds; a bare number is seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration like \"2s\", got a boolean")
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError("duration must not be negative")
        return float(value)
    if not isinstance(value, str):
        raise ValueError(f"expected a duration like \"2s\", got {type(value).__name__}")
    m = _NUM_UNIT.match(value)
    unit = m.group(2).lower() if m else None
    if not m or (unit not in _DURATION_UNITS and unit != ""):
        raise ValueError(f"invalid duration {value!r} (use e.g. \"500ms\", \"2s\", \"5m\", \"1h\")")
    return float(m.group(1)) * _DURATION_UNITS.get(unit or "s", 1.0)


_RATE = re.compile(r"^\s*(\d+)\s*/\s*(\S+)\s*$")


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
