"""Stage ``unsubscribe``: a contact answering the ``List-Unsubscribe`` mailto of an acknowledgement
or status mail (``Subject: unsubscribe u1.<address>.<mac>``) opts out of them.

The token is MAC-signed with the threading key (gateway.pipeline.stages.tokens.unsubscribe_token), so the
mail opts out the address the token was issued for, whoever sends it, and nobody can opt out an
address we never mailed that token to. A valid request opens no ticket and gets no reply (it is
suppressed; the notification hook records the opt-out in the same transaction). Any other mail
whose subject merely says "unsubscribe" goes on through the pipeline as usual: a person reads it.
"""
from __future__ import annotations

from gateway.pipeline.stages.core import CONTINUE, DROP, Context, Inbound, Verdict
from gateway.pipeline.stages.tokens import verify_unsubscribe_token


class UnsubscribeStage:
    name = "unsubscribe"

    async def run(self, msg: Inbound, ctx: Context) -> Verdict:
        subject = msg.parsed.subject or ""
        if "u1." not in subject.lower() or "unsubscribe" not in subject.lower():
            return Verdict(CONTINUE)
        addr = verify_unsubscribe_token(subject, ctx.keys)
        if addr is None:
            return Verdict(CONTINUE, reason="unsubscribe token not valid: handled as a normal message")
        return Verdict(DROP, reason=f"unsubscribe: {addr} opted out of acknowledgements and status mails",
                       data={"opt_out": addr})


__all__ = ["UnsubscribeStage"]
