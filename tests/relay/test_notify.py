"""Templates, headers, header injection, acknowledgement rules and rate tiers, and the ack loop."""
from __future__ import annotations

import asyncio
import email
import email.policy
import shutil
import time

import pytest

from gateway.config.relay import parse_relay_config
from relay.notify import (HeaderInjection, MailboxInfo, Notifier, TicketInfo, acknowledge, set_opt_out,
                          should_acknowledge, wants)
from gateway.store.relay_queue import RelayQueue, enqueue

from .conftest import host, relay_table, wait_for
from .helpers import start_worker

MB = MailboxInfo("support@example.test", "IT Support")
T = TicketInfo(7, "HD-1042", "Printer on fire", queue="IT", requester="alice@customer.test",
               requester_name="Alice")


def passed(domain: str) -> dict:
    """The spool entry's auth result of a message whose From domain passed DMARC (aligned)."""
    return {"dmarc": {"result": "pass"}, "from": {"domains": [domain]}, "decision": {"suspicious": False}}


def cfg(**kw):
    return parse_relay_config(relay_table(host("a", 25), **kw))


def parse(raw: bytes) -> email.message.EmailMessage:
    return email.message_from_bytes(raw, policy=email.policy.default)


def test_acknowledgement_headers_and_parts():
    n = Notifier(cfg()).acknowledgement(ticket=T, mailbox=MB, to="alice@customer.test",
                                        inbound_message_id="orig@customer.test", references=["older@customer.test"],
                                        key="spool-1")
    m = parse(n.message)
    assert m["Auto-Submitted"] == "auto-replied"
    assert m["X-Ticketmx-Loop"] == "mx.example.test"
    assert m["X-Auto-Response-Suppress"] == "All"
    assert m["Reply-To"] == "IT Support <support@example.test>"
    assert m["From"] == "Helpdesk <help@example.test>"
    assert "[HD-1042]" in m["Subject"]
    assert m["In-Reply-To"] == "<orig@customer.test>"
    assert m["References"] == "<older@customer.test> <orig@customer.test>"
    assert m["Message-ID"] == f"<{n.message_id}>" and n.message_id.startswith("HD-1042.ack.")
    assert m.get_content_type() == "multipart/alternative"
    text = m.get_body(("plain",)).get_content()
    html = m.get_body(("html",)).get_content()
    assert "HD-1042" in text and "Alice" in text and "IT Support" in text
    assert "<strong>HD-1042</strong>" in html
    assert n.dedupe_key == "ack:spool-1" and n.recipients == ("alice@customer.test",)
    assert n.mail_from == "help@example.test"
    assert all(len(line) <= 998 for line in n.message.split(b"\r\n"))
    assert b"\n" not in n.message.replace(b"\r\n", b"")


def test_html_autoescaped_text_not():
    evil = TicketInfo(1, "HD-1", "<script>alert(1)</script> & co", requester_name="<b>Eve</b>")
    n = Notifier(cfg()).acknowledgement(ticket=evil, mailbox=MB, to="eve@x.test")
    m = parse(n.message)
    html = m.get_body(("html",)).get_content()
    assert "<script>" not in html and "&lt;script&gt;" in html and "&amp; co" in html
    assert "<script>alert(1)</script>" in m.get_body(("plain",)).get_content()


@pytest.mark.parametrize("field", ["subject", "number"])
def test_header_injection_refused(field):
    values = {"subject": "Hi\r\nBcc: victim@x.test", "number": "HD-1\nBcc: v@x.test"}
    t = TicketInfo(1, values["number"] if field == "number" else "HD-1",
                   values["subject"] if field == "subject" else "ok")
    n = Notifier(cfg())
    if field == "subject":
        # the template folds whitespace into one line: the CR/LF never reaches the header as a break
        m = parse(n.acknowledgement(ticket=t, mailbox=MB, to="a@x.test").message)
        assert "Bcc" not in m and "\n" not in m["Subject"]
        return
    if field == "number":
        with pytest.raises(HeaderInjection):
            n.acknowledgement(ticket=t, mailbox=MB, to="a@x.test")


@pytest.mark.parametrize("kw", [
    {"to": ["a@x.test\r\nBcc: v@x.test"]},
    {"to": ["a@x.test"], "in_reply_to": "x@y\r\nBcc: v@x.test"},
    {"to": ["a@x.test"], "references": ["a@b\nX-Evil: 1"]},
])
def test_header_injection_in_addresses_and_ids(kw):
    with pytest.raises(ValueError):
        Notifier(cfg()).build("status", ticket=T, mailbox=MB, context={"old_status": "new", "new_status": "open"},
                              **kw)


def test_header_injection_in_mailbox_name_and_template_subject(tmp_path):
    with pytest.raises(HeaderInjection):
        Notifier(cfg()).acknowledgement(ticket=T, mailbox=MailboxInfo("support@example.test", "IT\r\nBcc: v@x.test"),
                                        to="a@x.test")


def test_languages_and_per_mailbox_override(tmp_path):
    shutil.copytree(Notifier(cfg()).templates_dir, tmp_path / "t")
    over = tmp_path / "t" / "support@example.test"
    over.mkdir()
    (over / "signature.txt").write_text("-- \nThe IT crowd, ext. 0118 999\n")
    n = Notifier(cfg(), templates=str(tmp_path / "t"))
    de = parse(n.acknowledgement(ticket=T, mailbox=MailboxInfo("support@example.test", "IT", language="de"),
                                 to="a@x.test").message)
    assert "vielen Dank" in de.get_body(("plain",)).get_content()
    assert de["Content-Language"] == "de"
    assert "0118 999" in de.get_body(("plain",)).get_content()           # mailbox signature
    fr = parse(n.acknowledgement(ticket=T, mailbox=MailboxInfo("billing@example.test", "Billing", language="fr"),
                                 to="a@x.test").message)
    assert "thank you" in fr.get_body(("plain",)).get_content()          # falls back to the default language
    assert "0118 999" not in fr.get_body(("plain",)).get_content()


def test_agent_reply_status_escalation():
    n = Notifier(cfg())
    assert n.agent_reply(ticket=T, mailbox=MB, to=["a@x.test"], body_text="internal", internal=True) is None
    r = n.agent_reply(ticket=T, mailbox=MB, to=["a@x.test"], cc=["b@x.test"], body_text="Fixed it.",
                      body_html='<p onclick="x()">Fixed <script>bad()</script>it.</p>', article_id=5,
                      in_reply_to="orig@customer.test")
    m = parse(r.message)
    assert "Auto-Submitted" not in m and m["X-Ticketmx-Loop"] == "mx.example.test"   # a person wrote it
    html = m.get_body(("html",)).get_content()
    assert "Fixed" in html and "onclick" not in html and "<script>" not in html
    assert r.recipients == ("a@x.test", "b@x.test") and r.dedupe_key == "reply:5"
    s = parse(n.status_change(ticket=T, mailbox=MB, to=["a@x.test"], old="new", new="resolved").message)
    assert s["Auto-Submitted"] == "auto-generated" and "resolved" in s["Subject"] and "[HD-1042]" in s["Subject"]
    e = n.escalation(ticket=T, mailbox=MB, to=["agent@example.test"], bcc=["mgr@example.test"], level=2,
                     target="first_response")
    em = parse(e.message)
    assert "level 2" in em["Subject"] and "Bcc" not in em and e.bcc == ("mgr@example.test",)
    assert e.dedupe_key == "escalation:7:first_response:2"


# -- should_acknowledge (pure) ----------------------------------------------------------------------

@pytest.mark.parametrize("headers,mail_from,sender,reason", [
    ([("Auto-Submitted", "auto-replied")], "bob@x.test", "bob@x.test", "auto_submitted"),
    ([("Auto-Submitted", "auto-generated; type=vacation")], "bob@x.test", "bob@x.test", "auto_submitted"),
    ([("Precedence", "bulk")], "bob@x.test", "bob@x.test", "precedence"),
    ([("List-Id", "<l.x.test>")], "bob@x.test", "bob@x.test", "mailing_list"),
    ([("X-Autoreply", "yes")], "bob@x.test", "bob@x.test", "autoresponder"),
    ([("X-Auto-Response-Suppress", "OOF, AutoReply")], "bob@x.test", "bob@x.test", "response_suppressed"),
    ([("X-Ticketmx-Loop", "other.test")], "bob@x.test", "bob@x.test", "loop"),
    ([("Content-Type", "multipart/report; report-type=delivery-status")], "bob@x.test", "bob@x.test", "report"),
    ([], "", "bob@x.test", "null_sender"),
    ([], "bob@x.test", "noreply@x.test", "noreply"),
    ([], "bob@x.test", "no-reply@x.test", "noreply"),
    ([], "bounces+123@x.test", "bob@x.test", "noreply"),
    ([], "bob@x.test", "mailer-daemon@x.test", "noreply"),
    ([], "bob@x.test", "support@example.test", "own_address"),
    ([], "bob@x.test", "", "no_sender"),
])
def test_should_not_acknowledge(headers, mail_from, sender, reason):
    d = should_acknowledge(sender, headers, mail_from=mail_from, own_addresses={"support@example.test"})
    assert not d and d.reason == reason


def test_should_acknowledge_plain_mail_and_flags():
    assert should_acknowledge("bob@x.test", [("Auto-Submitted", "no")], mail_from="bob@x.test", authenticated=True)
    assert should_acknowledge("bob@x.test", [], mail_from="bob@x.test", enabled=False).reason == "disabled"
    assert should_acknowledge("bob@x.test", [], mail_from="bob@x.test", undeliverable=True,
                              authenticated=True).reason == "undeliverable"
    # the mailbox policy: an unauthenticated From only under "always"; "never" nobody
    assert should_acknowledge("bob@x.test", [], mail_from="bob@x.test").reason == "unauthenticated"
    assert should_acknowledge("bob@x.test", [], mail_from="bob@x.test", policy="always")
    assert should_acknowledge("bob@x.test", [], mail_from="bob@x.test", policy="never",
                              authenticated=True).reason == "disabled"


def test_rate_limit_tiers_pure():
    now = 100_000.0
    limits = ((10, 600.0), (25, 3600.0))
    nine = [now - 60 * i for i in range(9)]
    ok = {"now": now, "limits": limits, "authenticated": True}
    assert should_acknowledge("b@x.test", [], recent=nine, **ok)
    ten = [now - 50 * i for i in range(10)]
    assert should_acknowledge("b@x.test", [], recent=ten, **ok).reason == "rate_limited"
    # the 10-minute tier has room again, but the hour tier is full
    hour = [now - 700 - 100 * i for i in range(25)]
    assert should_acknowledge("b@x.test", [], recent=hour, **ok).reason == "rate_limited"
    assert should_acknowledge("b@x.test", [], recent=hour[:24], **ok)


async def test_rate_counter_in_store_and_idempotent_key(store):
    n = Notifier(cfg(ack_limits=["3/10m", "4/1h"]))
    now = time.time()

    def ack(conn, i, t, key=None):
        return acknowledge(conn, n, ticket=TicketInfo(None, f"HD-{i}", "s"), mailbox=MB, sender="Bob@X.test",
                           headers=[], mail_from="bob@x.test", key=key or f"sp{i}", now=t, auth=passed("x.test"))
    results = []
    for i in range(5):
        results.append(await store.transaction(lambda c, i=i: ack(c, i, now + i)))
    assert [bool(d) for d, _ in results] == [True, True, True, False, False]
    assert results[3][0].reason == "rate_limited" and results[3][1] is None
    # a replayed message (same key) does not queue or count a second acknowledgement
    d, mid = await store.transaction(lambda c: ack(c, 0, now + 10, key="sp0"))
    assert mid == results[0][1]
    assert len(await store.query("SELECT * FROM relay_ack_log WHERE sender='bob@x.test'")) == 3
    # 11 minutes later the first tier has room, and the hour tier allows one more
    later = [await store.transaction(lambda c, i=i: ack(c, 10 + i, now + 660 + i)) for i in range(2)]
    assert [bool(d) for d, _ in later] == [True, False]
    assert (await RelayQueue(store).counts())["queued"] == 4


async def test_enqueue_commits_with_the_ticket_or_not_at_all(store):
    n = Notifier(cfg()).acknowledgement(ticket=TicketInfo(None, "HD-1", "s"), mailbox=MB, to="a@x.test", key="k1")

    def failing(conn):
        enqueue(conn, n)
        raise RuntimeError("ticket write failed")
    with pytest.raises(RuntimeError):
        await store.transaction(failing)
    assert (await RelayQueue(store).counts())["queued"] == 0
    i = await store.transaction(lambda c: enqueue(c, n))
    assert await store.transaction(lambda c: enqueue(c, n)) == i        # dedupe key
    assert (await RelayQueue(store).counts())["queued"] == 1


async def test_message_id_recorded_for_threading(store):
    def make_ticket(conn):
        cid = conn.execute("INSERT INTO contacts (email, created_at) VALUES ('a@x.test', 0) RETURNING id"
                           ).fetchone()[0]
        return conn.execute("INSERT INTO tickets (subject, requester_id, queue, mailbox, created_at, updated_at)"
                            " VALUES ('s', ?, 'IT', 'support@example.test', 0, 0) RETURNING id", (cid,)).fetchone()[0]
    tid = await store.transaction(make_ticket)
    n = Notifier(cfg()).acknowledgement(ticket=TicketInfo(tid, "HD-1000", "s"), mailbox=MB, to="a@x.test")
    await store.transaction(lambda c: enqueue(c, n))
    rows = await store.query("SELECT ticket_id FROM message_ids WHERE message_id=?", (n.message_id,))
    assert rows[0][0] == tid


async def test_status_changes_coalesce(store):
    n = Notifier(cfg(coalesce="1m"))
    t = TicketInfo(None, "HD-5", "s")
    a = n.status_change(ticket=t, mailbox=MB, to=["a@x.test"], old="new", new="open")
    b = n.status_change(ticket=t, mailbox=MB, to=["a@x.test"], old="open", new="resolved")
    ia = await store.transaction(lambda c: enqueue(c, a))
    ib = await store.transaction(lambda c: enqueue(c, b))
    assert ia == ib
    msg = await RelayQueue(store).message(ia)
    assert b"resolved" in msg and b"is now open" not in msg


async def test_opt_out_and_undeliverable(store):
    await store.transaction(lambda c: set_opt_out(c, "A@x.test", True))
    assert not await store.transaction(lambda c: wants(c, "a@x.test", "status"))
    assert await store.transaction(lambda c: wants(c, "a@x.test", "reply"))


async def test_acknowledgement_loop_with_autoresponder_stops(store, sinks):
    """A careless autoresponder answers every mail (new subject, no Auto-Submitted, no threading):
    the per-sender rate limit ends the loop by itself. A polite one (Auto-Submitted) ends it at once."""
    s = sinks()
    table = relay_table(host("a", s.port), ack_limits=["5/10m", "8/1h"])
    notifier = Notifier(parse_relay_config(table))
    w = await start_worker(store, table)
    counter = {"tickets": 0}

    async def inbound(sender: str, headers: list[tuple[str, str]]) -> bool:
        counter["tickets"] += 1
        i = counter["tickets"]
        d, _ = await store.transaction(lambda c: acknowledge(
            c, notifier, ticket=TicketInfo(None, f"HD-{i}", f"Auto: reply {i}"), mailbox=MB, sender=sender,
            headers=headers, mail_from=sender, key=f"loop-{i}", auth=passed("x.test")))
        w.wake()
        return bool(d)

    try:
        # careless autoresponder: every ack it receives triggers a reply that becomes a new "ticket"
        sent = 0
        keep_going = await inbound("robot@x.test", [])
        while keep_going and sent < 50:
            sent += 1
            await wait_for(lambda: len(s.messages) == sent)
            keep_going = await inbound("robot@x.test", [])       # its answer to our ack
        assert sent == 5                                          # the first tier stopped it
        # polite autoresponder: the answer to our ack says Auto-Submitted -> no second ack
        before = len(s.messages)
        assert await inbound("polite@x.test", [])
        await wait_for(lambda: len(s.messages) == before + 1)
        assert not await inbound("polite@x.test", [("Auto-Submitted", "auto-replied")])
    finally:
        await w.close()
    assert all(parse(m.data)["Auto-Submitted"] == "auto-replied" for m in s.messages)


async def test_lazy_acknowledgement_rendered_by_the_worker(store, sinks):
    s = sinks()
    table = relay_table(host("a", s.port))
    notifier = Notifier(parse_relay_config(table))
    d, mid = await store.transaction(lambda c: acknowledge(
        c, notifier, ticket=T, mailbox=MB, sender="alice@customer.test", headers=[("Subject", "help")],
        mail_from="alice@customer.test", inbound_message_id="orig@customer.test", key="spool-9",
        auth=passed("customer.test")))
    assert d and mid
    row = (await store.query("SELECT message, render, message_id FROM relay_queue WHERE id=?", (mid,)))[0]
    assert row[0] == b"" and row[1]                     # nothing rendered inside the transaction
    w = await start_worker(store, table)
    try:
        await wait_for(lambda: len(s.messages) == 1)
    finally:
        await w.close()
    m = parse(s.messages[0].data)
    assert m["Message-ID"] == f"<{row[2]}>" and m["In-Reply-To"] == "<orig@customer.test>"
    assert "[HD-1042]" in m["Subject"] and m["Auto-Submitted"] == "auto-replied"
    assert "Alice" in m.get_body(("plain",)).get_content()


async def test_per_ip_and_global_counters_hold_under_concurrent_transactions(store):
    """20 acknowledgements for different authenticated senders from one client, in concurrent
    transactions (on PostgreSQL up to 4 at once, as several nodes would): exactly the per-IP limit
    is queued, and the global counter then holds the rest back the same way."""
    n = Notifier(cfg(ack_limits_per_ip=["5/1h"], ack_limits_global=["8/1h"]))
    now = time.time()

    def ack(conn, i, ip):
        return acknowledge(conn, n, ticket=TicketInfo(None, f"HD-{i}", "s"), mailbox=MB, sender=f"u{i}@x.test",
                           headers=[], mail_from=f"u{i}@x.test", key=f"c{i}", now=now, auth=passed("x.test"),
                           client_ip=ip)
    first = await asyncio.gather(*(store.transaction(lambda c, i=i: ack(c, i, "192.0.2.1")) for i in range(20)))
    assert sum(1 for d, _ in first if d) == 5
    assert {d.reason for d, _ in first if not d} == {"rate_limited_ip"}
    others = await asyncio.gather(*(store.transaction(lambda c, i=i: ack(c, i, f"198.51.100.{i}"))
                                    for i in range(20, 30)))
    assert sum(1 for d, _ in others if d) == 3          # 8 in all
    assert {d.reason for d, _ in others if not d} == {"rate_limited_global"}
    assert (await RelayQueue(store).counts())["queued"] == 8
