"""Times in query parameters: a duration back from now ("90m", "2d", "1w") or an ISO 8601 date or
date-time (UTC unless it says otherwise) — the same forms as the CLI's ``--since``."""
from __future__ import annotations

import time
from datetime import datetime, timezone

from .deps import Problem

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_when(text: str | None, param: str) -> float | None:
    """Epoch seconds, None when absent; a 422 problem naming ``param`` when unreadable."""
    if text is None or not text.strip():
        return None
    value = text.strip()
    unit = value[-1:].lower()
    if unit in _UNITS and value[:-1].replace(".", "", 1).isdigit():
        return time.time() - float(value[:-1]) * _UNITS[unit]
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00") if value.endswith("Z") else value)
    except ValueError:
        raise Problem(422, "Unprocessable Content", f"{param}: {text!r} is neither a duration like 2d, 12h, 90m, "
                      "1w nor an ISO date like 2026-11-20 or 2026-11-20T10:00Z") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return when.timestamp()
