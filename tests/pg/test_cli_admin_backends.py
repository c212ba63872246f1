"""`tickets list` filters, `spool find`, `spool release` and `spool delete` through the real CLI, against a
real store (SQLite, and PostgreSQL when one is reachable) filled through SMTP (issue 20 section 2)."""
from __future__ import annotations

import asyncio
import json
import pwd
import os
from pathlib import Path
from typing import Any

import aiosmtplib

from gateway.store.base import Delivery

from ..conftest import queued_id, run_cli, simple_message

SENDERS = {"sender_policy": {"allowed_domains": ["customer.test"], "unknown": "quarantine"}}
ME = pwd.getpwuid(os.geteuid()).pw_name
CONTRACT_KEYS = {"id", "number", "subject", "requester", "requester_name", "queue", "mailbox", "status", "flags",
                 "priority", "category", "assignee", "tags", "fields", "linked_ticket_id", "created_at",
                 "updated_at", "closed_at"}


async def _send(port: int, msg: bytes, sender: str, rcpt: str = "support@example.test") -> str:
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=10, start_tls=False)
    await client.connect()
    await client.ehlo(hostname="client.test")
    await client.mail(sender)
    await client.rcpt(rcpt)
    _code, text = await client.data(msg)
    await client.quit()
    return queued_id(text)


def _config(tmp_path: Path, backend_db: str | None) -> str:
    url = backend_db or f"sqlite:///{tmp_path}/ticketmx.db"
    path = tmp_path / "cli.toml"
    path.write_text(f"[store]\nurl = \"{url}\"\n")
    return str(path)


async def _cli(*args: str, check: bool = True) -> Any:
    """The CLI in a subprocess, off the event loop (the in-process gateway keeps serving meanwhile)."""
    return await asyncio.to_thread(run_cli, *args, check=check)


async def _cli_json(*args: str) -> Any:
    return json.loads((await _cli(*args, "--json")).stdout)


async def _filled(start_gateway: Any) -> tuple[Any, dict[str, str]]:
    gw = await start_gateway(pipeline=SENDERS, auth={"malformed_from": "tag"})
    ids = {
        "first": await _send(gw.port, simple_message("first", message_id="m1@customer.test"), "alice@customer.test"),
        "billing": await _send(gw.port, simple_message("second", sender="bob@customer.test",
                                                       to="billing@example.test", message_id="m2@customer.test"),
                               "bob@customer.test", "billing@example.test"),
        "third": await _send(gw.port, simple_message("third", message_id="m3@customer.test"), "alice@customer.test"),
        "stranger": await _send(gw.port, simple_message("offer", sender="mallory@other.test",
                                                        message_id="m4@other.test"), "mallory@other.test"),
        "stranger2": await _send(gw.port, simple_message("offer again", sender="mallory@other.test",
                                                         message_id="m5@other.test"), "mallory@other.test"),
    }
    for sid in ids.values():
        await gw.wait_done(sid)
    return gw, ids


async def test_tickets_list_newest_first_header_and_filters(start_gateway, backend_db, tmp_path):
    gw, _ = await _filled(start_gateway)
    cfg = _config(tmp_path, backend_db)
    tickets = await _cli_json("tickets", "list", "--config", cfg)
    assert [t["subject"] for t in tickets] == ["third", "second", "first"]  # newest first
    assert all(set(t) == CONTRACT_KEYS for t in tickets)  # the JSON shape is the documented one
    text = (await _cli("tickets", "list", "--config", cfg)).stdout.splitlines()
    assert text[0].split()[:4] == ["NUMBER", "STATUS", "QUEUE", "CREATED"] and len(text) == 4
    assert text[1].startswith(tickets[0]["number"])

    async def numbers(*filters: str) -> list[str]:
        return [t["number"] for t in await _cli_json("tickets", "list", "--config", cfg, *filters)]
    first, second, third = (t["number"] for t in reversed(tickets))
    assert await numbers("--queue", "Billing") == [second]
    assert await numbers("--requester", "ALICE@customer.test") == [third, first]
    assert await numbers("--status", "new") == [third, second, first]
    assert await numbers("--status", "closed") == []
    assert await numbers("--assignee", "nobody@example.test") == []
    assert await numbers("--since", "1h", "--limit", "2") == [third, second]
    assert await numbers("--since", "2000-01-01") == [third, second, first]
    assert await numbers("--since", "2999-01-01T00:00") == []
    assert await numbers("--requester", "alice@customer.test", "--queue", "Billing") == []
    bad = await _cli("tickets", "list", "--config", cfg, "--since", "yesterday", check=False)
    assert bad.returncode == 2 and "neither a duration" in bad.stderr


async def test_spool_find_traces_a_message(start_gateway, backend_db, tmp_path):
    gw, ids = await _filled(start_gateway)
    cfg = _config(tmp_path, backend_db)
    (hit,) = await _cli_json("spool", "find", "--config", cfg, "--message-id", "<m2@customer.test>")
    assert hit["id"] == ids["billing"] and hit["state"] == "ticket_created" and hit["ticket_number"]
    assert hit["reason"] == "" and hit["audit"] == [] and hit["raw_kept"] is True
    found = await _cli_json("spool", "find", "--config", cfg, "--from", "Alice@Customer.test")
    assert [e["id"] for e in found] == [ids["third"], ids["first"]]  # newest first
    assert [e["id"] for e in await _cli_json("spool", "find", "--config", cfg, "--rcpt", "billing@example.test")] \
        == [ids["billing"]]
    assert await _cli_json("spool", "find", "--config", cfg, "--from", "alice@customer.test", "--rcpt",
                           "billing@example.test") == []
    (q,) = await _cli_json("spool", "find", "--config", cfg, "--message-id", "m4@other.test", "--since", "10m")
    assert q["state"] == "quarantined" and q["ticket_number"] is None and "sender" in q["reason"]
    assert await _cli_json("spool", "find", "--config", cfg, "--message-id", "m4@other.test",
                           "--since", "2999-01-01") == []
    assert len(await _cli_json("spool", "find", "--config", cfg, "--since", "1d", "--limit", "3")) == 3
    text = (await _cli("spool", "find", "--config", cfg, "--from", "mallory@other.test")).stdout.splitlines()
    assert text[0].split()[:3] == ["ID", "RECEIVED", "(UTC)"] and len(text) == 3 and "quarantined" in text[1]
    usage = await _cli("spool", "find", "--config", cfg, check=False)
    assert usage.returncode == 2 and "at least one of" in usage.stderr


async def test_release_skips_the_holding_stage_once_and_records_who(start_gateway, backend_db, tmp_path):
    gw, ids = await _filled(start_gateway)
    cfg = _config(tmp_path, backend_db)
    sid = ids["stranger"]
    before = await _cli_json("spool", "show", sid, "--config", cfg)
    assert before["state"] == "quarantined" and before["history"][-1]["stage"] == "sender_policy"
    out = await _cli_json("spool", "release", sid, "--config", cfg)
    assert out["released"] == sid and out["stage"] == "sender_policy" and out["by"] == ME and not out["forced"]
    entry = await gw.wait_done(sid)
    assert entry.state == "ticket_created", (entry.state, entry.reason)
    shown = await _cli_json("spool", "show", sid, "--config", cfg)
    (step,) = [h for h in shown["history"] if h["stage"] == "sender_policy"]
    assert step["action"] == "released" and f"released by {ME} at " in step["reason"]
    assert [a["action"] for a in shown["audit"]] == ["released"] and shown["audit"][0]["actor"] == ME
    assert shown["audit"][0]["detail"]["stage"] == "sender_policy"
    assert shown["ticket_number"] and (await _cli_json("tickets", "show", shown["ticket_number"], "--config", cfg)
                                       )["requester"] == "mallory@other.test"
    # once: the stage is back for the next message, and a finished entry is not released again
    again = await _cli("spool", "release", sid, "--config", cfg, check=False)
    assert again.returncode == 1 and "only a quarantined entry" in again.stderr
    assert (await gw.store.spool_get(ids["stranger2"])).state == "quarantined"
    await _cli("spool", "replay", sid, "--config", cfg)  # a replay does not skip it again: idempotent
    assert (await gw.wait_done(sid)).reason == "already delivered"


async def test_identity_quarantine_needs_force_and_stays_untrusted(start_gateway, backend_db, tmp_path):
    gw = await start_gateway(auth={"malformed_from": "tag"})
    cfg = _config(tmp_path, backend_db)
    msg = (b"From: =?utf-8?q?Victim?= <=?utf-8?q?victim=40customer.test?=>\r\nTo: support@example.test\r\n"
           b"Subject: pay me\r\nMessage-ID: <id1@customer.test>\r\n\r\nbody\r\n")
    sid = await _send(gw.port, msg, "victim@customer.test")
    entry = await gw.wait_done(sid)
    assert entry.state == "quarantined" and entry.reason.startswith("sender identity"), entry.reason
    refused = await _cli("spool", "release", sid, "--config", cfg, check=False)
    assert refused.returncode == 1 and "identity check" in refused.stderr and "--force" in refused.stderr
    assert (await gw.store.spool_get(sid)).state == "quarantined"
    assert (await _cli_json("spool", "show", sid, "--config", cfg))["audit"] == []
    out = await _cli_json("spool", "release", sid, "--force", "--config", cfg)
    assert out["stage"] == "identity" and out["forced"] is True
    entry = await gw.wait_done(sid)
    shown = await _cli_json("spool", "show", sid, "--config", cfg)
    (step,) = [h for h in shown["history"] if h["stage"] == "identity"]
    assert step["action"] == "released" and "(--force)" in step["reason"] and "suspicious" in step["reason"]
    assert shown["audit"][0]["detail"]["forced"] is True
    assert entry.state == "ticket_created", entry.reason
    ticket = await gw.store.ticket_get(str(entry.ticket_id))
    assert ticket["requester"].lower() == entry.auth["from"]["addresses"][0].lower()  # what DMARC evaluated
    assert "suspicious" in ticket["flags"]  # never a trusted requester: flagged, its own ticket


async def test_release_refuses_what_no_stage_held(start_gateway, backend_db, tmp_path):
    """A budget quarantine (or one after failures) has no stage to skip: refused, pointing at replay."""
    gw = await start_gateway()
    cfg = _config(tmp_path, backend_db)
    await _cli("pipeline", "pause", "--config", cfg)
    sid = await _send(gw.port, simple_message(), "alice@customer.test")
    (claimed,) = await gw.store.spool_claim(10, 1e12, "test")
    await gw.store.deliver([Delivery(sid, "quarantine", reason="processing budget exceeded: 31.0s busy, budget 30s,"
                                     " in identity", history=({"stage": "identity", "action": "quarantine",
                                                               "reason": "processing budget exceeded"},))], 1e9)
    budget = await _cli("spool", "release", sid, "--config", cfg, check=False)
    assert budget.returncode == 1 and "message_budget" in budget.stderr and "spool replay" in budget.stderr
    assert (await gw.store.spool_get(sid)).state == "quarantined"


async def test_delete_removes_the_raw_message_and_records_it(start_gateway, backend_db, tmp_path):
    gw, ids = await _filled(start_gateway)
    cfg = _config(tmp_path, backend_db)
    sid = ids["stranger2"]
    assert b"offer again" in (await _cli("spool", "show", sid, "--raw", "--config", cfg)).stdout.encode()
    live = await _cli("spool", "delete", ids["first"], "--config", cfg, check=False)
    assert live.returncode == 1 and "only a quarantined or suppressed" in live.stderr
    out = await _cli_json("spool", "delete", sid, "--config", cfg)
    assert out == {"deleted": sid, "by": ME}
    assert (await _cli("spool", "show", sid, "--raw", "--config", cfg)).stdout == ""
    shown = await _cli_json("spool", "show", sid, "--config", cfg)
    assert shown["state"] == "quarantined" and shown["raw_kept"] is False  # the entry and its state stay
    assert [(a["action"], a["actor"]) for a in shown["audit"]] == [("deleted", ME)]
    assert shown["audit"][0]["detail"]["message_id"] == "m5@other.test"
    for argv, fragment in ((("spool", "delete", sid), "already deleted"), (("spool", "release", sid), "deleted"),
                           (("spool", "replay", sid), "deleted")):
        proc = await _cli(*argv, "--config", cfg, check=False)
        assert proc.returncode == 1 and fragment in proc.stderr, (argv, proc.stderr)
    assert (await gw.store.spool_get(sid)).state == "quarantined"
    # a bulk replay of the quarantine leaves it alone too: nothing is left to make a ticket of
    assert sid not in (await _cli_json("spool", "replay", "--quarantined", "--config", cfg))["replayed"]
    assert (await gw.store.spool_get(sid)).state == "quarantined"
