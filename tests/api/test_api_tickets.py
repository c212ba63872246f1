"""The ticket endpoints end to end: mail in over real SMTP, the API over real HTTP on 127.0.0.1, the
reply out through the relay to an aiosmtpd sink (tests/smarthost.py), the tests' DNS server."""
from __future__ import annotations

import asyncio
import email
import email.policy
from typing import Any

import pytest

from ..conftest import simple_message
from ..smarthost import sink, wait_for  # noqa: F401 - sink is a fixture
from ..test_pipeline import send
from .conftest import Api
from .test_api_server import assert_problem

ZONE = {
    "customer.test": [("TXT", "v=spf1 ip4:127.0.0.1 -all")],
    "_dmarc.customer.test": [("TXT", "v=DMARC1; p=none")],
}
ANN = "ann@staff.test"


def config(port: int) -> dict[str, Any]:
    return {"relay": {"from": "Support <support@example.test>", "retry": "1s, 2s*3",
                      "smarthost": [{"name": "sink", "host": "127.0.0.1", "port": port, "tls": "none",
                                     "auth": "none", "timeout": "5s"}]},
            "agent": [{"address": ANN, "name": "Ann"}],
            "queue": [{"name": "IT"}, {"name": "Billing"}]}


@pytest.fixture
async def tapi(start_api, dns_server, sink) -> Api:
    dns_server.set_zone(ZONE)
    return await start_api(**config(sink.port))


def parsed(raw: bytes) -> email.message.EmailMessage:
    return email.message_from_bytes(raw, policy=email.policy.default)


async def mail_ticket(api: Api, mid: str, subject: str = "Printer on fire", body: str = "It is on fire.\r\n",
                      to: str = "support@example.test", sender: str = "alice@customer.test") -> dict[str, Any]:
    msg = simple_message(subject=subject, message_id=mid, body=body, to=to, sender=sender)
    e = await api.gw.wait_done(await send(api.gw.port, msg, rcpts=(to,), sender=sender))
    assert e.state == "ticket_created", e.reason
    return await api.store.ticket_get(str(e.ticket_id))


async def test_mail_in_list_reply_out_with_threading(tapi: Api, sink) -> None:
    t = await mail_ticket(tapi, "t1@customer.test", body="My printer is on fire, the toner smoulders.\r\n")
    token = await tapi.token(ANN, "agent", "IT")
    async with tapi.client(token) as c:
        r = await c.get("/api/v1/tickets")
        assert r.status_code == 200, r.text
        body = r.json()
        assert [x["number"] for x in body["items"]] == [t["number"]] and body["next_cursor"] is None
        assert body["items"][0]["requester"] == "alice@customer.test"
        r = await c.get(f"/api/v1/tickets/{t['number']}")
        detail = r.json()
        assert detail["articles"][0]["from"] == "alice@customer.test"
        assert detail["articles"][0]["auth"]["dmarc"]["result"] == "pass"
        assert detail["participants"][0] == {"email": "alice@customer.test", "name": "Alice", "role": "requester",
                                             "undeliverable": False}
        await wait_for(lambda: any("alice@customer.test" in m[1] for m in sink.messages))  # the ack
        acks = len(sink.messages)
        r = await c.post(f"/api/v1/tickets/{t['number']}/replies", json={"text": "Unplug it, we are on our way."})
        assert r.status_code == 201, r.text
        out = r.json()
        assert out["mail_queued"] is True and out["article"]["visibility"] == "public"
        assert out["article"]["from"] == ANN and out["article"]["from_name"] == "Ann"
    await wait_for(lambda: len(sink.messages) > acks)
    _f, rcpts, raw = sink.messages[-1]
    m = parsed(raw)
    assert rcpts == ["alice@customer.test"]
    assert "Unplug it, we are on our way." in m.get_body(("plain",)).get_content()
    assert f"[{t['number']}]" in m["Subject"]
    assert m["In-Reply-To"] == "<t1@customer.test>" and "<t1@customer.test>" in m["References"]
    # the customer answers that mail: it threads onto the same ticket
    answer = simple_message(subject=m["Subject"], message_id="t2@customer.test", body="Done, thanks.\r\n",
                            extra=f"In-Reply-To: {m['Message-ID']}\r\n")
    e = await tapi.gw.wait_done(await send(tapi.gw.port, answer))
    assert e.state == "article_added" and e.ticket_id == t["id"]
    got = await tapi.store.ticket_get(t["number"])
    assert any(h["action"] == "article_added" and h["actor"] == ANN for h in got["history"])
    audit = await tapi.store.query("SELECT actor, action, target FROM audit_log ORDER BY id")
    assert (ANN, "ticket.reply", t["number"]) in [tuple(r) for r in audit]


async def test_patch_status_history_and_validation(tapi: Api, sink) -> None:
    t = await mail_ticket(tapi, "p1@customer.test")
    token = await tapi.token(ANN, "agent", "IT")
    async with tapi.client(token) as c:
        r = await c.patch(f"/api/v1/tickets/{t['number']}", json={"status": "Pending", "priority": "high",
                                                                  "tags": ["printer", "fire"], "assignee": ANN})
        assert r.status_code == 200, r.text
        out = r.json()
        assert out["old"]["status"] == "new" and out["new"]["status"] == "pending"
        assert out["ticket"]["tags"] == ["printer", "fire"] and out["ticket"]["assignee"] == ANN
        got = (await c.get(f"/api/v1/tickets/{t['number']}")).json()
        last = got["history"][-1]
        assert last["action"] == "command" and last["actor"] == ANN and last["detail"]["old_status"] == "new"
        for bad, field in (({"status": "exploded"}, "status"), ({"priority": "meh"}, "priority"),
                           ({"queue": "Nowhere"}, "queue"), ({"colour": "red"}, "colour"), ({}, ""),
                           ({"tags": ["a b"]}, "tags"), ({"status": None}, "status")):
            body = assert_problem(await c.patch(f"/api/v1/tickets/{t['number']}", json=bad), 422)
            assert field in body["detail"], body
        # moving it to a queue the token does not hold: refused, nothing changed
        assert_problem(await c.patch(f"/api/v1/tickets/{t['number']}", json={"queue": "Billing"}), 403)
        r = await c.patch(f"/api/v1/tickets/{t['number']}", json={"status": "closed"})
        assert r.json()["ticket"]["closed_at"] is not None
    # the requester is told of the status change, as when an agent closes it by mail
    await wait_for(lambda: any(b"closed" in raw.lower() and "alice@customer.test" in rcpts
                               for _f, rcpts, raw in sink.messages if b"Subject: " in raw))
    audit = [tuple(r) for r in await tapi.store.query("SELECT actor, action FROM audit_log")]
    assert audit.count((ANN, "ticket.update")) == 2


async def test_scoping_viewer_agent_admin(tapi: Api) -> None:
    it = await mail_ticket(tapi, "s1@customer.test")
    billing = await mail_ticket(tapi, "s2@customer.test", to="billing@example.test", subject="Invoice wrong")
    viewer = await tapi.token("watcher", "viewer")
    agent = await tapi.token(ANN, "agent", "IT")
    admin = await tapi.token("ops", "admin")
    async with tapi.client(viewer) as c:
        assert len((await c.get("/api/v1/tickets")).json()["items"]) == 2
        assert (await c.get(f"/api/v1/tickets/{billing['number']}")).status_code == 200
        assert_problem(await c.patch(f"/api/v1/tickets/{it['number']}", json={"status": "open"}), 403)
        assert_problem(await c.post(f"/api/v1/tickets/{it['number']}/notes", json={"text": "x"}), 403)
        assert_problem(await c.post(f"/api/v1/tickets/{it['number']}/replies", json={"text": "x"}), 403)
    async with tapi.client(agent) as c:
        items = (await c.get("/api/v1/tickets")).json()["items"]
        assert [x["number"] for x in items] == [it["number"]]
        assert (await c.get("/api/v1/tickets", params={"queue": "Billing"})).json()["items"] == []
        # another queue's ticket is not found, exactly like one that does not exist
        a = assert_problem(await c.get(f"/api/v1/tickets/{billing['number']}"), 404)
        b = assert_problem(await c.get("/api/v1/tickets/HD-999999"), 404)
        assert a["title"] == b["title"]
        assert_problem(await c.patch(f"/api/v1/tickets/{billing['number']}", json={"status": "open"}), 404)
        assert_problem(await c.post(f"/api/v1/tickets/{billing['number']}/notes", json={"text": "x"}), 404)
        r = await c.post(f"/api/v1/tickets/{it['number']}/notes", json={"text": "called the customer"})
        assert r.status_code == 201 and r.json()["article"]["visibility"] == "internal"
        assert r.json()["mail_queued"] is False
    async with tapi.client(admin) as c:
        assert len((await c.get("/api/v1/tickets")).json()["items"]) == 2
        r = await c.patch(f"/api/v1/tickets/{billing['number']}", json={"queue": "IT"})
        assert r.status_code == 200 and r.json()["ticket"]["queue"] == "IT"
    async with tapi.client(agent) as c:  # moved into the agent's queue: now visible to it
        assert (await c.get(f"/api/v1/tickets/{billing['number']}")).status_code == 200


async def test_search_finds_a_word_only_in_a_later_article_body(tapi: Api) -> None:
    t = await mail_ticket(tapi, "q1@customer.test", subject="Printer")
    await mail_ticket(tapi, "q2@customer.test", subject="Other")
    reply = simple_message(subject=f"Re: [{t['number']}] Printer", message_id="q3@customer.test",
                           body="The fuser assembly smells of ozone.\r\n", extra="In-Reply-To: <q1@customer.test>\r\n")
    assert (await tapi.gw.wait_done(await send(tapi.gw.port, reply))).state == "article_added"
    token = await tapi.token("watcher", "viewer")
    async with tapi.client(token) as c:
        for q in ("ozone", "OZONE fuser", "printer"):
            r = await c.get("/api/v1/tickets", params={"q": q})
            assert [x["number"] for x in r.json()["items"]] == [t["number"]], q
        assert (await c.get("/api/v1/tickets", params={"q": "ozone nitrogen"})).json()["items"] == []
        assert (await c.get("/api/v1/tickets", params={"q": "ozone", "status": "closed"})).json()["items"] == []
        assert_problem(await c.get("/api/v1/tickets", params={"cursor": "bogus"}), 422)
        assert_problem(await c.get("/api/v1/tickets", params={"limit": 10_000}), 422)


async def test_pagination_every_ticket_once_while_new_ones_arrive(tapi: Api) -> None:
    first = [await mail_ticket(tapi, f"g{i}@customer.test", subject=f"Batch {i}") for i in range(7)]
    token = await tapi.token("watcher", "viewer")
    seen: list[str] = []
    async with tapi.client(token) as c:
        cursor = None
        for page in range(10):
            params = {"limit": 3, **({"cursor": cursor} if cursor else {})}
            body = (await c.get("/api/v1/tickets", params=params)).json()
            seen += [x["number"] for x in body["items"]]
            if page < 2:  # new mail arrives between pages
                await mail_ticket(tapi, f"late{page}@customer.test", subject=f"Late {page}")
            cursor = body["next_cursor"]
            if cursor is None:
                break
    assert len(seen) == len(set(seen)) == 7
    assert seen == [t["number"] for t in reversed(first)]


async def test_attachment_download_is_never_inline(tapi: Api) -> None:
    raw = ("From: Alice <alice@customer.test>\r\nTo: support@example.test\r\nSubject: Screenshot\r\n"
           "Message-ID: <a1@customer.test>\r\nMIME-Version: 1.0\r\n"
           "Content-Type: multipart/mixed; boundary=XX\r\n\r\n--XX\r\nContent-Type: text/plain\r\n\r\nSee attached.\r\n"
           "--XX\r\nContent-Type: text/html\r\nContent-Disposition: attachment; filename=\"evil\\\"; x=.html\"\r\n\r\n"
           "<script>alert(1)</script>\r\n--XX--\r\n").encode()
    e = await tapi.gw.wait_done(await send(tapi.gw.port, raw))
    t = await tapi.store.ticket_get(str(e.ticket_id))
    att = t["articles"][0]["attachments"]
    token = await tapi.token("watcher", "viewer")
    async with tapi.client(token) as c:
        detail = (await c.get(f"/api/v1/tickets/{t['number']}")).json()
        url = detail["articles"][0]["attachments"][0]["url"] if att else None
        if url is None:
            pytest.skip("the attachment policy removed the HTML attachment")
        r = await c.get(url)
        assert r.status_code == 200
        assert r.headers["content-type"] == "application/octet-stream"
        assert r.headers["x-content-type-options"] == "nosniff"
        cd = r.headers["content-disposition"]
        assert cd.startswith("attachment;") and "filename*=UTF-8''" in cd and '\\"' not in cd
        assert b"<script>" in r.content
        other = await mail_ticket(tapi, "a2@customer.test")
        assert_problem(await c.get(f"/api/v1/tickets/{other['number']}/attachments/{att[0]['id']}"), 404)


async def test_reply_without_outbound_mail_is_refused(start_api, dns_server) -> None:
    dns_server.set_zone(ZONE)
    api = await start_api()
    t = await mail_ticket(api, "n1@customer.test")
    token = await api.token("ops", "admin")
    async with api.client(token) as c:
        body = assert_problem(await c.post(f"/api/v1/tickets/{t['number']}/replies", json={"text": "hi"}), 409)
        assert "[relay]" in body["detail"]
        assert_problem(await c.post(f"/api/v1/tickets/{t['number']}/replies", json={"text": ""}), 422)
    assert len((await api.store.ticket_get(t["number"]))["articles"]) == 1
    await asyncio.sleep(0)
