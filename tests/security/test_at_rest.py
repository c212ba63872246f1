"""Encryption at rest: after a whole two-way conversation with ``[store] encryption_key_file`` set, no
field class a customer or agent wrote is readable in the database files (SQLite main file and -wal;
PostgreSQL table bytes when TICKETMX_PG_URL is set), while the mail that went out was complete."""
from __future__ import annotations

import email
import email.policy
import os
import sqlite3
from email.message import EmailMessage
from pathlib import Path

import pytest

from ..smarthost import sink, wait_for  # noqa: F401 - sink is a fixture
from ..test_pipeline import send
from ..test_relay_e2e import AGENTS, CUSTOMER, relay_cfg

# One marker per field class; each must reach the customer or the agent, and none the disk.
SECRETS = {
    "subject": "zebracrossing subject",
    "body text": "quokka body text",
    "html": "narwhal html part",
    "attachment name": "axolotl-invoice.pdf",
    "attachment content": "platypus attachment bytes",
    "agent reply text": "capybara agent answer",
    "customer follow-up": "wombat follow up",
    "rendered recipient": "To: alice@customer.test",
}


def conversation_mail() -> bytes:
    msg = EmailMessage()
    msg["From"] = "Alice <alice@customer.test>"
    msg["To"] = "support@example.test"
    msg["Subject"] = SECRETS["subject"]
    msg["Message-ID"] = "<c1@customer.test>"
    msg.set_content(f"Hello, {SECRETS['body text']}.\n")
    msg.add_alternative(f"<p>Hello, <b>{SECRETS['html']}</b>.</p>", subtype="html")
    msg.add_attachment(SECRETS["attachment content"].encode() * 3, maintype="application", subtype="pdf",
                       filename=SECRETS["attachment name"])
    return msg.as_bytes()


async def two_way(gw, sink) -> None:
    """Customer mail -> acknowledgement -> agent reply (relayed) -> customer follow-up; all mail sent."""
    e = await gw.wait_done(await send(gw.port, conversation_mail()))
    assert e.state == "ticket_created"
    await wait_for(lambda: len(sink.messages) == 1)
    ack = email.message_from_bytes(sink.messages[0][2], policy=email.policy.default)
    assert SECRETS["subject"] in ack["Subject"]
    agent = (f"From: Ann <ann@agents.test>\r\nTo: support@example.test\r\nSubject: Re: [HD-1000] "
             f"{SECRETS['subject']}\r\nMessage-ID: <a1@agents.test>\r\n\r\nHi Alice, {SECRETS['agent reply text']}.\r\n"
             ).encode()
    assert (await gw.wait_done(await send(gw.port, agent, sender="ann@agents.test"))).state == "article_added"
    await wait_for(lambda: len(sink.messages) == 2)
    assert SECRETS["agent reply text"].encode() in sink.messages[1][2]
    assert SECRETS["rendered recipient"].encode() in sink.messages[1][2]
    follow = (f"From: Alice <alice@customer.test>\r\nTo: support@example.test\r\nSubject: Re: [HD-1000] "
              f"{SECRETS['subject']}\r\nMessage-ID: <c2@customer.test>\r\nIn-Reply-To: <c1@customer.test>\r\n\r\n"
              f"Thanks, {SECRETS['customer follow-up']}.\r\n").encode()
    assert (await gw.wait_done(await send(gw.port, follow))).state == "article_added"


# Every class must be absent, the ticket's subject included (tickets.subject is encrypted, its matching key
# tickets.subject_key a keyed hash); a new leak fails the test.
KNOWN_CLEAR: list[str] = []


def leaks(data: bytes) -> list[str]:
    return [name for name, text in SECRETS.items() if text.encode() in data]


def key_file(tmp_path: Path) -> str:
    from gateway.store.crypto import generate_key
    path = tmp_path / "store.key"
    path.write_text(generate_key() + "\n")
    path.chmod(0o600)
    return str(path)


async def test_sqlite_files_hold_no_plaintext_after_a_conversation(start_gateway, dns_server, sink, tmp_path):
    dns_server.set_zone({**CUSTOMER, **AGENTS})
    gw = await start_gateway(store={"encryption_key_file": key_file(tmp_path)}, **relay_cfg(sink.port))
    await two_way(gw, sink)
    rows = await gw.store.query("SELECT state FROM relay_queue")
    assert [r[0] for r in rows] == ["sent", "sent"]
    db = Path(gw.gw.cfg.sqlite_path())
    files = [p for p in (db, Path(f"{db}-wal")) if p.exists()]
    data = b"".join(p.read_bytes() for p in files)
    assert len(data) > 10_000 and f"{db}-wal" in map(str, files)
    assert leaks(data) == KNOWN_CLEAR, f"plaintext in {', '.join(map(str, files))}"
    # not in any table's values either (case-folded: the matching key is lower-cased), nor the matching key
    conn = sqlite3.connect(db)
    try:
        tables = [t for (t,) in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        values = b"".join(str(v).encode().lower() for t in tables for row in conn.execute(f'SELECT * FROM "{t}"')
                          for v in row)
        assert b"zebracrossing" not in values and len(values) > 10_000
        (subject, key), = conn.execute("SELECT subject, subject_key FROM tickets").fetchall()
        assert subject.startswith("enc1:") and key.startswith("hk1:"), (subject[:8], key[:8])
    finally:
        conn.close()
    # still readable through the store: the ticket and the queued mail (decrypted on read)
    from gateway.store.relay_queue import RelayQueue
    ticket = await gw.store.ticket_get("HD-1000")
    assert SECRETS["subject"] in ticket["subject"]
    assert SECRETS["agent reply text"] in ticket["articles"][1]["body_text"]
    assert ticket["articles"][0]["attachments"][0]["filename"] == SECRETS["attachment name"]
    q = RelayQueue(gw.store)
    spec = await q.render_spec(rows_id := (await gw.store.query("SELECT min(id) FROM relay_queue"))[0][0])
    assert spec is not None and SECRETS["subject"] in spec["ticket"]["subject"], rows_id
    assert SECRETS["agent reply text"].encode() in await q.message(rows_id + 1)
    # rotate-key re-encrypts the queue too: with only the new key left, the mail is still readable
    from gateway.store.crypto import Cipher, generate_key
    new_key = generate_key().encode()
    gw.store.cipher = Cipher([new_key, (tmp_path / "store.key").read_text().strip().encode()])
    await gw.store.rotate_key()
    gw.store.cipher = Cipher([new_key])
    assert SECRETS["agent reply text"].encode() in await q.message(rows_id + 1)
    assert (await gw.store.ticket_get("HD-1000"))["articles"][0]["attachments"][0]["filename"] == SECRETS["attachment name"]
    assert (await gw.store.ticket_get("HD-1000"))["subject"] == SECRETS["subject"]
    assert [t["subject"] for t in await gw.store.tickets_list()] == [SECRETS["subject"]]


async def test_relay_rows_are_purged_by_retention(start_gateway, dns_server, sink, tmp_path):
    import time
    dns_server.set_zone({**CUSTOMER, **AGENTS})
    gw = await start_gateway(store={"encryption_key_file": key_file(tmp_path)}, retention={"relay_days": 2},
                             **relay_cfg(sink.port))
    await two_way(gw, sink)
    assert len(await gw.store.query("SELECT id FROM relay_queue")) == 2
    sent_ids = {r[0] for r in await gw.store.query("SELECT message_id FROM relay_queue")}
    now = time.time()
    assert (await gw.store.purge(now + 86400, 0, 0, 0, relay_days=2))["relay"] == 0  # not old enough yet
    counts = await gw.store.purge(now + 3 * 86400, 0, 0, 0, relay_days=gw.gw.cfg.retention.relay_days)
    assert counts["relay"] == 2
    assert await gw.store.query("SELECT id FROM relay_queue") == []
    assert await gw.store.query("SELECT notification_id FROM relay_recipients") == []
    # the Message-IDs stay: a late reply to the agent's mail still threads onto the ticket
    kept = {r[0] for r in await gw.store.query("SELECT message_id FROM message_ids")}
    assert sent_ids and sent_ids <= kept


def test_relay_days_config(tmp_path):
    from gateway.config.errors import ConfigErrors

    from ..conftest import make_config
    assert make_config(tmp_path).retention.relay_days == 30
    assert make_config(tmp_path, retention={"relay_days": 0}).retention.relay_days == 0
    with pytest.raises(ConfigErrors, match="retention.relay_days"):
        make_config(tmp_path, retention={"relay_days": -1})


@pytest.mark.skipif(not os.environ.get("TICKETMX_PG_URL"), reason="TICKETMX_PG_URL not set")
async def test_postgres_tables_hold_no_plaintext(start_gateway, dns_server, sink, tmp_path):
    import asyncpg

    from ..pg_support import drop_database, fresh_database
    dns_server.set_zone({**CUSTOMER, **AGENTS})
    admin = os.environ["TICKETMX_PG_URL"]
    url = await fresh_database(admin)
    gw = await start_gateway(store={"url": url, "encryption_key_file": key_file(tmp_path)}, **relay_cfg(sink.port))
    await two_way(gw, sink)
    conn = await asyncpg.connect(url)
    try:
        cols = await conn.fetch("SELECT table_name, column_name FROM information_schema.columns"
                                " WHERE table_schema='public'")
        data = b""
        for t, c in cols:  # every value of every column, bytea as its bytes: what the heap files hold
            for (v,) in await conn.fetch(f'SELECT "{c}" FROM "{t}"'):
                data += (v if isinstance(v, bytes) else str(v).encode()) + b"\n"
        assert len(data) > 10_000
    finally:
        await conn.close()
        await gw.gw.stop(grace=1.0)
        await drop_database(admin, url)
    assert leaks(data) == KNOWN_CLEAR
    assert b"zebracrossing" not in data.lower()  # nor the case-folded matching key


async def test_escalation_mail_carries_the_decrypted_subject(start_gateway, dns_server, sink, tmp_path):
    """The SLA escalation reads tickets.subject itself (relay/sla.py): decrypted, not ``enc1:…``."""
    import time

    from relay.sla import run_once
    from relay.notify import Notifier
    dns_server.set_zone({**CUSTOMER, **AGENTS})
    cfg = relay_cfg(sink.port)
    cfg["queue"] = [{"name": "IT", "first_response": "1h", "escalation": ["team@example.test"]}]
    gw = await start_gateway(store={"encryption_key_file": key_file(tmp_path)}, **cfg)
    assert (await gw.wait_done(await send(gw.port, conversation_mail()))).state == "ticket_created"
    await wait_for(lambda: len(sink.messages) == 1)  # the acknowledgement
    notifier = Notifier(gw.gw.cfg.relay, hostname="mx.example.test")
    assert await run_once(gw.store, gw.gw.cfg, notifier, now=time.time() + 3700) == 1
    gw.gw.relay.wake()
    await wait_for(lambda: any(m[1][0] == "team@example.test" for m in sink.messages))
    esc = next(email.message_from_bytes(m[2], policy=email.policy.default) for m in sink.messages
               if m[1][0] == "team@example.test")
    assert esc["Subject"].endswith(SECRETS["subject"]) and "enc1:" not in esc.get_body(("plain",)).get_content()
