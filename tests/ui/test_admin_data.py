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
