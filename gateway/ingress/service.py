"""HTTP inbound, the stateful part: one post → the SMTP path's checks → one durable spool entry.

What a post goes through (docs/api.md "HTTP inbound", docs/auth.md "HTTP inbound"):

1. the mailbox's ``[[http.inbound]]`` (404), the service's own authentication (401; nothing parsed
   beyond what a Mailgun signature needs, nothing spooled);
2. the format → the message (400/422), its size (413);
3. a repeat (same idempotency key, ``inbound_keys``) → 200 with the first spool id, nothing else runs;
4. the checks SMTP runs at end of DATA: one reading of the header section, the loop check, DKIM and
   DMARC (no SPF: the client is not the sender's MTA), rspamd when it rejects at DATA. A refusal is
   422 (what SMTP would answer 5xx), a temporary failure 503 with Retry-After (4xx);
5. the spool commit with the key in the same transaction, then 200. No 2xx before the commit.
"""
from __future__ import annotations

import concurrent.futures
import email.utils
import logging
import time
from dataclasses import dataclass
from typing import Any, Callable

from gateway.auth.dns import Resolver
from gateway.auth.headers import fold_header, line_ending, strip_forged_authres
from gateway.smtp.auth_check import AuthCheck
from gateway.smtp.checks import CONTINUE, DEFER, DataContext, HeaderSectionCheck, LoopCheck, header_end
from gateway.config.load import Config
from gateway.config.inbound import InboundConfig, read_secret
from gateway.runtime.metrics import Metrics
from gateway.spool import SpoolWriter, new_spool_id
from gateway.store.base import SpoolEntry, Store
from gateway.ingress.http_inbound import (Form, InboundError, Posted, ReplayGuard, Secrets, check_auth, detect_format,
                           envelope_sender, idempotency_key, is_form, is_json, load_json, parse_form, read_post)

log = logging.getLogger(__name__)

RETRY_AFTER = 60  # seconds, on a temporary refusal (503)


@dataclass(frozen=True, slots=True)
class Accepted:
    spool_id: str
    duplicate: bool
    mailbox: str
    format: str


class InboundService:
    """The inbound mailboxes of one running gateway (rebuilt on reload: new secrets, new checks)."""

    def __init__(self, cfg: Config, store: Store, spool: SpoolWriter, metrics: Metrics,
                 executor: concurrent.futures.Executor | None = None, resolver: Resolver | None = None,
                 guard: ReplayGuard | None = None) -> None:
        self.cfg = cfg
        self.store = store
        self.spool = spool
        self.metrics = metrics
        self.guard = guard or ReplayGuard()  # kept across reloads: a reload must not reopen the window
        self.by_name: dict[str, InboundConfig] = {i.name.lower(): i for i in cfg.http_inbound}
        self.secrets: dict[str, Secrets | str] = {}
        for inb in cfg.http_inbound:
            path = {"mailgun": inb.signing_key_file, "basic": inb.password_file, "bearer": inb.token_file}[inb.auth]
            try:
                self.secrets[inb.name.lower()] = Secrets(read_secret(path))
            except (OSError, ValueError) as exc:  # refused at load already; the file changed since
                self.secrets[inb.name.lower()] = f"{type(exc).__name__}: {exc}"
                log.error("http.inbound %s: secret unusable, its posts are refused: %s", inb.name, exc)
        self.mailboxes = {mb.address: mb for mb in cfg.mailboxes}
        self.checks = IntakeChecks(cfg, executor, resolver)
        self.auth_check = self.checks.auth_check

    def close(self) -> None:
        self.checks.close()

    def find(self, name: str) -> InboundConfig:
        inb = self.by_name.get(name.lower())
        if inb is None:
            raise InboundError(404, "Not Found", f"no [[http.inbound]] mailbox named {name!r}")
        return inb

    def max_size(self, inb: InboundConfig) -> int:
        return inb.max_size or self.cfg.smtp.max_message_size

    def max_body(self, inb: InboundConfig) -> int:
        """The largest request body worth reading: base64 in JSON or form encoding adds a third."""
        return self.max_size(inb) * 4 // 3 + 1024 * 1024

    async def accept(self, name: str, *, content_type: str, authorization: str, body: bytes,
                     client_ip: str) -> Accepted:
        """Authenticate, read, check and spool one post; raise :class:`InboundError` for every refusal."""
        fmt = "unknown"
        try:
            inb = self.find(name)
            fmt = inb.format if inb.format != "auto" else "unknown"
            result = await self._accept(inb, content_type, authorization, body, client_ip)
            fmt = result.format
        except InboundError as exc:
            outcome = {401: "unauthorized", 404: "unknown_mailbox", 413: "too_large", 503: "deferred"}.get(
                exc.status, "refused" if exc.title == "Message refused" else "unreadable")
            self.metrics.http_inbound.labels(format=fmt, outcome=outcome).inc()
            raise
        self.metrics.http_inbound.labels(format=fmt, outcome="duplicate" if result.duplicate else "accepted").inc()
        return result

    async def _accept(self, inb: InboundConfig, content_type: str, authorization: str, body: bytes,
                      client_ip: str) -> Accepted:
        secret = self.secrets.get(inb.name.lower())
        if not isinstance(secret, Secrets):
            raise InboundError(503, "Inbound mailbox unavailable", "its secret file cannot be read (see the log)")
        if len(body) > self.max_body(inb):
            raise InboundError(413, "Content Too Large", f"the request body is over {self.max_body(inb)} bytes")
        form: Form | None = None
        doc: Any = None
        if is_form(content_type):
            form = parse_form(content_type, body)
        elif inb.auth == "mailgun":
            raise InboundError(401, "Unauthorized", "a Mailgun post is a form with timestamp, token and signature")
        check_auth(inb, secret, authorization, form, self.guard)
        if is_json(content_type) and inb.format in ("auto", "postmark"):
            doc = load_json(body)
        fmt = inb.format if inb.format != "auto" else detect_format(content_type, form, doc)
        posted = read_post(fmt, content_type, body, form, doc)
        del body, form, doc
        if len(posted.raw) > self.max_size(inb):
            raise InboundError(413, "Content Too Large",
                               f"the message is {len(posted.raw)} bytes, over the limit of {self.max_size(inb)}")
        key = idempotency_key(inb.mailbox, posted)
        first = await self.store.inbound_lookup(key)
        if first is not None:
            return Accepted(first, True, inb.mailbox, fmt)
        entry = await self._checked_entry(inb, posted, key, client_ip)
        try:
            await self.spool.commit(entry)
        except Exception:
            first = await self.store.inbound_lookup(key)  # the same post, committed meanwhile by another request
            if first is not None:
                return Accepted(first, True, inb.mailbox, fmt)
            raise InboundError(503, "Spool unavailable", "the message could not be committed; try again") from None
        log.info("accepted %s over HTTP (%s) for %s size=%d", entry.id, fmt, inb.mailbox, entry.size,
                 extra={"trace_id": entry.id})
        return Accepted(entry.id, False, inb.mailbox, fmt)

    async def _checked_entry(self, inb: InboundConfig, posted: Posted, key: str, client_ip: str) -> SpoolEntry:
        mb = self.mailboxes.get(inb.mailbox)
        if mb is None:  # a reload removed it
            raise InboundError(404, "Not Found", f"mailbox {inb.mailbox} is not configured")
        if header_end(posted.raw) > self.cfg.smtp.max_header_size:
            raise InboundError(413, "Content Too Large",
                               f"the header section is over [smtp] max_header_size ({self.cfg.smtp.max_header_size})")
        mail_from = envelope_sender(posted)
        try:
            return await self.checks.entry(
                mailbox=mb, raw=posted.raw, mail_from=mail_from,
                trusted_authserv_ids=(inb.trusted_authserv_id,) if inb.trusted_authserv_id else (),
                unverifiable=(f"rebuilt from the {posted.format} post's parsed fields: no signature of the original"
                              " can verify") if posted.rebuilt else "",
                record=("http_inbound", {"name": inb.name, "format": posted.format, "rebuilt": posted.rebuilt,
                                         "client_ip": client_ip, "provider_id": posted.provider_id[:300],
                                         "trusted_authserv_id": inb.trusted_authserv_id or None}),
                received=lambda spool_id: _received(self.cfg.smtp.hostname, posted.format, client_ip, spool_id,
                                                    inb.mailbox),
                inbound_key=key)
        except Refused as exc:
            raise _refusal(exc.temporary, exc.reply) from None


class Refused(Exception):
    """A check refused the message: what SMTP would answer 5xx (``temporary``: 4xx), as ``reply``."""

    def __init__(self, temporary: bool, reply: str) -> None:
        super().__init__(reply)
        self.temporary = temporary
        self.reply = reply


class IntakeChecks:
    """The SMTP-time checks for mail that did not come by SMTP (HTTP posts, pulled mailboxes): one
    reading of the header section, the loop check, DKIM and DMARC without SPF (the client is not the
    sender's MTA, DMARC aligns DKIM only), a trusted provider's Authentication-Results or a trusted ARC
    sealer when configured, and rspamd when it refuses at DATA. Builds the spool entry (docs/auth.md)."""

    def __init__(self, cfg: Config, executor: concurrent.futures.Executor | None = None,
                 resolver: Resolver | None = None) -> None:
        self.cfg = cfg
        self.auth_check = AuthCheck.from_config(cfg, executor, resolver)
        self.header_check = HeaderSectionCheck()
        self.loop_check = LoopCheck(cfg.smtp.hostname, cfg.smtp.loop_marker, cfg.smtp.max_received_headers)
        from gateway.smtp.rspamd_check import build_data_checks
        from gateway.config.pipeline import PipelinePolicy
        self.data_checks = build_data_checks(cfg.policy or PipelinePolicy(), cfg.mailbox_policies)

    def close(self) -> None:
        self.auth_check.authenticator.close()

    async def entry(self, *, mailbox: Any, raw: bytes, mail_from: str, trusted_authserv_ids: tuple[str, ...] = (),
                    trusted_arc_sealers: tuple[str, ...] = (), unverifiable: str = "",
                    record: tuple[str, dict[str, Any]], received: Callable[[str], str], inbound_key: str = "",
                    source_key: tuple[str, str, str] | None = None) -> SpoolEntry:
        """Check ``raw`` for ``mailbox`` and build its spool entry; raise :class:`Refused` for what SMTP
        would refuse. ``record``: (key, value) added to the entry's auth record (where it came from)."""
        ctx = DataContext(peer_ip="", helo="", mail_from=mail_from, rcpt_tos=[mailbox.address], mailboxes=[mailbox],
                          raw=raw, header_end=header_end(raw))
        for check in (self.header_check, self.loop_check):
            self._apply(await check.run(ctx), ctx)
        policy = self.auth_check.policy_for(ctx)
        if trusted_arc_sealers:
            from dataclasses import replace
            policy = replace(policy, trusted_arc_sealers=tuple(policy.trusted_arc_sealers) + trusted_arc_sealers)
        verdict = await self.auth_check.authenticator.check(
            peer_ip="", helo="", mail_from=mail_from, raw=ctx.raw, policy=policy, spf=False,
            trusted_authserv_id=trusted_authserv_ids, unverifiable=unverifiable)
        if verdict.action in ("reject", "defer") and verdict.reply is not None:
            code, enhanced, text = verdict.reply
            raise Refused(verdict.action == "defer", f"{code} {enhanced} {text}")
        raw = strip_forged_authres(ctx.raw, self.cfg.smtp.hostname)
        if raw is not ctx.raw:
            ctx.raw, ctx.header_end = raw, header_end(raw)
        ctx.prepended.insert(0, fold_header("Authentication-Results", verdict.header_value, line_ending(ctx.raw)))
        flags = [f for f, on in (("suspicious", verdict.suspicious), ("may_not_act", not verdict.may_act)) if on]
        for check in self.data_checks:
            flags += self._apply(await check.run(ctx), ctx)
        auth = dict(verdict.auth)
        auth[record[0]] = record[1]
        spool_id = new_spool_id()
        final = b"".join([received(spool_id).encode("utf-8"), *ctx.prepended, ctx.raw])
        from gateway.smtpd import _MESSAGE_ID
        m = _MESSAGE_ID.search(ctx.raw, 0, ctx.header_end + 2)
        return SpoolEntry(
            id=spool_id, received_at=time.time(), mail_from=mail_from, rcpt_tos=(mailbox.address,),
            mailboxes=(mailbox.address,), peer_ip="", helo="", tls=None,
            message_id=m.group(1).decode("utf-8", "replace").strip() if m else "", raw=final,
            auth_header=verdict.header_value, auth=auth, flags=tuple(flags), inbound_key=inbound_key,
            source_key=source_key)

    @staticmethod
    def _apply(result: Any, ctx: DataContext) -> list[str]:
        if result.action != CONTINUE and result.reply is not None:
            raise Refused(result.action == DEFER, str(result.reply))
        if result.raw is not None:
            ctx.raw = result.raw
            ctx.header_end = header_end(ctx.raw)
        if result.prepend:
            ctx.prepended.insert(0, result.prepend)
        return list(result.flags)


def _refusal(temporary: bool, reply: str) -> InboundError:
    if temporary:
        return InboundError(503, "Try again later", f"what SMTP would answer: {reply}")
    return InboundError(422, "Message refused", f"what SMTP would answer: {reply}")


def _received(hostname: str, fmt: str, client_ip: str, spool_id: str, mailbox: str) -> str:
    """Our trace field. The HTTP client is named in a comment, not a ``from`` clause with an address:
    it is the service's server, not a mail hop (docs/auth.md, "HTTP inbound")."""
    client = "".join(c for c in client_ip if c.isalnum() or c in ".:")[:64] or "unknown"
    return (f"Received: by {hostname} (ticketmx) with HTTP ({fmt} post from {client})\r\n\tid {spool_id}"
            f"\r\n\tfor <{mailbox}>;\r\n\t{email.utils.formatdate(localtime=False)}\r\n")
