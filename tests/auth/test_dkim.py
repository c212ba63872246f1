"""DKIM through the whole Authenticator (keys from a real DNS server on 127.0.0.1)."""
from __future__ import annotations

import shutil
import subprocess

import pytest

from gateway.auth import AuthPolicy

from .helpers import check, ed_key, message, rsa_key, run, sign

MAILAUTH = shutil.which("mailauth")
OPENDKIM_TESTMSG = shutil.which("opendkim-testmsg") or (
    "/usr/sbin/opendkim-testmsg" if shutil.os.path.exists("/usr/sbin/opendkim-testmsg") else None)

BASE_ZONE = {
    "example.org": [("TXT", "v=spf1 -all")],
    "_dmarc.example.org": [("TXT", "v=DMARC1; p=reject")],
}


def _zone(**keys):
    z = dict(BASE_ZONE)
    for sel, txt in keys.items():
        z[f"{sel}._domainkey.example.org"] = [("TXT", txt)]
    return z


def _sigs(v):
    return [(s["d"], s["s"], s["a"], s["result"], s["reason"]) for s in v.auth["dkim"]]


# --------------------------------------------------------------------------- independent signers
@pytest.mark.skipif(not MAILAUTH, reason="npm package mailauth (CLI `mailauth`) not installed")
@pytest.mark.parametrize("algo", ["rsa-sha256", "ed25519-sha256"])
@pytest.mark.parametrize("canon", ["relaxed/relaxed", "simple/simple", "relaxed/simple"])
def test_mailauth_signed_verifies(dns_server, tmp_path, algo, canon):
    if algo == "rsa-sha256":
        pem, txt = rsa_key(2048)
    else:
        _seed, pem, txt = ed_key()
    (tmp_path / "key.pem").write_bytes(pem)
    (tmp_path / "m.eml").write_bytes(message())
    out = subprocess.run([MAILAUTH, "sign", "-k", str(tmp_path / "key.pem"), "-d", "example.org", "-s", "ind",
                          "-a", algo, "-c", canon, str(tmp_path / "m.eml")],
                         capture_output=True, check=True, timeout=60).stdout
    assert out.startswith(b"DKIM-Signature:")
    dns_server.set_zone(_zone(ind=txt))
    v = run(check(dns_server, out, peer_ip="198.51.100.7"))
    assert _sigs(v) == [("example.org", "ind", algo, "pass", "")]
    assert v.auth["dmarc"]["result"] == "pass" and v.action == "accept"
    assert "dkim=pass" in v.header_value and "header.d=example.org" in v.header_value
    # and the same bytes with one body character changed fail
    bad = out.replace(b"this is a test", b"this is a tesT")
    v = run(check(dns_server, bad, peer_ip="198.51.100.7"))
    assert _sigs(v)[0][3] == "fail"
    assert v.action == "reject" and v.reply[:2] == (550, "5.7.1")


@pytest.mark.skipif(not OPENDKIM_TESTMSG, reason="opendkim-tools not installed")
def test_opendkim_signed_rsa_sha1_is_policy(dns_server, tmp_path):
    """opendkim-testmsg signs rsa-sha1 only: the signature verifies cryptographically, and is
    reported ``policy`` because RFC 8301 forbids accepting SHA-1."""
    pem, txt = rsa_key(2048)
    (tmp_path / "k.private").write_bytes(pem)
    out = subprocess.run([OPENDKIM_TESTMSG, "-C", "-d", "example.org", "-k", str(tmp_path / "k.private"),
                          "-s", "odk"], input=message(), capture_output=True, check=True, timeout=60).stdout
    assert b"a=rsa-sha1" in out
    dns_server.set_zone(_zone(odk=txt))
    v = run(check(dns_server, out, peer_ip="198.51.100.7"))
    (d, s, a, res, reason), = _sigs(v)
    assert (d, s, a, res) == ("example.org", "odk", "rsa-sha1", "policy")
    assert "signature verifies" in reason
    assert v.auth["dmarc"]["result"] == "fail"


# --------------------------------------------------------------------------- RFC 8463 A.3
RFC8463_MSG = (
    b"DKIM-Signature: v=1; a=ed25519-sha256; c=relaxed/relaxed;\r\n"
    b" d=football.example.com; i=@football.example.com;\r\n"
    b" q=dns/txt; s=brisbane; t=1528637909; h=from : to :\r\n"
    b" subject : date : message-id : from : subject : date;\r\n"
    b" bh=2jUSOH9NhtVGCQWNr9BrIAPreKQjO6Sn7XIkfJVOzv8=;\r\n"
    b" b=/gCrinpcQOoIfuHNQIbq4pgh9kyIK3AQUdt9OdqQehSwhEIug4D11Bus\r\n"
    b" Fa3bT3FY5OsU7ZbnKELq+eXdp1Q1Dw==\r\n"
    b"DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed;\r\n"
    b" d=football.example.com; i=@football.example.com;\r\n"
    b" q=dns/txt; s=test; t=1528637909; h=from : to : subject :\r\n"
    b" date : message-id : from : subject : date;\r\n"
    b" bh=2jUSOH9NhtVGCQWNr9BrIAPreKQjO6Sn7XIkfJVOzv8=;\r\n"
    b" b=F45dVWDfMbQDGHJFlXUNB2HKfbCeLRyhDXgFpEL8GwpsRe0IeIixNTe3\r\n"
    b" DhCVlUrSjV4BwcVcOF6+FF3Zo9Rpo1tFOeS9mPYQTnGdaSGsgeefOsk2Jz\r\n"
    b" dA+L10TeYt9BgDfQNZtKdN1WO//KgIqXP7OdEFE4LjFYNcUxZQ4FADY+8=\r\n"
    b"From: Joe SixPack <joe@football.example.com>\r\n"
    b"To: Suzie Q <suzie@shopping.example.net>\r\n"
    b"Subject: Is dinner ready?\r\n"
    b"Date: Fri, 11 Jul 2003 21:00:37 -0700 (PDT)\r\n"
    b"Message-ID: <20030712040037.46341.5F8J@football.example.com>\r\n"
    b"\r\n"
    b"Hi.\r\n"
    b"\r\n"
    b"We lost the game.  Are you hungry yet?\r\n"
    b"\r\n"
    b"Joe.\r\n"
)
RFC8463_ZONE = {
    "brisbane._domainkey.football.example.com": [
        ("TXT", "v=DKIM1; k=ed25519; p=11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=")],
    "test._domainkey.football.example.com": [
        ("TXT", "v=DKIM1; k=rsa; p=MIGfMA0GCSqGSIb3DQEBAQUAA4GNADCBiQKBgQDkHlOQoBTzWR"
                "iGs5V6NpP3idY6Wk08a5qhdR6wy5bdOKb2jLQiY/J16JYi0Qvx/byYzCNb3W91y3FutAC"
                "DfzwQ/BC/e/8uBsCR+yz1Lxj+PL6lHvqMKrM3rG4hstT5QjvHO9PzoxZyVYLzBfO2EeC3"
                "Ip3G+2kryOTIKT+l/K4w3QIDAQAB")],
    "_dmarc.football.example.com": [("TXT", "v=DMARC1; p=reject")],
}


def test_rfc8463_example_verifies(dns_server):
    dns_server.set_zone(RFC8463_ZONE)
    v = run(check(dns_server, RFC8463_MSG, mail_from="joe@football.example.com", helo="mail.football.example.com"))
    assert [(s["s"], s["a"], s["result"]) for s in v.auth["dkim"]] == [
        ("brisbane", "ed25519-sha256", "pass"), ("test", "rsa-sha256", "pass")]
    assert v.auth["dkim"][1]["key_bits"] == 1024
    assert v.auth["dmarc"]["result"] == "pass"
    assert v.action == "accept" and v.may_act


def test_rfc8463_tampered_header_fails(dns_server):
    dns_server.set_zone(RFC8463_ZONE)
    raw = RFC8463_MSG.replace(b"Subject: Is dinner ready?", b"Subject: Is lunch ready?")
    v = run(check(dns_server, raw, mail_from="joe@football.example.com"))
    assert [s["result"] for s in v.auth["dkim"]] == ["fail", "fail"]
    assert all(s["reason"] == "signature did not verify" for s in v.auth["dkim"])
    assert v.action == "reject" and v.reply == (550, "5.7.1", v.reply[2])


def test_rfc8463_tampered_body_fails(dns_server):
    dns_server.set_zone(RFC8463_ZONE)
    raw = RFC8463_MSG.replace(b"We lost the game.", b"We won the game.")
    v = run(check(dns_server, raw, mail_from="joe@football.example.com"))
    assert [(s["result"], s["reason"]) for s in v.auth["dkim"]] == [("fail", "body hash did not verify")] * 2


def test_rfc8463_key_servfail_is_temperror(dns_server):
    zone = dict(RFC8463_ZONE)
    zone["brisbane._domainkey.football.example.com"] = [("SERVFAIL", None)]
    zone["test._domainkey.football.example.com"] = [("SERVFAIL", None)]
    dns_server.set_zone(zone)
    v = run(check(dns_server, RFC8463_MSG, mail_from="joe@football.example.com"))
    assert [s["result"] for s in v.auth["dkim"]] == ["temperror", "temperror"]
    assert v.auth["dmarc"]["result"] == "temperror"
    # p=reject and the outcome is open: defer, never 5xx
    assert v.action == "defer" and v.reply[:2] == (451, "4.7.0")


def test_key_timeout_is_temperror(dns_server):
    zone = dict(RFC8463_ZONE)
    zone["brisbane._domainkey.football.example.com"] = [("DROP", None)]
    dns_server.set_zone(zone)
    v = run(check(dns_server, RFC8463_MSG, mail_from="joe@football.example.com", timeout=0.3))
    assert [s["result"] for s in v.auth["dkim"]] == ["temperror", "pass"]
    assert v.auth["dmarc"]["result"] == "pass"  # the rsa signature aligns and passes
    assert v.action == "accept"


# --------------------------------------------------------------------------- malformed signatures
@pytest.mark.parametrize("mutation,reason", [
    ((b"d=football.example.com; i=@football.example.com;\r\n q=dns/txt; s=brisbane",
      b"d=; i=@football.example.com;\r\n q=dns/txt; s=brisbane"), "empty d= tag"),
    ((b"q=dns/txt; s=brisbane;", b"q=dns/txt; s=;"), "empty s= tag"),
    ((b"b=/gCrinpcQOoIfuHNQIbq4pgh9kyIK3AQUdt9OdqQehSwhEIug4D11Bus", b"b=/gCrinpcQOoIfuHNQIbq4pgh9kyIK3AQUdt9OdqQehSwhEIug4D11B!s"),
     "b= is not valid base64"),
    ((b"bh=2jUSOH9NhtVGCQWNr9BrIAPreKQjO6Sn7XIkfJVOzv8=;\r\n b=/gC", b"bh=2jUSOH9NhtVGCQWNr9BrIAPreKQjO6Sn7XIkfJVOzv8;\r\n b=/gC"),
     "bh= is not valid base64"),
    ((b"h=from : to :\r\n subject : date : message-id : from : subject : date;\r\n bh=2jU",
      b"h=to :\r\n subject : date : message-id : subject : date;\r\n bh=2jU"), "From is not signed (RFC 6376 5.4)"),
    ((b"a=ed25519-sha256;", b"a=ed448-sha512;"), "unsupported algorithm a=ed448-sha512"),
    ((b"d=football.example.com; i=@football.example.com;\r\n q=dns/txt; s=brisbane",
      b"d=football..example.com; i=@football.example.com;\r\n q=dns/txt; s=brisbane"), "d= is not a valid domain name"),
    ((b"a=ed25519-sha256; c=relaxed/relaxed;", b"a=ed25519-sha256; c=relaxed/relaxed; c"), None),
])
def test_malformed_signature_is_permerror_for_that_signature_only(dns_server, mutation, reason):
    dns_server.set_zone(RFC8463_ZONE)
    old, new = mutation
    assert old in RFC8463_MSG
    raw = RFC8463_MSG.replace(old, new, 1)
    v = run(check(dns_server, raw, mail_from="joe@football.example.com"))
    first, second = v.auth["dkim"]
    assert first["result"] == "permerror"
    if reason:
        assert first["reason"] == reason
    assert second["result"] == "pass"  # the other signature is unaffected
    assert v.auth["dmarc"]["result"] == "pass"
    assert "dkim=permerror" in v.header_value


def test_no_key_and_revoked_key(dns_server):
    zone = dict(RFC8463_ZONE)
    del zone["brisbane._domainkey.football.example.com"]
    zone["test._domainkey.football.example.com"] = [("TXT", "v=DKIM1; k=rsa; p=")]
    dns_server.set_zone(zone)
    v = run(check(dns_server, RFC8463_MSG, mail_from="joe@football.example.com"))
    assert [(s["result"], s["reason"]) for s in v.auth["dkim"]] == [
        ("permerror", "no key record"), ("fail", "key revoked (empty p=)")]


def test_small_rsa_key_is_policy(dns_server):
    pem, txt = rsa_key(512)
    dns_server.set_zone(_zone(small=txt))
    raw = sign(message(), "example.org", "small", key=pem)
    v = run(check(dns_server, raw, peer_ip="198.51.100.7"))
    (_d, _s, _a, res, reason), = _sigs(v)
    assert res == "policy" and "512" in reason
    assert v.auth["dmarc"]["result"] == "fail"


# --------------------------------------------------------------------------- l= policy
def test_l_tag_covering_body_passes_and_appended_content_is_policy(dns_server):
    pem, txt = rsa_key()
    dns_server.set_zone(_zone(sel=txt))
    raw = sign(message(), "example.org", length=True)
    assert b" l=" in raw or b";l=" in raw or b"\tl=" in raw
    v = run(check(dns_server, raw, peer_ip="198.51.100.7"))
    assert _sigs(v)[0][3] == "pass"
    appended = raw + b"\r\nClick here: http://evil.example/\r\n"
    v = run(check(dns_server, appended, peer_ip="198.51.100.7"))
    res, reason = _sigs(v)[0][3:]
    assert res == "policy" and "covers only part" in reason
    assert v.auth["dmarc"]["result"] == "fail"


# --------------------------------------------------------------------------- several signatures
def test_only_second_signature_aligns_gives_dmarc_pass(dns_server):
    pem, txt = rsa_key()
    pem2, txt2 = rsa_key(2048, 1)
    zone = _zone(sel=txt)
    zone["esp._domainkey.esp-mailer.example"] = [("TXT", txt2)]
    dns_server.set_zone(zone)
    msg = message()
    raw = sign(msg, "example.org", "sel", key=pem)           # aligned with From: example.org
    raw = sign(raw, "esp-mailer.example", "esp", key=pem2)   # topmost: the ESP's, not aligned
    v = run(check(dns_server, raw, peer_ip="198.51.100.7", mail_from="bounce@esp-mailer.example"))
    assert [(s["d"], s["result"], s["aligned"]) for s in v.auth["dkim"]] == [
        ("esp-mailer.example", "pass", False), ("example.org", "pass", True)]
    assert v.auth["dmarc"]["result"] == "pass"
    assert v.auth["dmarc"]["domains"][0]["dkim_aligned"] == ["example.org"]
    assert v.action == "accept"


def test_broken_first_signature_does_not_hide_second(dns_server):
    pem, txt = rsa_key()
    dns_server.set_zone(_zone(sel=txt))
    raw = sign(message(), "example.org", "sel", key=pem)
    raw = b"DKIM-Signature: v=1; a=rsa-sha256; d=; s=x; h=from; bh=AAAA; b=AAAA\r\n" + raw
    v = run(check(dns_server, raw, peer_ip="198.51.100.7"))
    assert [s["result"] for s in v.auth["dkim"]] == ["permerror", "pass"]
    assert v.auth["dmarc"]["result"] == "pass"


def test_large_message_goes_to_executor(dns_server):
    import concurrent.futures
    import threading

    pem, txt = rsa_key()
    dns_server.set_zone(_zone(sel=txt))
    body = (b"x" * 70 + b"\r\n") * 30000  # ~2 MB
    raw = sign(message(body=body), "example.org", "sel", key=pem)
    seen = []

    class Recording(concurrent.futures.ThreadPoolExecutor):
        def submit(self, fn, *a, **k):
            seen.append(threading.current_thread().name)
            return super().submit(fn, *a, **k)

    ex = Recording(max_workers=1)
    v = run(check(dns_server, raw, peer_ip="198.51.100.7", executor=ex))
    ex.shutdown()
    assert seen, "DKIM verification of a large message must run in the executor"
    assert _sigs(v)[0][3] == "pass"


def test_process_pool_executor_works(dns_server):
    import concurrent.futures

    pem, txt = rsa_key()
    dns_server.set_zone(_zone(sel=txt))
    raw = sign(message(body=b"y" * 100_000 + b"\r\n"), "example.org", "sel", key=pem)
    with concurrent.futures.ProcessPoolExecutor(max_workers=1) as ex:
        v = run(check(dns_server, raw, peer_ip="198.51.100.7", executor=ex, inline_max_bytes=0))
    assert _sigs(v)[0][3] == "pass"
