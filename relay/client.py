"""Delivery through an ordered list of smarthosts (aiosmtplib), one attempt at a time.

One *attempt* of one notification tries the available smarthosts in config order. A host that
cannot take the message (connection refused, timeout, TLS or certificate failure, greeting or
MAIL FROM refused, authentication refused, 421) is a *host failure*: the next host is tried at
once. Recipients a host answers 4xx for are tried on the next host too. When no host delivered a
recipient, that recipient had a temporary failure in this attempt (the queue reschedules it);
a 5xx for a recipient (RCPT or DATA) is permanent for that recipient.

Per host:

* **circuit breaker**: ``max_tries`` consecutive host failures open the circuit for ``cooloff``;
  the host is skipped meanwhile. After the cool-off one delivery probes it (half-open): if it
  answers, the circuit closes and, being first in the order again, the primary takes the traffic
  back by itself - no restart.
* **skip windows** (``skip_times = "02:00-04:00"``): the host is not used inside the window.
* **throttle** (messages per minute, spaced evenly) and **concurrency** (parallel connections).
* **connection reuse**: an idle authenticated connection is kept ``idle_timeout`` for the next
  message (at most ``messages_per_connection`` per connection). A reused connection that the
  server closed in the meantime is replaced transparently (not a host failure).

Error texts are built from reply codes and server texts only; credentials and tokens are never
part of them.
"""
from __future__ import annotations

import asyncio
import logging
import ssl
import time
from dataclasses import dataclass, field
from datetime import tzinfo
from typing import Any, Callable, Protocol

import aiosmtplib

from gateway.config.relay import RelayConfig, SmarthostConfig
from gateway.runtime.oauth import OAuthError, TokenProvider
from gateway.store.relay_queue import RcptOutcome
from gateway.config.schedule import in_window, window_end

log = logging.getLogger(__name__)

CLOSED, HALF_OPEN, OPEN = "closed", "half_open", "open"
CIRCUIT_VALUE = {CLOSED: 0, HALF_OPEN: 1, OPEN: 2}

Trace = Callable[[str, str], None]  # (step, text)


class HostFailure(Exception):
    """This host could not take the message; ``reason`` is a bounded label for metrics."""

    def __init__(self, reason: str, text: str, code: int | None = None) -> None:
        super().__init__(text)
        self.reason = reason
        self.text = text
        self.code = code


class Observer(Protocol):
    def host_failure(self, host: str, reason: str) -> None: ...
    def rcpt_result(self, host: str, status: str, reason: str) -> None: ...
    def circuit(self, host: str, state: str) -> None: ...


class _NullObserver:
    def host_failure(self, host: str, reason: str) -> None:
        pass

    def rcpt_result(self, host: str, status: str, reason: str) -> None:
        pass

    def circuit(self, host: str, state: str) -> None:
        pass


def tls_context(cfg: SmarthostConfig) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=cfg.ca_file)
    if not cfg.verify_cert:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def _ssl_cause(exc: BaseException) -> ssl.SSLError | None:
    seen = 0
    e: BaseException | None = exc
    while e is not None and seen < 10:
        if isinstance(e, ssl.SSLError):
            return e
        e = e.__cause__ or e.__context__
        seen += 1
    return None


def _reply(resp: Any) -> str:
    return f"{resp.code} {resp.message}".strip() if resp is not None else ""


@dataclass
class _Conn:
    client: aiosmtplib.SMTP
    since: float
    used: int = 0


@dataclass
class Smarthost:
    """One configured smarthost and its live state (circuit, throttle, idle connections)."""

    cfg: SmarthostConfig
    hostname: str
    clock: Callable[[], float] = time.time
    tz: tzinfo | None = None
    tokens: TokenProvider | None = None
    observer: Observer = field(default_factory=_NullObserver)
    failures: int = 0
    open_until: float = 0.0
    tripped: bool = False
    probing: bool = False
    last_error: str = ""
    _next_slot: float = 0.0
    _idle: list[_Conn] = field(default_factory=list)
    _sem: asyncio.Semaphore | None = None
    _ctx: ssl.SSLContext | None = None

    def __post_init__(self) -> None:
        self._sem = asyncio.Semaphore(self.cfg.concurrency)
        if self.cfg.tls != "none":
            self._ctx = tls_context(self.cfg)
        if self.cfg.auth == "xoauth2" and self.tokens is None and self.cfg.oauth is not None:
            self.tokens = TokenProvider(self.cfg.oauth)

    @property
    def name(self) -> str:
        return self.cfg.name

    # -- availability ---------------------------------------------------------------------------
    def circuit_state(self, now: float | None = None) -> str:
        now = self.clock() if now is None else now
        if not self.tripped:
            return CLOSED
        return OPEN if now < self.open_until else HALF_OPEN

    def in_skip_window(self, now: float) -> bool:
        return in_window(self.cfg.skip_times, now, self.tz)

    def available(self, now: float) -> bool:
        if self.in_skip_window(now):
            return False
        state = self.circuit_state(now)
        if state == OPEN:
            return False
        if state == HALF_OPEN and self.probing:
            return False  # one probe at a time
        return True

    def available_at(self, now: float) -> float:
        """Earliest time this host may be used again (``now`` if usable now)."""
        t = now
        if self.circuit_state(now) == OPEN:
            t = self.open_until
        if self.cfg.skip_times and in_window(self.cfg.skip_times, t, self.tz):
            t = window_end(self.cfg.skip_times, t, self.tz)
        return t

    def _success(self) -> None:
        if self.tripped:
            log.info("smarthost %s answers again: circuit closed", self.name)
        self.failures = 0
        self.tripped = False
        self.last_error = ""
        self.observer.circuit(self.name, CLOSED)

    def _failure(self, reason: str, text: str) -> None:
        now = self.clock()
        self.last_error = text
        self.observer.host_failure(self.name, reason)
        if self.tripped:  # a failed probe: open again for a full cool-off
            self.open_until = now + self.cfg.cooloff
            self.observer.circuit(self.name, OPEN)
            return
        self.failures += 1
        if self.failures >= self.cfg.max_tries:
            self.tripped = True
            self.open_until = now + self.cfg.cooloff
            self.failures = 0
            log.warning("smarthost %s failed %d times (%s): cooling off for %.0fs", self.name,
                        self.cfg.max_tries, text, self.cfg.cooloff)
            self.observer.circuit(self.name, OPEN)

    # -- throttle --------------------------------------------------------------------------------
    async def _throttle(self) -> None:
        if self.cfg.throttle <= 0:
            return
        interval = 60.0 / self.cfg.throttle
        now = time.monotonic()
        slot = max(now, self._next_slot)
        self._next_slot = slot + interval
        if slot > now:
            await asyncio.sleep(slot - now)

    # -- connections -----------------------------------------------------------------------------
    async def connect(self, trace: Trace | None = None) -> aiosmtplib.SMTP:
        """A new connection: greeting, EHLO, TLS, EHLO, AUTH. Raises HostFailure."""
        c = self.cfg
        t = trace or (lambda step, text: None)
        client = aiosmtplib.SMTP(hostname=c.host, port=c.port, timeout=c.timeout, local_hostname=self.hostname,
                                 use_tls=c.tls == "implicit", start_tls=False, validate_certs=c.verify_cert,
                                 tls_context=self._ctx if c.tls != "none" else None)
        t("connect", f"{c.host}:{c.port} (tls={c.tls}{', certificate not verified' if not c.verify_cert else ''})")
        try:
            greeting = await client.connect()
            t("greeting", _reply(greeting))
            if c.tls == "implicit":
                t("tls", _tls_info(client))
            resp = await client.ehlo()
            t("ehlo", _reply(resp).replace("\n", " | "))
            if c.tls == "starttls":
                if not client.supports_extension("starttls"):
                    raise HostFailure("tls", f"{c.name}: STARTTLS required but not offered")
                resp = await client.starttls()
                t("starttls", _reply(resp))
                t("tls", _tls_info(client))
                resp = await client.ehlo()
                t("ehlo", _reply(resp).replace("\n", " | "))
            if c.auth != "none":
                await self._auth(client, t)
            return client
        except HostFailure:
            client.close()
            raise
        except BaseException as exc:
            client.close()
            raise self._classify(exc, "connect") from None

    async def _auth(self, client: aiosmtplib.SMTP, t: Trace) -> None:
        c = self.cfg
        if c.auth == "xoauth2":
            assert self.tokens is not None
            for attempt in (1, 2):
                try:
                    token = await self.tokens.token()
                except OAuthError as exc:
                    raise HostFailure("oauth", f"{c.name}: {exc}") from None
                try:
                    resp = await client.auth_xoauth2(c.username, token)
                    t("auth", f"XOAUTH2 as {c.username}: {_reply(resp)}")
                    return
                except aiosmtplib.SMTPAuthenticationError as exc:
                    self.tokens.invalidate()  # revoked or expired early: one retry with a fresh token
                    t("auth", f"XOAUTH2 as {c.username}: {exc.code} {exc.message}")
                    if attempt == 2 or exc.code < 500 and exc.code != 334:
                        raise HostFailure("auth", f"{c.name}: authentication refused: {exc.code} {exc.message}",
                                          exc.code) from None
            return
        method = client.auth_plain if c.auth == "plain" else client.auth_login
        try:
            resp = await method(c.username, c.password)
        except aiosmtplib.SMTPAuthenticationError as exc:
            t("auth", f"{c.auth.upper()} as {c.username}: {exc.code} {exc.message}")
            raise HostFailure("auth", f"{c.name}: authentication refused: {exc.code} {exc.message}",
                              exc.code) from None
        t("auth", f"{c.auth.upper()} as {c.username}: {_reply(resp)}")

    def _classify(self, exc: BaseException, phase: str) -> HostFailure:
        name = self.cfg.name
        if isinstance(exc, HostFailure):
            return exc
        sslerr = _ssl_cause(exc)
        if sslerr is not None:
            detail = getattr(sslerr, "verify_message", None) or getattr(sslerr, "reason", None) or type(sslerr).__name__
            return HostFailure("tls", f"{name}: TLS failed: {detail}")
        if isinstance(exc, (asyncio.TimeoutError, aiosmtplib.SMTPTimeoutError, TimeoutError)):
            return HostFailure("timeout", f"{name}: timed out ({phase})")
        if isinstance(exc, aiosmtplib.SMTPConnectResponseError):
            return HostFailure("greeting", f"{name}: refused at greeting: {exc.code} {exc.message}", exc.code)
        if isinstance(exc, aiosmtplib.SMTPServerDisconnected):
            return HostFailure("disconnected", f"{name}: connection lost ({phase})")
        if isinstance(exc, aiosmtplib.SMTPResponseException):
            reason = "closing" if exc.code == 421 else phase
            return HostFailure(reason, f"{name}: {phase} refused: {exc.code} {exc.message}", exc.code)
        if isinstance(exc, (aiosmtplib.SMTPConnectError, OSError)):
            err = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
            return HostFailure("connect", f"{name}: cannot connect to {self.cfg.host}:{self.cfg.port}: {err}")
        if isinstance(exc, aiosmtplib.SMTPException):
            return HostFailure("protocol", f"{name}: {phase}: {exc}")
        raise exc

    async def _checkout(self, trace: Trace | None) -> tuple[_Conn, bool]:
        now = time.monotonic()
        while self._idle:
            conn = self._idle.pop()
            if now - conn.since <= self.cfg.idle_timeout and conn.client.is_connected:
                return conn, True
            _close_quietly(conn.client)
        return _Conn(await self.connect(trace), now), False

    def _checkin(self, conn: _Conn) -> None:
        conn.used += 1
        conn.since = time.monotonic()
        if conn.used >= self.cfg.messages_per_connection or self.cfg.idle_timeout <= 0:
            asyncio.get_running_loop().create_task(_quit(conn.client))
            return
        self._idle.append(conn)

    def reap(self) -> None:
        """Close idle connections older than ``idle_timeout``."""
        now = time.monotonic()
        keep = []
        for conn in self._idle:
            if now - conn.since > self.cfg.idle_timeout or not conn.client.is_connected:
                _close_quietly(conn.client)
            else:
                keep.append(conn)
        self._idle = keep

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        await asyncio.gather(*(_quit(c.client) for c in idle), return_exceptions=True)

    # -- one message -----------------------------------------------------------------------------
    async def send(self, mail_from: str, rcpts: list[str], message: bytes, trace: Trace | None = None,
                   reuse: bool = True) -> list[RcptOutcome]:
        """Offer one message to this host; raises HostFailure when the host cannot take it.

        Updates the circuit state: any answer at all (even 4xx/5xx for recipients) closes it.
        """
        probe = self.circuit_state() == HALF_OPEN
        if probe:
            self.probing = True
        try:
            await self._throttle()
            assert self._sem is not None
            async with self._sem:
                for tries in (1, 2):
                    conn, reused = await self._checkout(trace) if reuse else (_Conn(await self.connect(trace),
                                                                                     time.monotonic()), False)
                    try:
                        results = await self._transaction(conn.client, mail_from, rcpts, message, trace)
                    except HostFailure as exc:
                        _close_quietly(conn.client)
                        if reused and tries == 1 and exc.reason in ("disconnected", "closing", "timeout"):
                            continue  # the server dropped the idle connection: once more on a fresh one
                        raise
                    if reuse:
                        self._checkin(conn)
                    else:
                        await _quit(conn.client, trace)
                    self._success()
                    return results
            raise AssertionError("unreachable")
        except HostFailure as exc:
            self._failure(exc.reason, exc.text)
            raise
        finally:
            if probe:
                self.probing = False

    async def _transaction(self, client: aiosmtplib.SMTP, mail_from: str, rcpts: list[str], message: bytes,
                           trace: Trace | None) -> list[RcptOutcome]:
        t = trace or (lambda step, text: None)
        name = self.cfg.name
        try:
            resp = await client.mail(mail_from)
            t("mail", f"MAIL FROM:<{mail_from}> -> {_reply(resp)}")
        except aiosmtplib.SMTPSenderRefused as exc:
            t("mail", f"MAIL FROM:<{mail_from}> -> {exc.code} {exc.message}")
            if not client.is_connected or exc.code == 421:
                raise HostFailure("closing", f"{name}: MAIL FROM refused: {exc.code} {exc.message}", exc.code)
            await _rset(client)
            raise HostFailure("mail_from", f"{name}: MAIL FROM refused: {exc.code} {exc.message}", exc.code) \
                from None
        except BaseException as exc:
            raise self._classify(exc, "mail") from None
        out: dict[str, RcptOutcome] = {}
        accepted: list[str] = []
        for rcpt in rcpts:
            try:
                resp = await client.rcpt(rcpt)
                t("rcpt", f"RCPT TO:<{rcpt}> -> {_reply(resp)}")
                accepted.append(rcpt)
            except aiosmtplib.SMTPRecipientRefused as exc:
                t("rcpt", f"RCPT TO:<{rcpt}> -> {exc.code} {exc.message}")
                if exc.code == 421:
                    raise HostFailure("closing", f"{name}: closing: {exc.code} {exc.message}", exc.code) from None
                status = "perm" if exc.code >= 500 else "temp"
                out[rcpt] = RcptOutcome(rcpt, status, exc.code, exc.message, name)
                self.observer.rcpt_result(name, status, "rcpt_5xx" if status == "perm" else "rcpt_4xx")
            except BaseException as exc:
                raise self._classify(exc, "rcpt") from None
        if not accepted:
            await _rset(client)
            return list(out.values())
        try:
            resp = await client.data(message)
            t("data", f"DATA ({len(message)} bytes) -> {_reply(resp)}")
            for rcpt in accepted:
                out[rcpt] = RcptOutcome(rcpt, "sent", resp.code, resp.message, name)
                self.observer.rcpt_result(name, "sent", "")
        except aiosmtplib.SMTPDataError as exc:
            t("data", f"DATA -> {exc.code} {exc.message}")
            if exc.code == 421:
                raise HostFailure("closing", f"{name}: closing: {exc.code} {exc.message}", exc.code) from None
            status = "perm" if exc.code >= 500 else "temp"
            fault = status == "perm" and _message_fault(exc.code, exc.message)
            for rcpt in accepted:
                out[rcpt] = RcptOutcome(rcpt, status, exc.code, exc.message, name, message_fault=fault)
                self.observer.rcpt_result(name, status, "data_5xx" if status == "perm" else "data_4xx")
            await _rset(client)
        except BaseException as exc:
            raise self._classify(exc, "data") from None
        return [out[r] for r in rcpts]


MAX_LINE = 998  # octets, CRLF excluded (RFC 5322 2.1.1; RFC 5321 4.5.3.1.6 says 1000 with it)


def overlong_line(message: bytes, limit: int = MAX_LINE) -> str | None:
    """Why ``message`` must not be offered to a smarthost (a line over ``limit`` octets), or None.

    Defence in depth behind the notifier's folding: a smarthost answers such a message with a 5xx
    that would read as "recipient undeliverable". Linear, one pass with ``bytes.find``.
    """
    start, n, lineno = 0, len(message), 1
    while start < n:
        end = message.find(b"\n", start)
        if end < 0:
            end = n
        length = end - start - (1 if end > start and message[end - 1:end] == b"\r" else 0)
        if length > limit:
            blank = message.find(b"\r\n\r\n")
            where = "header" if blank < 0 or start <= blank else "body"
            return f"line {lineno} ({where}) is {length} octets, over the {limit}-octet limit of RFC 5322"
        start, lineno = end + 1, lineno + 1
    return None


def _message_fault(code: int, text: str) -> bool:
    """A DATA-phase 5xx about the message's form (syntax 500-504, 5.6.x media, 5.3.4 too big)
    rather than about the recipient: the contact is not to be marked undeliverable for it."""
    enhanced = text.split(None, 1)[0] if text else ""
    return 500 <= code <= 504 or enhanced.startswith("5.6.") or enhanced == "5.3.4"


def _tls_info(client: aiosmtplib.SMTP) -> str:
    transport = getattr(client, "transport", None)
    obj = transport.get_extra_info("ssl_object") if transport is not None else None
    if obj is None:
        return "TLS established"
    cipher = obj.cipher()
    cert = obj.getpeercert() or {}
    subject = dict(x[0] for x in cert.get("subject", ())) if cert else {}
    who = subject.get("commonName", "")
    return f"{obj.version()} {cipher[0] if cipher else ''}" + (f", certificate for {who}" if who else "")


async def _rset(client: aiosmtplib.SMTP) -> None:
    try:
        await client.rset()
    except Exception:
        _close_quietly(client)


async def _quit(client: aiosmtplib.SMTP, trace: Trace | None = None) -> None:
    try:
        resp = await client.quit()
        if trace:
            trace("quit", _reply(resp))
    except Exception:
        _close_quietly(client)


def _close_quietly(client: aiosmtplib.SMTP) -> None:
    try:
        client.close()
    except Exception:
        pass


@dataclass
class AttemptResult:
    rcpts: list[RcptOutcome]
    error: str = ""          # why recipients are still pending (all hosts failed / 4xx)
    host: str = ""           # the host that delivered (or the last tried)
    host_errors: list[str] = field(default_factory=list)


class SmarthostPool:
    """The ordered smarthosts and one delivery attempt across them."""

    def __init__(self, cfg: RelayConfig, *, hostname: str | None = None, observer: Observer | None = None,
                 clock: Callable[[], float] = time.time, tokens: dict[str, TokenProvider] | None = None) -> None:
        self.cfg = cfg
        self.clock = clock
        self.observer = observer or _NullObserver()
        tz = cfg.tz()
        name = hostname or cfg.hostname or "localhost"
        self.hosts = [Smarthost(h, name, clock=clock, tz=tz, tokens=(tokens or {}).get(h.name),
                                observer=self.observer) for h in cfg.smarthosts]
        for h in self.hosts:
            self.observer.circuit(h.name, CLOSED)

    def host(self, name: str) -> Smarthost | None:
        return next((h for h in self.hosts if h.name == name), None)

    def available(self, now: float | None = None) -> list[Smarthost]:
        now = self.clock() if now is None else now
        return [h for h in self.hosts if h.available(now)]

    def next_available_at(self, now: float | None = None) -> float | None:
        now = self.clock() if now is None else now
        times = [h.available_at(now) for h in self.hosts]
        return min(times) if times else None

    def status(self, now: float | None = None) -> list[dict[str, Any]]:
        now = self.clock() if now is None else now
        return [{"name": h.name, "circuit": h.circuit_state(now), "skip_window": h.in_skip_window(now),
                 "open_until": h.open_until if h.tripped else None, "last_error": h.last_error}
                for h in self.hosts]

    async def deliver(self, mail_from: str, rcpts: list[str] | tuple[str, ...], message: bytes,
                      only: str | None = None) -> AttemptResult:
        pending = list(dict.fromkeys(rcpts))
        why = overlong_line(message)
        if why is not None:  # fail closed: never offered, dead, and no contact is blamed for it
            text = f"not sent: {why}"
            return AttemptResult([RcptOutcome(a, "perm", None, text, "", message_fault=True) for a in pending],
                                 text, "", [text])
        done: dict[str, RcptOutcome] = {}
        temp: dict[str, RcptOutcome] = {}
        errors: list[str] = []
        hosts = [self.host(only)] if only else self.available()
        hosts = [h for h in hosts if h is not None]
        last = ""
        if not hosts:
            errors.append("no smarthost available (all in cool-off or skip window)")
        for h in hosts:
            if not pending:
                break
            if not only and not h.available(self.clock()):
                continue  # became unavailable while we were trying others (e.g. another probe)
            last = h.name
            try:
                results = await h.send(mail_from, pending, message)
            except HostFailure as exc:
                errors.append(exc.text)
                continue
            for r in results:
                if r.status == "temp":
                    temp[r.address] = r
                else:
                    done[r.address] = r
                    temp.pop(r.address, None)
            pending = [a for a in pending if a not in done]
        out = [done[a] for a in rcpts if a in done]
        error = "; ".join(errors)
        for a in pending:
            r = temp.get(a)
            if r is not None:
                out.append(r)
                error = error or f"{r.host}: {r.code} {r.reply}"
            else:
                out.append(RcptOutcome(a, "temp", None, error or "not attempted", last))
        return AttemptResult(out, error if pending else "", last, errors)

    def reap(self) -> None:
        for h in self.hosts:
            h.reap()

    async def close(self) -> None:
        await asyncio.gather(*(h.close() for h in self.hosts), return_exceptions=True)


__all__ = ["SmarthostPool", "Smarthost", "HostFailure", "AttemptResult", "tls_context", "overlong_line", "CLOSED", "OPEN",
           "HALF_OPEN", "CIRCUIT_VALUE"]
