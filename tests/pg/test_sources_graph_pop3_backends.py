"""The graph/pop3 end-to-end tests of tests/sources/test_graph_pop3_e2e.py, unchanged, on both backends
(the ``start_gateway`` fixture of tests/pg/conftest.py replaces the SQLite-only one)."""
from __future__ import annotations

from ..sources.conftest import dove_root  # noqa: F401 - the fixture
from ..sources.test_graph_pop3_e2e import (  # noqa: F401 - collected by pytest
    dove, emu, test_graph_exactly_once_across_failed_moves_restart_and_throttling,
    test_graph_mailbox_to_tickets_and_folders_by_outcome, test_pop3_to_tickets_exactly_once_across_a_restart)
