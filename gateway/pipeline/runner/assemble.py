"""The pipeline assembled from its configuration: stage instances in order, and the SMTP-time
checks the stage policies contribute.

The one module that knows every stage: the stages import stages.py (the model of a verdict) and
policy.py (their typed configuration); this imports them all, and nothing imports it but the
machinery that runs the pipeline (worker, app, SMTP processes).
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gateway.config.load import Config
from gateway.config.pipeline import DEFAULT_ORDER, STAGES, PipelinePolicy
from gateway.pipeline.stages.core import HtmlStage, IdentityStage, SenderStage, Stage, TicketStage


def _registry() -> dict[str, type]:
    from gateway.pipeline.stages.twoway import TWOWAY_STAGES
    from gateway.pipeline.stages.unsubscribe import UnsubscribeStage
    return {cls.name: cls for cls in (IdentityStage, UnsubscribeStage, SenderStage, TicketStage, *TWOWAY_STAGES)}


def build_pipeline(cfg: Config, names: tuple[str, ...] | None = None) -> list[Stage]:
    """Stage instances in order: ``names``, else ``[pipeline] stages``, else the recommended order."""
    built = build_stages(cfg.policy or PipelinePolicy(), cfg.mailbox_policies)
    registry = {**_registry(), **STAGES}  # STAGES: plug-ins registered at run time (tests, extensions)
    out: list[Stage] = []
    order = tuple(names or cfg.pipeline.stages or DEFAULT_ORDER)
    if IdentityStage.name not in order:
        order = (IdentityStage.name, *order)  # not optional: no stage may act on a sender read two ways
    for name in order:
        if name in registry:
            out.append(registry[name]())
        elif name in built:
            out.append(built[name])
        else:
            raise ValueError(f"unknown pipeline stage {name!r}")
    return out


def build_stages(policy: PipelinePolicy, mailboxes: Mapping[str, PipelinePolicy] | None = None
                 ) -> dict[str, Any]:
    """Stage instances by name, each with its global policy and the per-mailbox overrides."""
    from gateway.pipeline.stages.attachments import AttachmentsStage
    from gateway.pipeline.stages.automatic import AutomaticStage
    from gateway.pipeline.stages.bounces import BounceStage
    from gateway.pipeline.stages.rspamd import RspamdStage
    from gateway.pipeline.stages.senders import SenderPolicyStage
    from gateway.pipeline.stages.spam import SpamStage

    mailboxes = mailboxes or {}

    def per(attr: str) -> dict[str, Any]:
        return {addr: getattr(p, attr) for addr, p in mailboxes.items()}

    stages = [
        AutomaticStage(policy.automatic, per("automatic")),
        BounceStage(policy.bounce, per("bounce")),
        SpamStage(policy.spam, per("spam")),
        RspamdStage(policy.rspamd, per("rspamd")),
        SenderPolicyStage(policy.sender_policy, per("sender_policy")),
        AttachmentsStage(policy.attachments, per("attachments")),
        HtmlStage(policy.html, per("html")),
    ]
    return {s.name: s for s in stages}
