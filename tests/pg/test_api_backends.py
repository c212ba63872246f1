"""The HTTP API suites of tests/api, unchanged, on both backends (tokens, the audit log, the admin
endpoints' store calls). Collected again here, where tests/pg/conftest.py's ``start_gateway`` is
parametrised over sqlite and postgres; ``start_api`` and the CLI follow the store it opened."""
from __future__ import annotations

import time

from ..api.conftest import api, start_api  # noqa: F401 - fixtures
from ..api.test_api_messages import (  # noqa: F401 - collected by pytest
    flaky, test_list_show_and_raw, test_relay_queue_and_retry, test_release_replay_delete_are_audited,
    test_roles_and_queue_scope, test_trace)
from ..api.test_api_server import (  # noqa: F401
    test_rate_limit_per_token_429_with_retry_after, test_revoked_token_401_at_once, test_role_below_the_endpoint_403,
    test_token_commands_are_audited)


async def test_retention_purges_audit_rows_only_with_audit_days(make_store):
    """[retention] audit_days: rows older than that go, newer stay; 0 keeps the history forever."""
    from gateway.http import tokens
    store = await make_store()
    now = time.time()
    for age_days, target in ((40, "old"), (10, "new")):
        await store.transaction(lambda conn, a=age_days, t=target: tokens.write_audit(
            conn, now - a * 86400, "ann", "admin", "ticket.update", t, {}, "127.0.0.1"))
    assert "audit" not in await store.purge(now, 0, 0, 0)                      # 0: kept forever
    assert len(await tokens.audit_list(store)) == 2
    assert (await store.purge(now, 0, 0, 0, audit_days=30))["audit"] == 1
    assert [r["target"] for r in await tokens.audit_list(store)] == ["new"]
