"""Config of the web UI (``[ui]``, docs/ui.md): sessions and sign-in limits. The UI is served on the
``[http] listen`` port under /ui/ whenever the HTTP server runs; these keys only tune it.

Kept apart from gateway/config/load.py like http.py: load.py only calls :func:`parse_ui`.
"""
from __future__ import annotations

from dataclasses import dataclass

from gateway.config.tomltable import Table
from gateway.config.units import parse_duration, parse_rate
from gateway.runtime.ratelimit import Rate


@dataclass(frozen=True, slots=True)
class UiConfig:
    enabled: bool = True                          # false: no /ui/ routes (the API stays)
    session_lifetime: float = 12 * 3600.0         # a session ends this long after sign-in, used or not
    session_idle: float = 2 * 3600.0              # ... or this long after its last request
    signin_rate_per_account: Rate | None = Rate(5, 900.0)  # failed sign-ins per address (counted in the store: every process and node)
    signin_rate_per_ip: Rate | None = Rate(30, 900.0)      # failed sign-ins per client address (counted in the store)


def _bool(v: object) -> bool:
    if not isinstance(v, bool):
        raise TypeError("expected true or false")
    return v


def parse_ui(t: Table) -> UiConfig:
    """Read ``[ui]``; bad values are reported on ``t`` with their dotted key."""
    d = UiConfig()
    cfg = UiConfig(
        enabled=t.get("enabled", d.enabled, _bool),
        session_lifetime=t.get("session_lifetime", d.session_lifetime, parse_duration),
        session_idle=t.get("session_idle", d.session_idle, parse_duration),
        signin_rate_per_account=t.get("signin_rate_per_account", d.signin_rate_per_account, parse_rate),
        signin_rate_per_ip=t.get("signin_rate_per_ip", d.signin_rate_per_ip, parse_rate),
    )
    if not 60 <= cfg.session_lifetime <= 90 * 86400:
        t.error("session_lifetime", "must be between 1m and 90d")
    if not 60 <= cfg.session_idle <= cfg.session_lifetime:
        t.error("session_idle", "must be between 1m and session_lifetime")
    t.finish()
    return cfg
