"""Outbound webhooks end to end: mail over SMTP -> outbox (same transaction) -> signed POST to a real
local receiver that verifies every signature; retries, dead letters, formats, the CLI."""
from __future__ import annotations

import asyncio
import base64
import json
import os
import time
from email.message import EmailMessage
from pathlib import Path

import pytest

from gateway.config.load import build_config
from gateway.config.errors import ConfigErrors
from gateway.store.sqlite_deliver import DeliverTx
from gateway.webhooks import sign
from gateway.webhooks.outbox import WebhookOutbox

from ..conftest import BASE_CONFIG, merge, run_cli, simple_message, toml_dump
from ..test_pipeline import send
from .conftest import SECRET, hook
from .receiver import Receiver


async def rows(gw, **kw):
    return await WebhookOutbox(gw.store).list(**kw)


async def wait_rows(gw, pred, timeout=15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = await rows(gw)
        if pred(r):
            return r
        await asyncio.sleep(0.05)
    raise AssertionError(f"outbox not as expected: {await rows(gw)}")


async def test_mail_over_smtp_makes_signed_ticket_created(start_gateway, receiver, secret_file):
    gw = await start_gateway(webhook=[hook(receiver, secret_file)])
    sid = await send(gw.port, simple_message(message_id="wh-1@customer.test"))
    assert (await gw.wait_done(sid)).state == "ticket_created"
    await receiver.await_(lambda r: len(r.accepted()) == 1)
    (got,) = receiver.received
    assert got.valid and got.path == "/hooks/ticketmx"
    assert got.headers["content-type"] == "application/json"
    assert got.headers["user-agent"].startswith("ticketmx-webhooks/")
    doc = got.json
    assert doc["event"] == "ticket.created" and doc["id"] == got.headers["ticketmx-event-id"]
    assert doc["ticket"]["number"] == "HD-1000" and doc["ticket"]["queue"] == "IT"
    assert doc["ticket"]["requester"]["email"] == "alice@customer.test"
    assert doc["ticket"]["status"] == "new" and doc["ticket"]["subject"] == "Printer on fire"
    assert doc["article"]["message_id"] == "wh-1@customer.test" and "on fire" in doc["article"]["text"]
    # a reply on the ticket: article.added, another event id
    reply = simple_message(subject="Re: [HD-1000] Printer on fire", message_id="wh-2@customer.test",
                           body="Still burning.\r\n", extra="In-Reply-To: <wh-1@customer.test>\r\n")
    assert (await gw.wait_done(await send(gw.port, reply))).state == "article_added"
    await receiver.await_(lambda r: len(r.accepted()) == 2)
    second = receiver.received[1]
    assert second.valid and second.json["event"] == "article.added" and second.json["id"] != doc["id"]
    assert second.json["ticket"]["number"] == "HD-1000" and "Still burning" in second.json["article"]["text"]
    # the outbox says delivered, one attempt each
    done = await wait_rows(gw.gw, lambda rs: all(r["state"] == "delivered" for r in rs))
    assert [(r["event"], r["attempts"], r["last_status"]) for r in done] == [
        ("ticket.created", 1, 200), ("article.added", 1, 200)]
    # a replay of the first message queues nothing new
    assert await gw.store.spool_replay(sid)
    gw.gw.worker.wake()
    assert (await gw.wait_done(sid)).reason == "already delivered"
    await asyncio.sleep(0.5)
    assert len(await rows(gw.gw)) == 2 and len(receiver.received) == 2


async def test_only_subscribed_events_are_queued(start_gateway, receiver, secret_file):
    gw = await start_gateway(webhook=[hook(receiver, secret_file, events=["message.quarantined"])])
    sid = await send(gw.port, simple_message(message_id="wh-sub@customer.test"))
    assert (await gw.wait_done(sid)).state == "ticket_created"
    await asyncio.sleep(0.4)
    assert await rows(gw.gw) == [] and receiver.received == []


async def test_retried_after_500s_then_delivered_with_one_event_id(start_gateway, receiver, secret_file):
    receiver.answer = lambda event_id, n: 500 if n < 2 else 200
    gw = await start_gateway(webhook=[hook(receiver, secret_file)])
    assert (await gw.wait_done(await send(gw.port, simple_message()))).state == "ticket_created"
    await receiver.await_(lambda r: len(r.accepted()) == 1)
    assert [r.status for r in receiver.received] == [500, 500, 200]
    assert len(set(receiver.ids())) == 1 and all(r.valid for r in receiver.received)
    (row,) = await wait_rows(gw.gw, lambda rs: rs and rs[0]["state"] == "delivered")
    assert row["attempts"] == 3 and row["last_status"] == 200


async def test_dead_after_lifetime_then_retry_from_cli(start_gateway, receiver, secret_file, tmp_path):
    receiver.answer = lambda event_id, n: 503
    gw = await start_gateway(webhook=[hook(receiver, secret_file, lifetime="1s")])
    assert (await gw.wait_done(await send(gw.port, simple_message()))).state == "ticket_created"
    (row,) = await wait_rows(gw.gw, lambda rs: rs and rs[0]["state"] == "dead")
    assert row["attempts"] >= 3 and row["last_status"] == 503 and "lifetime used up" in row["last_error"]
    n = len(receiver.received)
    await asyncio.sleep(0.4)
    assert len(receiver.received) == n  # dead: no more attempts
    receiver.answer = lambda event_id, n: 200
    # `ticketmx webhook retry --dead` against the same database, while the gateway runs
    cfg = tmp_path / "cli.toml"
    cfg.write_text(toml_dump(merge(BASE_CONFIG, {"store": {"url": f"sqlite:///{tmp_path}/ticketmx.db"},
                                                  "webhook": [hook(receiver, secret_file)]})))
    out = run_cli("webhook", "retry", "--dead", "--webhook", "helpdesk", "--json", "--config", str(cfg))
    assert json.loads(out.stdout) == {"retried": [row["id"]]}
    (row,) = await wait_rows(gw.gw, lambda rs: rs and rs[0]["state"] == "delivered")
    assert receiver.accepted()[-1].headers["ticketmx-event-id"] == row["event_id"]
    again = run_cli("webhook", "retry", str(row["id"]), "--config", str(cfg), check=False)
    assert again.returncode == 1 and "it is delivered (only dead rows are retried)" in again.stderr
    assert "no such event row" in run_cli("webhook", "retry", "999", "--config", str(cfg), check=False).stderr
    listing = json.loads(run_cli("webhook", "list", "--json", "--config", str(cfg)).stdout)
    assert listing[0]["name"] == "helpdesk" and listing[0]["counts"]["delivered"] == 1
    assert listing[0]["counts"]["dead"] == 0


async def test_4xx_is_dead_at_once(start_gateway, receiver, secret_file):
    receiver.answer = lambda event_id, n: 410
    gw = await start_gateway(webhook=[hook(receiver, secret_file)])
    assert (await gw.wait_done(await send(gw.port, simple_message()))).state == "ticket_created"
    (row,) = await wait_rows(gw.gw, lambda rs: rs and rs[0]["state"] == "dead")
    assert row["attempts"] == 1 and row["last_status"] == 410 and "not retried" in row["last_error"]


async def test_timeout_is_retried(start_gateway, receiver, secret_file):
    receiver.answer = lambda event_id, n: 200
    receiver.delay = 0.6
    gw = await start_gateway(webhook=[hook(receiver, secret_file, timeout="300ms")])
    assert (await gw.wait_done(await send(gw.port, simple_message()))).state == "ticket_created"
    await wait_rows(gw.gw, lambda rs: rs and rs[0]["attempts"] >= 2)
    receiver.delay = 0
    (row,) = await wait_rows(gw.gw, lambda rs: rs and rs[0]["state"] == "delivered")
    assert row["attempts"] >= 2


async def test_quarantine_makes_message_quarantined(start_gateway, receiver, secret_file):
    gw = await start_gateway(webhook=[hook(receiver, secret_file)], auth={"malformed_from": "tag"},
                             pipeline={"stages": ["sender", "ticket"]})
    sid = await send(gw.port, b"Subject: who am I\r\n\r\nno From header\r\n", sender="")
    assert (await gw.wait_done(sid)).state == "quarantined"
    await receiver.await_(lambda r: len(r.accepted()) == 1)
    doc = receiver.received[0].json
    assert receiver.received[0].valid and doc["event"] == "message.quarantined"
    assert doc["message"]["spool_id"] == sid and "no sender" in doc["message"]["reason"]
    assert doc["message"]["mailboxes"] == ["support@example.test"]


async def test_postmark_format(start_gateway, receiver, secret_file):
    gw = await start_gateway(webhook=[hook(receiver, secret_file, format="postmark",
                                           events=["ticket.created", "article.added"])])
    msg = EmailMessage()
    msg["From"] = "Carol <carol@customer.test>"
    msg["To"] = "support+vip@example.test"
    msg["Cc"] = "dave@customer.test"
    msg["Subject"] = "invoice"
    msg["Message-ID"] = "<pm-1@customer.test>"
    msg["Date"] = "Sun, 22 Nov 2026 10:00:00 +0000"
    msg["X-Custom"] = "kept"
    msg.set_content("see attached")
    msg.add_attachment(b"%PDF-1.4\n%ok\n", maintype="application", subtype="pdf", filename="ok.pdf")
    big = os.urandom(300 * 1024)
    msg.add_attachment(big, maintype="application", subtype="zip", filename="big.zip")
    sid = await send(gw.port, msg.as_bytes(), rcpts=("support+vip@example.test",), sender="carol@customer.test")
    assert (await gw.wait_done(sid)).state == "ticket_created"
    await receiver.await_(lambda r: len(r.accepted()) == 1)
    got = receiver.received[0]
    doc = got.json
    assert got.valid
    for key in ("From", "FromFull", "To", "ToFull", "Cc", "CcFull", "Subject", "MessageID", "Date", "TextBody",
                "HtmlBody", "StrippedTextReply", "Headers", "Attachments", "OriginalRecipient", "MailboxHash"):
        assert key in doc, key
    assert doc["From"] == "carol@customer.test" and doc["FromFull"] == {"Email": "carol@customer.test",
                                                                        "Name": "Carol", "MailboxHash": ""}
    assert doc["ToFull"][0]["Email"] == "support+vip@example.test" and doc["MailboxHash"] == "vip"
    assert doc["CcFull"][0]["Email"] == "dave@customer.test"
    assert doc["Subject"] == "invoice" and doc["MessageID"] == "pm-1@customer.test"
    assert doc["Date"] == "Sun, 22 Nov 2026 10:00:00 +0000" and "see attached" in doc["TextBody"]
    assert {"Name": "X-Custom", "Value": "kept"} in doc["Headers"]
    small, large = doc["Attachments"]
    assert small["Name"] == "ok.pdf" and small["ContentType"] == "application/pdf"
    assert base64.b64decode(small["Content"]) == b"%PDF-1.4\n%ok\n" and small["ContentLength"] == 13
    assert large["Name"] == "big.zip" and large["Content"] == "" and large["ContentLength"] == len(big)
    assert doc["Ticketmx"]["event"] == "ticket.created" and doc["Ticketmx"]["ticket"]["number"] == "HD-1000"


async def test_ticket_updated_from_the_store_call_the_api_uses(start_gateway, receiver, secret_file):
    gw = await start_gateway(webhook=[hook(receiver, secret_file, events=["ticket.updated"])])
    assert (await gw.wait_done(await send(gw.port, simple_message()))).state == "ticket_created"
    store = gw.store
    t = (await store.tickets_list())[0]

    def patch(conn):
        tx = DeliverTx(conn, time.time(), store.ticket_prefix, store.ticket_start, store.cipher)
        tx.apply_updates(t["id"], "agent@example.test", {"status": "resolved", "assignee": "bob"})
    await store.transaction(patch)
    await receiver.await_(lambda r: len(r.accepted()) == 1)
    doc = receiver.received[0].json
    assert doc["event"] == "ticket.updated" and doc["actor"] == "agent@example.test"
    assert doc["changes"] == {"status": "resolved", "assignee": "bob"} and doc["previous"] == {"status": "new"}
    assert doc["ticket"]["status"] == "resolved" and doc["ticket"]["assignee"] == "bob"


async def test_relay_dead_letter_makes_notification_failed(start_gateway, receiver, secret_file):
    from gateway.store.relay_queue import AttemptOutcome, Notification, RcptOutcome, RelayQueue
    gw = await start_gateway(webhook=[hook(receiver, secret_file, events=["notification.failed"])])
    q = RelayQueue(gw.store)
    mid = await q.enqueue(Notification("ack", "ticketmx@example.test", ("gone@customer.test",),
                                       b"Subject: x\r\n\r\nx\r\n", "n1@example.test"))
    (claimed,) = await q.claim("test", 10, time.time(), 60)
    await q.record([AttemptOutcome(claimed.id, [RcptOutcome("gone@customer.test", "perm", 550, "no such user")],
                                   owner="test")], time.time(), (60.0,), 3600.0)
    await receiver.await_(lambda r: len(r.accepted()) == 1)
    doc = receiver.received[0].json
    assert doc["event"] == "notification.failed" and doc["notification"]["id"] == mid
    assert doc["notification"]["recipients"][0]["code"] == 550


def test_webhook_test_cli_sends_a_signed_event(tmp_path, receiver, secret_file):
    cfg = tmp_path / "t.toml"
    cfg.write_text(toml_dump(merge(BASE_CONFIG, {"store": {"url": f"sqlite:///{tmp_path}/x.db"},
                                                  "webhook": [hook(receiver, secret_file)]})))
    out = run_cli("webhook", "test", "helpdesk", "--config", str(cfg))
    assert "delivered: HTTP 200" in out.stdout
    (got,) = receiver.received
    assert got.valid and got.json["event"] == "test" and got.json["webhook"] == "helpdesk"
    receiver.answer = lambda event_id, n: 404
    out = run_cli("webhook", "test", "helpdesk", "--config", str(cfg), check=False)
    assert out.returncode == 1 and "HTTP 404" in out.stdout
    out = run_cli("webhook", "test", "nope", "--config", str(cfg), check=False)
    assert out.returncode == 78 and "no [[webhook]] named 'nope'" in out.stderr


def test_signature_roundtrip_and_tamper():
    body = b'{"event":"test"}'
    header = sign.sign(SECRET, body, t=int(time.time()))
    assert sign.verify(SECRET, header, body)
    from .receiver import verify
    assert verify(SECRET, header, body)
    assert not sign.verify(SECRET, header, body + b" ")
    assert not sign.verify("other-secret-0123456789", header, body)
    old = sign.sign(SECRET, body, t=int(time.time()) - 3600)
    assert not sign.verify(SECRET, old, body) and not verify(SECRET, old, body)


@pytest.mark.parametrize("over, key, text", [
    ({"events": ["ticket.deleted"]}, "webhook[0].events", "unknown event 'ticket.deleted'"),
    ({"format": "zendesk"}, "webhook[0].format", "expected one of ticketmx, postmark"),
    ({"format": "postmark"}, "webhook[0].events", "has no Postmark shape"),
    ({"url": "ftp://x"}, "webhook[0].url", "http:// or https://"),
    ({"lifetime": "forever"}, "webhook[0].lifetime", "invalid duration"),
    ({"max_in_flight": 0}, "webhook[0].max_in_flight", "between 1 and 1000"),
    ({"colour": "red"}, "webhook[0].colour", "unknown key"),
])
def test_config_errors_name_the_key(tmp_path, secret_file, over, key, text):
    table = {"name": "h", "url": "https://h.example/x", "events": ["ticket.created", "ticket.updated"],
             "secret_file": secret_file, **over}
    with pytest.raises(ConfigErrors) as exc:
        build_config({"webhook": [table]}, "t.toml")
    assert any(e.key == key and text in e.message for e in exc.value.errors), exc.value


def test_secret_file_readable_by_others_is_refused(tmp_path):
    p = tmp_path / "s"
    p.write_text(SECRET)
    os.chmod(p, 0o644)
    with pytest.raises(ConfigErrors) as exc:
        build_config({"webhook": [{"name": "h", "url": "https://h.example/x", "events": ["ticket.created"],
                                   "secret_file": str(p)}]}, "t.toml")
    (err,) = exc.value.errors
    assert err.key == "webhook[0].secret_file" and "accessible by others" in err.message


def test_example_config_webhook_block_is_valid(tmp_path, secret_file):
    """The commented [[webhook]] example of conf/ticketmx.example.toml, uncommented, loads."""
    text = (Path(__file__).resolve().parents[2] / "conf" / "ticketmx.example.toml").read_text()
    start = text.index("# [[webhook]]")
    block = []
    for line in text[start:].splitlines():
        if not line.startswith("#"):
            break
        block.append(line[2:] if line.startswith("# ") else line[1:])
    import tomllib
    data = tomllib.loads("\n".join(block))
    data["webhook"][0]["secret_file"] = secret_file
    cfg = build_config(data, "example")
    assert cfg.webhooks[0].name and cfg.webhooks[0].events


async def test_payloads_are_encrypted_at_rest_and_survive_key_rotation(start_gateway, receiver, secret_file,
                                                                       tmp_path):
    from gateway.store.crypto import Cipher, generate_key
    key = tmp_path / "store.key"
    key.write_text(generate_key() + "\n")
    key.chmod(0o600)
    receiver.answer = lambda event_id, n: 503  # kept queued: the payload stays in the database
    gw = await start_gateway(store={"encryption_key_file": str(key)}, webhook=[hook(receiver, secret_file)])
    marker = "zebracrossing-webhook-marker"
    assert (await gw.wait_done(await send(gw.port, simple_message(body=f"{marker}\r\n")))).state == "ticket_created"
    await receiver.await_(lambda r: len(r.received) >= 1)
    assert marker in receiver.received[0].json["article"]["text"]  # the receiver gets it in clear
    (stored,) = await gw.store.query("SELECT payload FROM webhook_outbox")
    assert stored[0].startswith("enc1:") and marker not in stored[0]
    new = generate_key().encode()
    gw.store.cipher = Cipher([new, key.read_text().strip().encode()])
    await gw.store.rotate_key()
    gw.store.cipher = Cipher([new])
    body = await WebhookOutbox(gw.store).payload(1)
    assert body is not None and marker.encode() in body


async def test_sighup_reload_starts_webhooks(start_gateway, receiver, secret_file, tmp_path, dns_server):
    """A reload that adds a [[webhook]]: events of changes after it are queued and delivered."""
    gw = await start_gateway()
    assert (await gw.wait_done(await send(gw.port, simple_message(message_id="before@x.test")))).state \
        == "ticket_created"
    cfg = tmp_path / "reload.toml"
    cfg.write_text(toml_dump(merge(BASE_CONFIG, {
        "store": {"url": f"sqlite:///{tmp_path}/ticketmx.db"},
        "dns": {"nameservers": [f"127.0.0.1:{dns_server.port}"], "timeout": "1s"},
        "webhook": [hook(receiver, secret_file, events=["ticket.created"])]})))
    assert gw.gw.reload(str(cfg))
    sid = await send(gw.port, simple_message(subject="after", message_id="after@x.test"))
    assert (await gw.wait_done(sid)).state == "ticket_created"
    await receiver.await_(lambda r: len(r.accepted()) == 1)
    assert receiver.received[0].json["ticket"]["subject"] == "after"
    assert len(await rows(gw.gw)) == 1  # nothing for the ticket made before the reload


async def test_mail_command_and_reopen_make_ticket_updated(start_gateway, dns_server, receiver, secret_file):
    """An agent's `$Status=Closed$` over SMTP (DMARC-authenticated), then the customer's reply reopening
    the ticket: two ticket.updated events, each with the change and the status before it."""
    from ..test_twoway_e2e import TWOWAY, ZONE
    dns_server.set_zone(ZONE)
    gw = await start_gateway(webhook=[hook(receiver, secret_file, events=["ticket.updated"])], **TWOWAY)
    e = await gw.wait_done(await send(gw.port, simple_message(message_id="t1@customer.test")))
    number = e.ticket_id and (await gw.store.ticket_get(str(e.ticket_id)))["number"]
    close = simple_message(subject=f"[{number}]", sender="ann@agents.test", message_id="cl@agents.test",
                           body="$Status=Closed$\r\n")
    await gw.wait_done(await send(gw.port, close, sender="ann@agents.test"))
    await receiver.await_(lambda r: len(r.accepted()) == 1)
    first = receiver.received[0].json
    assert first["event"] == "ticket.updated" and first["actor"] == "ann@agents.test"
    assert first["changes"] == {"status": "closed"} and first["previous"] == {"status": "new"}
    again = simple_message(subject=f"Re: [{number}]", message_id="again@customer.test", body="Back again\r\n")
    assert (await gw.wait_done(await send(gw.port, again))).state == "article_added"
    await receiver.await_(lambda r: len(r.accepted()) == 2)
    second = receiver.received[1].json
    assert second["changes"] == {"status": "open"} and second["previous"] == {"status": "closed"}
    assert second["actor"] == "alice@customer.test" and second["ticket"]["status"] == "open"
