"""Relay end to end: ticket -> acknowledgement through a real smarthost sink; agent replies; loops stop."""
from __future__ import annotations

import asyncio
import email
import email.policy
import time

import pytest
from aiosmtpd.controller import Controller

from .conftest import free_port, simple_message
from .smarthost import Sink, sink, wait_for  # noqa: F401 - sink is a fixture; all three re-exported
from .test_pipeline import send


# Acknowledgements go only to a From that passed DMARC (the default [[mailbox]] acknowledge =
# "authenticated"): customer.test authorises 127.0.0.1 by SPF, aligned with the From, so the unsigned
# test mail from alice@customer.test passes DMARC here, as a real customer's mail would.
CUSTOMER = {"customer.test": [("TXT", "v=spf1 ip4:127.0.0.1 -all")],
            "_dmarc.customer.test": [("TXT", "v=DMARC1; p=none")],
            "shop.test": [("TXT", "v=spf1 ip4:127.0.0.1 -all")],
            "_dmarc.shop.test": [("TXT", "v=DMARC1; p=none")]}
AGENTS = {"agents.test": [("TXT", "v=spf1 ip4:127.0.0.1 -all")],
          "_dmarc.agents.test": [("TXT", "v=DMARC1; p=reject")]}


@pytest.fixture(autouse=True)
def customer_passes_dmarc(start_gateway, dns_server):
    dns_server.set_zone(CUSTOMER)


def relay_cfg(port: int) -> dict:
    return {"relay": {"from": "Support <support@example.test>", "retry": "1s, 2s*3",
                      "smarthost": [{"name": "sink", "host": "127.0.0.1", "port": port, "tls": "none",
                                     "auth": "none", "timeout": "5s"}]},
            "agent": [{"address": "ann@agents.test", "name": "Ann"}]}


async def test_acknowledgement_and_agent_reply_reach_the_smarthost(start_gateway, dns_server, sink):
    dns_server.set_zone({**CUSTOMER, **AGENTS})
    gw = await start_gateway(**relay_cfg(sink.port))
    sid = await send(gw.port, simple_message(message_id="q1@customer.test"))
    e = await gw.wait_done(sid)
    await wait_for(lambda: len(sink.messages) == 1)
    mail_from, rcpts, raw = sink.messages[0]
    ack = email.message_from_bytes(raw, policy=email.policy.default)
    assert rcpts == ["alice@customer.test"]
    assert ack["Auto-Submitted"] == "auto-replied" and ack["X-Ticketmx-Loop"] == "mx.example.test"
    assert "[HD-1000]" in ack["Subject"] and ack["In-Reply-To"] == "<q1@customer.test>"
    # the customer answers the acknowledgement: it threads by our Message-ID
    reply = simple_message(subject=f"Re: {ack['Subject']}", message_id="q2@customer.test",
                           extra=f"In-Reply-To: {ack['Message-ID']}\r\n")
    assert (await gw.wait_done(await send(gw.port, reply))).state == "article_added"
    assert len(sink.messages) == 1  # no acknowledgement for a reply
    # an agent answers: relayed to the requester, the internal note is not
    agent = simple_message(subject="Re: [HD-1000] Printer on fire", sender="ann@agents.test",
                           message_id="a1@agents.test", body="Please unplug it.\r\n")
    assert (await gw.wait_done(await send(gw.port, agent, sender="ann@agents.test"))).state == "article_added"
    await wait_for(lambda: len(sink.messages) == 2)
    out = email.message_from_bytes(sink.messages[1][2], policy=email.policy.default)
    assert sink.messages[1][1] == ["alice@customer.test"] and "Please unplug it." in out.get_body(("plain",)).get_content()
    note = simple_message(subject="[HD-1000] note", sender="ann@agents.test", message_id="a2@agents.test",
                          to="support+comment@example.test", body="internal only\r\n")
    await gw.wait_done(await send(gw.port, note, rcpts=("support+comment@example.test",), sender="ann@agents.test"))
    await asyncio.sleep(1.5)
    assert len(sink.messages) == 2
    assert e.state == "ticket_created"


async def test_no_acknowledgement_to_automatic_or_noreply_senders(start_gateway, sink):
    gw = await start_gateway(**relay_cfg(sink.port))
    await gw.wait_done(await send(gw.port, simple_message(sender="no-reply@shop.test", message_id="n1@shop.test"),
                                  sender="no-reply@shop.test"))
    await gw.wait_done(await send(gw.port, simple_message(message_id="n2@customer.test",
                                                          extra="Precedence: bulk\r\n")))
    await asyncio.sleep(1.5)
    assert sink.messages == []


async def test_autoresponder_loop_stops_by_itself(start_gateway, sink):
    """A careless autoresponder (no Auto-Submitted) answers every acknowledgement with a new mail."""
    gw = await start_gateway(**relay_cfg(sink.port))
    sent = 0
    for i in range(30):
        await gw.wait_done(await send(gw.port, simple_message(sender="robot@customer.test",
                                                              subject=f"Thanks for your mail {i}",
                                                              message_id=f"robot{i}@customer.test"),
                                      sender="robot@customer.test"))
        sent += 1
    await asyncio.sleep(1.5)
    acks = [m for m in sink.messages if m[1] == ["robot@customer.test"]]
    assert 1 <= len(acks) <= 10  # the first rate tier (10 per 10 minutes) caps it


async def test_command_result_to_agent_status_change_to_requester_and_stripped_notice(
        start_gateway, dns_server, sink):
    from email.message import EmailMessage
    dns_server.set_zone({**CUSTOMER, **AGENTS})
    gw = await start_gateway(**relay_cfg(sink.port))
    msg = EmailMessage()
    msg["From"] = "Alice <alice@customer.test>"
    msg["To"] = "support@example.test"
    msg["Subject"] = "with a program"
    msg["Message-ID"] = "<s1@customer.test>"
    msg.set_content("see attached")
    msg.add_attachment(b"MZ\x90\x00" + b"\x00" * 100, maintype="application", subtype="octet-stream",
                       filename="setup.exe")
    await gw.wait_done(await send(gw.port, msg.as_bytes()))
    await wait_for(lambda: len(sink.messages) == 2)  # the acknowledgement and the stripped notice
    subjects = sorted(email.message_from_bytes(m[2], policy=email.policy.default)["Subject"] for m in sink.messages)
    assert any("Attachments removed" in s for s in subjects)
    cmd = simple_message(subject="Re: [HD-1000] with a program", sender="ann@agents.test", message_id="k@agents.test",
                         body="Done.\r\n$Status=Closed$\r\n$Colour=Red$\r\n")
    await gw.wait_done(await send(gw.port, cmd, sender="ann@agents.test"))
    await wait_for(lambda: len(sink.messages) == 4)  # + reply to Alice (saying it is closed), result to Ann
    await asyncio.sleep(0.5)
    assert len(sink.messages) == 4  # one agent mail, one customer mail: no separate "is now closed"
    by_rcpt: dict[str, list] = {}
    for _f, rcpts, raw in sink.messages[2:]:
        by_rcpt.setdefault(rcpts[0], []).append(email.message_from_bytes(raw, policy=email.policy.default))
    (reply,) = by_rcpt["alice@customer.test"]
    text = reply.get_body(("plain",)).get_content()
    assert "Done." in text and "is now closed" in text and "$" not in text
    (result,) = by_rcpt["ann@agents.test"]
    assert "Result of your email commands" in result["Subject"]
    assert "Colour" in result.get_body(("plain",)).get_content()  # the refused command and why
    assert result["In-Reply-To"] == "<k@agents.test>"  # threaded on the agent's own mail
    # commands only, no words for the customer: the status mail is the one customer mail
    only = simple_message(subject="Re: [HD-1000] with a program", sender="ann@agents.test",
                          message_id="k2@agents.test", body="$Status=Pending$\r\n")
    await gw.wait_done(await send(gw.port, only, sender="ann@agents.test"))
    await wait_for(lambda: len(sink.messages) == 6)  # the result to Ann, the status mail to Alice
    await asyncio.sleep(0.5)
    assert len(sink.messages) == 6
    (status,) = [email.message_from_bytes(raw, policy=email.policy.default) for _f, r, raw in sink.messages[4:]
                 if r == ["alice@customer.test"]]
    assert "is now pending" in status["Subject"]
    assert status["In-Reply-To"] == "<s1@customer.test>" and "<s1@customer.test>" in status["References"]


async def test_sla_escalation_levels_first_response(start_gateway, dns_server, sink):
    """Past the first-response target the team is told (level 1), past twice the target the manager
    (level 2); an agent's public answer stops further escalation."""
    from relay.sla import run_once
    from relay.notify import Notifier
    cfg = relay_cfg(sink.port)
    cfg["queue"] = [{"name": "IT", "first_response": "1h",
                     "escalation": ["team@example.test", "manager@example.test"]}]
    gw = await start_gateway(**cfg)
    e = await gw.wait_done(await send(gw.port, simple_message(message_id="sla@customer.test")))
    ticket = await gw.store.ticket_get(str(e.ticket_id))
    notifier = Notifier(gw.gw.cfg.relay, hostname="mx.example.test")
    t0 = time.time()
    assert await run_once(gw.store, gw.gw.cfg, notifier, now=t0 + 1800) == 0          # within the target
    assert await run_once(gw.store, gw.gw.cfg, notifier, now=t0 + 3700) == 1          # level 1
    assert await run_once(gw.store, gw.gw.cfg, notifier, now=t0 + 3800) == 0          # once per level
    assert await run_once(gw.store, gw.gw.cfg, notifier, now=t0 + 7300) == 1          # level 2
    assert await run_once(gw.store, gw.gw.cfg, notifier, now=t0 + 99999) == 0         # no level 3
    gw.gw.relay.wake()
    await wait_for(lambda: {m[1][0] for m in sink.messages} >= {"team@example.test", "manager@example.test"})
    esc = [email.message_from_bytes(m[2], policy=email.policy.default) for m in sink.messages
           if m[1][0] == "manager@example.test"][0]
    assert ticket["number"] in esc["Subject"] and esc["Auto-Submitted"] == "auto-generated"
    history = (await gw.store.ticket_get(ticket["number"]))["history"]
    assert [h["detail"]["level"] for h in history if h["action"] == "escalated"] == [1, 2]


async def test_admin_is_told_when_processing_pauses(start_gateway, sink, monkeypatch):
    from gateway.config.pipeline import STAGES
    from gateway.pipeline.runner.worker import MetricsSink, Worker

    from .test_pipeline import ExplodingStage
    monkeypatch.setitem(STAGES, "explode", ExplodingStage)
    cfg = relay_cfg(sink.port)
    cfg["pipeline"] = {"pause_after_failures": 2, "max_attempts": 1, "admin_address": "ops@example.test"}
    gateway = await start_gateway(**cfg)
    gw = gateway.gw
    await gw.worker.close()
    gw.worker = Worker(gw.cfg, gw.store, MetricsSink(gw.metrics, gw.relay.wake), gw.executor,
                       stage_names=("explode", "ticket"))
    gw.spool.on_commit = gw.worker.wake
    gw.worker.start()
    for i in range(2):
        await gateway.wait_done(await send(gateway.port, simple_message(message_id=f"pz{i}@customer.test")))
    await wait_for(lambda: any(m[1] == ["ops@example.test"] for m in sink.messages))
    note = next(email.message_from_bytes(m[2], policy=email.policy.default) for m in sink.messages
                if m[1] == ["ops@example.test"])
    assert "paused" in note["Subject"] and "stage exploded on purpose" in note.get_body(("plain",)).get_content()


async def test_sighup_reload_moves_notifications_to_the_new_smarthost(start_gateway, dns_server, sink, tmp_path):
    """A changed [relay] on reload replaces the relay worker: the next acknowledgement goes to the new
    smarthost; with [relay] removed, none goes out (the ticket is still made)."""
    from .conftest import BASE_CONFIG, merge, toml_dump
    second = Sink()
    second.port = free_port()
    controller = Controller(second, hostname="127.0.0.1", port=second.port)
    controller.start()
    try:
        gw = await start_gateway(**relay_cfg(sink.port))
        await gw.wait_done(await send(gw.port, simple_message(message_id="r1@customer.test")))
        await wait_for(lambda: len(sink.messages) == 1)

        def write(sections: dict) -> str:
            data = merge(BASE_CONFIG, {"store": {"url": gw.gw.cfg.store.url},
                                       "dns": {"nameservers": [f"127.0.0.1:{dns_server.port}"], "timeout": "1s"}})
            path = tmp_path / "reloaded.toml"
            path.write_text(toml_dump(merge(data, sections)))
            return str(path)

        old_relay = gw.gw.relay
        assert gw.gw.reload(write(relay_cfg(second.port)))
        await wait_for(lambda: gw.gw.relay is not old_relay and gw.gw.relay is not None)
        await gw.wait_done(await send(gw.port, simple_message(message_id="r2@customer.test",
                                                              sender="bob@customer.test")))
        await wait_for(lambda: len(second.messages) == 1)
        assert second.messages[0][1] == ["bob@customer.test"] and len(sink.messages) == 1
        assert old_relay._stopping  # the old worker was stopped

        no_relay = relay_cfg(second.port)
        del no_relay["relay"]
        assert gw.gw.reload(write(no_relay))
        await wait_for(lambda: gw.gw.relay is None)
        e = await gw.wait_done(await send(gw.port, simple_message(message_id="r3@customer.test",
                                                                  sender="carol@customer.test")))
        assert e.state == "ticket_created"
        await asyncio.sleep(1.0)
        assert len(second.messages) == 1 and len(sink.messages) == 1
    finally:
        controller.stop()
