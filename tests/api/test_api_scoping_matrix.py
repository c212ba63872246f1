"""Role x queue scope x endpoint, as one table, over real HTTP: what test_api_tickets.py's scoping test
does not already cover - a viewer limited to one queue, replies and attachment downloads across queues,
search not leaking another queue's ticket, an agent on an admin endpoint - and that a refused write
leaves nothing behind (no article, no webhook event, no relay mail, no audit row). Runs on PostgreSQL
too (tests/pg/test_api_webhooks_pg.py): the scope is applied in each backend's SQL."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import httpx

from ..conftest import simple_message
from ..smarthost import sink  # noqa: F401 - sink is a fixture
from ..test_pipeline import send
from ..webhooks.conftest import hook, receiver, secret_file  # noqa: F401 - fixtures
from ..webhooks.receiver import Receiver
from .test_api_server import assert_problem
from .test_api_tickets import ANN, ZONE, config
from .test_api_webhooks_e2e import start

PDF = ("From: Bob <bob@customer.test>\r\nTo: billing@example.test\r\nSubject: Invoice 77 wrong\r\n"
       "Message-ID: <bill-1@customer.test>\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=XX\r\n\r\n"
       "--XX\r\nContent-Type: text/plain\r\n\r\nThe quokka surcharge is wrong.\r\n--XX\r\nContent-Type: application/pdf\r\n"
       "Content-Disposition: attachment; filename=\"invoice.pdf\"\r\n\r\n%PDF-1.4 not really\r\n--XX--\r\n").encode()


async def _request(c: httpx.AsyncClient, action: str, number: str, att: int) -> httpx.Response:
    if action == "get":
        return await c.get(f"/api/v1/tickets/{number}")
    if action == "attachment":
        return await c.get(f"/api/v1/tickets/{number}/attachments/{att}")
    if action == "patch":
        return await c.patch(f"/api/v1/tickets/{number}", json={"priority": "high"})
    if action == "note":
        return await c.post(f"/api/v1/tickets/{number}/notes", json={"text": f"note by token on {number}"})
    assert action == "reply"
    return await c.post(f"/api/v1/tickets/{number}/replies", json={"text": f"reply on {number}"})


# token -> (role, queues); then per token: action -> (status on the IT ticket, status on the Billing ticket)
TOKENS = {"viewer": ("viewer", ()), "viewer-billing": ("viewer", ("Billing",)), ANN: ("agent", ("IT",)),
          "ops": ("admin", ())}
MATRIX: dict[str, dict[str, tuple[int, int]]] = {
    "viewer": {"get": (200, 200), "attachment": (200, 200), "patch": (403, 403), "note": (403, 403),
               "reply": (403, 403)},
    # a viewer's write is refused by role before any lookup: 403 for every number, so nothing leaks
    "viewer-billing": {"get": (404, 200), "attachment": (404, 200), "patch": (403, 403), "note": (403, 403),
                       "reply": (403, 403)},
    ANN: {"get": (200, 404), "attachment": (200, 404), "patch": (200, 404), "note": (201, 404), "reply": (201, 404)},
    "ops": {"get": (200, 200), "attachment": (200, 200), "patch": (200, 200), "note": (201, 201), "reply": (201, 201)},
}
LISTS = {"viewer": {"IT", "Billing"}, "viewer-billing": {"Billing"}, ANN: {"IT"}, "ops": {"IT", "Billing"}}


async def matrix(start_gateway: Callable[..., Any], tmp_path: Path, store_url: str, rcv: Receiver, secret: str,
                 smarthost: Any) -> None:
    api = await start(start_gateway, tmp_path, store_url, **config(smarthost.port), webhook=[hook(rcv, secret)])
    tokens = {name: await api.token(name, role, *queues) for name, (role, queues) in TOKENS.items()}
    it_raw = PDF.replace(b"billing@", b"support@").replace(b"Invoice 77 wrong", b"Printer jam").replace(
        b"bill-1@", b"it-1@").replace(b"quokka surcharge", b"paper feed")
    tickets = {}
    for queue, raw, rcpt in (("IT", it_raw, "support@example.test"), ("Billing", PDF, "billing@example.test")):
        e = await api.gw.wait_done(await send(api.gw.port, raw, rcpts=(rcpt,), sender="bob@customer.test"))
        assert e.state == "ticket_created", e.reason
        t = await api.store.ticket_get(str(e.ticket_id))
        assert t["queue"] == queue
        tickets[queue] = (t["number"], t["articles"][0]["attachments"][0]["id"], t["id"])

    async def footprint() -> tuple[int, ...]:
        q = api.store.query
        return ((await q("SELECT COUNT(*) FROM articles"))[0][0], (await q("SELECT COUNT(*) FROM webhook_outbox"))[0][0],
                (await q("SELECT COUNT(*) FROM relay_queue"))[0][0], (await q("SELECT COUNT(*) FROM audit_log"))[0][0])

    for name, row in MATRIX.items():
        async with api.client(tokens[name]) as c:
            listed = {x["queue"] for x in (await c.get("/api/v1/tickets")).json()["items"]}
            assert listed == LISTS[name], name
            # a word only in the Billing ticket's text: found only by those who may read Billing
            found = (await c.get("/api/v1/tickets", params={"q": "quokka"})).json()["items"]
            assert [x["queue"] for x in found] == (["Billing"] if "Billing" in LISTS[name] else []), name
            for action, expected in row.items():
                for queue, status in zip(("IT", "Billing"), expected):
                    number, att, _ = tickets[queue]
                    before = await footprint()
                    r = await _request(c, action, number, att)
                    where = f"{name} {action} {queue}"
                    if status >= 400:
                        body = assert_problem(r, status)
                        if status == 404:  # the same answer as for a ticket that does not exist
                            assert body["title"] == "Not Found", where
                        assert await footprint() == before, f"{where}: a refused request left something behind"
                    else:
                        assert r.status_code == status, f"{where}: {r.status_code} {r.text}"
            if name != "ops":
                assert_problem(await c.get("/api/v1/audit"), 403)
            if TOKENS[name][0] == "viewer":  # ... the same for a ticket that does not exist
                assert_problem(await c.patch("/api/v1/tickets/HD-999999", json={"priority": "high"}), 403)
    async with api.client(tokens["ops"]) as c:
        assert (await c.get("/api/v1/audit")).status_code == 200


async def test_scoping_matrix(start_gateway, tmp_path, dns_server, receiver, secret_file, sink) -> None:
    dns_server.set_zone(ZONE)
    await matrix(start_gateway, tmp_path, f"sqlite:///{tmp_path}/ticketmx.db", receiver, secret_file, sink)
