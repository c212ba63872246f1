"""/api/v1/sources over real HTTP, against a gateway pulling from a real Dovecot."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ..api.conftest import start_api  # noqa: F401 - the fixture
from .conftest import USER, message, source_table, wait_for
from .dovecot import Dovecot


async def test_list_test_pause_resume(start_api: Any, dovecot: Dovecot, tmp_path: Path) -> None:
    api = await start_api(source=[source_table(dovecot, tmp_path)])
    admin = await api.token("ops", "admin")
    agent = await api.token("alice", "agent")
    async with api.client(agent) as c:
        assert (await c.get("/api/v1/sources")).status_code == 403
        assert (await c.post("/api/v1/sources/inbox/pause")).status_code == 403
    async with api.client(admin) as c:
        dovecot.deliver(USER, message(1))
        await wait_for(lambda: dovecot.count(USER, "Processed") == 1, what="the first message settled")
        r = await c.get("/api/v1/sources")
        assert r.status_code == 200, r.text
        [s] = r.json()
        assert s["name"] == "inbox" and s["status"] == "active" and s["imported"] == 1 and s["last_success"]
        r = await c.post("/api/v1/sources/inbox/test")
        assert r.status_code == 200, r.text
        t = r.json()
        assert t["ok"] is True
        assert [x["name"] for x in t["steps"]][:6] == ["dns", "tcp", "tls", "greeting", "auth-mechanisms", "login"]
        assert "s3cret" not in r.text
        assert (await c.post("/api/v1/sources/nope/test")).status_code == 404
        r = await c.post("/api/v1/sources/inbox/pause")
        assert r.status_code == 200 and r.json()["status"] == "paused"
        assert (await c.get("/api/v1/sources")).json()[0]["status"] == "paused"
        dovecot.deliver(USER, message(2))
        import asyncio
        await asyncio.sleep(2.5)  # two poll intervals: a paused source fetches nothing
        assert dovecot.count(USER) == 1
        r = await c.post("/api/v1/sources/inbox/resume")
        assert r.status_code == 200 and r.json()["status"] == "active"
        await wait_for(lambda: dovecot.count(USER, "Processed") == 2, what="fetching again after resume")
    rows = await api.store.query("SELECT action, target FROM audit_log ORDER BY id")
    actions = [(r[0], r[1]) for r in rows]
    assert ("source.pause", "inbox") in actions and ("source.resume", "inbox") in actions
