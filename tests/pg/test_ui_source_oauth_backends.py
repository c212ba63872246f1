"""OAuth authorisation from the sources page (tests/ui/test_ui_source_oauth.py), unchanged, on both
backends: the pending rows of migration 0023 (single use by DELETE's row count, the device grant's poll
claim and slow_down arithmetic) on SQLite and PostgreSQL; tests/pg/conftest.py's ``start_gateway`` is
parametrised over sqlite and postgres."""
from __future__ import annotations

from ..api.conftest import start_api  # noqa: F401 - fixtures
from ..ui.conftest import browser, start_ui  # noqa: F401
from ..ui.test_ui_source_oauth import (  # noqa: F401 - collected by pytest
    emu, test_authorise_code_flow_writes_the_token_and_the_source_then_fetches, test_authorise_with_a_code_device_grant,
    test_refusals_write_nothing)
