"""Optional rspamd integration over its HTTP API (``POST /checkv2``).

Two users of one tiny client:

* ``RspamdCheck`` (gateway/smtp/rspamd_check.py, ``name = "rspamd"``), an SMTP-time check: a score
  at or above ``reject_score`` answers ``550 5.7.1`` at end of DATA (the sending MTA bounces to its
  user: no backscatter from us). Otherwise it lets the message through and leaves the score in the
  spool entry's flags (``rspamd-score:<score>``) so the pipeline stage need not ask again.
* :class:`RspamdStage` (``name = "rspamd"``), a pipeline stage: ``tag_score`` -> continue with
  ``{"tags": [tag], "rspamd": {...}}``; ``quarantine_score`` -> quarantine; ``reject_score``
  (when the SMTP check did not run) -> drop.

HTTP is httpx (gateway/runtime/httpclient.py): one pooled ``AsyncClient`` per process and event loop, so
the SMTP processes and the pipeline workers each keep their own keep-alive connections to rspamd;
the whole exchange is bounded by one overall timeout; https is verified against the system's CAs.

Errors (connection refused, timeout, non-200, bad JSON) raise :class:`RspamdError`; the callers
apply ``on_error``: ``accept`` (fail open, the default) or ``tempfail`` (``451 4.7.1`` at DATA; in
the pipeline the stage raises so the runner retries and finally quarantines).
"""
from __future__ import annotations

import asyncio
import json
import ssl

import httpx
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway.config.pipeline import RspamdPolicy, parse_url, policy_for
from gateway.pipeline.stages.core import CONTINUE, DROP, QUARANTINE, Context, Inbound, Verdict
from gateway.runtime.httpclient import LoopClients, TooLarge, read_limited

__all__ = ["RspamdError", "RspamdResult", "RspamdClient", "RspamdStage", "decide", "parse_url"]

FLAG_PREFIX = "rspamd-score:"
_MAX_RESPONSE = 4 * 1024 * 1024


class RspamdError(Exception):
    """rspamd could not give a verdict (unreachable, timeout, HTTP error, unreadable reply)."""


@dataclass(frozen=True, slots=True)
class RspamdResult:
    score: float
    required_score: float | None = None
    action: str = ""
    symbols: tuple[str, ...] = ()
    skipped: bool = False
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def summary(self) -> dict[str, Any]:
        return {"score": self.score, "required_score": self.required_score, "action": self.action,
                "symbols": list(self.symbols[:30])}


def _hv(value: str) -> str:
    """A header value that cannot break the request (client-controlled HELO, addresses)."""
    return "".join(c if c.isprintable() and c not in "\r\n" else "?" for c in value)[:998]


class RspamdClient:
    """``POST /checkv2`` to one rspamd worker."""

    def __init__(self, url: str, timeout: float = 5.0, password: str = "") -> None:
        self.scheme, self.host, self.port, self.path = parse_url(url)
        self.timeout = timeout
        self._password = password
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.url = f"{self.scheme}://{host}:{self.port}{self.path}"
        self._clients = LoopClients(
            timeout=timeout, headers={"User-Agent": "ticketmx"}, follow_redirects=False, trust_env=False,
            verify=ssl.create_default_context() if self.scheme == "https" else True)

    def _headers(self, raw: bytes, *, ip: str, helo: str, mail_from: str, rcpts: list[str] | tuple[str, ...],
                 queue_id: str) -> list[tuple[str, str]]:
        headers = [("Content-Type", "message/rfc822")]
        if ip:
            headers.append(("IP", _hv(ip)))
        if helo:
            headers.append(("Helo", _hv(helo)))
        headers.append(("From", _hv(mail_from) or "<>"))
        for r in rcpts:
            headers.append(("Rcpt", _hv(r)))
        if queue_id:
            headers.append(("Queue-Id", _hv(queue_id)))
        if self._password:
            headers.append(("Password", _hv(self._password)))
        return headers

    async def check(self, raw: bytes, *, ip: str = "", helo: str = "", mail_from: str = "",
                    rcpts: list[str] | tuple[str, ...] = (), queue_id: str = "") -> RspamdResult:
        headers = self._headers(raw, ip=ip, helo=helo, mail_from=mail_from, rcpts=rcpts, queue_id=queue_id)
        try:
            async with asyncio.timeout(self.timeout):
                status, body = await self._roundtrip(raw, headers)
        except (TimeoutError, httpx.TimeoutException):
            raise RspamdError(f"timeout after {self.timeout:g}s") from None
        except httpx.HTTPError as exc:
            raise RspamdError(f"{type(exc).__name__}: {exc}") from None
        except (OSError, ValueError) as exc:
            raise RspamdError(f"{type(exc).__name__}: {exc}") from None
        if status != 200:
            raise RspamdError(f"HTTP {status}: {body[:200].decode('utf-8', 'replace')}")
        try:
            doc = json.loads(body)
            score = float(doc["score"])
        except (ValueError, KeyError, TypeError) as exc:
            raise RspamdError(f"unreadable reply: {exc}") from None
        symbols = doc.get("symbols") or {}
        names = sorted(symbols, key=lambda s: -abs(float((symbols.get(s) or {}).get("score", 0) or 0))) \
            if isinstance(symbols, dict) else []
        req = doc.get("required_score")
        return RspamdResult(score=score, required_score=float(req) if isinstance(req, (int, float)) else None,
                            action=str(doc.get("action", "")), symbols=tuple(names),
                            skipped=bool(doc.get("is_skipped", False)), raw=doc)

    async def _roundtrip(self, raw: bytes, headers: list[tuple[str, str]]) -> tuple[int, bytes]:
        client = self._clients.get()
        async with client.stream("POST", self.url, content=raw, headers=headers) as response:
            try:
                return response.status_code, await read_limited(response, _MAX_RESPONSE)
            except TooLarge as exc:
                raise ValueError(str(exc)) from None


def decide(score: float, policy: RspamdPolicy) -> str:
    """"reject" | "quarantine" | "tag" | "" for a score under this policy's thresholds."""
    if policy.reject_score is not None and score >= policy.reject_score:
        return "reject"
    if policy.quarantine_score is not None and score >= policy.quarantine_score:
        return "quarantine"
    if policy.tag_score is not None and score >= policy.tag_score:
        return "tag"
    return ""


def client_for(policy: RspamdPolicy, cache: dict[tuple[str, float, str], RspamdClient]) -> RspamdClient:
    key = (policy.url, policy.timeout, policy.password)
    c = cache.get(key)
    if c is None:
        c = cache[key] = RspamdClient(policy.url, policy.timeout, policy.password)
    return c


def score_from_flags(flags: tuple[str, ...] | list[str]) -> float | None:
    for f in flags:
        if f.startswith(FLAG_PREFIX):
            try:
                return float(f[len(FLAG_PREFIX):])
            except ValueError:
                return None
    return None


class RspamdStage:
    """Pipeline: tag / quarantine / drop by rspamd score (asks rspamd unless the SMTP check did)."""

    name = "rspamd"

    def __init__(self, policy: RspamdPolicy | None = None,
                 per_mailbox: Mapping[str, RspamdPolicy] | None = None) -> None:
        self.policy = policy or RspamdPolicy()
        self.per_mailbox = dict(per_mailbox or {})
        self._clients: dict[tuple[str, float, str], RspamdClient] = {}

    async def run(self, msg: Inbound, ctx: Context) -> Verdict:
        policy: RspamdPolicy = policy_for(self.policy, self.per_mailbox, msg, ctx)
        if not policy.enabled:
            return Verdict()
        e = msg.entry
        score = score_from_flags(e.flags)
        info: dict[str, Any]
        if score is not None:
            info = {"score": score, "source": "smtp"}
        elif e.size > policy.max_size:
            return Verdict(data={"rspamd": {"skipped": f"message larger than {policy.max_size} bytes"}})
        else:
            try:
                result = await client_for(policy, self._clients).check(
                    await msg.original(), ip=e.peer_ip, helo=e.helo, mail_from=e.mail_from, rcpts=e.rcpt_tos, queue_id=e.id)
            except RspamdError as exc:
                if policy.on_error == "tempfail":
                    raise
                return Verdict(data={"rspamd": {"error": str(exc)}})
            score = result.score
            info = {**result.summary(), "source": "pipeline"}
        action = decide(score, policy)
        if action == "reject":
            return Verdict(DROP, f"rspamd: score {score:g} >= reject_score {policy.reject_score:g}",
                           data={"rspamd": info})
        if action == "quarantine":
            return Verdict(QUARANTINE, f"rspamd: score {score:g} >= quarantine_score {policy.quarantine_score:g}",
                           data={"rspamd": info})
        if action == "tag":
            return Verdict(CONTINUE, f"rspamd: tagged {policy.tag} (score {score:g})",
                           data={"rspamd": info, "tags": [policy.tag]})
        return Verdict(data={"rspamd": info})
