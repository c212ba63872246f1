"""The HTTP API suites of tests/api, unchanged, on both backends (tokens, the audit log, the admin
endpoints' store calls). Collected again here, where tests/pg/conftest.py's ``start_gateway`` is
parametrised over sqlite and postgres; ``start_api`` and the CLI follow the store it opened."""
from __future__ import annotations

from ..api.conftest import api, start_api  # noqa: F401 - fixtures
from ..api.test_api_messages import (  # noqa: F401 - collected by pytest
    flaky, test_list_show_and_raw, test_relay_queue_and_retry, test_release_replay_delete_are_audited,
    test_roles_and_queue_scope, test_trace)
from ..api.test_api_server import (  # noqa: F401
    test_rate_limit_per_token_429_with_retry_after, test_revoked_token_401_at_once, test_role_below_the_endpoint_403,
    test_token_commands_are_audited)
