"""kill -9 of `ticketmx serve` during webhook delivery, on PostgreSQL: the killed node's leases run out
(timeout + 30 s) and the restarted node sends those events again; none is lost."""
from __future__ import annotations

from ..webhooks.conftest import hook, receiver, secret_file  # noqa: F401 - fixtures
from ..webhooks.test_webhooks_serve import kill_9_during_delivery, serve_proc  # noqa: F401 - fixture


def test_kill_9_during_delivery_loses_no_event_postgres(serve_proc, receiver, secret_file, pg_url):
    receiver.delay = 0.15
    srv = serve_proc(store={"url": pg_url},
                     webhook=[hook(receiver, secret_file, events=["ticket.created"], max_in_flight=2, timeout="1s")])
    leased, received = kill_9_during_delivery(srv, receiver, timeout=90)
    assert received >= 24 and leased >= 1
