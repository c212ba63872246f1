"""Mail in over SMTP, ticket out: mapping, idempotency, threading, quarantine, replay."""
from __future__ import annotations

import asyncio
import hashlib
from email.message import EmailMessage

import aiosmtplib
import pytest

from gateway.config.pipeline import STAGES
from gateway.pipeline.stages.core import Verdict
from gateway.pipeline.runner.worker import MetricsSink, Worker

from .conftest import queued_id, simple_message


async def send(port: int, msg: bytes, rcpts=("support@example.test",), sender="alice@customer.test") -> str:
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=10, start_tls=False)
    await client.connect()
    await client.ehlo(hostname="client.test")
    await client.mail(sender)  # sender may be "" (the null reverse-path)
    for rcpt in rcpts:
        await client.rcpt(rcpt)
    _code, text = await client.data(msg)
    await client.quit()
    return queued_id(text)


async def test_message_becomes_ticket(gateway):
    sid = await send(gateway.port, simple_message(message_id="m1@customer.test"))
    entry = await gateway.wait_done(sid)
    assert entry.state == "ticket_created"
    tickets = await gateway.store.tickets_list()
    assert len(tickets) == 1
    t = tickets[0]
    assert t["number"] == "HD-1000" and t["subject"] == "Printer on fire"
    assert t["requester"] == "alice@customer.test" and t["queue"] == "IT" and t["status"] == "new"
    full = await gateway.store.ticket_get("HD-1000")
    (art,) = full["articles"]
    assert art["spool_id"] == sid and art["message_id"] == "m1@customer.test"
    assert art["from"] == "alice@customer.test" and art["body_text"].strip() == "It is on fire."


async def test_several_mailboxes_make_one_ticket_in_first_configured_queue(gateway):
    # billing is listed after support in config; RCPT order must not matter
    sid = await send(gateway.port, simple_message(message_id="multi@customer.test"),
                     rcpts=("billing@example.test", "help@example.test"))
    entry = await gateway.wait_done(sid)
    assert entry.state == "ticket_created"
    tickets = await gateway.store.tickets_list()
    assert len(tickets) == 1 and tickets[0]["queue"] == "IT"
    art = (await gateway.store.ticket_get(str(tickets[0]["id"])))["articles"][0]
    assert art["rcpt_tos"] == ["billing@example.test", "help@example.test"]


async def test_same_message_id_twice_is_one_ticket(gateway):
    # an upstream MTA retrying after a timeout, or the same mail sent to two support addresses
    a = await send(gateway.port, simple_message(message_id="dup@customer.test"))
    b = await send(gateway.port, simple_message(message_id="dup@customer.test"),
                   rcpts=("billing@example.test",))
    ea, eb = await gateway.wait_done(a), await gateway.wait_done(b)
    assert ea.state == "ticket_created"
    assert eb.state == "suppressed" and "duplicate" in eb.reason and "HD-1000" in eb.reason
    assert len(await gateway.store.tickets_list()) == 1


async def test_reply_from_participant_threads_onto_ticket(gateway):
    first = await send(gateway.port, simple_message(message_id="orig@customer.test"))
    await gateway.wait_done(first)
    reply = simple_message(subject="Re: Printer on fire", message_id="reply@customer.test",
                           extra="In-Reply-To: <orig@customer.test>\r\nReferences: <orig@customer.test>\r\n",
                           body="Still burning.\r\n")
    e = await gateway.wait_done(await send(gateway.port, reply))
    assert e.state == "article_added"
    tickets = await gateway.store.tickets_list()
    assert len(tickets) == 1
    assert len((await gateway.store.ticket_get("HD-1000"))["articles"]) == 2


async def test_reply_from_stranger_never_joins_the_ticket(gateway):
    first = await send(gateway.port, simple_message(message_id="orig2@customer.test"))
    await gateway.wait_done(first)
    spoof = simple_message(subject="Re: Printer on fire", sender="mallory@evil.test", message_id="x@evil.test",
                           extra="In-Reply-To: <orig2@customer.test>\r\n")
    e = await gateway.wait_done(await send(gateway.port, spoof, sender="mallory@evil.test"))
    assert e.state == "ticket_created"  # a new ticket of its own
    t1 = await gateway.store.ticket_get("HD-1000")
    assert len(t1["articles"]) == 1 and t1["requester"] == "alice@customer.test"


async def test_attachments_stored_content_addressed(gateway):
    msg = EmailMessage()
    msg["From"] = "Bob <bob@customer.test>"
    msg["To"] = "support@example.test"
    msg["Subject"] = "Logs attached"
    msg["Message-ID"] = "<att@customer.test>"
    msg.set_content("See attached.")
    payload = bytes(range(256)) * 40
    msg.add_attachment(payload, maintype="application", subtype="octet-stream", filename="dump.bin")
    msg.add_attachment(payload, maintype="application", subtype="octet-stream", filename="copy.bin")
    e = await gateway.wait_done(await send(gateway.port, msg.as_bytes(), sender="bob@customer.test"))
    assert e.state == "ticket_created"
    art = (await gateway.store.ticket_get("HD-1000"))["articles"][0]
    digest = hashlib.sha256(payload).hexdigest()
    assert [(a["filename"], a["size"], a["sha256"]) for a in art["attachments"]] == [
        ("dump.bin", len(payload), digest), ("copy.bin", len(payload), digest)]
    assert await gateway.store.blob_get(digest) == payload


async def test_missing_from_is_refused_at_data_by_default(gateway):
    msg = b"Subject: who am I\r\n\r\nno From header, null sender\r\n"
    with pytest.raises(aiosmtplib.SMTPDataError) as exc:
        await send(gateway.port, msg, sender="")
    assert exc.value.code == 550 and exc.value.message.startswith("5.7.1")
    assert await gateway.store.spool_list() == []


async def test_no_sender_is_quarantined_then_replay_is_idempotent(start_gateway):
    # without the automatic-mail stage (which suppresses null-sender mail) nothing names a sender
    gateway = await start_gateway(auth={"malformed_from": "tag"}, pipeline={"stages": ["sender", "ticket"]})
    msg = b"Subject: who am I\r\n\r\nno From header, null sender\r\n"
    sid = await send(gateway.port, msg, sender="")
    e = await gateway.wait_done(sid)
    assert e.state == "quarantined" and "no sender" in e.reason
    assert e.mail_from == ""  # the null reverse-path is stored as ""
    assert await gateway.store.tickets_list() == []
    # a normal message, replayed after it made its ticket, stays one ticket
    sid2 = await send(gateway.port, simple_message(message_id="replay@customer.test"))
    assert (await gateway.wait_done(sid2)).state == "ticket_created"
    assert await gateway.store.spool_replay(sid2)
    gateway.gw.worker.wake()
    e2 = await gateway.wait_done(sid2)
    assert e2.state == "ticket_created" and e2.reason == "already delivered"
    assert len(await gateway.store.tickets_list()) == 1


class ExplodingStage:
    """A pipeline plug-in that always fails: drives the retry-then-quarantine path for real."""

    name = "explode"

    async def run(self, msg, ctx) -> Verdict:
        raise RuntimeError("stage exploded on purpose")


async def test_message_failing_three_times_is_quarantined(gateway, monkeypatch):
    monkeypatch.setitem(STAGES, "explode", ExplodingStage)
    gw = gateway.gw
    await gw.worker.close()
    gw.worker = Worker(gw.cfg, gw.store, MetricsSink(gw.metrics), gw.executor, stage_names=("explode", "ticket"))
    gw.spool.on_commit = gw.worker.wake
    gw.worker.start()
    sid = await send(gateway.port, simple_message(message_id="boom@customer.test"))
    e = await gateway.wait_done(sid)
    assert e.state == "quarantined"
    assert e.attempts == 3 and "failed 3 times" in e.reason and "stage exploded on purpose" in e.reason
    assert await gateway.store.tickets_list() == []


async def test_retention_purges_raw_and_quarantine_but_keeps_tickets(start_gateway):
    import time as _t
    gateway = await start_gateway(auth={"malformed_from": "tag"}, pipeline={"stages": ["sender", "ticket"]})
    ok = await send(gateway.port, simple_message(message_id="keep@customer.test"))
    bad = await send(gateway.port, b"Subject: nobody\r\n\r\nno sender\r\n", sender="")
    await gateway.wait_done(ok)
    assert (await gateway.wait_done(bad)).state == "quarantined"
    counts = await gateway.store.purge(_t.time() + 40 * 86400, raw_days=30, quarantine_days=30,
                                       closed_ticket_days=0)
    assert counts == {"raw": 1, "quarantined": 1, "tickets": 0}
    assert (await gateway.store.spool_get(ok)).raw == b""
    assert await gateway.store.spool_get(bad) is None
    assert len((await gateway.store.ticket_get("HD-1000"))["articles"]) == 1


async def test_repeated_failures_pause_processing_until_resumed(start_gateway, monkeypatch):
    monkeypatch.setitem(STAGES, "explode", ExplodingStage)
    gateway = await start_gateway(pipeline={"pause_after_failures": 2, "max_attempts": 1})
    gw = gateway.gw
    await gw.worker.close()
    gw.worker = Worker(gw.cfg, gw.store, MetricsSink(gw.metrics), gw.executor, stage_names=("explode", "ticket"))
    gw.spool.on_commit = gw.worker.wake
    gw.worker.start()
    for i in range(2):
        await gateway.wait_done(await send(gateway.port, simple_message(message_id=f"p{i}@customer.test")))
    assert "2 consecutive failures" in (await gw.store.control_get("pipeline_paused"))
    assert "ticketmx_pipeline_consecutive_failures 2.0" in gw.metrics.render().decode()
    held = await send(gateway.port, simple_message(message_id="held@customer.test"))
    await asyncio.sleep(0.5)
    assert (await gw.store.spool_get(held)).state == "queued"  # accepted, spooled, not processed
    # an operator fixes the cause and resumes
    await gw.worker.close()
    gw.worker = Worker(gw.cfg, gw.store, MetricsSink(gw.metrics), gw.executor)
    gw.spool.on_commit = gw.worker.wake
    gw.worker.start()
    await gw.store.control_set("pipeline_paused", None)
    gw.worker.wake()
    assert (await gateway.wait_done(held)).state == "ticket_created"


async def test_encryption_at_rest_and_key_rotation(start_gateway, tmp_path):
    import sqlite3

    from gateway.store.crypto import generate_key
    old_key = generate_key()
    keyfile = tmp_path / "store.key"
    keyfile.write_text(old_key + "\n")
    keyfile.chmod(0o600)  # secret files others can read are refused
    gateway = await start_gateway(store={"encryption_key_file": str(keyfile)})
    msg = EmailMessage()
    msg["From"] = "eve@customer.test"
    msg["To"] = "support@example.test"
    msg["Subject"] = "secret stuff"
    msg.set_content("the password is hunter2")
    msg.add_attachment(b"TOPSECRETBLOB" * 10, maintype="application", subtype="octet-stream", filename="s.bin")
    sid = await send(gateway.port, msg.as_bytes(), sender="eve@customer.test")
    assert (await gateway.wait_done(sid)).state == "ticket_created"
    db = gateway.gw.cfg.sqlite_path()
    conn = sqlite3.connect(db)
    dump = b"".join(bytes(r[0]) if isinstance(r[0], bytes) else r[0].encode()
                    for q in ("SELECT raw FROM spool", "SELECT raw FROM spool_raw", "SELECT body_text FROM articles",
                              "SELECT data FROM blobs")
                    for r in conn.execute(q))
    conn.close()
    assert b"hunter2" not in dump and b"TOPSECRETBLOB" not in dump  # nothing readable on disk
    art = (await gateway.store.ticket_get("HD-1000"))["articles"][0]
    assert "hunter2" in art["body_text"]                              # readable through the store
    assert await gateway.store.blob_get(art["attachments"][0]["sha256"]) == b"TOPSECRETBLOB" * 10
    # rotation: a new first key; old data re-encrypted; afterwards the old key can go
    from gateway.store.crypto import Cipher
    new_key = generate_key()
    gateway.store.cipher = Cipher([new_key.encode(), old_key.encode()])
    counts = await gateway.store.rotate_key()
    assert counts["articles"] == 1 and counts["blobs"] == 1
    gateway.store.cipher = Cipher([new_key.encode()])
    assert "hunter2" in (await gateway.store.ticket_get("HD-1000"))["articles"][0]["body_text"]
    assert b"hunter2" in (await gateway.store.spool_get(sid)).raw


async def test_batch_wait_gathers_mail_arriving_together_into_one_batch(start_gateway):
    """Six messages committed one by one within the wait: at most three claims, not six (each batch
    costs a claim and a delivery transaction). Every message still becomes a ticket."""
    gw = await start_gateway(pipeline={"batch_wait": "300ms"})
    claims: list[int] = []
    store = gw.store
    orig = store.spool_claim

    async def counting(*a, **kw):
        got = await orig(*a, **kw)
        if got:
            claims.append(len(got))
        return got
    store.spool_claim = counting  # type: ignore[method-assign]
    sids = []
    for i in range(6):  # one commit (and one wake-up) each, 20 ms apart
        sids.append(await send(gw.port, simple_message(subject=f"b{i}", message_id=f"b{i}@customer.test")))
        await asyncio.sleep(0.02)
    for sid in sids:
        assert (await gw.wait_done(sid)).state == "ticket_created"
    assert sum(claims) == 6 and len(claims) <= 3, claims


def test_batch_wait_config(tmp_path):
    from gateway.config.errors import ConfigErrors

    from .conftest import make_config
    assert make_config(tmp_path).pipeline.batch_wait == 0.02
    assert make_config(tmp_path, pipeline={"batch_wait": "0s"}).pipeline.batch_wait == 0
    with pytest.raises(ConfigErrors) as exc:
        make_config(tmp_path, pipeline={"batch_wait": "2s"})
    assert "pipeline.batch_wait" in str(exc.value)


async def test_inside_the_smtp_process_no_mime_parse_runs_on_its_loop(gateway):
    """[pipeline] processes = 0 runs the pipeline in the SMTP process: a parse there would stall every
    SMTP session, so even a small message is parsed on the executor's thread. A profiler hook installed on
    the loop's thread only (sys.setprofile is per thread) sees every parse_message call made on it."""
    import sys

    on_loop: list[str] = []

    def hook(frame, event, arg):
        if event == "call" and frame.f_code.co_name == "parse_message" and frame.f_code.co_filename.endswith("mime.py"):
            on_loop.append(frame.f_code.co_filename)

    sys.setprofile(hook)
    try:
        e = await gateway.wait_done(await send(gateway.port, simple_message(message_id="loop1@customer.test")))
    finally:
        sys.setprofile(None)
    assert e.state == "ticket_created"
    assert on_loop == [], "the MIME parse ran on the SMTP process's event loop"
