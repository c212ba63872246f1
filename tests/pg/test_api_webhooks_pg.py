"""tests/api/test_api_webhooks_e2e.py's round trip (mail -> ticket.created -> API reply -> sink ->
article.added; note; PATCH -> ticket.updated) and tests/api/test_api_scoping_matrix.py on both
backends: on PostgreSQL the gateway, the HTTP API and the ``ticketmx token`` CLI share one database."""
from __future__ import annotations

from ..api.test_api_tickets import ZONE
from ..api.test_api_scoping_matrix import matrix
from ..api.test_api_webhooks_e2e import round_trip
from ..smarthost import sink  # noqa: F401 - fixture
from ..webhooks.conftest import receiver, secret_file  # noqa: F401 - fixtures


async def test_api_webhooks_round_trip_on_both_backends(start_gateway, tmp_path, dns_server, backend_db, receiver,
                                                         secret_file, sink) -> None:
    dns_server.set_zone(ZONE)
    url = backend_db or f"sqlite:///{tmp_path}/ticketmx.db"
    await round_trip(start_gateway, tmp_path, url, receiver, secret_file, sink)


async def test_api_scoping_matrix_on_both_backends(start_gateway, tmp_path, dns_server, backend_db, receiver,
                                                   secret_file, sink) -> None:
    dns_server.set_zone(ZONE)
    url = backend_db or f"sqlite:///{tmp_path}/ticketmx.db"
    await matrix(start_gateway, tmp_path, url, receiver, secret_file, sink)
