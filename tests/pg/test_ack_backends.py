"""The backscatter suite of tests/test_ack_backscatter.py, unchanged, on both backends: the policy and
the per-recipient, per-client-IP and global counters are decided in the delivery transaction, on
PostgreSQL through gateway.store.pg_sync (with the acknowledgement advisory lock)."""
from __future__ import annotations

from ..test_ack_backscatter import (  # noqa: F401 - collected by pytest
    sink, test_always_restores_the_old_behaviour_and_never_sends_none, test_dmarc_pass_from_gets_the_acknowledgement,
    test_global_limit_across_clients, test_thirty_victims_from_one_ip_get_at_most_the_per_ip_limit,
    test_unauthenticated_from_gets_a_ticket_but_no_acknowledgement)
