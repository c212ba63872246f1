"""rspamd at SMTP time: refuse at end of DATA when every recipient mailbox's ``reject_score`` is reached.

The client, the score decision and the pipeline stage are gateway/pipeline/stages/rspamd.py; this check
leaves the score in the spool entry's flags (``rspamd-score:<score>``) so the stage need not ask again.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gateway.config.pipeline import PipelinePolicy, RspamdPolicy
from gateway.pipeline.stages.rspamd import FLAG_PREFIX, RspamdClient, RspamdError, client_for
from gateway.smtp.checks import CONTINUE as CHECK_CONTINUE
from gateway.smtp.checks import DEFER, REJECT, CheckResult, DataContext
from gateway.smtp.replies import Reply

SPAM_REJECTED = Reply(550, "5.7.1", "Message rejected as spam", "spam")
SCAN_TEMPFAIL = Reply(451, "4.7.1", "Content scanner unavailable, please try again later", "scanner_unavailable")


class RspamdCheck:
    """SMTP-time: reject at end of DATA when rspamd's score reaches ``reject_score``."""

    name = "rspamd"

    def __init__(self, policy: RspamdPolicy, per_mailbox: Mapping[str, RspamdPolicy] | None = None) -> None:
        self.policy = policy
        self.per_mailbox = {k.lower(): v for k, v in (per_mailbox or {}).items()}
        self._clients: dict[tuple[str, float, str], RspamdClient] = {}

    def _policies(self, ctx: DataContext) -> list[RspamdPolicy]:
        addrs = [str(getattr(mb, "address", mb)).lower() for mb in (ctx.mailboxes or [])]
        pols = [self.per_mailbox.get(a, self.policy) for a in addrs] or [self.policy]
        return [p for p in pols if p.enabled]

    async def run(self, ctx: DataContext) -> CheckResult:
        pols = self._policies(ctx)
        if not pols or ctx.size > min(p.max_size for p in pols):
            return CheckResult()
        first = pols[0]
        try:
            result = await client_for(first, self._clients).check(
                ctx.message(), ip=ctx.peer_ip, helo=ctx.helo, mail_from=ctx.mail_from, rcpts=list(ctx.rcpt_tos))
        except RspamdError:
            if any(p.on_error == "tempfail" for p in pols):
                return CheckResult(DEFER, SCAN_TEMPFAIL)
            return CheckResult()
        # One message, several mailboxes: refuse it only if every one of them would.
        if all(p.reject_at_data and p.reject_score is not None and result.score >= p.reject_score for p in pols):
            return CheckResult(REJECT, SPAM_REJECTED)
        return CheckResult(CHECK_CONTINUE, flags=[f"{FLAG_PREFIX}{result.score:.3f}"])


def build_data_checks(policy: PipelinePolicy, mailboxes: Mapping[str, PipelinePolicy] | None = None
                      ) -> list[Any]:
    """SMTP-time checks contributed by these policies (today: the rspamd reject-at-DATA check,
    when rspamd is enabled for the global policy or any mailbox and some reject_score is set)."""
    mailboxes = mailboxes or {}
    pols = [policy.rspamd, *(p.rspamd for p in mailboxes.values())]
    if any(p.enabled and p.reject_at_data and p.reject_score is not None for p in pols):
        return [RspamdCheck(policy.rspamd, {a: p.rspamd for a, p in mailboxes.items()})]
    return []
