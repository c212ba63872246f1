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
from typing import Any

from aiosmtpd.smtp import MISSING, SMTP, Envelope, Session, syntax

from . import replies, smtp_fastinit
from .checks import CONTINUE, DataCheck, DataContext, header_end
from .config import Config
from .metrics import Metrics
from .netaddr import ip_in_networks
from .limits import Limits, LimitsClient, LocalLimits
from .recipients import RecipientMap
from .replies import Reply, with_enhanced
from .spill import DataSpill
from .spool import SpoolWriter, new_spool_id
from .store.base import SpoolEntry

smtp_fastinit.install()

log = logging.getLogger(__name__)
audit_log = logging.getLogger("ticketmx.audit")

# The overwhelmingly common MAIL/RCPT argument: <local@domain> [params], plain ASCII, nothing quoted.
_SIMPLE_PATH = re.compile(r"^\s*<((?:[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+@[A-Za-z0-9.-]+)?)>(.*)$", re.S)
_MESSAGE_ID = re.compile(rb"(?im)^message-id[ \t]*:[ \t]*(?:\r?\n[ \t]+)?<([^>\r\n]{1,900})>")


class ServerState:
    """Shared by all sessions of one listener: limits, draining flag, live sessions."""

    def __init__(self, cfg: Config, metrics: Metrics, limits: LimitsClient | None = None) -> None:
        self.cfg = cfg
        self.metrics = metrics
        # Session counts and rates across every SMTP process of the gateway (gateway/limits.py).
        self.limits: LimitsClient = limits if limits is not None else LocalLimits(Limits(cfg))
        self.sessions: set["TicketmxSMTP"] = set()
        self.draining = False
        self.in_data = 0  # sessions between DATA and its reply

    @property
    def active(self) -> int:
        return len(self.sessions)


class TicketmxSMTP(SMTP):
    """aiosmtpd's protocol with enhanced status codes on every reply, per-IP limits and draining."""

    def __init__(self, handler: "Handler", state: ServerState, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self.state = state
        self._greeted = False
        self._ehlo_lines: list[str] | None = None  # collecting the lines of an EHLO/HELO reply
        self._counted_ip: str | None = None
        self._counted = False  # this session is counted in state.limits (uncounted when it ends)

    async def push(self, status: Any) -> None:
        if isinstance(status, str):
            if not self._greeted:
                self._greeted = True  # the 220 greeting carries no enhanced code (RFC 2034)
            elif self._ehlo_lines is not None:
                self._ehlo_lines.append(status)  # sent as one write when EHLO/HELO is done
                return
            else:
                status = with_enhanced(status)
        await super().push(status)

    async def _greeting_reply(self, method: Any, hostname: str) -> None:
        """EHLO/HELO: aiosmtpd pushes each line of the reply with its own write and drain; collect
        them and send the whole multi-line reply in one write (one segment for the client too)."""
        self._ehlo_lines = []
        try:
            await method(hostname)
        finally:
            lines, self._ehlo_lines = self._ehlo_lines, None
        if lines:
            await super().push("\r\n".join(lines))

    async def smtp_EHLO(self, hostname: str) -> None:
        await self._greeting_reply(super().smtp_EHLO, hostname)

    async def smtp_HELO(self, hostname: str) -> None:
        await self._greeting_reply(super().smtp_HELO, hostname)

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        """Fast path for ``<local@domain>``; anything unusual goes to aiosmtpd's full RFC 5322 parser.

        aiosmtpd's version builds a class and runs the email header parser on every MAIL and RCPT:
        about a sixth of the SMTP process's CPU under load.
        """
        m = _SIMPLE_PATH.match(arg) if arg else None
        if m is not None and ".." not in m.group(1) and not m.group(1).startswith("."):
            return (m.group(1) or "<>"), m.group(2).lstrip()
        return super()._getaddr(arg)

    @syntax("DATA")
    async def smtp_DATA(self, arg: str) -> None:
        """DATA read in 64 KiB chunks instead of aiosmtpd's line by line (a 50 KB message is ~700
        lines: most of the SMTP process's time on large mail went there). Same replies, same size
        limit on the stream (the excess is discarded, never buffered), dot-unstuffing as RFC 5321
        4.5.2. Lines longer than 1000 octets are accepted (be liberal: MIME parsing copes).

        A message larger than ``[smtp] spill_threshold`` keeps only its header section in memory:
        the body streams into an anonymous temporary file (:class:`DataSpill`), so a 50 MB message
        costs the process a few MiB, not several copies of 50 MB."""
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
        spill: DataSpill | None = None
        try:
            limit = self.data_size_limit or 0
            buf = bytearray(b"\r\n")  # a virtual CRLF, so a terminator on the very first line is found
            consumed = 0  # bytes of the stream already moved from buf to the spill (the virtual CRLF too)
            too_much = False
            may_spill = True
            while True:
                chunk = await reader.read(65536)
                if not chunk:  # the client went away mid-DATA
                    if self.transport is not None:
                        self.transport.close()
                    return
                self._reset_timeout()
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
                if spill is None and may_spill and len(buf) > smtp_cfg.spill_threshold:
                    spill = await DataSpill.start(buf, smtp_cfg.spill_dir)
                    may_spill = spill is not None  # no header section end in sight: stay in memory
                    consumed = spill.consumed if spill is not None else 0
                elif spill is not None and len(buf) >= DataSpill.FLUSH_AT:
                    await spill.flush(buf)
                    consumed = spill.consumed
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
            if too_much or (limit and size > limit):
                self._set_post_data_state()
                await self.push(str(replies.MESSAGE_TOO_BIG))
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
            status = await self._call_handler_hook("DATA")
            self._set_post_data_state()
            await self.push("250 OK" if status is MISSING else status)
        finally:
            if spill is not None:
                spill.close()  # the spool has its own copy by now (or the message was refused)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        first = self.transport is None
        super().connection_made(transport)
        if first:
            peer = transport.get_extra_info("peername")
            self._counted_ip = peer[0] if isinstance(peer, tuple) else str(peer)
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

    def _timeout_cb(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(f"{replies.IDLE_TIMEOUT}\r\n".encode())
        super()._timeout_cb()

    @property
    def idle(self) -> bool:
        """Between transactions: safe to close during shutdown."""
        return self.envelope is None or (not self.envelope.mail_from and not self.envelope.rcpt_tos)

    def close_with(self, reply: Reply) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(f"{reply}\r\n".encode())
            self.transport.close()


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
                self.metrics.reject(reply.code, reply.reason)
                return str(reply)
        envelope.mail_from = address  # "<>" for the null reverse-path (aiosmtpd needs it non-empty)
        envelope.mail_options.extend(mail_options)
        envelope.ticketmx_mailboxes = []  # type: ignore[attr-defined]
        return str(replies.SENDER_OK)

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope, address: str,
                          rcpt_options: list[str]) -> str:
        mailbox = self.recipients.lookup(address)
        if mailbox is None:
            self.metrics.reject(550, replies.UNKNOWN_RECIPIENT.reason)
            return str(replies.UNKNOWN_RECIPIENT)
        if len(envelope.rcpt_tos) >= self.cfg.smtp.max_recipients:
            self.metrics.reject(452, replies.TOO_MANY_RECIPIENTS.reason)
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
                self.metrics.reject(result.reply.code, result.reply.reason or check.name)
                log.info("%s: %s refused by %s: %s", peer_ip, envelope.mail_from, check.name, result.reply)
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
            self.metrics.reject(451, replies.SPOOL_FAILED.reason)
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
        log.error("SMTP session error: %s", error, exc_info=error)
        self.metrics.reject(451, replies.INTERNAL_ERROR.reason)
        return str(replies.INTERNAL_ERROR)


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
