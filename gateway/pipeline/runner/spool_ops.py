"""Operator actions on spool entries — replay, release, delete — decided once for every caller.

The CLI (``ticketmx spool replay|release|delete``, gateway/cli.py) and the HTTP API
(``POST /api/v1/messages/{id}/replay|release``, ``DELETE /api/v1/messages/{id}``) both ask here
whether an entry may be acted on and why not, then call the same store methods, so the two
never disagree. ``how`` names the follow-up actions in the caller's own terms (a command or an
endpoint) in the reasons given back.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from gateway.store.base import LIVE_STATES, QUARANTINED, SUPPRESSED, SpoolEntry

# Why an entry cannot be released, by what held it (``None``: a stage whose decision may be skipped).
_NOT_A_STAGE = ("was quarantined after the pipeline ({reason}), not by a stage's decision: there is no stage to "
                "skip. {replay} runs it again")
_BUDGET = ("was quarantined for going over [pipeline] message_budget ({reason}), not by a stage's decision: a "
           "release does not lift the budget. Raise [pipeline] message_budget and use {replay}")
_NO_SENDER = ("names no sender at all ({reason}): there is nobody to make a ticket for. {delete} removes it")
_TICKET_STAGE = ("was quarantined by the ticket stage itself ({reason}): skipping it makes no ticket. Fix the "
                 "cause (config, template) and use {replay}")
_IDENTITY = ("was held by the identity check ({reason}). Releasing it makes the From that DMARC evaluated the "
             "requester although the MIME parser reads another; the message is then handled as suspicious mail "
             "(its own ticket, flagged, never acting as an agent or on an existing ticket). {force} to do that "
             "(recorded)")


@dataclass(frozen=True, slots=True)
class How:
    """The caller's words for the follow-up actions; ``{id}`` is the entry's id."""
    replay: str = "`ticketmx spool replay {id}`"
    delete: str = "`ticketmx spool delete {id}`"
    force: str = "Run again with --force"


CLI = How()


def has_raw(entry: SpoolEntry) -> bool:
    """False once the raw message was deleted (`spool delete`, or retention's raw_days)."""
    return bool(entry.raw) or entry.chunks > 0


def holding_stage(entry: SpoolEntry, how: How = CLI) -> tuple[str | None, str]:
    """(the stage whose quarantine a release skips once, "") or (None, why there is none)."""
    from gateway.pipeline.runner.budget import REASON as BUDGET_REASON
    fmt = {"reason": entry.reason, "replay": how.replay.format(id=entry.id), "delete": how.delete.format(id=entry.id),
           "force": how.force.format(id=entry.id)}
    if entry.reason.startswith(BUDGET_REASON):
        return None, _BUDGET.format(**fmt)
    held = next((h for h in reversed(entry.history) if h.get("action") == "quarantine"), None)
    if held is None or not held.get("stage"):
        return None, _NOT_A_STAGE.format(**fmt)
    stage = str(held["stage"])
    if stage == "sender":
        return None, _NO_SENDER.format(**fmt)
    if stage == "ticket":
        return None, _TICKET_STAGE.format(**fmt)
    return stage, ""


def release_plan(entry: SpoolEntry | None, force: bool, how: How = CLI) -> tuple[str | None, str]:
    """(the stage a release skips once, "") or (None, why it cannot be released)."""
    if entry is None:
        return None, "no such entry"
    if entry.state != QUARANTINED:
        return None, (f"entry is {entry.state}: only a quarantined entry is released ("
                      f"{how.replay.format(id=entry.id)} re-runs a finished one)")
    if not has_raw(entry):
        return None, "its raw message was deleted"
    stage, why = holding_stage(entry, how)
    if stage == "identity" and not force:
        return None, _IDENTITY.format(reason=entry.reason, force=how.force.format(id=entry.id))
    return stage, why


async def release(store: Any, entry: SpoolEntry, stage: str, force: bool, actor: str, now: float,
                  also: Callable[[Any], None] | None = None) -> dict[str, Any] | None:
    """Release ``entry`` past ``stage`` (from :func:`release_plan`); the record, or None when it changed
    meanwhile (no longer quarantined). ``also(conn)`` runs in the same transaction (an audit row)."""
    forced = bool(force and stage == "identity")
    record = {"stage": stage, "by": actor, "at": now, "forced": forced}
    if not await store.spool_release_held(entry.id, record, actor, {"stage": stage, "reason": entry.reason,
                                                                    "forced": forced}, also=also):
        return None
    return record


def delete_refusal(entry: SpoolEntry | None) -> str:
    """Why the raw message of ``entry`` may not be deleted ("" when it may)."""
    if entry is None:
        return "no such entry"
    if entry.state not in (QUARANTINED, SUPPRESSED):
        return f"entry is {entry.state}: only a quarantined or suppressed entry's message is deleted"
    if not has_raw(entry):
        return "its raw message is already deleted"
    return ""


def delete_detail(entry: SpoolEntry) -> dict[str, Any]:
    return {"state": entry.state, "reason": entry.reason, "size": entry.size, "message_id": entry.message_id}


async def delete(store: Any, entry: SpoolEntry, actor: str, also: Callable[[Any], None] | None = None) -> bool:
    """Delete the raw message (the entry and its history stay); False when it changed meanwhile.
    ``also(conn)`` runs in the same transaction (an audit row)."""
    return await store.spool_delete_raw(entry.id, actor, delete_detail(entry), also=also)


def replay_refusal(entry: SpoolEntry | None) -> str:
    """Why ``entry`` cannot be replayed now ("" when it can; the store still has the last word)."""
    if entry is None:
        return "no such entry"
    if entry.state in LIVE_STATES:
        return f"entry is {entry.state}"
    if not has_raw(entry):
        return "its raw message was deleted"
    return ""
