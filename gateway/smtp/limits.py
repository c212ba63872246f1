"""Session and rate limits shared by every SMTP process of one gateway.

With ``[smtp] processes`` above 1 the kernel spreads connections over several
processes (SO_REUSEPORT hashes the 4-tuple, so one client's connections land on
different processes). Per-process counters would then let a client have N times
``max_sessions_per_ip`` sessions and N times its rate. So the main process holds
the one authority (:class:`Limits`); its own sessions use it directly
(:class:`LocalLimits`), other SMTP processes ask it over their control pipe
(``gateway.smtp.group.RemoteLimits``). Same interface either way.
"""
from __future__ import annotations

from collections import Counter
from typing import Protocol

from gateway.smtp import replies
from gateway.config.load import Config
from gateway.runtime.ratelimit import SlidingWindow
from gateway.smtp.replies import Reply


class Limits:
    """Counts sessions per SMTP process and per client IP; owns the rate windows."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.per_ip: Counter[str] = Counter()
        self.per_slot: dict[int, Counter[str]] = {}
        self.total = 0
        self.rate_ip: SlidingWindow | None = None
        self.rate_sender: SlidingWindow | None = None
        self.configure(cfg)

    def configure(self, cfg: Config) -> None:
        """Apply a (re)loaded config; windows survive a reload when their rate is unchanged."""
        old = self.cfg.smtp
        self.cfg = cfg
        new = cfg.smtp
        if self.rate_ip is None or old.rate_per_ip != new.rate_per_ip:
            self.rate_ip = SlidingWindow(new.rate_per_ip) if new.rate_per_ip else None
        if self.rate_sender is None or old.rate_per_sender != new.rate_per_sender:
            self.rate_sender = SlidingWindow(new.rate_per_sender) if new.rate_per_sender else None

    def open(self, slot: int, ip: str | None) -> Reply | None:
        """Count a new session (always: its ``close`` uncounts it) and say whether to refuse it."""
        self.total += 1
        if ip is not None:
            self.per_ip[ip] += 1
            self.per_slot.setdefault(slot, Counter())[ip] += 1
        smtp = self.cfg.smtp
        if self.total > smtp.max_sessions:
            return replies.TOO_MANY_SESSIONS
        if smtp.proxy_protocol:
            return None  # every connection comes from the load balancer: it limits per client
        if ip is None:
            return None
        held = self.per_ip[ip]  # this session included
        if held > smtp.max_sessions_per_ip:
            return replies.TOO_MANY_SESSIONS_IP
        if self.total > smtp.max_sessions - smtp.reserved_sessions and held > smtp.reserved_sessions_per_ip:
            # Only reserved slots are left: they are for addresses that hold few sessions, so one
            # address (or a few) filling every slot cannot lock a fresh client out (docs/smtp.md).
            return replies.TOO_MANY_SESSIONS_BUSY
        return None

    def close(self, slot: int, ip: str | None) -> None:
        self.total = max(0, self.total - 1)
        if ip is None:
            return
        mine = self.per_slot.get(slot)
        if mine is None or mine[ip] <= 0:
            return  # counted before a restart of that process (already dropped)
        mine[ip] -= 1
        if mine[ip] <= 0:
            del mine[ip]
        self.per_ip[ip] -= 1
        if self.per_ip[ip] <= 0:
            del self.per_ip[ip]

    def drop_slot(self, slot: int) -> None:
        """An SMTP process died: its sessions died with it."""
        mine = self.per_slot.pop(slot, None) or Counter()
        for ip, n in mine.items():
            self.total = max(0, self.total - n)
            self.per_ip[ip] -= n
            if self.per_ip[ip] <= 0:
                del self.per_ip[ip]

    def rate_check(self, ip: str, sender: str) -> Reply | None:
        """At MAIL FROM: refuse (450 4.7.1) a client IP or sender over its configured rate."""
        for limiter, key, reply in ((self.rate_ip, ip, replies.RATE_LIMITED_IP),
                                    (self.rate_sender, sender, replies.RATE_LIMITED_SENDER)):
            if limiter is not None and not limiter.allowed(key):
                return reply
        return None

    def rate_hit(self, ip: str, sender: str) -> None:
        """A message was accepted: it counts against both rates."""
        if self.rate_ip is not None:
            self.rate_ip.hit(ip)
        if self.rate_sender is not None:
            self.rate_sender.hit(sender)

    @property
    def rates_on(self) -> bool:
        return self.rate_ip is not None or self.rate_sender is not None


class LimitsClient(Protocol):
    """What an SMTP process's sessions need; local or over the control pipe."""

    rates_on: bool

    async def open(self, ip: str | None) -> Reply | None: ...

    def close(self, ip: str | None) -> None: ...

    async def rate_check(self, ip: str, sender: str) -> Reply | None: ...

    def rate_hit(self, ip: str, sender: str) -> None: ...


class LocalLimits:
    """The main process's own sessions: straight calls into the authority (slot 0)."""

    def __init__(self, limits: Limits, slot: int = 0) -> None:
        self.limits = limits
        self.slot = slot

    @property
    def rates_on(self) -> bool:
        return self.limits.rates_on

    async def open(self, ip: str | None) -> Reply | None:
        return self.limits.open(self.slot, ip)

    def close(self, ip: str | None) -> None:
        self.limits.close(self.slot, ip)

    async def rate_check(self, ip: str, sender: str) -> Reply | None:
        return self.limits.rate_check(ip, sender)

    def rate_hit(self, ip: str, sender: str) -> None:
        self.limits.rate_hit(ip, sender)
