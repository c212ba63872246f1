"""relay test / queue / retry and the argparse wiring."""
from __future__ import annotations

import argparse
import json

from prometheus_client import CollectorRegistry

from relay.cli import NEEDS_STORE, dispatch_store, register, relay_queue, relay_retry, relay_test
from gateway.config.relay import parse_relay_config
from relay.worker import RelayMetrics

from .conftest import free_port, host, relay_table, wait_for
from .helpers import enqueue_many, note, start_worker


async def test_relay_test_prints_every_step(sinks, server_ctx, ca_file, tmp_path):
    from aiosmtpd.smtp import AuthResult
    pw = tmp_path / "pw"
    pw.write_text("pass-word-xyz")
    pw.chmod(0o600)
    s = sinks(tls_context=server_ctx, require_starttls=True, auth_required=True,
              authenticator=lambda *a: AuthResult(success=True, handled=False))
    down = free_port()
    cfg = parse_relay_config(relay_table(host("dead", down),
                                         host("good", s.port, tls="starttls", ca_file=ca_file, auth="plain",
                                              username="u", password_file=str(pw))))
    lines: list[str] = []
    assert await relay_test(cfg, "ops@x.test", out=lines.append) == 0
    text = "\n".join(lines)
    for step in ("connect:", "greeting: 220", "ehlo: 250", "starttls: 220", "tls: TLSv1", "auth: PLAIN as u: 235",
                 "mail: MAIL FROM:<help@example.test> -> 250", "rcpt: RCPT TO:<ops@x.test> -> 250",
                 "data: DATA", "quit: 221", "delivered to good"):
        assert step in text, (step, text)
    assert "== smarthost dead" in text and "cannot connect" in text
    assert "pass-word-xyz" not in text
    assert s.messages[0].rcpt_tos == ["ops@x.test"]
    assert b"Auto-Submitted: auto-generated" in s.messages[0].data

    lines.clear()
    assert await relay_test(cfg, "ops@x.test", host="dead", out=lines.append) == 1
    assert await relay_test(cfg, "ops@x.test", host="nope", out=lines.append) == 1
    s.handler.rcpt_reply = lambda a: "550 5.1.1 unknown"
    lines.clear()
    assert await relay_test(cfg, "ops@x.test", host="good", out=lines.append) == 1
    assert any("550 5.1.1 unknown" in x for x in lines)
    assert await relay_test(cfg, "bad\r\naddr@x.test", out=lines.append) == 1


async def test_queue_and_retry_commands(store, sinks):
    s = sinks()
    s.handler.rcpt_reply = lambda a: "550 5.1.1 no such user"
    w = await start_worker(store, relay_table(host("a", s.port)))
    try:
        ids = await enqueue_many(store, [note(to="x@x.test"), note(to="y@x.test")])
        w.wake()
        out: list[str] = []

        async def dead_count():
            out.clear()
            await relay_queue(store, json_out=True, out=out.append)
            return sum(1 for r in json.loads(out[0]) if r["state"] == "dead") == 2
        await wait_for(dead_count)
        rows = json.loads(out[0])
        r = rows[0]
        assert set(r) >= {"id", "ticket_id", "event", "state", "attempts", "last_error", "recipients", "created_at",
                          "next_attempt_at", "sent_at", "message_id"}
        assert r["recipients"][0] == {"address": "x@x.test", "kind": "to", "state": "dead", "code": 550,
                                      "reply": "5.1.1 no such user", "host": "a"}
        plain: list[str] = []
        assert await relay_queue(store, out=plain.append) == 0
        assert "dead=2" in plain[0] and "last error: 550" in "\n".join(plain)

        s.handler.rcpt_reply = lambda a: None
        errs: list[str] = []
        assert await relay_retry(store, 9999, out=out.append, err=errs.append) == 1
        assert "no such notification" in errs[0]
        out.clear()
        assert await relay_retry(store, ids[0], json_out=True, out=out.append) == 0
        assert json.loads(out[0]) == {"retried": [ids[0]]}
        out.clear()
        assert await relay_retry(store, dead=True, json_out=True, out=out.append) == 0
        assert json.loads(out[0]) == {"retried": [ids[1]]}
        w.wake()
        await wait_for(lambda: len(s.messages) == 2)
        assert await relay_retry(store, ids[0], out=out.append, err=errs.append) == 1   # sent: nothing to retry
    finally:
        await w.close()


async def test_argparse_wiring(store):
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config")
    p = argparse.ArgumentParser(parents=[common])
    sub = p.add_subparsers(dest="command", required=True)
    register(sub, common)
    a = p.parse_args(["relay", "test", "--to", "a@x.test", "--host", "primary"])
    assert (a.command, a.action, a.to, a.host) == ("relay", "test", "a@x.test", "primary")
    a = p.parse_args(["relay", "retry", "--dead"])
    assert a.dead and a.id is None and (a.command, a.action) in NEEDS_STORE
    a = p.parse_args(["relay", "retry", "12"])
    assert a.id == 12
    a = p.parse_args(["dkim", "keygen", "--domain", "example.test", "--selector", "s1", "--algo", "ed25519",
                      "--out", "k.key"])
    assert (a.domain, a.selector, a.algo, a.out, a.group) == ("example.test", "s1", "ed25519", "k.key", "ticketmx")
    a = p.parse_args(["relay", "queue", "--json"])
    assert await dispatch_store(store, a) == 0


def test_metric_names():
    reg = CollectorRegistry()
    RelayMetrics(reg)
    names = {m.name for m in reg.collect()}
    assert all(n.startswith("ticketmx_relay_") for n in names)
    types = {m.name: m.type for m in reg.collect()}
    for n, t in types.items():
        if t == "counter":
            assert not n.endswith("_total")  # prometheus_client strips _total from the family name
    assert {"ticketmx_relay_sent", "ticketmx_relay_failed", "ticketmx_relay_deferred", "ticketmx_relay_dead",
            "ticketmx_relay_queue_messages", "ticketmx_relay_queue_oldest_age_seconds",
            "ticketmx_relay_circuit_state"} <= names
