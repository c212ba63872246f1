"""The issue's round trip, every part real: a mail in over SMTP -> the ``ticket.created`` webhook at a
local receiver that verifies each signature -> the ticket number from that payload -> ``POST
/api/v1/tickets/{n}/replies`` over HTTP with an agent token made by ``ticketmx token create`` -> the
reply at an aiosmtpd smarthost sink, threaded on the customer's mail -> ``article.added`` for it; a
note -> ``article.added`` (internal); ``PATCH`` -> ``ticket.updated`` naming the agent. The same test
runs on PostgreSQL from tests/pg/test_api_webhooks_pg.py (``round_trip`` with the database's URL)."""
from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, Callable

from ..conftest import BASE_CONFIG, merge, simple_message, toml_dump
from ..smarthost import sink, wait_for  # noqa: F401 - sink is a fixture
from ..test_pipeline import send
from ..webhooks.conftest import hook, receiver, secret_file  # noqa: F401 - fixtures
from ..webhooks.receiver import Received, Receiver
from .conftest import HTTP, Api
from .test_api_tickets import ANN, ZONE, config, parsed

ALICE = "alice@customer.test"


async def start(start_gateway: Callable[..., Any], tmp_path: Path, store_url: str, **sections: Any) -> Api:
    """The in-process gateway with [http] and the sections, and a config file on the same store for
    the ``ticketmx token`` CLI (tests/api/conftest.py's ``start_api``, for any store URL)."""
    sections = merge(HTTP, sections)
    gw = await start_gateway(**sections)
    path = tmp_path / "ticketmx-cli.toml"
    data = merge(BASE_CONFIG, {"store": {"url": store_url}, **sections})
    data.pop("metrics", None)
    path.write_text(toml_dump(data))
    return Api(gw, path)


def events(rcv: Receiver, name: str) -> list[Received]:
    return [r for r in rcv.accepted() if r.json and r.json.get("event") == name]


async def one(rcv: Receiver, name: str, count: int = 1) -> Received:
    """The ``count``-th accepted request of event ``name`` (waits for it)."""
    await rcv.await_(lambda r: len(events(r, name)) >= count)
    return events(rcv, name)[count - 1]


async def round_trip(start_gateway: Callable[..., Any], tmp_path: Path, store_url: str, rcv: Receiver,
                     secret: str, smarthost: Any) -> None:
    api = await start(start_gateway, tmp_path, store_url, **config(smarthost.port), webhook=[hook(rcv, secret)])
    token = await api.token(ANN, "agent", "IT")
    sid = await send(api.gw.port, simple_message(message_id="rt-1@customer.test", sender=ALICE,
                                                 body="The printer is on fire.\r\n"))
    assert (await api.gw.wait_done(sid)).state == "ticket_created"

    created = await one(rcv, "ticket.created")
    number = created.json["ticket"]["number"]
    assert created.json["ticket"]["requester"]["email"] == ALICE and created.json["ticket"]["queue"] == "IT"
    await wait_for(lambda: any(ALICE in rcpts for _f, rcpts, _raw in smarthost.messages))  # the ack
    mails = len(smarthost.messages)

    async with api.client(token) as c:
        r = await c.post(f"/api/v1/tickets/{number}/replies", json={"text": "Unplug it, we are on our way."})
        assert r.status_code == 201, r.text
        reply = r.json()["article"]
        assert r.json()["mail_queued"] is True

        # the reply at the smarthost: to the customer, threaded on her mail, the ticket in the subject
        await wait_for(lambda: len(smarthost.messages) > mails)
        _from, rcpts, raw = smarthost.messages[mails]
        m = parsed(raw)
        assert rcpts == [ALICE]
        assert m["In-Reply-To"] == "<rt-1@customer.test>" and "<rt-1@customer.test>" in m["References"]
        assert f"[{number}]" in m["Subject"]
        assert "Unplug it, we are on our way." in m.get_body(("plain",)).get_content()

        # ... and article.added for it: public, written by the agent
        added = (await one(rcv, "article.added")).json
        assert added["ticket"]["number"] == number and added["actor"] == ANN
        art = added["article"]
        assert art["id"] == reply["id"] and art["visibility"] == "public" and art["kind"] == "email"
        assert art["from"] == {"email": ANN, "name": "Ann"} and art["text"] == "Unplug it, we are on our way."

        r = await c.post(f"/api/v1/tickets/{number}/notes", json={"text": "Customer sounded calm."})
        assert r.status_code == 201, r.text
        note = (await one(rcv, "article.added", 2)).json
        assert note["article"]["id"] == r.json()["article"]["id"] and note["article"]["visibility"] == "internal"
        assert note["article"]["kind"] == "note" and note["actor"] == ANN

        before = (await c.get(f"/api/v1/tickets/{number}")).json()
        r = await c.patch(f"/api/v1/tickets/{number}", json={"status": "pending", "priority": "high"})
        assert r.status_code == 200, r.text
        upd = (await one(rcv, "ticket.updated")).json
        assert upd["actor"] == ANN and upd["ticket"]["number"] == number
        assert upd["changes"] == {"status": "pending", "priority": "high"}
        assert upd["previous"] == {"status": before["status"], "priority": before["priority"]}
        assert upd["ticket"]["status"] == "pending" and upd["ticket"]["priority"] == "high"

    # every request was signed right, each event once (its own id), in the order of the changes
    assert rcv.received and all(x.valid for x in rcv.received)
    got = [(x.json["event"], x.headers["ticketmx-event-id"]) for x in rcv.accepted()]
    assert [e for e, _ in got] == ["ticket.created", "article.added", "article.added", "ticket.updated"]
    assert len({i for _, i in got}) == 4 and all(x.json["id"] == x.headers["ticketmx-event-id"]
                                                 for x in rcv.accepted())
    await asyncio.sleep(0.3)
    assert len(rcv.received) == 4  # nothing more (no double from the mail hook, the reply's relay send)


async def test_mail_webhook_reply_webhook_patch_webhook(start_gateway, tmp_path, dns_server, receiver, secret_file,
                                                       sink) -> None:
    dns_server.set_zone(ZONE)
    await round_trip(start_gateway, tmp_path, f"sqlite:///{tmp_path}/ticketmx.db", receiver, secret_file, sink)


async def test_postmark_webhook_gets_the_mail_not_the_api_articles(start_gateway, tmp_path, dns_server, receiver,
                                                                  secret_file, sink) -> None:
    """``format = "postmark"`` is the shape of a mail that came in: the customer's mail, yes; an API
    reply or note (no mail came in) is not sent there - a ``ticketmx`` webhook carries those."""
    dns_server.set_zone(ZONE)
    api = await start(start_gateway, tmp_path, f"sqlite:///{tmp_path}/ticketmx.db", **config(sink.port),
                      webhook=[hook(receiver, secret_file, format="postmark", events=["ticket.created",
                                                                                     "article.added"])])
    token = await api.token(ANN, "agent", "IT")
    sid = await send(api.gw.port, simple_message(message_id="pm-1@customer.test", sender=ALICE))
    assert (await api.gw.wait_done(sid)).state == "ticket_created"
    await receiver.await_(lambda r: len(r.accepted()) == 1)
    first = receiver.accepted()[0].json
    assert first["From"] == ALICE and first["Ticketmx"]["event"] == "ticket.created"
    number = first["Ticketmx"]["ticket"]["number"]
    async with api.client(token) as c:
        assert (await c.post(f"/api/v1/tickets/{number}/replies", json={"text": "On our way."})).status_code == 201
        assert (await c.post(f"/api/v1/tickets/{number}/notes", json={"text": "internal"})).status_code == 201
    # the customer answers by mail: that one is sent
    answer = simple_message(subject=f"Re: [{number}] Printer on fire", message_id="pm-2@customer.test",
                            sender=ALICE, body="Thanks!\r\n", extra="In-Reply-To: <pm-1@customer.test>\r\n")
    assert (await api.gw.wait_done(await send(api.gw.port, answer))).state == "article_added"
    await receiver.await_(lambda r: len(r.accepted()) == 2)
    await asyncio.sleep(0.3)
    assert [x.json["Ticketmx"]["event"] for x in receiver.received] == ["ticket.created", "article.added"]
    assert receiver.received[1].json["MessageID"] == "pm-2@customer.test"
    rows = await api.store.query("SELECT event FROM webhook_outbox ORDER BY id")
    assert [r[0] for r in rows] == ["ticket.created", "article.added"]
