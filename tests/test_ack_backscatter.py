"""Issue 18, class 6 — no backscatter: acknowledgements go only to a From that passed DMARC, and a
per-client-IP and a global limit bound them besides the per-recipient one.

Everything goes through SMTP into a real gateway, with the tests' DNS server answering SPF, DKIM and
DMARC, and a real aiosmtpd smarthost receiving what the relay sends. Absence of an acknowledgement is
asserted on the relay queue (acknowledgements are queued in the ticket's own transaction, so once the
spool entry is finished the queue is final), presence on the smarthost as well.
"""
from __future__ import annotations

import asyncio
import email
import email.policy
import time
from typing import Any

import aiosmtplib
import pytest

from gateway.config.load import load_config
from gateway.config.errors import ConfigErrors
from relay.notify import ack_client_key, from_authenticated

from .auth.helpers import rsa_key, sign
from .conftest import queued_id, run_cli
from .smarthost import sink, wait_for  # noqa: F401 - sink is a fixture

SPF_LOOPBACK = ("TXT", "v=spf1 ip4:127.0.0.0/8 -all")
ZONE = {
    # a big mail provider: every user's address is authenticated by SPF from the loopback net
    "provider.test": [SPF_LOOPBACK], "_dmarc.provider.test": [("TXT", "v=DMARC1; p=none")],
    # the attacker's own domain: its SPF passes (for MAIL FROM), but it is not the From
    "evil.test": [SPF_LOOPBACK],
    # a victim domain that publishes only p=none (as many do) and does not authorise us
    "victim.test": [("TXT", "v=spf1 -all")], "_dmarc.victim.test": [("TXT", "v=DMARC1; p=none")],
    # a domain without any DMARC record
    "nodmarc.test": [SPF_LOOPBACK],
    # a domain whose mail passes DMARC by DKIM alone (its SPF does not cover us)
    "signed.test": [("TXT", "v=spf1 -all")], "_dmarc.signed.test": [("TXT", "v=DMARC1; p=reject")],
    "sel._domainkey.signed.test": [("TXT", rsa_key()[1])],
}


def relay_cfg(port: int, **relay: Any) -> dict[str, Any]:
    table = {"from": "Support <support@example.test>", "retry": "1s, 2s*3", "poll_interval": "50ms",
             "smarthost": [{"name": "sink", "host": "127.0.0.1", "port": port, "tls": "none", "auth": "none",
                            "timeout": "5s"}]}
    table.update(relay)
    return {"relay": table}


def message(frm: str, n: int, subject: str = "Help please", extra: str = "") -> bytes:
    return (f"From: {frm}\r\nTo: support@example.test\r\nSubject: {subject} {n}\r\n"
            f"Message-ID: <bs{n}.{time.monotonic_ns()}@client.test>\r\nDate: Sun, 22 Nov 2026 10:00:00 +0000\r\n"
            f"{extra}\r\nIt is on fire.\r\n").encode()


async def send(port: int, raw: bytes, mail_from: str, ip: str = "127.0.0.1",
               rcpt: str = "support@example.test") -> str:
    """One message over SMTP from the client address ``ip`` (any 127/8 address is loopback)."""
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=10, start_tls=False,
                             source_address=(ip, 0))
    await client.connect()
    await client.ehlo(hostname="client.test")
    await client.mail(mail_from)
    await client.rcpt(rcpt)
    _code, text = await client.data(raw)
    await client.quit()
    return queued_id(text)


async def acks(gw: Any) -> list[str]:
    """Recipients of the acknowledgements queued so far."""
    rows = await gw.store.query("SELECT r.address FROM relay_queue q JOIN relay_recipients r"
                                " ON r.notification_id=q.id WHERE q.event='ack' ORDER BY q.id")
    return [r[0] for r in rows]


async def ack_history(gw: Any, ticket_id: int) -> dict[str, Any]:
    ticket = await gw.store.ticket_get(str(ticket_id))
    return next(h["detail"] for h in ticket["history"] if h["action"] == "acknowledgement")


def suppressed(gw: Any, reason: str) -> float:
    return gw.gw.metrics.registry.get_sample_value("ticketmx_relay_acknowledgements_suppressed_total",
                                                   {"reason": reason}) or 0.0


async def test_unauthenticated_from_gets_a_ticket_but_no_acknowledgement(start_gateway, dns_server, sink):
    """The reported attack: MAIL FROM the attacker's own (SPF-passing) domain, From a victim at a
    p=none domain, with the attacker's Subject. A ticket is made; nothing goes to the victim — neither
    the acknowledgement nor the attachments-removed notice — and the ticket history says why."""
    dns_server.set_zone(ZONE)
    gw = await start_gateway(**relay_cfg(sink.port))
    forged = message("Victim <victim@victim.test>", 1, subject="Buy cheap pills at evil.test",
                     extra="MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n")
    forged = forged.replace(b"\r\n\r\nIt is on fire.\r\n", b"\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nhi\r\n"
                            b"--b\r\nContent-Type: application/octet-stream\r\nContent-Disposition: attachment;"
                            b" filename=setup.exe\r\n\r\nMZ\x90\x00\r\n--b--\r\n")
    e1 = await gw.wait_done(await send(gw.port, forged, "attacker@evil.test"))
    # no DMARC record at all: nothing vouches for the From either
    e2 = await gw.wait_done(await send(gw.port, message("Bob <bob@nodmarc.test>", 2), "bob@nodmarc.test"))
    assert e1.state == e2.state == "ticket_created"
    assert (await gw.store.spool_get(e1.id)).auth["dmarc"]["result"] == "fail"
    assert await acks(gw) == []
    assert await gw.store.query("SELECT event FROM relay_queue") == []  # no stripped notice either
    for e in (e1, e2):
        detail = await ack_history(gw, e.ticket_id)
        assert detail["queued"] is False and detail["why"] == "unauthenticated"
        assert detail["text"] == "acknowledgement not sent: From did not pass DMARC"
    assert suppressed(gw, "unauthenticated") == 2
    assert (await gw.store.ticket_get(str(e1.ticket_id)))["requester"] == "victim@victim.test"
    await asyncio.sleep(0.5)
    assert sink.messages == []


async def test_dmarc_pass_from_gets_the_acknowledgement(start_gateway, dns_server, sink):
    """Aligned SPF (provider.test) and aligned DKIM alone (signed.test, whose SPF does not cover the
    client) both pass DMARC: both senders get their acknowledgement at the smarthost."""
    dns_server.set_zone(ZONE)
    gw = await start_gateway(**relay_cfg(sink.port))
    e1 = await gw.wait_done(await send(gw.port, message("Ann <ann@provider.test>", 1), "ann@provider.test"))
    signed = sign(message("Sig <sig@signed.test>", 2), "signed.test")
    e2 = await gw.wait_done(await send(gw.port, signed, "sig@signed.test"))
    assert (await gw.store.spool_get(e2.id)).auth["spf"]["result"] == "fail"
    assert (await gw.store.spool_get(e2.id)).auth["dmarc"]["result"] == "pass"
    await wait_for(lambda: len(sink.messages) == 2)
    assert sorted(m[1][0] for m in sink.messages) == ["ann@provider.test", "sig@signed.test"]
    ack = email.message_from_bytes(sink.messages[0][2], policy=email.policy.default)
    assert ack["Auto-Submitted"] == "auto-replied"
    assert (await ack_history(gw, e1.ticket_id))["queued"] is True
    assert suppressed(gw, "unauthenticated") == 0


async def test_thirty_victims_from_one_ip_get_at_most_the_per_ip_limit(start_gateway, dns_server, sink):
    """30 different, each DMARC-authenticated, addresses from one client: the default per-IP limit
    ("5/10m") lets 5 acknowledgements out; another client still gets its own."""
    dns_server.set_zone(ZONE)
    gw = await start_gateway(**relay_cfg(sink.port))
    entries = []
    for i in range(30):
        addr = f"victim{i}@provider.test"
        entries.append(await gw.wait_done(await send(gw.port, message(f"V <{addr}>", i), addr)))
    assert all(e.state == "ticket_created" for e in entries)
    assert await acks(gw) == [f"victim{i}@provider.test" for i in range(5)]
    assert suppressed(gw, "rate_limited_ip") == 25
    detail = await ack_history(gw, entries[-1].ticket_id)
    assert detail["why"] == "rate_limited_ip" and detail["text"].endswith("rate limit per client IP")
    # the limit is per client: another address is not held back by the first one's flood
    other = await gw.wait_done(await send(gw.port, message("O <other@provider.test>", 99), "other@provider.test",
                                          ip="127.0.0.2"))
    assert (await ack_history(gw, other.ticket_id))["queued"] is True
    await wait_for(lambda: len(sink.messages) == 6)
    await asyncio.sleep(0.3)
    assert len(sink.messages) == 6


async def test_global_limit_across_clients(start_gateway, dns_server, sink):
    """Many clients (a botnet) against the global limit: at most 4 acknowledgements in all."""
    dns_server.set_zone(ZONE)
    gw = await start_gateway(**relay_cfg(sink.port, ack_limits_global=["4/1h"], ack_limits_per_ip=["2/1h"]))
    for i in range(9):
        addr = f"user{i}@provider.test"
        await gw.wait_done(await send(gw.port, message(f"U <{addr}>", i), addr, ip=f"127.0.0.{10 + i}"))
    assert len(await acks(gw)) == 4
    assert suppressed(gw, "rate_limited_global") == 5 and suppressed(gw, "rate_limited_ip") == 0
    rows = await gw.store.query("SELECT COUNT(*) FROM relay_ack_log WHERE sender='*'")
    assert rows[0][0] == 4  # the global counter lives in the store (shared by every node)


async def test_always_restores_the_old_behaviour_and_never_sends_none(start_gateway, dns_server, sink):
    """``acknowledge = "always"``: the unauthenticated From gets its acknowledgement again (still
    within the rate limits); ``"never"``: not even an authenticated one does."""
    dns_server.set_zone(ZONE)
    gw = await start_gateway(mailbox=[{"address": "support@example.test", "queue": "IT", "acknowledge": "always"},
                                      {"address": "billing@example.test", "queue": "Billing", "acknowledge": "never"}],
                             **relay_cfg(sink.port))
    await gw.wait_done(await send(gw.port, message("V <victim@victim.test>", 1), "attacker@evil.test"))
    e = await gw.wait_done(await send(gw.port, message("Ann <ann@provider.test>", 2), "ann@provider.test",
                                      rcpt="billing@example.test"))
    assert await acks(gw) == ["victim@victim.test"]
    await wait_for(lambda: len(sink.messages) == 1)
    assert sink.messages[0][1] == ["victim@victim.test"]
    assert (await ack_history(gw, e.ticket_id))["why"] == "disabled"


async def test_auth_disabled_means_no_acknowledgement_and_check_config_says_so(start_gateway, dns_server, sink,
                                                                               tmp_path):
    dns_server.set_zone(ZONE)
    gw = await start_gateway(auth={"enabled": False}, **relay_cfg(sink.port))
    e = await gw.wait_done(await send(gw.port, message("Ann <ann@provider.test>", 1), "ann@provider.test"))
    assert e.state == "ticket_created" and await acks(gw) == []
    assert (await ack_history(gw, e.ticket_id))["why"] == "unauthenticated"
    path = tmp_path / "noauth.toml"
    path.write_text(f'[auth]\nenabled = false\n[[mailbox]]\naddress = "support@example.test"\n'
                    f'[relay]\nfrom = "help@example.test"\n[[relay.smarthost]]\nname = "s"\nhost = "127.0.0.1"\n'
                    f'port = {sink.port}\ntls = "none"\n')
    proc = run_cli("check-config", "--config", str(path))
    assert proc.returncode == 0
    assert 'mailbox[0].acknowledge: "authenticated" with authentication disabled' in proc.stderr


@pytest.mark.parametrize("text, key, fragment", [
    ('[[mailbox]]\naddress = "a@x.test"\nacknowledge = "sometimes"\n', "mailbox[0].acknowledge",
     'expected one of "authenticated", "always", "never"'),
    ('[[mailbox]]\naddress = "a@x.test"\nacknowledge = 1\n', "mailbox[0].acknowledge", "expected a string"),
    ('[relay]\nack_limits_per_ip = ["5 per hour"]\n', "relay.ack_limits_per_ip", "COUNT/WINDOW"),
    ('[relay]\nack_limits_global = "500/1h"\n', "relay.ack_limits_global", "expected a list"),
    ('[relay]\nack_limits_global = ["0/1h"]\n', "relay.ack_limits_global", "bad limit"),
])
def test_config_errors_name_the_key(tmp_path, text, key, fragment):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigErrors) as exc:
        load_config(path)
    messages = [str(e) for e in exc.value.errors]
    assert any(f"{key}:" in m and fragment in m for m in messages), messages


def test_config_values_and_defaults(tmp_path):
    path = tmp_path / "ok.toml"
    path.write_text('[[mailbox]]\naddress = "a@x.test"\n[[mailbox]]\naddress = "b@x.test"\nacknowledge = true\n'
                    '[[mailbox]]\naddress = "c@x.test"\nacknowledge = false\n'
                    '[[mailbox]]\naddress = "d@x.test"\nacknowledge = "Always"\n'
                    '[relay]\nack_limits_per_ip = ["3/10m"]\nack_limits_global = []\n')
    cfg = load_config(path)
    assert [mb.acknowledge for mb in cfg.mailboxes] == ["authenticated", "authenticated", "never", "always"]
    assert cfg.relay.ack_limits_per_ip == ((3, 600.0),) and cfg.relay.ack_limits_global == ()
    default = load_config(None).relay
    assert default.ack_limits_per_ip == ((5, 600.0), (20, 3600.0))
    assert default.ack_limits_global == ((500, 3600.0),)
    assert default.ack_horizon == 3600.0


def test_client_key_and_authentication_rules():
    # IPv6 clients are counted by /64 (one host usually holds the whole prefix); v4-mapped as IPv4
    assert ack_client_key("2001:db8:1:2::5") == ack_client_key("2001:db8:1:2:ffff::1") == "ip:2001:db8:1:2::/64"
    assert ack_client_key("2001:db8:1:3::5") != ack_client_key("2001:db8:1:2::5")
    assert ack_client_key("::ffff:192.0.2.7") == ack_client_key("192.0.2.7") == "ip:192.0.2.7"
    # behind a trusted relay: the first untrusted hop, or no per-IP key for internal mail
    via = {"spf": {"via_trusted_relay": True, "relay": {"relay_ip": "10.0.0.1", "origin_ip": "198.51.100.9"}}}
    assert ack_client_key("10.0.0.1", via) == "ip:198.51.100.9"
    internal = {"spf": {"via_trusted_relay": True, "relay": {"relay_ip": "10.0.0.1", "origin_ip": None}}}
    assert ack_client_key("10.0.0.1", internal) is None
    passed = {"dmarc": {"result": "pass"}, "from": {"domains": ["provider.test"]}, "decision": {"suspicious": False}}
    assert from_authenticated(passed, "ann@Provider.test")
    assert not from_authenticated(passed, "ann@other.test")  # another reading of From: not vouched for
    assert not from_authenticated({**passed, "decision": {"suspicious": True}}, "ann@provider.test")
    assert not from_authenticated({**passed, "dmarc": {"result": "none"}}, "ann@provider.test")
    assert from_authenticated({**passed, "dmarc": {"result": "fail", "override": "arc"}}, "ann@provider.test")
    assert not from_authenticated({"disabled": True}, "ann@provider.test")
    assert not from_authenticated(None, "ann@provider.test")


async def test_suppressed_metric_from_a_worker_process(start_gateway, dns_server, sink):
    """With pipeline workers in processes of their own, the count reaches the parent's /metrics."""
    dns_server.set_zone(ZONE)
    gw = await start_gateway(pipeline={"processes": 1, "poll_interval": "100ms"}, **relay_cfg(sink.port))
    assert gw.gw.pool is not None and gw.gw.worker is None
    await gw.wait_done(await send(gw.port, message("V <victim@victim.test>", 1), "attacker@evil.test"), timeout=30)
    await wait_for(lambda: suppressed(gw, "unauthenticated") == 1)
    assert await acks(gw) == []
