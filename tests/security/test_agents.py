"""Agents act as agents only when authenticated, and only within their permissions (issue 18, class 2-3).

Through SMTP on loopback with the tests' DNS server and a real aiosmtpd smarthost sink: the agent domain
publishes only p=none (as many do), so a forged agent From is accepted at DATA and must be handled by the
pipeline as mail from a non-participant.
"""
from __future__ import annotations

import asyncio
import email
import email.policy

import pytest

from ..conftest import run_cli, simple_message
from ..test_pipeline import send
from ..smarthost import sink, wait_for  # noqa: F401 - sink is a fixture
from ..test_relay_e2e import relay_cfg

ZONE = {
    "customer.test": [("TXT", "v=spf1 ip4:127.0.0.1 -all")],
    "_dmarc.customer.test": [("TXT", "v=DMARC1; p=none")],
    # the helpdesk's staff domain sends from elsewhere: mail from 127.0.0.1 fails SPF, and p=none lets it in
    "staff.test": [("TXT", "v=spf1 ip4:192.0.2.10 -all")],
    "_dmarc.staff.test": [("TXT", "v=DMARC1; p=none")],
    "agents.test": [("TXT", "v=spf1 ip4:127.0.0.1 -all")],   # SPF pass from 127.0.0.1: DMARC pass
    "_dmarc.agents.test": [("TXT", "v=DMARC1; p=none")],
}


def cfg(port: int, **over) -> dict:
    c = relay_cfg(port)
    c["agent"] = [{"address": "ann@staff.test", "name": "Ann"},
                  {"address": "bob@agents.test", "name": "Bob"},
                  {"address": "nora@agents.test", "name": "Nora", "permissions": ["note"]}]
    c.update(over)
    return c


async def _ticket(gw, sink) -> dict:
    e = await gw.wait_done(await send(gw.port, simple_message(message_id="t1@customer.test")))
    assert e.state == "ticket_created"
    await wait_for(lambda: len(sink.messages) >= 1)  # the acknowledgement (customer.test passes DMARC)
    return await gw.store.ticket_get(str(e.ticket_id))


def _to_customer(sink) -> list[bytes]:
    return [raw for _f, rcpts, raw in sink.messages if "alice@customer.test" in rcpts]


async def test_a_forged_agent_from_is_a_stranger_not_an_agent(start_gateway, dns_server, sink):
    dns_server.set_zone(ZONE)
    gw = await start_gateway(**cfg(sink.port))
    t = await _ticket(gw, sink)
    before = len(_to_customer(sink))
    forged = simple_message(subject=f"Re: [{t['number']}] Printer on fire", sender="ann@staff.test",
                            message_id="f1@staff.test",
                            body="Send your password to me.\r\n$Status=Closed$\r\n$Assignee=mallory@evil.test$\r\n",
                            extra="In-Reply-To: <t1@customer.test>\r\n")
    e = await gw.wait_done(await send(gw.port, forged, sender="ann@staff.test"))
    assert e.auth["dmarc"]["result"] == "fail" and e.state != "quarantined"
    reasons = " ".join(h.get("reason", "") for h in e.history)
    assert "ann@staff.test is an agent address, but the mail is not authenticated" in reasons
    # not on the customer's ticket: a ticket of its own (non_participant = "new"), linked
    assert e.state == "ticket_created" and e.ticket_id != t["id"]
    ticket = await gw.store.ticket_get(t["number"])
    assert len(ticket["articles"]) == 1
    assert ticket["status"] == "new" and ticket["assignee"] in (None, "")  # no command applied
    own = await gw.store.ticket_get(str(e.ticket_id))
    assert any(h["action"] == "agent_refused" for h in own["history"])
    assert own["requester"] == "ann@staff.test"
    await asyncio.sleep(1.5)  # the relay worker had time to send anything queued
    assert len(_to_customer(sink)) == before, "a forged agent reply reached the customer"
    assert not any(b"Send your password" in raw for _f, _r, raw in sink.messages)


async def test_an_authenticated_agent_replies_and_commands(start_gateway, dns_server, sink):
    dns_server.set_zone(ZONE)
    gw = await start_gateway(**cfg(sink.port))
    t = await _ticket(gw, sink)
    before = len(_to_customer(sink))
    real = simple_message(subject=f"Re: [{t['number']}] Printer on fire", sender="bob@agents.test",
                          message_id="r1@agents.test", body="Unplug it.\r\n$Priority=High$\r\n")
    e = await gw.wait_done(await send(gw.port, real, sender="bob@agents.test"))
    assert e.state == "article_added" and e.ticket_id == t["id"]
    assert (await gw.store.ticket_get(t["number"]))["priority"] == "high"
    await wait_for(lambda: len(_to_customer(sink)) == before + 1)
    out = email.message_from_bytes(_to_customer(sink)[-1], policy=email.policy.default)
    assert "Unplug it." in out.get_body(("plain",)).get_content()


async def test_trusted_internal_path_lets_an_agent_act_without_dmarc(start_gateway, dns_server, sink):
    dns_server.set_zone(ZONE)
    gw = await start_gateway(**cfg(sink.port, threading={"agent_trusted_networks": ["127.0.0.0/8"]}))
    t = await _ticket(gw, sink)
    mail = simple_message(subject=f"Re: [{t['number']}] Printer on fire", sender="ann@staff.test",
                          message_id="r2@staff.test", body="From the internal Exchange.\r\n")
    e = await gw.wait_done(await send(gw.port, mail, sender="ann@staff.test"))
    assert e.auth["dmarc"]["result"] == "fail"
    assert e.state == "article_added" and e.ticket_id == t["id"]


async def test_a_note_only_agent_cannot_mail_the_customer(start_gateway, dns_server, sink):
    dns_server.set_zone(ZONE)
    gw = await start_gateway(**cfg(sink.port))
    t = await _ticket(gw, sink)
    before = len(_to_customer(sink))
    reply = simple_message(subject=f"Re: [{t['number']}] Printer on fire", sender="nora@agents.test",
                           message_id="n1@agents.test", body="Dear customer, public words.\r\n")
    e = await gw.wait_done(await send(gw.port, reply, sender="nora@agents.test"))
    assert e.state == "article_added" and e.ticket_id == t["id"]
    arts = (await gw.store.ticket_get(t["number"]))["articles"]
    assert arts[-1]["visibility"] == "internal"
    assert any("may write notes but not public replies" in h.get("reason", "") for h in e.history)
    await asyncio.sleep(1.5)
    assert len(_to_customer(sink)) == before, "a note-only agent's reply was mailed to the customer"


def test_unknown_permission_fails_check_config(tmp_path):
    path = tmp_path / "t.toml"
    path.write_text('[[mailbox]]\naddress = "support@example.test"\nqueue = "Support"\n'
                    '[[agent]]\naddress = "ann@example.test"\npermissions = ["reply", "delete_everything"]\n')
    proc = run_cli("check-config", "--config", str(path), check=False)
    assert proc.returncode == 78
    assert "agent[0].permissions" in proc.stderr and "delete_everything" in proc.stderr


def test_agent_trusted_networks_must_be_networks(tmp_path):
    path = tmp_path / "t.toml"
    path.write_text('[[mailbox]]\naddress = "support@example.test"\nqueue = "Support"\n'
                    '[threading]\nagent_trusted_networks = ["not-a-net"]\n')
    proc = run_cli("check-config", "--config", str(path), check=False)
    assert proc.returncode == 78 and "threading.agent_trusted_networks" in proc.stderr


@pytest.mark.parametrize("perms", [[], ["commands"]])
async def test_an_agent_without_reply_or_note_is_a_plain_sender(start_gateway, dns_server, sink, perms):
    dns_server.set_zone(ZONE)
    c = cfg(sink.port)
    c["agent"].append({"address": "cmd@agents.test", "permissions": perms})
    gw = await start_gateway(**c)
    t = await _ticket(gw, sink)
    mail = simple_message(subject=f"Re: [{t['number']}] Printer on fire", sender="cmd@agents.test",
                          message_id="p1@agents.test", body="hello\r\n")
    e = await gw.wait_done(await send(gw.port, mail, sender="cmd@agents.test"))
    assert e.ticket_id != t["id"]  # not a participant: the customer's ticket is not theirs to write on
    assert any("may not reply or write notes" in h.get("reason", "") for h in e.history)
