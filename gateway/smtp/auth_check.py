"""The SMTP-time check that runs SPF, DKIM, DMARC and ARC at end of DATA.

The policy is the global ``[auth]`` table, overridden by the ``auth`` sub-table of
the *primary* mailbox (the first recipient mailbox in config order — the same one
whose queue the ticket lands in).
"""
from __future__ import annotations

import concurrent.futures

from gateway.smtp.checks import CONTINUE, DEFER, REJECT, CheckResult, DataContext
from gateway.config.load import Config
from gateway.config.recipients import RecipientMap
from gateway.smtp.replies import Reply
from gateway.auth.authenticator import Authenticator
from gateway.config.auth import AuthPolicy, parse_auth_policy
from gateway.auth.dns import Resolver
from gateway.auth.headers import fold_header, line_ending, strip_forged_authres


class AuthCheck:
    name = "auth"

    def __init__(self, authenticator: Authenticator, hostname: str, recipients: RecipientMap,
                 base: AuthPolicy, per_mailbox: dict[str, AuthPolicy]) -> None:
        self.authenticator = authenticator
        self.hostname = hostname
        self.recipients = recipients
        self.base = base
        self.per_mailbox = per_mailbox

    @classmethod
    def from_config(cls, cfg: Config, executor: concurrent.futures.Executor | None,
                    resolver: Resolver | None = None) -> "AuthCheck":
        resolver = resolver or Resolver(cfg.dns.nameservers, cfg.dns.timeout)
        base = parse_auth_policy(cfg.auth, "auth")
        per_mailbox = {mb.address: parse_auth_policy(mb.auth, f"mailbox[{i}].auth", base)
                       for i, mb in enumerate(cfg.mailboxes) if mb.auth}
        return cls(Authenticator(resolver, cfg.smtp.hostname, executor), cfg.smtp.hostname,
                   RecipientMap(cfg.mailboxes), base, per_mailbox)

    def policy_for(self, ctx: DataContext) -> AuthPolicy:
        if not ctx.mailboxes:
            return self.base
        primary = self.recipients.primary(ctx.mailboxes)
        return self.per_mailbox.get(primary.address, self.base)

    async def run(self, ctx: DataContext) -> CheckResult:
        verdict = await self.authenticator.check(peer_ip=ctx.peer_ip, helo=ctx.helo, mail_from=ctx.mail_from,
                                                 raw=ctx.raw, policy=self.policy_for(ctx), body=ctx.body,
                                                 body_size=ctx.body_size)
        if verdict.action in ("reject", "defer") and verdict.reply is not None:
            code, enhanced, text = verdict.reply
            return CheckResult(REJECT if verdict.action == "reject" else DEFER,
                               Reply(code, enhanced, text, _bounded_reason(text)))
        raw = strip_forged_authres(ctx.raw, self.hostname)  # the same object when nothing is removed
        field = fold_header("Authentication-Results", verdict.header_value, line_ending(raw))
        flags = []
        if verdict.suspicious:
            flags.append("suspicious")
        if not verdict.may_act:
            flags.append("may_not_act")
        return CheckResult(CONTINUE, raw=raw if raw is not ctx.raw else None, prepend=field,
                           auth_header=verdict.header_value, auth=verdict.auth, flags=flags)




def _bounded_reason(text: str) -> str:
    """A metrics label from the reply text: labels must come from a small fixed set."""
    lowered = text.lower()
    for known in ("dns", "dmarc", "spf", "from"):
        if known in lowered:
            return f"auth_{known}"
    return "auth_other"
