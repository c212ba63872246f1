"""[relay] config validation, retry interval lists, skip windows."""
from __future__ import annotations

import tomllib
from datetime import datetime

import pytest

from gateway.config.errors import ConfigError
from gateway.config.relay import RelayConfigError, parse_relay_config
from gateway.config.schedule import delay_after, in_window, next_attempt, parse_intervals, parse_skip_times, window_end

EXAMPLE = """
[relay]
from = "Example Helpdesk <helpdesk@example.test>"
retry = "1m, 5m*2, 30m*3, 2h*10"
max_lifetime = "5d"

[[relay.smarthost]]
name = "primary"
host = "smtp.office365.com"
port = 587
tls = "starttls"
auth = "xoauth2"
username = "helpdesk@example.test"
oauth_token_url = "https://login.microsoftonline.com/TENANT/oauth2/v2.0/token"
oauth_client_id = "11111111-2222-3333-4444-555555555555"
oauth_client_secret_file = "{secret}"
oauth_scope = "https://outlook.office365.com/.default"
timeout = "30s"
max_tries = 3
cooloff = "5m"
skip_times = "02:00-04:00"
throttle = 30
concurrency = 2

[[relay.smarthost]]
name = "fallback"
host = "mail.example.test"
port = 465
tls = "implicit"
auth = "login"
username = "relay"
password_file = "{secret}"
"""


def test_example_parses(tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("TOPSECRET\n")
    secret.chmod(0o600)
    cfg = parse_relay_config(tomllib.loads(EXAMPLE.format(secret=secret))["relay"])
    assert cfg.from_address == "helpdesk@example.test" and cfg.mail_from == "helpdesk@example.test"
    assert cfg.retry[:4] == (60.0, 300.0, 300.0, 1800.0) and len(cfg.retry) == 16
    assert cfg.max_lifetime == 5 * 86400
    p, f = cfg.smarthosts
    assert (p.name, p.tls, p.auth, p.max_tries, p.cooloff, p.skip_times, p.throttle, p.concurrency) == \
        ("primary", "starttls", "xoauth2", 3, 300.0, ((120, 240),), 30.0, 2)
    assert p.verify_cert is True and p.oauth is not None and p.oauth.grant == "client_credentials"
    assert f.password == "TOPSECRET" and f.port == 465
    # secrets never in repr/str
    for obj in (cfg, p, f, p.oauth):
        assert "TOPSECRET" not in repr(obj) and "TOPSECRET" not in str(obj)


def keys_of(exc: RelayConfigError) -> dict[str, str]:
    return {e.key: e.message for e in exc.errors}


@pytest.mark.parametrize("table,key", [
    ({"frm": "x@y.test"}, "relay.frm"),
    ({"retry": "1m, 5x"}, "relay.retry"),
    ({"retry": "1m*0"}, "relay.retry"),
    ({"max_lifetime": "forever"}, "relay.max_lifetime"),
    ({"from": "not an address"}, "relay.from"),
    ({"ack_limits": ["10 per 10m"]}, "relay.ack_limits"),
    ({"timezone": "Mars/Olympus"}, "relay.timezone"),
    ({"smarthost": [{"name": "a", "host": "h.test", "tls": "ssl"}]}, "relay.smarthost[0].tls"),
    ({"smarthost": [{"name": "a", "host": "h.test", "auth": "cram"}]}, "relay.smarthost[0].auth"),
    ({"smarthost": [{"name": "a", "host": "h.test", "port": 70000}]}, "relay.smarthost[0].port"),
    ({"smarthost": [{"name": "a", "host": "h.test", "skip_times": "2-4"}]}, "relay.smarthost[0].skip_times"),
    ({"smarthost": [{"name": "a", "host": "h.test", "colloff": "5m"}]}, "relay.smarthost[0].colloff"),
    ({"smarthost": [{"name": "a", "host": "h.test", "max_tries": 0}]}, "relay.smarthost[0].max_tries"),
    ({"smarthost": [{"host": "h.test"}]}, "relay.smarthost[0].name"),
    ({"smarthost": [{"name": "a", "host": "h.test", "auth": "plain", "username": "u"}]},
     "relay.smarthost[0].password_file"),
    ({"smarthost": [{"name": "a", "host": "h.test", "auth": "plain", "username": "u",
                     "password_file": "/nonexistent/pw"}]}, "relay.smarthost[0].password_file"),
    ({"smarthost": [{"name": "a", "host": "h.test", "auth": "plain", "username": "u",
                     "password_env": "TICKETMX_TEST_UNSET_VAR"}]}, "relay.smarthost[0].password_env"),
    ({"smarthost": [{"name": "a", "host": "h.test", "tls": "none", "auth": "plain", "username": "u",
                     "password_env": "HOME"}]}, "relay.smarthost[0].auth"),
    ({"smarthost": [{"name": "a", "host": "h.test", "auth": "xoauth2", "username": "u"}]},
     "relay.smarthost[0].oauth_token_url"),
    ({"smarthost": [{"name": "a", "host": "h.test", "password_file": "/x"}]}, "relay.smarthost[0].password_file"),
    ({"smarthost": [{"name": "a", "host": "h.test"}, {"name": "a", "host": "i.test"}]}, "relay.smarthost[1].name"),
    ({"smarthost": [{"name": "a", "host": "h.test"}]}, "relay.from"),
    ({"dkim": [{"domain": "example.test", "selector": "s"}]}, "relay.dkim[0].key_file"),
])
def test_bad_values_name_the_key(table, key):
    if "smarthost" in table and key != "relay.from":
        table = {"from": "h@example.test", **table}
    with pytest.raises(ConfigError) as ei:
        parse_relay_config(table)
    assert key in keys_of(ei.value), keys_of(ei.value)


def test_all_errors_reported_at_once():
    with pytest.raises(RelayConfigError) as ei:
        parse_relay_config({"retry": "x", "bogus": 1, "smarthost": [{"name": "a", "host": "h.test", "tls": "x"}]},
                           prefix="relay")
    assert {"relay.retry", "relay.bogus", "relay.smarthost[0].tls", "relay.from"} <= set(keys_of(ei.value))


def test_empty_table_is_disabled():
    cfg = parse_relay_config({})
    assert not cfg.enabled and cfg.smarthosts == ()


def test_intervals():
    assert parse_intervals("1m, 5m*2, 30m*3, 2h*10") == (60.0,) + (300.0,) * 2 + (1800.0,) * 3 + (7200.0,) * 10
    assert parse_intervals("50ms*2, 1s") == (0.05, 0.05, 1.0)
    for bad in ("", "1m,,2m", "5m*", "*3", "0s", "1m*0", "abc"):
        with pytest.raises(ValueError):
            parse_intervals(bad)
    iv = parse_intervals("1m, 5m*2")
    assert [delay_after(iv, n) for n in (1, 2, 3, 4, 9)] == [60, 300, 300, 300, 300]


def test_next_attempt_and_lifetime():
    iv = (10.0, 100.0)
    assert next_attempt(iv, 1, 0.0, 5.0, 1000.0) == 15.0
    assert next_attempt(iv, 2, 0.0, 950.0, 1000.0) == 1000.0      # one last try at the expiry
    assert next_attempt(iv, 3, 0.0, 1000.0, 1000.0) is None       # failed at/after expiry: dead


def test_skip_windows():
    assert parse_skip_times("02:00-04:00") == ((120, 240),)
    assert parse_skip_times(["22:30-01:00", "12:00-12:15"]) == ((1350, 60), (720, 735))
    for bad in ("2-4", "25:00-26:00", "02:00-02:00", "02:60-03:00"):
        with pytest.raises(ValueError):
            parse_skip_times(bad)
    from zoneinfo import ZoneInfo
    utc = ZoneInfo("UTC")

    def ts(h: int, m: int) -> float:
        return datetime(2026, 11, 22, h, m, tzinfo=utc).timestamp()
    w = parse_skip_times("02:00-04:00")
    assert not in_window(w, ts(1, 59), utc) and in_window(w, ts(2, 0), utc) and in_window(w, ts(3, 59), utc)
    assert not in_window(w, ts(4, 0), utc)
    assert window_end(w, ts(3, 0), utc) == ts(4, 0)
    wrap = parse_skip_times("23:00-01:00")
    assert in_window(wrap, ts(23, 30), utc) and in_window(wrap, ts(0, 30), utc) and not in_window(wrap, ts(1, 0), utc)
