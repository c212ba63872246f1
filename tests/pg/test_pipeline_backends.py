"""The end-to-end pipeline suite of tests/test_pipeline.py, unchanged, on both backends.

Importing the test functions here makes pytest collect them again in this package, where the
``gateway`` / ``start_gateway`` fixtures of tests/pg/conftest.py (parametrised over sqlite and postgres)
replace the SQLite-only ones. The encryption test reads the SQLite file directly; its PostgreSQL twin is
``test_encryption_at_rest_and_rotation`` in test_store_contract.py.
"""
from __future__ import annotations

from ..test_pipeline import (  # noqa: F401 - collected by pytest
    test_attachments_stored_content_addressed, test_message_becomes_ticket,
    test_message_failing_three_times_is_quarantined, test_missing_from_is_refused_at_data_by_default,
    test_no_sender_is_quarantined_then_replay_is_idempotent, test_reply_from_participant_threads_onto_ticket,
    test_reply_from_stranger_never_joins_the_ticket, test_repeated_failures_pause_processing_until_resumed,
    test_retention_purges_raw_and_quarantine_but_keeps_tickets, test_same_message_id_twice_is_one_ticket,
    test_several_mailboxes_make_one_ticket_in_first_configured_queue)
