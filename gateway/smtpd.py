"""The SMTP listener: aiosmtpd on the service's own event loop.

Decides 250 / 4xx / 5xx while the client waits. RCPT accepts only configured
mailboxes; DATA runs the SMTP-time checks, then commits the message to the
spool and only then answers ``250 2.0.0 Ok: queued as <spool id>``.
"""
from __future__ import annotations

import asyncio
import email.utils
import logging
import re
import ssl
import time
import traceback
from typing import Any

from aiosmtpd.smtp import MISSING, SMTP, Envelope, Session, syntax

from gateway.smtp import replies

from gateway.smtp import fastinit as smtp_fastinit
from gateway.auth.headers import header_section_end
from gateway.smtp.checks import CONTINUE, DataCheck, DataContext, header_end
from gateway.config.load import Config
from gateway.runtime.metrics import Metrics
from gateway.runtime.netaddr import ip_in_networks
from gateway.smtp.limits import Limits, LimitsClient, LocalLimits
from gateway.config.recipients import RecipientMap
from gateway.smtp.replies import Reply, with_enhanced
from gateway.smtp.spill import DataSpill
from gateway.spool import SpoolWriter, new_spool_id
from gateway.store.base import SpoolEntry

smtp_fastinit.install()

log = logging.getLogger(__name__)
audit_log = logging.getLogger("ticketmx.audit")

# The overwhelmingly common MAIL/RCPT argument: <local@domain> [params], plain ASCII, nothing quoted.
_SIMPLE_PATH = re.compile(r"^\s*<((?:[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+@[A-Za-z0-9.-]+)?)>(.*)$", re.S)
# Control characters never belong in a HELO name or a MAIL/RCPT argument (RFC 5321 4.1.2: printable
# US-ASCII, SP, and UTF-8 with SMTPUTF8); a NUL or CR there would reach Received:, the store and the log.
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_TRACEBACK_FRAMES = 12
_AIOSMTPD_MALFORMED = "553 5.1.3 Error: malformed address"  # aiosmtpd's reply to an unparsable address
# aiosmtpd's reply to MAIL FROM with SIZE= over data_size_limit (rewritten to MESSAGE_TOO_BIG by with_enhanced)
_AIOSMTPD_SIZE_REFUSED = "552 Error: message size exceeds fixed maximum message size"
_AIOSMTPD_TOO_MUCH = "552 Error: Too much mail data"
_MESSAGE_ID = re.compile(rb"(?im)^message-id[ \t]*:[ \t]*(?:\r?\n[ \t]+)?<([^>\r\n]{1,900})>")


class ServerState:
    """Shared by all sessions of one listener: limits, draining flag, live sessions."""

    def __init__(self, cfg: Config, metrics: Metrics, limits: LimitsClient | None = None) -> None:
        self.cfg = cfg
        self.metrics = metrics
        # Session counts and rates across every SMTP process of the gateway (gateway/smtp/limits.py).
        self.limits: LimitsClient = limits if limits is not None else LocalLimits(Limits(cfg))
        self.sessions: set["TicketmxSMTP"] = set()
        self.draining = False
        self.in_data = 0  # sessions between DATA and its reply

    @property
    def active(self) -> int:
        return len(self.sessions)


class TicketmxSMTP(SMTP):
    """aiosmtpd's protocol with enhanced status codes on every reply, per-IP limits, draining, and
    time and error limits that stop one client from holding a slot forever (docs/smtp.md, "Time
    limits and slots").

    One timer per session (aiosmtpd's ``_timeout_handle``) watches every deadline: the idle time,
    the session and transaction deadlines and the DATA rate. A command only records the time; the
    timer is moved only when a deadline comes *earlier* than the time it is set for (at DATA, or
    with a transaction_timeout shorter than idle_timeout), and otherwise, when it fires early, it
    re-arms itself for the next deadline. That is cheaper than aiosmtpd's cancel-and-reschedule on
    every command and every DATA chunk."""

    def __init__(self, handler: "Handler", state: ServerState, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self.state = state
        self._greeted = False
        self._ehlo_lines: list[str] | None = None  # collecting the lines of an EHLO/HELO reply
        self._counted_ip: str | None = None
        self._counted = False  # this session is counted in state.limits (uncounted when it ends)
        inf = float("inf")
        self._timer_at = inf       # when the pending watchdog timer fires (inf: none pending)
        self._idle_until = inf     # idle deadline, moved by commands that move the session forward
        self._idle_prev = inf      # its value before the current command (junk commands put it back)
        self._session_until = inf  # connect + session_timeout
        self._txn_started: float | None = None   # MAIL FROM accepted (the transaction deadline runs)
        self._data_started: float | None = None  # DATA is being read (the rate deadline runs)
        self._data_bytes = 0       # bytes of DATA received so far
        self._data_last = 0.0      # when the last DATA chunk arrived
        self._busy = False         # the server is working on its reply to DATA: no client deadline runs
        self._junk = 0             # commands that moved nothing forward, since the last accepted message
        self._errors = 0           # 4xx/5xx replies caused by the client, since the last accepted message
        self._bad_address: Reply | None = None  # the reply for an unparsable MAIL/RCPT address
        self._mail_arg: str | None = None  # the MAIL FROM argument while aiosmtpd's smtp_MAIL runs
        self._rcpt_arg: str | None = None  # the RCPT TO argument while aiosmtpd's smtp_RCPT runs

    # -- deadlines ---------------------------------------------------------------------------------------
    def _reset_timeout(self, duration: float | None = None) -> None:
        """aiosmtpd calls this at connect, around a PROXY header and before every recognised command."""
        self._idle_prev = self._idle_until
        self._idle_until = self.loop.time() + (duration or self._timeout_duration)
        if self._idle_until < self._timer_at:
            self._arm()

    def _due(self) -> float:
        smtp = self.state.cfg.smtp
        idle = self._idle_until
        if self._data_started is not None:
            idle = max(idle, self._data_last + self._timeout_duration)  # DATA chunks are activity too
        due = min(idle, self._session_until)
        if self._txn_started is not None:
            due = min(due, self._txn_started + smtp.transaction_timeout)
        if self._data_started is not None and smtp.data_min_rate:
            due = min(due, self._data_started + smtp.data_rate_grace + self._data_bytes / smtp.data_min_rate)
        return due

    def _arm(self) -> None:
        """(Re)schedule the watchdog for the earliest deadline; never leaves ``_timeout_handle`` None
        (aiosmtpd's connection_lost cancels it)."""
        due = self._due()
        if due >= self._timer_at:
            return  # the pending timer fires first and re-arms then
        if self._timeout_handle is not None:
            self._timeout_handle.cancel()
        self._timer_at = due
        self._timeout_handle = self.loop.call_at(due, self._timeout_cb)

    def _expired(self, now: float) -> Reply | None:
        smtp = self.state.cfg.smtp
        if now >= self._session_until:
            return replies.SESSION_TIMEOUT
        if self._txn_started is not None and now >= self._txn_started + smtp.transaction_timeout:
            return replies.TRANSACTION_TIMEOUT
        if self._data_started is not None:
            if smtp.data_min_rate and now >= (self._data_started + smtp.data_rate_grace
                                              + self._data_bytes / smtp.data_min_rate):
                return replies.DATA_TOO_SLOW
            if now >= max(self._idle_until, self._data_last + self._timeout_duration):
                return replies.IDLE_TIMEOUT
            return None
        if now >= self._idle_until:
            return replies.IDLE_TIMEOUT
        return None

    def _timeout_cb(self) -> None:
        self._timer_at = float("inf")
        if self.transport is None or self.transport.is_closing():
            return
        now = self.loop.time()
        reply = self._expired(now)
        if reply is not None and self._busy:
            # Our own checks or the spool commit are still running: closing now could drop a message
            # that is committed (the client would send it again). Look again in a second.
            self._timer_at = now + 1.0
            self._timeout_handle = self.loop.call_at(self._timer_at, self._timeout_cb)
            return
        if reply is None:
            self._arm()
            return
        self.state.metrics.sessions_refused.labels(reason=reply.reason).inc()
        log.info("%s: %s", self._counted_ip or "?", reply)
        self.close_with(reply)

    # -- replies, junk and errors --------------------------------------------------------------------------
    async def push(self, status: Any) -> None:
        if isinstance(status, str):
            if not self._greeted:
                self._greeted = True  # the 220 greeting carries no enhanced code (RFC 2034)
            elif self._ehlo_lines is not None:
                self._ehlo_lines.append(status)  # sent as one write when EHLO/HELO is done
                return
            else:
                if status == _AIOSMTPD_MALFORMED and self._bad_address is not None:
                    status = str(self._bad_address)
                    self._reject_arg(self._bad_address)
                elif status == _AIOSMTPD_TOO_MUCH:  # aiosmtpd's own DATA reader (an unusual stream reader)
                    self.reject(replies.MESSAGE_TOO_BIG)
                elif status == _AIOSMTPD_SIZE_REFUSED and self._mail_arg is not None:
                    # the declared SIZE= is over the limit: refused at MAIL, before any data
                    sender, _ = self._getaddr(self._strip_command_keyword("FROM:", self._mail_arg) or "")
                    self.reject(replies.MESSAGE_TOO_BIG, mail_from=sender or self._mail_arg, rcpts=())
                status = with_enhanced(status)
                if status[0] in "45" and not status.startswith("421") and status[4:8] != "4.3.":
                    await super().push(status)
                    self._count_error()
                    return
        await super().push(status)

    def reject(self, reply: Reply, mail_from: str | None = None, rcpts: "tuple[str, ...] | list[str] | None" = None,
               reason: str = "") -> None:
        """Count and log a refusal (:meth:`Metrics.reject`); the envelope is this session's unless given."""
        env = self.envelope
        self.state.metrics.reject(
            reply, client=_peer_ip(self.session) if self.session is not None else (self._counted_ip or "?"),
            mail_from=mail_from if mail_from is not None else (env.mail_from if env is not None else None),
            rcpts=rcpts if rcpts is not None else (env.rcpt_tos if env is not None else ()), reason=reason)

    def _reject_arg(self, reply: Reply, arg: str | None = None) -> None:
        """A MAIL/RCPT argument refused for its syntax: logged as given (escaped, cut short)."""
        arg = arg if arg is not None else (self._mail_arg if reply is replies.BAD_SENDER_SYNTAX else self._rcpt_arg)
        if reply is replies.BAD_SENDER_SYNTAX:
            self.reject(reply, mail_from=arg or "", rcpts=())
        else:
            self.reject(reply, rcpts=[arg or ""])

    async def handle_exception(self, error: Exception) -> str:
        status = await super().handle_exception(error)  # the handler logs the traceback
        self.reject(replies.INTERNAL_ERROR)
        return status

    def _count_error(self) -> None:
        """One more error the client caused (RFC 5321 4.2 replies 4xx/5xx, not our own 4.3.x failures);
        at ``hard_error_limit`` the session ends with 421 4.7.0 (Postfix's smtpd_hard_error_limit)."""
        self._errors += 1
        if self._errors >= self.state.cfg.smtp.hard_error_limit:
            self.state.metrics.sessions_refused.labels(reason=replies.TOO_MANY_ERRORS.reason).inc()
            log.info("%s: %s", self._counted_ip or "?", replies.TOO_MANY_ERRORS)
            self.close_with(replies.TOO_MANY_ERRORS)

    def _junk_command(self) -> bool:
        """A command that moves nothing forward (NOOP, RSET, VRFY, EXPN, HELP, a repeated EHLO/HELO): it
        does not restart the idle timer, and beyond ``junk_command_limit`` each one counts as an error
        (Postfix's smtpd_junk_command_limit). True when the session was closed for it."""
        self._idle_until = self._idle_prev
        self._junk += 1
        if self._junk > self.state.cfg.smtp.junk_command_limit:
            self._count_error()
            return self.transport is None or self.transport.is_closing()
        return False

    async def _greeting_reply(self, method: Any, hostname: str) -> None:
        """EHLO/HELO: aiosmtpd pushes each line of the reply with its own write and drain; collect
        them and send the whole multi-line reply in one write (one segment for the client too)."""
        if hostname and _CONTROL.search(hostname):
            await self.push(str(replies.BAD_HELO))  # a CR or NUL would reach Received: and the store
            return
        if self.session is not None and self.session.host_name and self._junk_command():
            return
        self._ehlo_lines = []
        try:
            await method(hostname)
        finally:
            lines, self._ehlo_lines = self._ehlo_lines, None
        if len(lines) == 1 and lines[0][:1] != "2":
            await self.push(lines[0])  # an error ("501 Syntax: HELO hostname"): enhanced code, counted
        elif lines:
            await super().push("\r\n".join(lines))

    async def smtp_EHLO(self, hostname: str) -> None:
        await self._greeting_reply(super().smtp_EHLO, hostname)

    async def smtp_HELO(self, hostname: str) -> None:
        await self._greeting_reply(super().smtp_HELO, hostname)

    @syntax("NOOP [ignored]")
    async def smtp_NOOP(self, arg: str) -> None:
        if not self._junk_command():
            await super().smtp_NOOP(arg)

    @syntax("RSET")
    async def smtp_RSET(self, arg: str) -> None:
        if not self._junk_command():
            await super().smtp_RSET(arg)

    @syntax("VRFY <address>")
    async def smtp_VRFY(self, arg: str) -> None:
        if not self._junk_command():
            await super().smtp_VRFY(arg)

    async def smtp_EXPN(self, arg: str) -> None:
        if not self._junk_command():
            await super().smtp_EXPN(arg)

    @syntax("HELP [command]")
    async def smtp_HELP(self, arg: str) -> None:
        if not self._junk_command():
            await super().smtp_HELP(arg)

    @syntax("STARTTLS", when="tls_context")
    async def smtp_STARTTLS(self, arg: str) -> None:
        if self._tls_protocol is not None:  # RFC 3207 4.2: no TLS inside TLS
            await self.push(str(replies.TLS_ALREADY_ACTIVE))
            return
        await super().smtp_STARTTLS(arg)

    @syntax("MAIL FROM: <address>", extended=" [SP <mail-parameters>]")
    async def smtp_MAIL(self, arg: str | None) -> None:
        if arg and _CONTROL.search(arg):  # a NUL or CR in the sender would reach the store and the logs
            self._reject_arg(replies.BAD_SENDER_SYNTAX, arg)
            await self.push(str(replies.BAD_SENDER_SYNTAX))
            return
        self._bad_address = replies.BAD_SENDER_SYNTAX
        self._mail_arg = arg or ""
        try:
            await super().smtp_MAIL(arg)
        finally:
            self._bad_address = self._mail_arg = None
        if self._txn_started is None and self.envelope is not None and self.envelope.mail_from:
            self._txn_started = self.loop.time()
            if self._txn_started + self.state.cfg.smtp.transaction_timeout < self._timer_at:
                self._arm()

    @syntax("RCPT TO: <address>", extended=" [SP <mail-parameters>]")
    async def smtp_RCPT(self, arg: str | None) -> None:
        if arg and _CONTROL.search(arg):
            self._reject_arg(replies.BAD_RECIPIENT_SYNTAX, arg)
            await self.push(str(replies.BAD_RECIPIENT_SYNTAX))
            return
        self._bad_address = replies.BAD_RECIPIENT_SYNTAX
        self._rcpt_arg = arg or ""
        try:
            await super().smtp_RCPT(arg)
        finally:
            self._bad_address = self._rcpt_arg = None

    def _set_post_data_state(self) -> None:
        """Every way a transaction ends (DATA's reply, RSET, HELO/EHLO, STARTTLS) comes through here."""
        super()._set_post_data_state()
        self._txn_started = None

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        """Fast path for ``<local@domain>``; anything unusual goes to aiosmtpd's full RFC 5322 parser.

        aiosmtpd's version builds a class and runs the email header parser on every MAIL and RCPT:
        about a sixth of the SMTP process's CPU under load.
        """
        m = _SIMPLE_PATH.match(arg) if arg else None
        if m is not None and ".." not in m.group(1) and not m.group(1).startswith("."):
            return (m.group(1) or "<>"), m.group(2).lstrip()
        try:
            return super()._getaddr(arg)
        except Exception:  # "<" made the stdlib parser raise IndexError: a syntax error, not ours
            return None, None

    @syntax("DATA")
    async def smtp_DATA(self, arg: str) -> None:
        """DATA read in 64 KiB chunks instead of aiosmtpd's line by line (a 50 KB message is ~700
        lines: most of the SMTP process's time on large mail went there). Same replies, same size
        limit on the stream (the excess is discarded, never buffered), dot-unstuffing as RFC 5321
        4.5.2. Lines longer than 1000 octets are accepted (be liberal: MIME parsing copes).

        A message larger than ``[smtp] spill_threshold`` keeps only its header section in memory:
        the body streams into an anonymous temporary file (:class:`DataSpill`), so a 50 MB message
        costs the process a few MiB, not several copies of 50 MB. A header section longer than
        ``[smtp] max_header_size`` (a "message" without an empty line, say) is refused with 552 5.6.0
        and its bytes are discarded as they arrive, so it cannot sit whole in memory either.

        The envelope is reset after every outcome, an exception in a check included, so the next
        MAIL on the connection starts a new transaction (never "503 nested MAIL")."""
        reader = self._reader
        if not hasattr(reader, "_buffer"):  # not the CPython StreamReader we know: the safe path
            return await super().smtp_DATA(arg)
        if await self.check_helo_needed() or await self.check_auth_needed("DATA"):
            return
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await self.push("503 Error: need RCPT command")
            return
        if arg:
            await self.push("501 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        smtp_cfg = self.state.cfg.smtp
        clock = self.loop.time
        self._data_started = self._data_last = clock()
        self._data_bytes = 0
        self._arm()  # the rate deadline (data_rate_grace) usually comes before the idle one
        spill: DataSpill | None = None
        try:
            limit = self.data_size_limit or 0
            max_head = smtp_cfg.max_header_size
            buf = bytearray(b"\r\n")  # a virtual CRLF, so a terminator on the very first line is found
            consumed = 0  # bytes of the stream already moved from buf to the spill (the virtual CRLF too)
            too_much = False
            too_big: Reply = replies.MESSAGE_TOO_BIG
            next_spill = smtp_cfg.spill_threshold  # try to spill once buf is larger than this
            while True:
                chunk = await reader.read(65536)
                if not chunk:  # the client went away mid-DATA
                    if self.transport is not None:
                        self.transport.close()
                    return
                self._data_bytes += len(chunk)
                self._data_last = clock()
                scan = max(0, len(buf) - 4)
                buf += chunk
                # Look for the end before anything is cut from buf: the read that crosses the spill
                # threshold, FLUSH_AT or the size limit may carry the terminator too.
                idx = buf.find(b"\r\n.\r\n", scan)
                if idx >= 0:
                    break
                if limit and not too_much and consumed + len(buf) - 2 > limit + 5:
                    too_much = True  # from here on only look for the end: keep nothing but a tail
                    if spill is not None:
                        spill.close()
                        spill = None
                if too_much:
                    if len(buf) > 65536:
                        del buf[:-8]
                    continue
                if spill is None and len(buf) > next_spill:
                    spill = await DataSpill.start(buf, smtp_cfg.spill_dir)
                    if spill is not None:
                        consumed = spill.consumed
                    elif len(buf) - 2 > max_head:
                        # No empty line within max_header_size: the header section alone is too big.
                        # Refuse it and keep only a tail, rather than hold it whole in memory.
                        too_much, too_big = True, replies.HEADER_TOO_BIG
                    else:  # the header section may still end below max_header_size: look again later
                        next_spill = len(buf) + DataSpill.FLUSH_AT
                elif spill is not None and len(buf) >= DataSpill.FLUSH_AT:
                    await spill.flush(buf)
                    consumed = spill.consumed
            self._data_started = None
            leftover = bytes(buf[idx + 5:])
            if leftover:  # pipelined commands after the message: hand them back to the command loop
                reader._buffer[:0] = leftover  # type: ignore[attr-defined]
            if spill is not None:
                del buf[idx + 2:]
                await spill.flush(buf, final=True)
                body = spill.head
            else:
                with memoryview(buf) as view:
                    body = bytes(view[2:idx + 2])  # one copy (a bytearray slice would make two)
            del buf
            size = len(body) + (spill.size if spill is not None else 0)
            if not too_much and limit and size > limit:
                too_much = True
            if not too_much and len(body) > max_head and (
                    len(body) if spill is not None else header_section_end(body)) > max_head:
                too_much, too_big = True, replies.HEADER_TOO_BIG  # (the head of a spill ends with its empty line)
            if too_much:
                self.reject(too_big)  # before the envelope is reset: the line names it
                self._set_post_data_state()
                await self.push(str(too_big))
                return
            if spill is None:
                if body.startswith(b".."):
                    body = body[1:]
                if b"\r\n.." in body:
                    body = body.replace(b"\r\n..", b"\r\n.")
            self.envelope.content = body
            self.envelope.original_content = body
            self.envelope.ticketmx_body = spill  # type: ignore[attr-defined]
            del body  # the envelope holds it; handle_DATA lets it go once the spool copy is made
            self._busy = True
            try:
                status = await self._call_handler_hook("DATA")
            finally:
                # Whatever happened (an exception goes on to handle_exception's 451), this
                # transaction is over: the next MAIL starts a new one.
                self._busy = False
                self._set_post_data_state()
                self._idle_until = clock() + self._timeout_duration
            if status is MISSING:
                status = "250 OK"
            elif status.startswith("250"):
                self._junk = self._errors = 0  # a message was accepted: the counts start again (as Postfix)
            await self.push(status)
        finally:
            self._data_started = None
            if spill is not None:
                spill.close()  # the spool has its own copy by now (or the message was refused)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        first = self.transport is None
        super().connection_made(transport)
        if first:
            peer = transport.get_extra_info("peername")
            self._counted_ip = peer[0] if isinstance(peer, tuple) else str(peer)
            self._session_until = self.loop.time() + self.state.cfg.smtp.session_timeout
            self._arm()
            self.state.sessions.add(self)
            self.state.metrics.sessions.inc()
            self.state.metrics.sessions_active.set(self.state.active)

    def connection_lost(self, error: Exception | None) -> None:
        if self._counted:
            self._counted = False
            self.state.limits.close(self._counted_ip)
        if self._counted_ip is not None:
            self._counted_ip = None
            self.state.sessions.discard(self)
            self.state.metrics.sessions_active.set(self.state.active)
        super().connection_lost(error)

    async def _handle_client(self) -> None:
        if self._counted_ip is None:
            return  # the client left before its session started
        if self.state.draining:
            refusal: Reply | None = replies.SHUTTING_DOWN
        else:
            counting = self.state.limits.open(self._counted_ip)
            self._counted = True  # counted as soon as it is awaited (no yield before): close() follows
            refusal = await counting
        if refusal is not None:
            self._greeted = True
            self.state.metrics.sessions_refused.labels(reason=refusal.reason).inc()
            await self.push(str(refusal))
            if self.transport is not None:
                self.transport.close()
            return
        await super()._handle_client()

    @property
    def idle(self) -> bool:
        """Between transactions: safe to close during shutdown."""
        return self.envelope is None or (not self.envelope.mail_from and not self.envelope.rcpt_tos)

    def close_with(self, reply: Reply) -> None:
        """Answer ``reply`` and close. Commands the client already pipelined are dropped: without that
        the command loop would go on answering (into a closed transport) everything in the read
        buffer, which is where a flood of pipelined junk spends its CPU."""
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(f"{reply}\r\n".encode())
            self.transport.close()
        buffered = getattr(getattr(self, "_reader", None), "_buffer", None)
        if buffered is not None:
            buffered.clear()
        if self._handler_coroutine is not None:
            self._handler_coroutine.cancel()


class Handler:
    """aiosmtpd handler hooks: recipients, DATA checks, spool commit."""

    def __init__(self, cfg: Config, recipients: RecipientMap, spool: SpoolWriter, metrics: Metrics,
                 checks: list[DataCheck], limits: LimitsClient | None = None) -> None:
        self.cfg = cfg
        self.recipients = recipients
        self.spool = spool
        self.metrics = metrics
        self.checks = checks
        self.limits: LimitsClient = limits if limits is not None else LocalLimits(Limits(cfg))

    async def handle_EHLO(self, server: SMTP, session: Session, envelope: Envelope, hostname: str,
                          responses: list[str]) -> list[str]:
        session.host_name = hostname
        last = responses.pop()  # "250 HELP"
        # An MX takes no AUTH: never advertise it (aiosmtpd would after STARTTLS).
        responses = [r for r in responses if not r.startswith("250-AUTH")]
        responses += ["250-PIPELINING", "250-ENHANCEDSTATUSCODES", last]
        return responses

    async def handle_PROXY(self, server: SMTP, session: Session, envelope: Envelope, proxy_data: Any) -> bool:
        """Accept a PROXY header only from a trusted load balancer; the client address it names is
        then the peer for SPF, Received, limits and logs."""
        peer = session.peer[0] if isinstance(session.peer, tuple) else str(session.peer)
        ok = ip_in_networks(peer, self.cfg.smtp.trusted_proxies)
        if not ok:
            log.warning("PROXY header from untrusted %s refused", peer)
            self.metrics.sessions_refused.labels(reason="untrusted_proxy").inc()
        return ok

    async def handle_MAIL(self, server: SMTP, session: Session, envelope: Envelope, address: str,
                          mail_options: list[str]) -> str:
        if isinstance(server, TicketmxSMTP) and server.state.draining:
            # Shutting down: no new transaction, even on a busy connection (RFC 5321 4.2.1: 421 and close).
            if server.transport is not None:
                asyncio.get_running_loop().call_soon(server.transport.close)
            return str(replies.SHUTTING_DOWN)
        if self.limits.rates_on:
            reply = await self.limits.rate_check(_peer_ip(session), address.lower())
            if reply is not None:
                self.metrics.reject(reply, client=_peer_ip(session), mail_from=address, rcpts=())
                return str(reply)
        envelope.mail_from = address  # "<>" for the null reverse-path (aiosmtpd needs it non-empty)
        envelope.mail_options.extend(mail_options)
        envelope.ticketmx_mailboxes = []  # type: ignore[attr-defined]
        return str(replies.SENDER_OK)

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope, address: str,
                          rcpt_options: list[str]) -> str:
        mailbox = self.recipients.lookup(address)
        if mailbox is None:
            self.metrics.reject(replies.UNKNOWN_RECIPIENT, client=_peer_ip(session), mail_from=envelope.mail_from,
                                rcpts=(address,))
            return str(replies.UNKNOWN_RECIPIENT)
        if len(envelope.rcpt_tos) >= self.cfg.smtp.max_recipients:
            self.metrics.reject(replies.TOO_MANY_RECIPIENTS, client=_peer_ip(session),
                                mail_from=envelope.mail_from, rcpts=(address,))
            return str(replies.TOO_MANY_RECIPIENTS)
        envelope.rcpt_tos.append(address)  # a custom hook must do this itself
        envelope.rcpt_options.extend(rcpt_options)
        mbs = getattr(envelope, "ticketmx_mailboxes", None)
        if mbs is None:
            mbs = envelope.ticketmx_mailboxes = []  # type: ignore[attr-defined]
        mbs.append(mailbox)
        return str(replies.RECIPIENT_OK)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        started = time.perf_counter()
        raw: bytes = envelope.original_content or b""
        peer_ip = _peer_ip(session)
        mail_from = "" if envelope.mail_from in (None, "<>") else envelope.mail_from  # null sender is ""
        spill: DataSpill | None = getattr(envelope, "ticketmx_body", None)
        ctx = DataContext(peer_ip=peer_ip, helo=session.host_name or "", mail_from=mail_from,
                          rcpt_tos=list(envelope.rcpt_tos),
                          mailboxes=list(getattr(envelope, "ticketmx_mailboxes", [])), raw=raw,
                          header_end=header_end(raw), body=spill.file if spill is not None else None,
                          body_size=spill.size if spill is not None else 0)
        added_headers: list[tuple[str, str]] = []
        flags: list[str] = []
        auth_header: str | None = None
        auth: dict[str, Any] | None = None
        for check in self.checks:
            result = await check.run(ctx)
            if result.action != CONTINUE and result.reply is not None:
                self.metrics.reject(result.reply, client=peer_ip, mail_from=envelope.mail_from,
                                    rcpts=envelope.rcpt_tos, reason=result.reply.reason or check.name)
                return str(result.reply)
            if result.raw is not None:
                ctx.raw = result.raw
                ctx.header_end = header_end(ctx.raw)
            if result.prepend:
                ctx.prepended.insert(0, result.prepend)
            added_headers += result.headers
            flags += result.flags
            if result.auth_header is not None:
                auth_header, auth = result.auth_header, result.auth
        spool_id = new_spool_id()
        tls = _tls_info(session)
        prefix = "".join(f"{name}: {value}\r\n" for name, value in added_headers)
        prefix = _received(self.cfg.smtp.hostname, ctx, spool_id, tls) + prefix
        final_raw = b"".join([prefix.encode("utf-8"), *ctx.prepended, ctx.raw])  # the one copy of the message
        m = _MESSAGE_ID.search(ctx.raw, 0, ctx.header_end + 2)
        message_id = m.group(1).decode("utf-8", "replace").strip() if m else ""
        del m  # a match keeps the message it searched alive
        # final_raw is the message from here on: the received copy is let go before the spool commit,
        # so a message held in memory is not there twice while SQLite writes it (issue 18 item 9)
        ctx.raw = raw = envelope.content = envelope.original_content = b""
        entry = SpoolEntry(
            id=spool_id, received_at=time.time(), mail_from=ctx.mail_from, rcpt_tos=tuple(ctx.rcpt_tos),
            mailboxes=tuple(mb.address for mb in ctx.mailboxes), peer_ip=peer_ip, helo=ctx.helo, tls=tls,
            message_id=message_id, raw=final_raw,
            auth_header=auth_header, auth=auth, flags=tuple(flags), body=ctx.body, body_size=ctx.body_size)
        try:
            await self.spool.commit(entry)
        except Exception:
            self.metrics.reject(replies.SPOOL_FAILED, client=peer_ip, mail_from=envelope.mail_from,
                                rcpts=envelope.rcpt_tos)
            return str(replies.SPOOL_FAILED)
        if self.limits.rates_on:
            self.limits.rate_hit(peer_ip, (envelope.mail_from or "").lower())
        self.metrics.accepted.inc()
        self.metrics.accepted_bytes.inc(entry.size)
        self.metrics.accept_latency.observe(time.perf_counter() - started)
        log.info("accepted %s from=<%s> rcpts=%d size=%d", spool_id, ctx.mail_from, len(ctx.rcpt_tos),
                 entry.size, extra={"trace_id": spool_id})
        headers_level = logging.getLevelName(self.cfg.log.headers_level)
        if audit_log.isEnabledFor(headers_level):  # the raw header section, for audit
            head = final_raw[:header_end(final_raw)].decode("utf-8", "replace")
            audit_log.log(headers_level, "headers of %s:\n%s", spool_id, head, extra={"trace_id": spool_id})
        return f"250 2.0.0 Ok: queued as {spool_id}"

    async def handle_exception(self, error: Exception) -> str:
        # The last frames only: a RecursionError's traceback is a thousand lines, and a client that can
        # trigger one on every try must not be able to flood the log with it.
        tb = "".join(traceback.format_exception(type(error), error, error.__traceback__, limit=-_TRACEBACK_FRAMES))
        log.error("SMTP session error: %s: %s\n%s", type(error).__name__, str(error)[:300], tb.rstrip())
        return str(replies.INTERNAL_ERROR)  # counted and logged by TicketmxSMTP.handle_exception (its session)


def _peer_ip(session: Session) -> str:
    proxy = getattr(session, "proxy_data", None)
    if proxy is not None and getattr(proxy, "src_addr", None) is not None:
        return str(proxy.src_addr)  # behind a trusted load balancer: the real client
    peer = session.peer
    return peer[0] if isinstance(peer, tuple) else str(peer or "")


def _tls_info(session: Session) -> dict[str, Any] | None:
    extra = session.ssl
    if not extra:
        return None
    obj = extra.get("ssl_object") if isinstance(extra, dict) else None
    if obj is None:
        return {"tls": True}
    cipher = obj.cipher()
    return {"version": obj.version(), "cipher": cipher[0] if cipher else None}


def _received(hostname: str, ctx: DataContext, spool_id: str, tls: dict[str, Any] | None) -> str:
    helo = "".join(c for c in ctx.helo if c.isprintable() and c not in "()\\")[:255] or "unknown"
    proto = "ESMTPS" if tls else "ESMTP"
    tls_part = f" ({tls.get('version')} {tls.get('cipher')})" if tls and tls.get("version") else ""
    rcpt = f"\r\n\tfor <{ctx.rcpt_tos[0]}>" if len(ctx.rcpt_tos) == 1 else ""
    return (f"Received: from {helo} ([{ctx.peer_ip}])\r\n\tby {hostname} (ticketmx) with {proto}{tls_part}"
            f" id {spool_id}{rcpt};\r\n\t{email.utils.formatdate(localtime=False)}\r\n")


class SmtpListener:
    """Binds the configured addresses on the running loop and owns their sessions."""

    def __init__(self, cfg: Config, handler: Handler, metrics: Metrics) -> None:
        self.cfg = cfg
        self.handler = handler
        self.state = ServerState(cfg, metrics, handler.limits)
        self.servers: list[asyncio.AbstractServer] = []
        self.tls_context = _tls_context(cfg)

    def _factory(self) -> TicketmxSMTP:
        smtp = self.cfg.smtp
        return TicketmxSMTP(
            self.handler, self.state, data_size_limit=smtp.max_message_size, enable_SMTPUTF8=True,
            hostname=smtp.hostname, ident="ticketmx", tls_context=self.tls_context, timeout=smtp.idle_timeout,
            proxy_protocol_timeout=smtp.proxy_timeout if smtp.proxy_protocol else None,
            loop=asyncio.get_running_loop())

    async def start(self, listen: "list[tuple[str, int]] | None" = None, reuse_port: bool = False,
                    serve: bool = True) -> None:
        """Bind ``listen`` (default: the configured addresses). ``reuse_port``: SO_REUSEPORT, so the
        other SMTP processes of this gateway can bind the same addresses (the kernel spreads
        connections over them). ``serve=False``: bound but not yet accepting (see :meth:`serve`)."""
        loop = asyncio.get_running_loop()
        for host, port in listen if listen is not None else self.cfg.smtp.listen:
            server = await loop.create_server(self._factory, host, port, reuse_address=True,
                                              reuse_port=reuse_port or None, start_serving=serve)
            self.servers.append(server)
            log.info("SMTP listening on %s:%d", host, port)

    async def serve(self) -> None:
        """Start accepting on addresses bound with ``start(serve=False)``."""
        for server in self.servers:
            await server.start_serving()

    def reconfigure(self, cfg: Config, checks: list[DataCheck], tls: ssl.SSLContext | None | bool = False) -> None:
        """Apply a validated new config to the next command or session (SIGHUP); ``tls=False``: load
        the certificate named in ``cfg`` here."""
        self.cfg = cfg
        self.state.cfg = cfg
        self.handler.cfg = cfg
        self.handler.recipients = RecipientMap(cfg.mailboxes)
        self.handler.checks = checks
        self.tls_context = _tls_context(cfg) if tls is False else tls  # type: ignore[assignment]

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """Every bound socket's (address, port): what the other SMTP processes bind (port 0 resolved)."""
        return [tuple(sock.getsockname()[:2]) for s in self.servers for sock in s.sockets]  # type: ignore[misc]

    @property
    def ports(self) -> list[int]:
        return [s.sockets[0].getsockname()[1] for s in self.servers if s.sockets]

    async def close(self, grace: float) -> None:
        """Stop accepting, answer 421 to idle sessions, let transactions in flight finish within ``grace``."""
        # Keep listening during the grace time so new sessions get a clean 421 4.3.2
        # (the client retries elsewhere at once) instead of a connection refused.
        self.state.draining = True
        deadline = time.monotonic() + grace
        while self.state.sessions and time.monotonic() < deadline:
            for session in list(self.state.sessions):
                if session.idle:
                    session.close_with(replies.SHUTTING_DOWN)
            await asyncio.sleep(0.05)
        for server in self.servers:
            server.close()
        for session in list(self.state.sessions):
            session.close_with(replies.SHUTTING_DOWN)
        for server in self.servers:
            await server.wait_closed()


def _tls_context(cfg: Config) -> ssl.SSLContext | None:
    if not cfg.smtp.tls_cert or not cfg.smtp.tls_key:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cfg.smtp.tls_cert, cfg.smtp.tls_key)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx
