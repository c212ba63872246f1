"""Admin endpoints over real HTTP: spool messages (list, show, raw, replay, release, delete, trace),
queue scoping, the relay queue and retry, and an audit row for every write."""
from __future__ import annotations

import asyncio
import email
import email.policy

import aiosmtplib
import pytest
from aiosmtpd.controller import Controller

from ..conftest import free_port, queued_id, simple_message
from ..smarthost import Sink, wait_for
from .conftest import Api
from .test_api_server import assert_problem

SENDERS = {"sender_policy": {"allowed_domains": ["customer.test"], "unknown": "quarantine"}}
CUSTOMER = {"customer.test": [("TXT", "v=spf1 ip4:127.0.0.1 -all")],
            "_dmarc.customer.test": [("TXT", "v=DMARC1; p=none")]}


async def send(port: int, msg: bytes, sender: str, rcpt: str = "support@example.test") -> str:
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=10, start_tls=False)
    await client.connect()
    await client.ehlo(hostname="client.test")
    await client.mail(sender)
    await client.rcpt(rcpt)
    _code, text = await client.data(msg)
    await client.quit()
    return queued_id(text)


async def filled(start_api) -> tuple[Api, dict[str, str]]:
    api = await start_api(pipeline=SENDERS)
    port = api.gw.port
    ids = {
        "ok": await send(port, simple_message("fine", message_id="ok1@customer.test"), "alice@customer.test"),
        "it": await send(port, simple_message("offer", sender="mallory@other.test", message_id="q1@other.test"),
                         "mallory@other.test"),
        "billing": await send(port, simple_message("invoice", sender="eve@other.test", to="billing@example.test",
                                                   message_id="q2@other.test"), "eve@other.test",
                              "billing@example.test"),
    }
    for sid in ids.values():
        await api.gw.wait_done(sid)
    return api, ids


async def audit_rows(api: Api, admin: str, **params: str) -> list[dict]:
    async with api.client(admin) as c:
        r = await c.get("/api/v1/audit", params=params)
    assert r.status_code == 200, r.text
    return r.json()["items"]


async def test_list_show_and_raw(start_api) -> None:
    api, ids = await filled(start_api)
    admin = await api.token("ops", "admin")
    async with api.client(admin) as c:
        r = await c.get("/api/v1/messages", params={"state": "quarantined"})
        assert r.status_code == 200, r.text
        items = r.json()["items"]
        assert [m["id"] for m in items] == [ids["billing"], ids["it"]]  # newest first
        assert items[1]["queues"] == ["IT"] and items[0]["queues"] == ["Billing"]
        page = (await c.get("/api/v1/messages", params={"state": "quarantined", "limit": 1})).json()
        assert [m["id"] for m in page["items"]] == [ids["billing"]] and page["next_before"] == ids["billing"]
        page2 = (await c.get("/api/v1/messages", params={"state": "quarantined", "limit": 1,
                                                         "before": page["next_before"]})).json()
        assert [m["id"] for m in page2["items"]] == [ids["it"]]
        assert len((await c.get("/api/v1/messages")).json()["items"]) == 3
        assert_problem(await c.get("/api/v1/messages", params={"state": "lost"}), 422)

        d = (await c.get(f"/api/v1/messages/{ids['it']}")).json()
        assert d["state"] == "quarantined" and d["history"][-1]["stage"] == "sender_policy"
        assert d["decisions"][-1] == {"stage": "sender_policy", "verdict": "quarantine", "reason": d["reason"]}
        assert d["auth"]["from"]["addresses"] == ["mallory@other.test"] and "spf=" in d["authentication_results"]
        assert d["raw_kept"] is True and d["audit"] == [] and d["message_id"] == "q1@other.test"
        assert_problem(await c.get("/api/v1/messages/nope"), 404)

        r = await c.get(f"/api/v1/messages/{ids['it']}/raw")
        assert r.status_code == 200
        assert r.headers["content-type"] == "message/rfc822"
        assert r.headers["content-disposition"] == f'attachment; filename="{ids["it"]}.eml"'
        assert r.headers["x-content-type-options"] == "nosniff"
        assert b"Subject: offer" in r.content and b"Message-ID: <q1@other.test>" in r.content
        assert email.message_from_bytes(r.content, policy=email.policy.default)["From"] == "Alice <mallory@other.test>"


async def test_release_replay_delete_are_audited(start_api) -> None:
    api, ids = await filled(start_api)
    admin = await api.token("ops", "admin")
    async with api.client(admin) as c:
        r = await c.post(f"/api/v1/messages/{ids['it']}/release")
        assert r.status_code == 202, r.text
        assert r.json()["stage"] == "sender_policy" and r.json()["by"] == "api:ops" and not r.json()["forced"]
        entry = await api.gw.wait_done(ids["it"])
        assert entry.state == "ticket_created", entry.reason
        shown = (await c.get(f"/api/v1/messages/{ids['it']}")).json()
        assert shown["audit"][0]["actor"] == "api:ops" and shown["audit"][0]["action"] == "released"
        assert shown["ticket_number"]
        body = assert_problem(await c.post(f"/api/v1/messages/{ids['it']}/release"), 409)
        assert "only a quarantined entry" in body["detail"] and "POST /api/v1/messages/" in body["detail"]

        r = await c.post(f"/api/v1/messages/{ids['it']}/replay")
        assert r.status_code == 202 and r.json() == {"replayed": ids["it"]}
        assert (await api.gw.wait_done(ids["it"])).reason == "already delivered"  # idempotent

        r = await c.delete(f"/api/v1/messages/{ids['billing']}")
        assert r.status_code == 200 and r.json() == {"deleted": ids["billing"], "by": "api:ops"}
        assert_problem(await c.get(f"/api/v1/messages/{ids['billing']}/raw"), 410)
        assert "already deleted" in assert_problem(await c.delete(f"/api/v1/messages/{ids['billing']}"),
                                                   409)["detail"]
        assert "raw message was deleted" in assert_problem(
            await c.post(f"/api/v1/messages/{ids['billing']}/replay"), 409)["detail"]
        assert_problem(await c.post("/api/v1/messages/nope/replay"), 404)
    rows = await audit_rows(api, admin)
    assert [(r["action"], r["target"]) for r in rows[:3]] == [
        ("message.delete", ids["billing"]), ("message.replay", ids["it"]), ("message.release", ids["it"])]
    for row in rows[:3]:
        assert row["actor"] == "ops" and row["role"] == "admin" and row["client"] == "127.0.0.1" and row["at"]
    assert rows[2]["detail"]["stage"] == "sender_policy"
    # refused writes changed nothing and wrote nothing
    assert [r["action"] for r in rows].count("message.release") == 1


async def test_release_body_force_and_chunked_body_limit(start_api) -> None:
    api = await start_api(http={"max_body_size": "2KiB"})
    admin = await api.token("ops", "admin")
    async with api.client(admin) as c:
        assert_problem(await c.post("/api/v1/messages/nope/release", json={"force": True}), 404)
        assert_problem(await c.post("/api/v1/messages/nope/release", json={"force": "yes please"}), 422)

        async def chunks():  # no Content-Length: counted while reading, refused once past the limit
            for _ in range(64):
                yield b" " * 1024
        body = assert_problem(await c.post("/api/v1/messages/nope/release", content=chunks(),
                                           headers={"content-type": "application/json"}), 413)
        assert "max_body_size" in body["detail"]


async def test_roles_and_queue_scope(start_api) -> None:
    api, ids = await filled(start_api)
    viewer = await api.token("watcher", "viewer")
    it_agent = await api.token("it-agent", "agent", "IT")
    async with api.client(viewer) as c:
        assert len((await c.get("/api/v1/messages", params={"state": "quarantined"})).json()["items"]) == 2
        assert_problem(await c.post(f"/api/v1/messages/{ids['it']}/replay"), 403)
        assert_problem(await c.post(f"/api/v1/messages/{ids['it']}/release"), 403)
        assert_problem(await c.delete(f"/api/v1/messages/{ids['it']}"), 403)
        assert_problem(await c.get("/api/v1/relay/queue"), 403)
        assert_problem(await c.post("/api/v1/relay/1/retry"), 403)
    async with api.client(it_agent) as c:
        items = (await c.get("/api/v1/messages", params={"state": "quarantined"})).json()["items"]
        assert [m["id"] for m in items] == [ids["it"]]  # not Billing's
        assert (await c.get(f"/api/v1/messages/{ids['it']}")).status_code == 200
        assert_problem(await c.get(f"/api/v1/messages/{ids['billing']}"), 404)
        assert_problem(await c.get(f"/api/v1/messages/{ids['billing']}/raw"), 404)
        found = (await c.get("/api/v1/trace", params={"sender": "eve@other.test"})).json()["items"]
        assert found == []
        assert_problem(await c.post(f"/api/v1/messages/{ids['it']}/replay"), 403)  # writes are for admins
    assert (await api.store.spool_get(ids["it"])).state == "quarantined"


async def test_trace(start_api) -> None:
    api, ids = await filled(start_api)
    viewer = await api.token("watcher", "viewer")
    async with api.client(viewer) as c:
        (hit,) = (await c.get("/api/v1/trace", params={"message_id": "<q2@other.test>"})).json()["items"]
        assert hit["id"] == ids["billing"] and hit["state"] == "quarantined" and hit["history"]
        found = (await c.get("/api/v1/trace", params={"recipient": "support@example.test"})).json()["items"]
        assert [m["id"] for m in found] == [ids["it"], ids["ok"]]
        found = (await c.get("/api/v1/trace", params={"sender": "MALLORY@other.test", "since": "1h"})).json()
        assert [m["id"] for m in found["items"]] == [ids["it"]]
        assert (await c.get("/api/v1/trace", params={"since": "1h", "until": "2h"})).json()["items"] == []
        assert (await c.get("/api/v1/trace", params={"sender": "alice@customer.test",
                                                     "until": "2999-01-01T00:00Z"})).json()["items"][0]["id"] == ids["ok"]
        body = assert_problem(await c.get("/api/v1/trace"), 422)
        assert "at least one of" in body["detail"]


class FlakySink(Sink):
    """Refuses every message with a 550 until ``accept`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.accept = False

    async def handle_DATA(self, server, session, envelope) -> str:  # noqa: ANN001
        if not self.accept:
            return "550 5.7.1 not today"
        return await super().handle_DATA(server, session, envelope)


@pytest.fixture
def flaky():
    s = FlakySink()
    s.port = free_port()
    c = Controller(s, hostname="127.0.0.1", port=s.port)
    c.start()
    yield s
    c.stop()


async def test_relay_queue_and_retry(start_api, dns_server, flaky) -> None:
    dns_server.set_zone(CUSTOMER)  # the customer passes DMARC: an acknowledgement is queued for it
    api = await start_api(relay={"from": "Support <support@example.test>", "retry": "1s",
                                 "smarthost": [{"name": "sink", "host": "127.0.0.1", "port": flaky.port,
                                                "tls": "none", "auth": "none", "timeout": "5s"}]})
    admin = await api.token("ops", "admin")
    await api.gw.wait_done(await send(api.gw.port, simple_message(message_id="r1@customer.test"),
                                      "alice@customer.test"))
    async with api.client(admin) as c:
        async def dead() -> list[dict]:
            return (await c.get("/api/v1/relay/queue", params={"state": "dead"})).json()["items"]
        for _ in range(100):
            if await dead():
                break
            await asyncio.sleep(0.1)
        page = (await c.get("/api/v1/relay/queue")).json()
        (item,) = page["items"]
        assert item["state"] == "dead" and item["recipients"][0]["address"] == "alice@customer.test"
        assert item["recipients"][0]["code"] == 550 and page["counts"]["dead"] == 1
        flaky.accept = True
        r = await c.post(f"/api/v1/relay/{item['id']}/retry")
        assert r.status_code == 202 and r.json() == {"retried": [item["id"]]}
        await wait_for(lambda: len(flaky.messages) == 1)
        assert flaky.messages[0][1] == ["alice@customer.test"]
        assert_problem(await c.post("/api/v1/relay/99999/retry"), 404)
        assert_problem(await c.post("/api/v1/relay/abc/retry"), 422)
    (row, *_) = await audit_rows(api, admin, action="relay.retry")
    assert row["target"] == str(item["id"]) and row["actor"] == "ops"
