"""POST /api/v1/inbound/{mailbox} over real HTTP against an in-process gateway: every accepted format
makes a ticket through the real pipeline; bad or replayed authentication is 401 with nothing spooled;
a repeated post is one message; size and format errors are problem+json."""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from pathlib import Path
from typing import Any

import pytest

from ..auth.helpers import rsa_key, sign
from ..conftest import simple_message

SIGNING_KEY = "key-mailgun-signing-0123456789"
PASSWORD = "pm-pass-Secret-42"
TOKEN = "bearer-token-abcdef0123456789"


def _secret(tmp_path: Path, name: str, value: str, mode: int = 0o600) -> str:
    p = tmp_path / name
    p.write_text(value + "\n")
    p.chmod(mode)
    return str(p)


def inbound_tables(tmp_path: Path, **over: Any) -> list[dict[str, Any]]:
    return [
        {"mailbox": "support@example.test", "name": "support", "auth": "bearer",
         "token_file": _secret(tmp_path, "bearer", TOKEN), **over},
        {"mailbox": "support@example.test", "name": "postmark", "format": "postmark", "auth": "basic",
         "username": "postmark", "password_file": _secret(tmp_path, "pm", PASSWORD)},
        {"mailbox": "billing@example.test", "name": "mailgun-mime", "auth": "mailgun",
         "signing_key_file": _secret(tmp_path, "mg", SIGNING_KEY)},
        {"mailbox": "support@example.test", "name": "sendgrid", "format": "sendgrid", "auth": "bearer",
         "token_file": _secret(tmp_path, "sg", TOKEN)},
    ]


@pytest.fixture
async def inbound(start_api: Any, tmp_path: Path) -> Any:
    return await start_api(http={"listen": "127.0.0.1:0", "inbound": inbound_tables(tmp_path)})


def mailgun_sig(timestamp: str | None = None, token: str | None = None, key: str = SIGNING_KEY) -> dict[str, str]:
    ts = timestamp or str(int(time.time()))
    tok = token or secrets.token_hex(25)
    return {"timestamp": ts, "token": tok,
            "signature": hmac.new(key.encode(), (ts + tok).encode(), hashlib.sha256).hexdigest()}


async def spool_rows(api: Any) -> int:
    return (await api.store.query("SELECT count(*) FROM spool"))[0][0]


async def ticket_of(api: Any, spool_id: str) -> Any:
    entry = await api.gw.wait_done(spool_id)
    assert entry.state == "ticket_created", (entry.state, entry.reason)
    return entry


def bearer(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_raw_mime_makes_a_ticket(inbound: Any) -> None:
    raw = simple_message(subject="Raw over HTTP", message_id="raw-1@customer.test")
    async with inbound.client() as c:
        r = await c.post("/api/v1/inbound/support", content=raw,
                         headers={**bearer(), "Content-Type": "message/rfc822"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["duplicate"] is False and body["format"] == "mime" and body["mailbox"] == "support@example.test"
    entry = await ticket_of(inbound, body["spool_id"])
    assert entry.peer_ip == "" and entry.rcpt_tos == ("support@example.test",)
    assert entry.mail_from == "alice@customer.test"     # no envelope given: the From address stands in
    assert entry.auth["spf"]["checked"] is False
    assert entry.auth["http_inbound"]["format"] == "mime" and entry.auth["http_inbound"]["client_ip"] == "127.0.0.1"
    assert entry.auth["from"]["addresses"] == ["alice@customer.test"]
    head = entry.raw.split(b"\r\n\r\n", 1)[0]
    assert head.startswith(b"Received: by mx.example.test (ticketmx) with HTTP (mime post from 127.0.0.1)")
    assert b"Authentication-Results: mx.example.test" in head
    rows = await inbound.store.query("SELECT subject FROM tickets")
    assert [r[0] for r in rows] == ["Raw over HTTP"]


async def test_postmark_rebuilt_and_raw(inbound: Any) -> None:
    doc = {"FromFull": {"Email": "bob@customer.test", "Name": "Bob Ü"}, "From": "bob@customer.test",
           "To": "support@example.test", "Subject": "Postmark héllo", "MessageID": "pm-0001",
           "Date": "Mon, 23 Nov 2026 10:00:00 +0000", "TextBody": "Body text ü", "HtmlBody": "<p>Body</p>",
           "Headers": [{"Name": "Message-ID", "Value": "<orig-pm@customer.test>"},
                       {"Name": "Return-Path", "Value": "<bob-envelope@customer.test>"},
                       {"Name": "Content-Type", "Value": "multipart/alternative; boundary=x"}],
           "Attachments": [{"Name": "report.pdf", "ContentType": "application/pdf",
                            "Content": base64.b64encode(b"%PDF-1.4 fake").decode(), "ContentLength": 13}]}
    auth = ("postmark", PASSWORD)
    async with inbound.client() as c:
        r = await c.post("/api/v1/inbound/postmark", json=doc, auth=auth)
        assert r.status_code == 200, r.text
        entry = await ticket_of(inbound, r.json()["spool_id"])
        raw_doc = {"MessageID": "pm-0002", "RawEmail": simple_message(subject="Raw postmark").decode()}
        r2 = await c.post("/api/v1/inbound/postmark", json=raw_doc, auth=auth)
        assert r2.status_code == 200, r2.text
        entry2 = await ticket_of(inbound, r2.json()["spool_id"])
    assert entry.mail_from == "bob-envelope@customer.test" and entry.message_id == "orig-pm@customer.test"
    assert entry.auth["http_inbound"]["rebuilt"] is True and entry.auth["http_inbound"]["provider_id"] == "pm-0001"
    assert entry2.auth["http_inbound"]["rebuilt"] is False
    subjects = sorted(r[0] for r in await inbound.store.query("SELECT subject FROM tickets"))
    assert subjects == ["Postmark héllo", "Raw postmark"]
    names = [r[0] for r in await inbound.store.query("SELECT filename FROM attachments")]
    assert "report.pdf" in names


async def test_mailgun_mime_and_parsed(inbound: Any) -> None:
    raw = simple_message(subject="Mailgun mime", message_id="mg-1@customer.test")
    async with inbound.client() as c:
        r = await c.post("/api/v1/inbound/mailgun-mime",
                         data={"recipient": "billing@example.test", "sender": "alice@customer.test",
                               **mailgun_sig()}, files={"body-mime": ("message.mime", raw, "message/rfc822")})
        assert r.status_code == 200, r.text
        assert r.json()["format"] == "mailgun"
        await ticket_of(inbound, r.json()["spool_id"])
        headers = [["From", "Carol <carol@customer.test>"], ["To", "billing@example.test"],
                   ["Subject", "Mailgun parsed"], ["Message-Id", "<mg-2@customer.test>"]]
        r2 = await c.post("/api/v1/inbound/mailgun-mime", data={
            "sender": "carol@customer.test", "message-headers": json.dumps(headers), "body-plain": "Hi there",
            "attachment-count": "1", **mailgun_sig()}, files={"attachment-1": ("a.txt", b"hello", "text/plain")})
        assert r2.status_code == 200, r2.text
        entry = await ticket_of(inbound, r2.json()["spool_id"])
    assert entry.mail_from == "carol@customer.test" and entry.mailboxes == ("billing@example.test",)
    rows = await inbound.store.query("SELECT subject, queue FROM tickets ORDER BY id")
    assert [tuple(r) for r in rows] == [("Mailgun mime", "Billing"), ("Mailgun parsed", "Billing")]


async def test_sendgrid_raw_and_parsed(inbound: Any) -> None:
    envelope = json.dumps({"to": ["support@example.test"], "from": "dave@customer.test"})
    async with inbound.client(TOKEN) as c:
        r = await c.post("/api/v1/inbound/sendgrid", data={"envelope": envelope},
                         files={"email": (None, simple_message(subject="SendGrid raw", sender="dave@customer.test"))})
        assert r.status_code == 200, r.text
        e1 = await ticket_of(inbound, r.json()["spool_id"])
        head = ("From: Dave <dave@customer.test>\nTo: support@example.test\nSubject: SendGrid parsed\n"
                "Message-ID: <sg-2@customer.test>\nDate: Mon, 23 Nov 2026 10:00:00 +0000\n")
        r2 = await c.post("/api/v1/inbound/sendgrid", data={
            "envelope": envelope, "headers": head, "text": "parsed body", "attachments": "1",
            "attachment-info": json.dumps({"attachment1": {"filename": "log.txt", "type": "text/plain"}})},
            files={"attachment1": ("log.txt", b"log line", "text/plain")})
        assert r2.status_code == 200, r2.text
        e2 = await ticket_of(inbound, r2.json()["spool_id"])
    assert e1.mail_from == e2.mail_from == "dave@customer.test"
    assert e2.message_id == "sg-2@customer.test" and e2.auth["http_inbound"]["rebuilt"] is True
    names = [r[0] for r in await inbound.store.query("SELECT filename FROM attachments")]
    assert "log.txt" in names


async def test_bad_auth_is_401_and_nothing_spooled(inbound: Any) -> None:
    raw = simple_message()
    before = await spool_rows(inbound)
    async with inbound.client() as c:
        bad = mailgun_sig(key="not-the-key")
        cases = [
            ("support", {"content": raw, "headers": {"Content-Type": "message/rfc822"}}),
            ("support", {"content": raw, "headers": {**bearer("wrong"), "Content-Type": "message/rfc822"}}),
            ("postmark", {"json": {"MessageID": "x", "RawEmail": raw.decode()}, "auth": ("postmark", "nope")}),
            ("postmark", {"json": {"MessageID": "x", "RawEmail": raw.decode()}, "auth": ("other", PASSWORD)}),
            ("mailgun-mime", {"data": bad, "files": {"body-mime": (None, raw)}}),
            ("mailgun-mime", {"data": mailgun_sig(timestamp=str(int(time.time()) - 3600)),
                              "files": {"body-mime": (None, raw)}}),
            ("mailgun-mime", {"content": raw, "headers": {"Content-Type": "message/rfc822"}}),
        ]
        for name, kw in cases:
            r = await c.post(f"/api/v1/inbound/{name}", **kw)
            assert r.status_code == 401, (name, r.text)
            assert r.headers["content-type"] == "application/problem+json"
            assert "WWW-Authenticate" in r.headers
            assert SIGNING_KEY not in r.text and PASSWORD not in r.text and TOKEN not in r.text
        text = (await c.get("/metrics")).text
    assert await spool_rows(inbound) == before
    assert 'ticketmx_http_inbound_total{format="unknown",outcome="unauthorized"}' in text


async def test_replayed_mailgun_token_is_refused(inbound: Any) -> None:
    sig = mailgun_sig()
    raw = simple_message(message_id="replay@customer.test")
    async with inbound.client() as c:
        r1 = await c.post("/api/v1/inbound/mailgun-mime", data=sig, files={"body-mime": (None, raw)})
        assert r1.status_code == 200, r1.text
        n = await spool_rows(inbound)
        r2 = await c.post("/api/v1/inbound/mailgun-mime", data=sig, files={"body-mime": (None, raw)})
    assert r2.status_code == 401 and "already used" in r2.json()["detail"]
    assert await spool_rows(inbound) == n


async def test_repeated_post_is_one_message(inbound: Any) -> None:
    raw = simple_message(subject="Once", message_id="once@customer.test")
    async with inbound.client() as c:
        answers = [await c.post("/api/v1/inbound/mailgun-mime", data=mailgun_sig(), files={"body-mime": (None, raw)})
                   for _ in range(3)]
        same = [await c.post("/api/v1/inbound/support", content=b"X-Extra: 1\r\n" + raw,
                             headers={**bearer(), "Content-Type": "text/plain"}) for _ in range(2)]
    assert [a.status_code for a in answers + same] == [200] * 5
    ids = {a.json()["spool_id"] for a in answers}
    assert len(ids) == 1 and [a.json()["duplicate"] for a in answers] == [False, True, True]
    assert same[0].json()["spool_id"] == same[1].json()["spool_id"] and same[1].json()["duplicate"] is True
    assert await spool_rows(inbound) == 2
    await ticket_of(inbound, ids.pop())


async def test_size_format_and_mailbox_errors(start_api: Any, tmp_path: Path) -> None:
    api = await start_api(http={"listen": "127.0.0.1:0", "inbound": inbound_tables(tmp_path, max_size="2KiB")})
    big = simple_message(body="x" * 3000 + "\r\n")
    async with api.client(TOKEN) as c:
        r = await c.post("/api/v1/inbound/support", content=big, headers={"Content-Type": "message/rfc822"})
        assert r.status_code == 413 and r.headers["content-type"] == "application/problem+json", r.text
        r = await c.post("/api/v1/inbound/nobody", content=b"x", headers={"Content-Type": "message/rfc822"})
        assert r.status_code == 404 and "nobody" in r.json()["detail"]
        r = await c.post("/api/v1/inbound/sendgrid", content=b"{not json", headers={"Content-Type": "application/json"})
        assert r.status_code == 422 and "form" in r.json()["detail"]   # sendgrid posts forms
        r = await c.post("/api/v1/inbound/support", content=b"{not json", headers={"Content-Type": "application/json"})
        assert r.status_code == 400 and "JSON" in r.json()["detail"]
        r = await c.post("/api/v1/inbound/support", data={"what": "ever"})
        assert r.status_code == 422 and "neither a Mailgun" in r.json()["detail"]
        r = await c.post("/api/v1/inbound/support", content=b"From: a\x00@b\r\n\r\nx",
                         headers={"Content-Type": "message/rfc822"})
        assert r.status_code == 422 and "550 5.6.0" in r.json()["detail"]
    assert await spool_rows(api) == 0


async def test_dkim_dmarc_and_provider_verdict(start_api: Any, tmp_path: Path, dns_server: Any) -> None:
    api = await start_api(http={"listen": "127.0.0.1:0", "inbound": [
        *inbound_tables(tmp_path)[:2],
        {"mailbox": "support@example.test", "name": "trusting", "auth": "bearer",
         "token_file": _secret(tmp_path, "tr", TOKEN), "trusted_authserv_id": "mx.provider.test"}]})
    dns_server.set_zone({"sel._domainkey.customer.test": [("TXT", rsa_key()[1])],
                         "_dmarc.customer.test": [("TXT", "v=DMARC1; p=reject")]})
    signed = sign(simple_message(subject="Signed", message_id="s1@customer.test"), "customer.test")
    tampered = signed.replace(b"It is on fire.", b"It is on ice..")
    mime = {**bearer(), "Content-Type": "message/rfc822"}
    async with api.client() as c:
        r = await c.post("/api/v1/inbound/support", content=signed, headers=mime)
        assert r.status_code == 200, r.text
        ok = await ticket_of(api, r.json()["spool_id"])
        r = await c.post("/api/v1/inbound/support", content=tampered, headers=mime)
        assert r.status_code == 422 and "550 5.7.1" in r.json()["detail"], r.text    # p=reject, as over SMTP
        # rebuilt by the service: DKIM cannot verify, so the policy is not applied and nothing may act
        r = await c.post("/api/v1/inbound/postmark", auth=("postmark", PASSWORD), json={
            "From": "alice@customer.test", "To": "support@example.test", "Subject": "Rebuilt", "MessageID": "pm-9",
            "TextBody": "hi"})
        assert r.status_code == 200, r.text
        rebuilt = await ticket_of(api, r.json()["spool_id"])
        # a trusted provider's own dmarc=pass counts; a forged one from another authserv-id does not
        vouched = b"Authentication-Results: mx.provider.test; dmarc=pass header.from=customer.test\r\n" + \
            simple_message(subject="Vouched", message_id="v1@customer.test")
        r = await c.post("/api/v1/inbound/trusting", content=vouched, headers=mime)
        assert r.status_code == 200, r.text
        trusted = await ticket_of(api, r.json()["spool_id"])
        r = await c.post("/api/v1/inbound/support", content=vouched.replace(b"v1@", b"v2@"), headers=mime)
        assert r.status_code == 422, r.text
    assert ok.auth["dmarc"]["result"] == "pass" and ok.auth["decision"]["may_act"] is True
    assert ok.auth["dkim"][0]["result"] == "pass" and "may_not_act" not in ok.flags
    assert rebuilt.auth["dmarc"]["result"] == "fail" and "rebuilt" in rebuilt.auth["dmarc"]["policy_not_applied"]
    assert "suspicious" not in rebuilt.flags   # not refused, not quarantined: an unauthenticated customer
    assert trusted.auth["dmarc"]["override"] == "provider" and trusted.auth["decision"]["may_act"] is True
    assert b"override=trusted provider" in trusted.raw


def test_config_errors_name_the_key(tmp_path: Path) -> None:
    from gateway.config.errors import ConfigErrors

    from ..conftest import make_config
    loose = _secret(tmp_path, "loose", "x", mode=0o644)
    cases = [
        ({"mailbox": "nobody@example.test", "auth": "bearer", "token_file": loose}, "http.inbound[0].mailbox"),
        ({"mailbox": "support@example.test", "auth": "none"}, "http.inbound[0].auth"),
        ({"mailbox": "support@example.test", "auth": "bearer"}, "http.inbound[0].token_file"),
        ({"mailbox": "support@example.test", "auth": "bearer", "token_file": loose}, "http.inbound[0].token_file"),
        ({"mailbox": "support@example.test", "auth": "basic", "password_file": _secret(tmp_path, "p", "x")},
         "http.inbound[0].username"),
        ({"mailbox": "support@example.test", "auth": "mailgun", "signing_key_file": _secret(tmp_path, "k", "x"),
          "format": "xml"}, "http.inbound[0].format"),
        ({"mailbox": "support@example.test", "auth": "bearer", "token_file": _secret(tmp_path, "t", "x"),
          "colour": "red"}, "http.inbound[0].colour"),
    ]
    for table, key in cases:
        with pytest.raises(ConfigErrors) as ei:
            make_config(tmp_path, http={"inbound": [table]})
        assert key in str(ei.value), (key, str(ei.value))
