"""The mail-admin pages' data functions (tests/ui/test_admin_data.py), unchanged, on both backends: the
dashboard's grouped hour buckets (integer arithmetic that must floor alike on SQLite and PostgreSQL), the
first-row search on the primary key, the webhook retry refusal. Collected again here, where
tests/pg/conftest.py's ``start_gateway`` is parametrised over sqlite and postgres."""
from __future__ import annotations

from ..ui.test_admin_data import (  # noqa: F401 - collected by pytest
    test_dashboard_depth_of_the_relay_queue_hour_by_hour, test_first_id_since_with_gaps,
    test_outbound_counts_are_capped_and_lists_walk_the_state_index, test_quarantine_rows_headers_and_dashboard,
    test_webhook_retry_refusals)
