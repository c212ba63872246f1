"""The pull sources' store methods (migration 0018: source_messages, source_state) on both stores: a key
committed with its spool row in one transaction and refused whole on a repeat, aliases by digest, pending
joined with the spool state, settled, counts, and the per-source state row."""
from __future__ import annotations

import dataclasses

import pytest

from gateway.store.base import QUARANTINED

from .test_store_contract import T0, entry


def pulled(sid: str, key: str, digest: str, source: str = "inbox", **kw: object) -> object:
    return dataclasses.replace(entry(sid, **kw), source_key=(source, key, digest))


async def test_source_key_commits_with_the_spool_row_and_refuses_a_repeat(store) -> None:
    await store.spool_insert([pulled("s-1", "imap:7:1", "d1")])
    assert await store.source_lookup("inbox", ["imap:7:1", "imap:7:2"]) == {"imap:7:1": ("s-1", "spooled")}
    with pytest.raises(Exception):
        await store.spool_insert([pulled("s-2", "imap:7:1", "d2")])   # same (source, key): exactly once
    assert await store.spool_get("s-2") is None                       # the whole transaction rolled back
    await store.spool_insert([pulled("s-3", "imap:7:1", "d3", source="other")])  # keys are per source
    assert await store.source_lookup("other", ["imap:7:1"]) == {"imap:7:1": ("s-3", "spooled")}
    # a refused message is spooled quarantined in the same transaction, key included
    await store.spool_insert([dataclasses.replace(pulled("s-4", "imap:7:4", "d4"), state=QUARANTINED,
                                                  reason="refused at intake (permanent): 550 5.7.1 two From")])
    got = await store.spool_get("s-4")
    assert got.state == QUARANTINED and got.reason.startswith("refused at intake")
    assert (await store.source_lookup("inbox", ["imap:7:4"]))["imap:7:4"][0] == "s-4"


async def test_digest_alias_pending_settled_and_counts(store) -> None:
    await store.spool_insert([pulled("s-1", "imap:7:1", "d1"), pulled("s-2", "imap:7:2", "d2")])
    assert await store.source_digest("inbox", "d1") == ("imap:7:1", "s-1", "spooled")
    assert await store.source_digest("inbox", "nope") is None
    assert await store.source_digest("other", "d1") is None
    # UIDVALIDITY changed: the same bytes under a new key are one more key of the first import
    await store.source_alias("inbox", "imap:8:1", "s-1", "spooled", "d1")
    await store.source_alias("inbox", "imap:8:1", "s-1", "spooled", "d1")   # twice: no error, one row
    await store.source_alias("inbox", "imap:8:0", "", "settled", "d0")      # older than `since`: left alone
    assert (await store.source_lookup("inbox", ["imap:8:1"]))["imap:8:1"] == ("s-1", "spooled")
    pending = await store.source_pending("inbox")
    assert [(k, sid, st) for k, sid, st, _ in pending] == [("imap:7:1", "s-1", "queued"),
                                                            ("imap:7:2", "s-2", "queued"),
                                                            ("imap:8:1", "s-1", "queued")]
    await store.source_settled("inbox", ["imap:7:1", "imap:8:1"], "ticket", T0 + 5)
    assert [k for k, *_ in await store.source_pending("inbox")] == ["imap:7:2"]
    assert await store.source_counts("inbox") == {"inbox": {"settled": 3, "spooled": 1}}
    assert await store.source_counts() == {"inbox": {"settled": 3, "spooled": 1}}
    await store.source_settled("inbox", [], "ticket", T0)  # nothing: no transaction, no error


async def test_source_state_upserts(store) -> None:
    assert await store.source_state_get() == {}
    await store.source_state_set("inbox", last_error="login refused", last_error_kind="auth",
                                 last_error_at=T0, failures_add=1)
    await store.source_state_set("inbox", failures_add=1)
    st = (await store.source_state_get("inbox"))["inbox"]
    assert st["failures"] == 2 and st["last_error_kind"] == "auth" and not st["paused"]
    await store.source_state_set("inbox", paused=True, paused_reason="2 failures in a row", paused_at=T0)
    await store.source_state_set("other", last_success=T0 + 1, failures=0, backlog=12)
    both = await store.source_state_get()
    assert set(both) == {"inbox", "other"}
    assert both["inbox"]["paused"] and both["inbox"]["paused_reason"] == "2 failures in a row"
    assert both["inbox"]["failures"] == 2                      # untouched by a write of other columns
    assert both["other"]["backlog"] == 12 and both["other"]["last_success"] == pytest.approx(T0 + 1)
    await store.source_state_set("inbox", paused=False, paused_reason="", failures=0)
    st = (await store.source_state_get("inbox"))["inbox"]
    assert not st["paused"] and st["failures"] == 0
    with pytest.raises(ValueError):
        await store.source_state_set("inbox", nonsense=1)
