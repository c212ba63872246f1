"""The web UI's user and session suites of tests/ui, unchanged, on both backends (users, ui_sessions, the
cookie key in control, the audit rows): tests/pg/conftest.py's ``start_gateway`` is parametrised over
sqlite and postgres; ``start_api``, ``start_ui`` and the CLI follow the store it opened."""
from __future__ import annotations

from ..api.conftest import start_api  # noqa: F401 - fixtures
from ..ui.conftest import browser, start_ui, ui  # noqa: F401
from ..ui.test_ui_users import (  # noqa: F401 - collected by pytest
    test_sign_out_everywhere_disable_and_passwd_end_sessions, test_signin_limits_hold_across_http_processes,
    test_signin_rate_limits_per_account_and_per_address,
    test_user_commands)
from ..ui.test_ui_signin import test_sign_in_shows_the_queue_and_sign_out_ends_the_session  # noqa: F401
