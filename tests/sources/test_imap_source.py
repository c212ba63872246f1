"""IMAP pull ingress against a real Dovecot: import, settle into folders, exactly once, \\Seen mail."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from .conftest import USER, message, source_table, wait_for
from .dovecot import Dovecot


async def test_imports_and_settles_into_folders(start_gateway: Any, dovecot: Dovecot, tmp_path: Path) -> None:
    dovecot.deliver(USER, message(1))
    dovecot.deliver(USER, message(2), seen=True)  # read by another client: still new to us
    dovecot.deliver(USER, message(3, extra="Auto-Submitted: auto-replied\r\n"))  # suppressed (automatic)
    gw = await start_gateway(source=[source_table(dovecot, tmp_path)])
    await wait_for(lambda: dovecot.count(USER) == 0, what="the inbox emptied")
    await wait_for(lambda: _settled(gw, 3), what="3 settled")
    assert dovecot.count(USER, "Processed") == 2
    assert dovecot.count(USER, "Excluded") == 1
    assert dovecot.count(USER, "Failed") == 0
    ts = await gw.store.tickets_list()
    assert sorted(t["subject"] for t in ts) == ["Printer 1", "Printer 2"]
    counts = await gw.store.source_counts()
    assert counts == {"inbox": {"settled": 3}}
    state = (await gw.store.source_state_get("inbox"))["inbox"]
    assert state["last_success"] and state["failures"] == 0



async def _settled(gw: Any, n: int, source: str = "inbox") -> bool:
    return (await gw.store.source_counts()).get(source, {}).get("settled", 0) == n
