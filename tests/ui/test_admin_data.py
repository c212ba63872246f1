"""The mail-admin pages' data functions (gateway/ui/admin_data.py) against a real gateway's store:
mail sent over real SMTP, quarantined by a real pipeline; a config with real secrets in it."""
from __future__ import annotations

import base64
import os
import time
from pathlib import Path

from gateway.ui import admin_data

from ..api.test_api_messages import CUSTOMER, SENDERS, send
from ..conftest import make_config, simple_message


async def _filled(start_gateway, dns_server) -> tuple[object, dict[str, str]]:
    gw = await start_gateway(pipeline=SENDERS)
    dns_server.set_zone(CUSTOMER)
    ids = {"ok": await send(gw.port, simple_message("fine", message_id="ok1@customer.test"), "alice@customer.test"),
           "q1": await send(gw.port, simple_message("offer", sender="mallory@other.test", message_id="q1@other.test"),
                            "mallory@other.test"),
           "q2": await send(gw.port, simple_message("invoice", sender="eve@other.test", to="billing@example.test",
                                                    message_id="q2@other.test", body="SECRET-BODY-LINE\r\n"),
                            "eve@other.test", "billing@example.test")}
    for sid in ids.values():
        await gw.wait_done(sid)
    return gw, ids


async def test_quarantine_rows_headers_and_dashboard(start_gateway, dns_server) -> None:
    gw, ids = await _filled(start_gateway, dns_server)
    rows, nxt = await admin_data.quarantine_page(gw.store)
    assert [r.id for r in rows] == [ids["q2"], ids["q1"]] and nxt is None  # newest first
    q1 = rows[1]
    assert q1.sender == "mallory@other.test" and q1.recipients == ("support@example.test",)
    assert "sender" in q1.reason.lower() or "other.test" in q1.reason, q1.reason
    assert q1.stage == "sender_policy" and q1.raw_kept and not q1.forced_needed
    assert q1.auth.startswith("SPF ") and "DMARC" in q1.auth, q1.auth
    page1, nxt = await admin_data.quarantine_page(gw.store, limit=1)
    assert [r.id for r in page1] == [ids["q2"]] and nxt == ids["q2"]
    page2, _ = await admin_data.quarantine_page(gw.store, before=nxt, limit=1)
    assert [r.id for r in page2] == [ids["q1"]]

    e = await gw.store.spool_get(ids["q2"])
    head = admin_data.header_text(e)
    assert "Message-ID: <q2@other.test>" in head and "Authentication-Results" in head
    assert "SECRET-BODY-LINE" not in head  # the header section only

    d = await admin_data.dashboard(gw.store)
    assert d.hours == 24 and len(d.accepted.values) == 24
    assert d.accepted.values[-1] == 3 and d.accepted.total == 3
    assert d.ticketed.values[-1] == 1 and d.quarantined.values[-1] == 2
    assert d.spool_depth.values[-1] == 0 and d.now_counts["quarantined"] == 2
    # an hour ago nothing had arrived
    assert d.spool_depth.values[-2] == 0 and d.accepted.values[-2] == 0
    later = await admin_data.dashboard(gw.store, now=time.time() + 3 * 3600)
    assert later.accepted.values[-4] == 3 and later.accepted.values[-1] == 0


async def test_webhook_retry_refusals(start_gateway) -> None:
    gw = await start_gateway()
    assert await admin_data.webhook_retry(gw.store, 4242, "ui:ops", "admin", "127.0.0.1") == "no such event"
    rows, _ = await admin_data.audit_page(gw.store, action="webhook.retry")
    assert rows == []  # a refused write records nothing


def _secret_file(path: Path, text: str) -> str:
    path.write_text(text)
    os.chmod(path, 0o600)
    return str(path)


def test_config_rows_mask_every_secret(tmp_path: Path, monkeypatch) -> None:
    secrets = {"relay": "relay-pass-9f3c1e77", "webhook": "whsec-4b1d2c9a8e7f", "rspamd": "rspamd-ctl-7e2a91",
               "oauth": "oauth-client-secret-55aa", "mac": "thread-mac-key-0123456789abcdef"}
    seed = base64.b64encode(b"\x07" * 32).decode()
    monkeypatch.setenv("TMX_TEST_OAUTH_SECRET", secrets["oauth"])
    sections = dict(
        relay={"from": "Helpdesk <helpdesk@example.test>",
               "smarthost": [{"name": "main", "host": "127.0.0.1", "port": 2525, "tls": "none", "auth": "login",
                              "username": "relay", "allow_insecure_auth": True,
                              "password_file": _secret_file(tmp_path / "relay.pw", secrets["relay"])},
                             {"name": "m365", "host": "127.0.0.1", "port": 2526, "tls": "none", "auth": "xoauth2",
                              "username": "helpdesk@example.test", "allow_insecure_auth": True,
                              "oauth_token_url": "https://login.example.test/token", "oauth_client_id": "cid",
                              "oauth_client_secret_env": "TMX_TEST_OAUTH_SECRET"}],
               "dkim": [{"domain": "example.test", "selector": "s1",
                         "key_file": _secret_file(tmp_path / "dkim.key", seed), "algorithm": "ed25519"}]},
        webhook=[{"name": "desk", "url": "https://desk.example.test/hook",
                  "events": ["ticket.created"],
                  "secret_file": _secret_file(tmp_path / "wh.secret", secrets["webhook"])}],
        pipeline={"rspamd": {"enabled": False, "password": secrets["rspamd"]}},
        threading={"keys": [secrets["mac"]]})
    cfg = make_config(tmp_path, **sections)
    rows = admin_data.config_rows(cfg, sections)
    text = "\n".join(f"{k} = {v}" for k, v in rows)
    for name, value in {**secrets, "dkim": seed}.items():
        assert value not in text, f"{name} secret shown on the config page"
    keys = dict(rows)
    # the paths of secret files are shown, the secrets masked under their own keys
    assert any(v == str(tmp_path / "wh.secret") for v in keys.values()), text
    assert keys["relay.smarthost[0].password_file"] == str(tmp_path / "relay.pw"), text
    assert keys["relay.smarthost[1].oauth_client_secret_env"] == "TMX_TEST_OAUTH_SECRET", text
    assert any(k.endswith("password") and v == admin_data.MASK for k, v in rows), text
    assert any(k.endswith(".secret") and v == admin_data.MASK for k, v in rows), text
    assert keys["smtp.hostname"] == "mx.example.test" and keys["mailboxes[0].address"] == "support@example.test"


def test_url_passwords_masked() -> None:
    assert admin_data._mask_url("postgresql://tmx:hunter2pw@db.example.test:5432/tmx") == \
        f"postgresql://tmx:{admin_data.MASK}@db.example.test:5432/tmx"
    assert admin_data._mask_url("https://desk.example.test/hook") == "https://desk.example.test/hook"


def test_auth_summary_takes_partial_records() -> None:
    """Records written by older versions or by HTTP inbound lack keys; the pages must still render."""
    assert admin_data.auth_summary(None) == [] and admin_data.auth_text({}) == "not evaluated"
    rows = admin_data.auth_summary({"spf": {"result": "pass"}, "dkim": [{"domain": "x.test"}],
                                    "decision": {"action": "accept"}})
    assert rows == [("SPF", "pass"), ("DKIM", "none x.test"), ("Decision", "accept")]
    assert admin_data.auth_summary({"decision": {"action": "quarantine", "suspicious": True, "reasons": ["DMARC fail"]}}
                                   )[-1] == ("Decision", "quarantine, suspicious: DMARC fail")


async def test_dashboard_depth_of_the_relay_queue_hour_by_hour(start_gateway) -> None:
    """Rows as the relay queue keeps them: created and finished in different hours, one still deferred,
    one older than the window and still live; the depth at each hour's end counts exactly those."""
    gw = await start_gateway()
    now = time.time()
    hour = 3600.0
    this_hour = int(now // hour) * hour
    rows = [  # (id, created, finished, state)
        (1, this_hour - 40 * hour, None, "deferred"),         # older than the window, still live
        (2, this_hour - 5 * hour + 10, this_hour - 3 * hour + 5, "sent"),
        (3, this_hour - 2 * hour + 10, None, "deferred"),
        (4, this_hour + 1, this_hour + 2, "sent"),
    ]

    def fill(conn) -> None:
        for i, created, finished, state in rows:
            conn.execute("INSERT INTO relay_queue (id, event, mail_from, message, message_id, state, created_at,"
                         " lifetime_from, finished_at) VALUES (?,?,?,?,?,?,?,?,?)",
                         (i, "ack", "h@example.test", b"x", f"n{i}@x", state, created, created, finished))
    await gw.store.transaction(fill)
    assert await admin_data._first_id_since(gw.store, "relay_queue", this_hour - 3 * hour) == 3
    assert await admin_data._first_id_since(gw.store, "relay_queue", this_hour + hour) == 5   # none yet
    d = await admin_data.dashboard(gw.store, now=now)
    depth = d.relay_depth.values
    # at the end of the hours starting -6h … now: row 1 only | row 2 came | still | row 2 left | row 3 came |
    # still | row 4 came and went within the hour
    assert depth[-7:] == [1, 2, 2, 1, 2, 2, 2], depth
    assert d.now_counts["relay"] == 2 and depth[0] == 1


async def test_first_id_since_with_gaps(start_gateway) -> None:
    gw = await start_gateway()
    ids = [i for i in range(1, 5000) if i % 7 and not 1000 <= i < 3000]  # purged ranges and holes

    def fill(conn) -> None:
        conn.executemany("INSERT INTO webhook_outbox (id, event_id, webhook, event, payload, created_at, lifetime_from)"
                         " VALUES (?,?,?,?,?,?,?)", [(i, f"e{i}", "w", "x", "{}", 1000.0 + i, 1000.0 + i) for i in ids])
    await gw.store.transaction(fill)
    for ts in (0, 1001, 1500, 2500, 3999.5, 4500, 5998.5, 1e9):
        first = await admin_data._first_id_since(gw.store, "webhook_outbox", ts)
        want = min((i for i in ids if 1000.0 + i >= ts), default=max(ids) + 1)
        # never later than the first row at or after ts, and no row in between
        assert first <= want and not [i for i in ids if first <= i < want], (ts, first, want)


async def test_outbound_counts_are_capped_and_lists_walk_the_state_index(start_gateway) -> None:
    """The outbound page counts each state up to COUNT_CAP ("10,000+" above: no scan of every row at each
    view), exact below; a state's list walks relay_queue_state_id (migration 0024) in id order."""
    gw = await start_gateway()
    cap = 50
    states = ["sent"] * (cap + 7) + ["dead"] * cap + ["deferred"] * 3

    def fill(conn) -> None:
        conn.executemany("INSERT INTO relay_queue (id, event, mail_from, message, message_id, state, created_at,"
                         " lifetime_from) VALUES (?,?,?,?,?,?,?,?)",
                         [(i, "ack", "h@example.test", b"x", f"n{i}@x", st, 1.0 * i, 1.0 * i)
                          for i, st in enumerate(states, 1)])
    await gw.store.transaction(fill)
    got = await admin_data.capped_counts(gw.store, "relay_queue", ("queued", "sent", "dead", "deferred"), cap=cap)
    assert got == {"queued": "0", "sent": "50+", "dead": "50", "deferred": "3"}
    page = await admin_data.relay_page(gw.store, "dead", limit=10)
    first_dead = states.index("dead") + 1
    assert [r["id"] for r in page["rows"]] == list(range(first_dead, first_dead + 10))
    assert page["counts"]["dead"] == "50" and page["counts"]["sent"] == "57"
    sql = "SELECT id FROM relay_queue WHERE state = 'dead' ORDER BY id LIMIT 10"
    if type(gw.store).__name__ == "PostgresStore":
        async with gw.store.pool.acquire() as conn:
            await conn.execute("SET enable_seqscan = off")     # a handful of rows: show what the planner can use
            text = " ".join(r[0] for r in await conn.fetch("EXPLAIN " + sql))
    else:
        text = " ".join(str(r[-1]) for r in await gw.store.query("EXPLAIN QUERY PLAN " + sql))
    assert "relay_queue_state_id" in text and "TEMP B-TREE" not in text and "Sort" not in text, text
