"""The webhook suite of tests/webhooks on both backends, plus what only several nodes need: claims that
never hand one row to two nodes, and a start that takes back only leases that ran out."""
from __future__ import annotations

import time

from gateway.webhooks import outbox
from gateway.config.webhooks import WebhookConfig

from ..webhooks.conftest import receiver, secret_file  # noqa: F401 - fixtures
from ..webhooks.test_webhooks import (  # noqa: F401 - collected by pytest
    test_4xx_is_dead_at_once, test_mail_command_and_reopen_make_ticket_updated,
    test_mail_over_smtp_makes_signed_ticket_created, test_only_subscribed_events_are_queued,
    test_postmark_format, test_quarantine_makes_message_quarantined, test_relay_dead_letter_makes_notification_failed,
    test_retried_after_500s_then_delivered_with_one_event_id)

WH = WebhookConfig("h", "http://127.0.0.1:9/x", ("ticket.updated",), "s" * 32)


async def _queue_events(store, n: int) -> None:
    """n ticket.updated events for ticket 1 (the event needs no ticket row: the snapshot is then null)."""
    store.webhooks = (WH,)
    await store.transaction(lambda conn: [outbox.ticket_updated(conn, 1, "t", {"status": "open"}, {}, time.time())
                                          for _ in range(n)])


async def test_two_nodes_claim_disjoint_rows_and_start_takes_back_only_expired_leases(make_store):
    a = await make_store()
    b = await make_store()
    await _queue_events(a, 10)
    now = time.time()
    box_a, box_b = outbox.WebhookOutbox(a), outbox.WebhookOutbox(b)
    got_a = await box_a.claim("node-a", "h", 6, now, 60)
    got_b = await box_b.claim("node-b", "h", 6, now, 60)
    ids_a, ids_b = {c.id for c in got_a}, {c.id for c in got_b}
    assert len(ids_a) == 6 and len(ids_b) == 4 and not ids_a & ids_b
    assert all(c.body.startswith(b'{"event":"ticket.updated"') for c in got_a)
    # node b records a 2xx for one row and a retry for another; a failure reported by a non-owner is ignored
    r1, r2 = sorted(ids_b)[:2]
    assert await box_b.record([outbox.Result(r1, "node-b", outbox.DELIVERED, 200),
                               outbox.Result(r2, "node-b", outbox.QUEUED, 503, "HTTP 503", now + 100),
                               outbox.Result(min(ids_a), "node-b", outbox.DEAD, 410, "x")]) == 2
    states = {r["id"]: r["state"] for r in await box_a.list()}
    assert states[r1] == "delivered" and states[r2] == "queued" and states[min(ids_a)] == "leased"
    if getattr(a, "dialect", "") == "postgresql":
        # a starting node takes back only leases that ran out: node a's live ones stay its own
        assert await box_b.release(None, now) == 0
        assert await box_b.release(None, now + 61) == 6 + 2  # a's six and b's two still leased
    else:
        assert await box_b.release(None, now) == 6 + 2  # SQLite: one node, every lease is from a dead run
    # a dead row comes back with retry --dead
    (c,) = await box_a.claim("node-a", "h", 1, now + 200, 60)
    await box_a.record([outbox.Result(c.id, "node-a", outbox.DEAD, 404, "HTTP 404")])
    assert await box_a.retry_dead("h") == [c.id]
    assert (await box_a.get(c.id))["state"] == "queued"


async def test_ticket_updated_by_mail_command_store_path_on_both_backends(start_gateway, receiver, secret_file, backend):
    """DeliverTx.apply_updates / PgDeliverTx.apply_updates (mail commands; the API's PATCH) queue
    ticket.updated in their transaction."""
    from ..test_pipeline import send
    from ..conftest import simple_message
    from ..webhooks.conftest import hook
    gw = await start_gateway(webhook=[hook(receiver, secret_file, events=["ticket.updated"])])
    assert (await gw.wait_done(await send(gw.port, simple_message()))).state == "ticket_created"
    store = gw.store
    tid = (await store.tickets_list())[0]["id"]
    if backend == "postgres":
        from gateway.store.postgres_deliver import PgDeliverTx

        async def body(conn):
            tx = PgDeliverTx(conn, time.time(), store.ticket_prefix, store.ticket_start, store.cipher, store.webhooks)
            await tx.apply_updates(tid, "agent@example.test", {"priority": "high"})
        await store._retrying("patch", body)
    else:
        from gateway.store.sqlite_deliver import DeliverTx
        await store.transaction(lambda conn: DeliverTx(conn, time.time(), store.ticket_prefix, store.ticket_start,
                                                       store.cipher).apply_updates(tid, "agent@example.test",
                                                                                   {"priority": "high"}))
    await receiver.await_(lambda r: len(r.accepted()) == 1)
    doc = receiver.received[0].json
    assert receiver.received[0].valid and doc["event"] == "ticket.updated"
    assert doc["changes"] == {"priority": "high"} and doc["ticket"]["priority"] == "high"


async def test_retention_purges_finished_events_with_relay_days(make_store):
    store = await make_store()
    await _queue_events(store, 3)
    box = outbox.WebhookOutbox(store)
    now = time.time()
    a, b, c = await box.claim("n", "h", 3, now, 60)
    await box.record([outbox.Result(a.id, "n", outbox.DELIVERED, 200), outbox.Result(b.id, "n", outbox.DEAD, 410, "x")],
                     now)
    assert (await store.purge(now + 86400, 0, 0, 0, relay_days=2))["webhooks"] == 0  # not old enough
    assert (await store.purge(now + 3 * 86400, 0, 0, 0, relay_days=2))["webhooks"] == 2
    assert [r["id"] for r in await box.list()] == [c.id]  # the one still leased stays
