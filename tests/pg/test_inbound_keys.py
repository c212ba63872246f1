"""HTTP inbound's idempotency keys on both stores: committed with the spool row, a second entry with the
same key refused whole (no spool row), found again by inbound_lookup."""
from __future__ import annotations

import dataclasses

import pytest

from .test_store_contract import entry


async def test_inbound_key_commits_with_the_row_and_refuses_a_repeat(store) -> None:
    first = dataclasses.replace(entry("in-1"), inbound_key="support@example.test\nmailgun:<m1@x>")
    await store.spool_insert([first])
    assert await store.inbound_lookup(first.inbound_key) == "in-1"
    assert await store.inbound_lookup("support@example.test\nmailgun:<other@x>") is None
    again = dataclasses.replace(entry("in-2"), inbound_key=first.inbound_key)
    with pytest.raises(Exception):
        await store.spool_insert([again])
    assert await store.spool_get("in-2") is None            # the whole transaction rolled back
    assert await store.inbound_lookup(first.inbound_key) == "in-1"
    await store.spool_insert([entry("in-3")])               # no key: nothing written to inbound_keys
    assert (await store.spool_get("in-3")) is not None
