"""Mail to the team end to end over SMTP (issue 19 parts 1, 3, 4): agent notifications and a reply to
one from a mail client, VIP mail with manual handling + alert, two agents answering at once, and a
"thanks" to a resolved ticket that does not reopen. Real SMTP in, the tests' DNS server, an aiosmtpd
sink as the smarthost."""
from __future__ import annotations

import asyncio
import base64
import email
import email.policy
import json

import pytest

from gateway.config.errors import ConfigError, ConfigErrors

from .conftest import make_config, simple_message
from .smarthost import sink, wait_for  # noqa: F401 - sink is a fixture
from .test_pipeline import send

ZONE = {
    "customer.test": [("TXT", "v=spf1 ip4:127.0.0.1 -all")],
    "_dmarc.customer.test": [("TXT", "v=DMARC1; p=none")],
    "vip.test": [("TXT", "v=spf1 ip4:127.0.0.1 -all")],
    "_dmarc.vip.test": [("TXT", "v=DMARC1; p=none")],
    "staff.test": [("TXT", "v=spf1 ip4:127.0.0.1 -all")],          # the agents' domain: DMARC pass
    "_dmarc.staff.test": [("TXT", "v=DMARC1; p=reject")],
}
ANN, BERT, GROUP, ONCALL = "ann@staff.test", "bert@staff.test", "it-team@staff.test", "oncall@staff.test"


def config(port: int, **extra: dict) -> dict:
    cfg = {"relay": {"from": "Support <support@example.test>", "retry": "1s, 2s*3",
                     "smarthost": [{"name": "sink", "host": "127.0.0.1", "port": port, "tls": "none",
                                    "auth": "none", "timeout": "5s"}]},
           "agent": [{"address": ANN, "name": "Ann"}, {"address": BERT, "name": "Bert", "language": "de"}],
           "queue": [{"name": "IT", "notify": [ANN, BERT, GROUP]}],
           "threading": {"reopen_days": 7}}
    cfg.update(extra)
    return cfg


@pytest.fixture
async def gw_factory(start_gateway, dns_server, sink):
    dns_server.set_zone(ZONE)

    async def start(**extra):
        return await start_gateway(**config(sink.port, **extra))
    return start


def parsed(raw: bytes) -> email.message.EmailMessage:
    return email.message_from_bytes(raw, policy=email.policy.default)


def mails_to(sink, address: str) -> list[email.message.EmailMessage]:
    return [parsed(raw) for _f, rcpts, raw in sink.messages if address in rcpts]


def notices(sink, address: str) -> list[email.message.EmailMessage]:
    """Agent notifications to ``address`` (not the results of its own email commands)."""
    return [m for m in mails_to(sink, address) if "Result of your email commands" not in m["Subject"]]


def text(msg: email.message.EmailMessage) -> str:
    return msg.get_body(("plain",)).get_content().replace("\r\n", "\n")


async def history(gw, number: str) -> list[dict]:
    return (await gw.store.ticket_get(number))["history"]


def mail_client_reply(notification: email.message.EmailMessage, sender: str, body: str, mid: str) -> bytes:
    """What a mail client sends when an agent presses Reply on ``notification``."""
    quoted = "".join(f"> {line}\r\n" for line in text(notification).splitlines())
    refs = " ".join(x for x in (notification["References"], notification["Message-ID"]) if x)
    return (f"From: {sender.split('@')[0].title()} <{sender}>\r\nTo: {notification['Reply-To']}\r\n"
            f"Subject: Re: {notification['Subject']}\r\nMessage-ID: <{mid}>\r\n"
            f"In-Reply-To: {notification['Message-ID']}\r\nReferences: {refs}\r\n"
            f"Date: Sun, 22 Nov 2026 10:30:00 +0000\r\nMIME-Version: 1.0\r\n"
            f"Content-Type: text/plain; charset=utf-8\r\n\r\n{body}\r\n\r\n"
            f"On Sun, 22 Nov 2026 at 10:00, Support <support@example.test> wrote:\r\n{quoted}").encode()


async def test_agent_is_told_about_a_new_ticket_and_answers_from_the_mail_client(gw_factory, sink):
    gw = await gw_factory()
    e = await gw.wait_done(await send(gw.port, simple_message(message_id="q1@customer.test",
                                                              body="It is on fire.\r\nPlease help.\r\n")))
    assert e.state == "ticket_created"
    # the acknowledgement to Alice; one notification in English (Ann + the group), one in German (Bert)
    await wait_for(lambda: len(sink.messages) == 3)
    team = [(rcpts, parsed(raw), raw) for _f, rcpts, raw in sink.messages if "alice@customer.test" not in rcpts]
    assert sorted(sorted(r) for r, _m, _raw in team) == [[ANN, GROUP], [BERT]]
    en = next(m for r, m, _raw in team if ANN in r)
    de = next(m for r, m, _raw in team if BERT in r)
    for _r, msg, raw in team:  # Bcc: no agent's address in the message itself
        assert msg["To"] == "undisclosed-recipients:;" and b"staff.test" not in raw
        assert msg["Auto-Submitted"] == "auto-generated" and "[HD-1000]" in msg["Subject"]
    assert en["Subject"].startswith("New ticket (IT): Printer on fire") and de["Subject"].startswith("Neues Ticket")
    body = text(en)
    assert "Alice <alice@customer.test> opened ticket HD-1000" in body
    assert "> It is on fire.\n> Please help." in body
    assert en["In-Reply-To"] == "<q1@customer.test>" and "<q1@customer.test>" in en["References"]
    # our Message-ID, MAC-signed for the ticket (gateway/pipeline/stages/tokens.py)
    from gateway.pipeline.stages.tokens import verify_message_id
    key = base64.b64decode(await gw.store.control_get("threading_key"))
    assert verify_message_id(en["Message-ID"], (key,)) == str(e.ticket_id)
    assert en["Message-ID"] != de["Message-ID"]

    # Ann presses Reply in her mail client: the reply threads onto the ticket as her agent reply
    reply = mail_client_reply(en, ANN, "Please unplug it first.", "a1@staff.test")
    r = await gw.wait_done(await send(gw.port, reply, sender=ANN))
    assert r.state == "article_added" and r.ticket_id == e.ticket_id and r.auth["dmarc"]["result"] == "pass"
    ticket = await gw.store.ticket_get("HD-1000")
    last = ticket["articles"][-1]
    assert last["from"] == ANN and last["visibility"] == "public" and last["new_text"].strip() == "Please unplug it first."
    await wait_for(lambda: len(mails_to(sink, "alice@customer.test")) == 2)
    out = mails_to(sink, "alice@customer.test")[-1]
    assert "Please unplug it first." in text(out) and "opened ticket" not in text(out)  # the quote stayed behind
    await asyncio.sleep(1.0)
    assert len(sink.messages) == 4  # agent replies are not a notify event by default

    # the customer answers: the team is told again (customer_reply), Ann's own mail is not quoted
    again = simple_message(subject="Re: [HD-1000] Printer on fire", message_id="q2@customer.test",
                           body="Unplugged, still smoking.\r\n", extra="In-Reply-To: <q1@customer.test>\r\n")
    await gw.wait_done(await send(gw.port, again))
    await wait_for(lambda: len(mails_to(sink, ANN)) == 2)
    second = mails_to(sink, ANN)[-1]
    assert second["Subject"].startswith("Customer reply (IT)") and "> Unplugged, still smoking." in text(second)


async def test_a_reply_from_someone_not_authenticated_as_the_agent_is_not_an_agent_reply(gw_factory, sink):
    """The notification's headers thread, but only an authenticated agent acts as one."""
    gw = await gw_factory()
    await gw.wait_done(await send(gw.port, simple_message(message_id="q1@customer.test")))
    await wait_for(lambda: len(sink.messages) == 3)
    en = next(parsed(raw) for _f, rcpts, raw in sink.messages if ANN in rcpts)
    # the group address is not an agent: its reply is a non-participant's mail (a linked ticket of its own)
    forged = mail_client_reply(en, GROUP, "I am the team", "g1@staff.test")
    r = await gw.wait_done(await send(gw.port, forged, sender=GROUP))
    assert r.state == "ticket_created"
    assert [a["from"] for a in (await gw.store.ticket_get("HD-1000"))["articles"]] == ["alice@customer.test"]


async def test_vip_mail_gets_no_acknowledgement_and_the_on_call_address_is_alerted(gw_factory, sink):
    vip_rule = {"name": "vip", "conditions": [{"field": "from", "op": "domain", "value": "vip.test"}],
                "manual_handling": True, "alert": True, "priority": "urgent"}
    gw = await gw_factory(routing={"alert_to": ONCALL, "alert_limits": ["1/10m"], "rule": [vip_rule]})
    e = await gw.wait_done(await send(gw.port, simple_message(sender="ceo@vip.test", message_id="v1@vip.test",
                                                              body="Nothing works!\r\n"), sender="ceo@vip.test"))
    assert e.state == "ticket_created"
    await wait_for(lambda: len(mails_to(sink, ONCALL)) == 1 and len(mails_to(sink, ANN)) == 1)
    alert = mails_to(sink, ONCALL)[0]
    assert alert["Subject"].startswith("ALERT (vip)") and "[HD-1000]" in alert["Subject"]
    assert "> Nothing works!" in text(alert) and "ceo@vip.test" in text(alert)
    hist = await history(gw, "HD-1000")
    ack = next(h for h in hist if h["action"] == "acknowledgement")
    assert ack["detail"]["queued"] is False and ack["detail"]["text"] == "acknowledgement not sent: manual handling"
    assert any(h["action"] == "manual_handling" and h["detail"]["rules"] == ["vip"] for h in hist)
    assert any(h["action"] == "alert" and h["detail"]["queued"] for h in hist)
    # an agent closes it: the human answer goes out, the automatic status mail does not
    close = simple_message(subject="Re: [HD-1000] Printer on fire", sender=ANN, message_id="c1@staff.test",
                           body="Fixed it for you.\r\n$Status=Closed$\r\n")
    await gw.wait_done(await send(gw.port, close, sender=ANN))
    await wait_for(lambda: len(mails_to(sink, "ceo@vip.test")) == 1)
    assert (await gw.store.ticket_get("HD-1000"))["status"] == "closed"
    # the second VIP mail: over the alert limit (1 per 10 minutes) -> no second alert, the history says so
    e2 = await gw.wait_done(await send(gw.port, simple_message(sender="ceo@vip.test", subject="Still broken",
                                                               message_id="v2@vip.test"), sender="ceo@vip.test"))
    await asyncio.sleep(1.5)
    assert len(mails_to(sink, ONCALL)) == 1
    number = (await gw.store.ticket_get(str(e2.ticket_id)))["number"]
    assert any(h["action"] == "alert" and h["detail"]["text"] == "alert not sent: [routing] alert_limits"
               for h in await history(gw, number))
    vip_mail = [m["Subject"] for m in mails_to(sink, "ceo@vip.test")]
    assert len(vip_mail) == 1 and not any("closed" in s for s in vip_mail)  # no acks, no status mails
    # ordinary mail still gets its acknowledgement
    await gw.wait_done(await send(gw.port, simple_message(message_id="plain@customer.test")))
    await wait_for(lambda: len(mails_to(sink, "alice@customer.test")) == 1)


async def test_second_agent_answering_the_same_message_is_held_as_a_note(gw_factory, sink):
    gw = await gw_factory(threading={"reopen_days": 7, "agent_conflict_window": "10m"})
    await gw.wait_done(await send(gw.port, simple_message(message_id="q1@customer.test")))
    await wait_for(lambda: len(sink.messages) == 3)
    first = simple_message(subject="Re: [HD-1000] Printer on fire", sender=ANN, message_id="a1@staff.test",
                           body="Unplug it.\r\n", extra="In-Reply-To: <q1@customer.test>\r\n")
    await gw.wait_done(await send(gw.port, first, sender=ANN))
    # Bert answers the same customer message a moment later, from his copy of the notification
    de = next(parsed(raw) for _f, rcpts, raw in sink.messages if BERT in rcpts)
    second = mail_client_reply(de, BERT, "Bitte Wasser verwenden.", "b1@staff.test")
    r = await gw.wait_done(await send(gw.port, second, sender=BERT))
    assert r.state == "article_added"
    ticket = await gw.store.ticket_get("HD-1000")
    assert [(a["from"], a["visibility"]) for a in ticket["articles"]] == [
        ("alice@customer.test", "public"), (ANN, "public"), (BERT, "internal")]
    conflict = next(h for h in ticket["history"] if h["action"] == "agent_conflict")
    assert conflict["actor"] == BERT and "Ann answered the same customer message" in conflict["detail"]["text"]
    await wait_for(lambda: len(mails_to(sink, BERT)) == 2)
    told = mails_to(sink, BERT)[-1]
    assert "Ann hat" in told["Subject"] and "Bitte Wasser verwenden." in text(told)  # in Bert's language
    await asyncio.sleep(1.0)
    assert len(mails_to(sink, "alice@customer.test")) == 2  # the ack and Ann's answer: not Bert's
    # a new customer message: Bert's answer to it goes out
    await gw.wait_done(await send(gw.port, simple_message(subject="Re: [HD-1000] Printer on fire",
                                                          message_id="q2@customer.test", body="Still burning\r\n")))
    third = simple_message(subject="Re: [HD-1000] Printer on fire", sender=BERT, message_id="b2@staff.test",
                           body="Call the fire brigade.\r\n", extra="In-Reply-To: <q2@customer.test>\r\n")
    await gw.wait_done(await send(gw.port, third, sender=BERT))
    await wait_for(lambda: len(mails_to(sink, "alice@customer.test")) == 3)
    assert (await gw.store.ticket_get("HD-1000"))["articles"][-1]["visibility"] == "public"


async def test_conflict_window_zero_lets_both_answers_out(gw_factory, sink):
    gw = await gw_factory(threading={"agent_conflict_window": 0}, queue=[{"name": "IT"}])
    await gw.wait_done(await send(gw.port, simple_message(message_id="q1@customer.test")))
    for sender, mid in ((ANN, "a1@staff.test"), (BERT, "b1@staff.test")):
        await gw.wait_done(await send(gw.port, simple_message(
            subject="Re: [HD-1000] x", sender=sender, message_id=mid, body=f"answer from {sender}\r\n",
            extra="In-Reply-To: <q1@customer.test>\r\n"), sender=sender))
    await wait_for(lambda: len(mails_to(sink, "alice@customer.test")) == 3)
    assert all(a["visibility"] == "public" for a in (await gw.store.ticket_get("HD-1000"))["articles"])


async def close_ticket(gw, mid: str) -> None:
    close = simple_message(subject="[HD-1000] done", sender=ANN, message_id=mid, body="$Status=Resolved$\r\n")
    await gw.wait_done(await send(gw.port, close, sender=ANN))
    assert (await gw.store.ticket_get("HD-1000"))["status"] == "resolved"


async def test_thanks_to_a_resolved_ticket_does_not_reopen_it(gw_factory, sink):
    gw = await gw_factory()
    await gw.wait_done(await send(gw.port, simple_message(message_id="q1@customer.test")))
    await close_ticket(gw, "c1@staff.test")
    await wait_for(lambda: len(notices(sink, ANN)) == 1)
    thanks = [("Thanks, works now!\r\n\r\nBest regards,\r\nAlice\r\n", "en"),
              ("Danke, funktioniert jetzt\r\n\r\nViele Grüße\r\nAlice\r\n", "de"),
              ("Perfect, thank you so much!\r\n\r\nOn Sun, 22 Nov 2026, Support wrote:\r\n> Fixed\r\n", "en")]
    for i, (body, _lang) in enumerate(thanks):
        msg = simple_message(subject="Re: [HD-1000] Printer on fire", message_id=f"thx{i}@customer.test",
                             body=body, extra="In-Reply-To: <q1@customer.test>\r\nContent-Type: text/plain; "
                             "charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\nMIME-Version: 1.0\r\n")
        r = await gw.wait_done(await send(gw.port, msg))
        assert r.state == "article_added"
        assert (await gw.store.ticket_get("HD-1000"))["status"] == "resolved", body
    hist = await history(gw, "HD-1000")
    assert sum(1 for h in hist if h["action"] == "not_reopened" and h["detail"]["why"] == "thanks only") == 3
    assert not any(h["action"] == "reopened" for h in hist)
    await asyncio.sleep(1.0)
    assert len(notices(sink, ANN)) == 1  # nobody is disturbed by a thanks
    # anything more than thanks reopens as before, and the team hears of it
    broke = simple_message(subject="Re: [HD-1000] Printer on fire", message_id="broke@customer.test",
                           body="Thanks, but it broke again.\r\n")
    await gw.wait_done(await send(gw.port, broke))
    assert (await gw.store.ticket_get("HD-1000"))["status"] == "open"
    await wait_for(lambda: len(notices(sink, ANN)) == 2)
    assert notices(sink, ANN)[-1]["Subject"].startswith("Reopened (IT)")


async def test_quarantined_mail_of_a_queue_is_announced_when_asked(gw_factory, sink):
    gw = await gw_factory(queue=[{"name": "IT", "notify": [ANN], "notify_events": ["quarantined"]}],
                          threading={"non_participant": "quarantine"})
    await gw.wait_done(await send(gw.port, simple_message(message_id="q1@customer.test")))
    stranger = simple_message(subject="Re: [HD-1000] Printer on fire", sender="mallory@customer.test",
                              message_id="m1@customer.test")
    e = await gw.wait_done(await send(gw.port, stranger, sender="mallory@customer.test"))
    assert e.state == "quarantined"
    await wait_for(lambda: len(mails_to(sink, ANN)) == 1)
    msg = mails_to(sink, ANN)[0]
    assert msg["Subject"].startswith("Quarantined mail (IT)") and e.id in text(msg)
    assert e.reason[:40] in " ".join(text(msg).split())


def test_config_errors_name_the_key(tmp_path):
    bad = [({"queue": [{"name": "IT", "notify_events": ["created", "lunch"]}]}, "queue[0].notify_events"),
           ({"queue": [{"name": "IT", "notify": ["not an address"]}]}, "queue[0].notify"),
           ({"queue": [{"name": "IT", "language": "Deutsch!"}]}, "queue[0].language"),
           ({"agent": [{"address": ANN, "language": 7}]}, "agent[0].language"),
           ({"threading": {"agent_conflict_window": "soon"}}, "threading.agent_conflict_window"),
           ({"threading": {"thanks_phrases": ["thanks"]}}, "threading.thanks_phrases"),
           ({"threading": {"thanks_phrases": {"en": [""]}}}, "threading.thanks_phrases.en"),
           ({"routing": {"alert_to": ["oncall"]}}, "routing.alert_to"),
           ({"routing": {"alert_limits": ["ten/1h"]}}, "routing.alert_limits")]
    for sections, key in bad:
        with pytest.raises((ConfigError, ConfigErrors)) as exc:
            make_config(tmp_path, **sections)
        assert key in str(exc.value), (key, str(exc.value))
    cfg = make_config(tmp_path, queue=[{"name": "IT", "notify": [ANN]}],
                      threading={"thanks_phrases": {"en": ["cheers mate"]}, "agent_conflict_window": "2m"})
    assert cfg.twoway.queue("IT").notify_events == ("created", "customer_reply", "reopened")
    assert cfg.twoway.agent_conflict_window == 120.0 and cfg.twoway.thanks_phrases == {"en": ("cheers mate",)}
    assert json.dumps(list(cfg.twoway.alert_limits))  # the default exists


async def test_sla_warning_reaches_the_queue_notify_list_when_asked(gw_factory, sink):
    import time

    from relay.sla import run_once
    from relay.notify import Notifier
    gw = await gw_factory(queue=[{"name": "IT", "notify": [ANN, GROUP], "notify_events": ["sla_warning"],
                                  "first_response": "1h", "escalation": ["manager@staff.test"]}])
    await gw.wait_done(await send(gw.port, simple_message(message_id="sla@customer.test")))
    t0 = time.time()
    assert await run_once(gw.store, gw.gw.cfg, Notifier(gw.gw.cfg.relay, hostname="mx.example.test"),
                          now=t0 + 3700) == 1
    gw.gw.relay.wake()
    await wait_for(lambda: len(mails_to(sink, ANN)) == 1 and len(mails_to(sink, "manager@staff.test")) == 1)
    warn = mails_to(sink, ANN)[0]
    assert warn["Subject"].startswith("SLA first response target missed (IT)") and GROUP in next(
        r for _f, r, _raw in sink.messages if ANN in r)
    assert "escalation level 1" in text(warn)
