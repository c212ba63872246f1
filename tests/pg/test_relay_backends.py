"""The end-to-end notification suite of tests/test_relay_e2e.py, unchanged, on both backends.

As in test_pipeline_backends.py: imported here, the tests run with the ``start_gateway`` fixture of
tests/pg/conftest.py (parametrised over sqlite and postgres). On PostgreSQL the acknowledgement, the
agent-reply relay, command results, status changes, the stripped-attachment notice and the SLA
escalations are queued inside the delivery transaction through gateway.store.pg_sync.
"""
from __future__ import annotations

from ..test_relay_e2e import (  # noqa: F401 - collected by pytest
    customer_passes_dmarc, sink, test_acknowledgement_and_agent_reply_reach_the_smarthost, test_admin_is_told_when_processing_pauses,
    test_autoresponder_loop_stops_by_itself, test_command_result_to_agent_status_change_to_requester_and_stripped_notice,
    test_no_acknowledgement_to_automatic_or_noreply_senders, test_sla_escalation_levels_first_response,
    test_sighup_reload_moves_notifications_to_the_new_smarthost)
