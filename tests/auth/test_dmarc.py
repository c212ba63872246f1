"""DMARC case table: each case is a message as it arrives at DATA, with the expected SMTP
reply, DMARC result and Authentication-Results content. DNS comes from a real server on
127.0.0.1; DKIM signatures are real (dkimpy signer, 2048-bit keys)."""
from __future__ import annotations

import random

import pytest

from gateway.auth import AuthPolicy

from .helpers import check, message, rsa_key, run, sign

PEM, KEY_TXT = rsa_key()
OK_IP = "192.0.2.10"      # authorised by every SPF record below
BAD_IP = "198.51.100.66"  # authorised by none

ZONE = {
    # example.org: the organisation
    "example.org": [("TXT", f"v=spf1 ip4:{OK_IP} -all")],
    "bounces.example.org": [("TXT", f"v=spf1 ip4:{OK_IP} -all")],
    "_dmarc.example.org": [("TXT", "v=DMARC1; p=reject; sp=quarantine")],
    "sel._domainkey.example.org": [("TXT", KEY_TXT)],
    "sel._domainkey.news.example.org": [("TXT", KEY_TXT)],
    # strict alignment
    "strict.example": [("TXT", f"v=spf1 ip4:{OK_IP} -all")],
    "b.strict.example": [("TXT", f"v=spf1 ip4:{OK_IP} -all")],
    "_dmarc.strict.example": [("TXT", "v=DMARC1; p=reject; adkim=s; aspf=s")],
    "sel._domainkey.strict.example": [("TXT", KEY_TXT)],
    # subdomain with its own record
    "_dmarc.own.example.org": [("TXT", "v=DMARC1; p=none")],
    # sp=none
    "_dmarc.spnone.example": [("TXT", "v=DMARC1; p=reject; sp=none")],
    # PSL: co.uk is a public suffix, github.io a private one
    "_dmarc.example.co.uk": [("TXT", "v=DMARC1; p=reject")],
    "sel._domainkey.example.co.uk": [("TXT", KEY_TXT)],
    "sel._domainkey.other.co.uk": [("TXT", KEY_TXT)],
    "_dmarc.co.uk": [("TXT", "v=DMARC1; p=none")],  # must never be used
    "_dmarc.foo.github.io": [("TXT", "v=DMARC1; p=reject")],
    "sel._domainkey.bar.github.io": [("TXT", KEY_TXT)],
    # pct
    "_dmarc.pct0.example": [("TXT", "v=DMARC1; p=reject; pct=0")],
    "_dmarc.pct50.example": [("TXT", "v=DMARC1; p=reject; pct=50")],
    # quarantine
    "_dmarc.quar.example": [("TXT", "v=DMARC1; p=quarantine")],
    # hyphenated and IDN
    "_dmarc.my-company-mail.example": [("TXT", "v=DMARC1; p=reject")],
    "sel._domainkey.my-company-mail.example": [("TXT", KEY_TXT)],
    "_dmarc.xn--bcher-kva.example": [("TXT", "v=DMARC1; p=reject")],
    "sel._domainkey.xn--bcher-kva.example": [("TXT", KEY_TXT)],
    # no record, broken records, DNS trouble
    "nodmarc.example": [("TXT", f"v=spf1 ip4:{OK_IP} -all")],
    "_dmarc.twice.example": [("TXT", "v=DMARC1; p=reject"), ("TXT", "v=DMARC1; p=none")],
    "_dmarc.badp.example": [("TXT", "v=DMARC1; p=bogus")],
    "_dmarc.badp-rua.example": [("TXT", "v=DMARC1; p=bogus; rua=mailto:r@badp-rua.example")],
    "_dmarc.caps.example": [("TXT", "v=DMARC1; P=REJECT")],
    "_dmarc.notfirst.example": [("TXT", "p=reject; v=DMARC1")],
    "_dmarc.servfail.example": [("SERVFAIL", None)],
    "_dmarc.orgfail.example": [("SERVFAIL", None)],
    "_dmarc.relaxed-none.example": [("TXT", "v=DMARC1; p=reject")],
    "sel._domainkey.tempkey.example": [("SERVFAIL", None)],
    "_dmarc.tempkey.example": [("TXT", "v=DMARC1; p=reject")],
    "_dmarc.tempkeyq.example": [("TXT", "v=DMARC1; p=none")],
    "sel._domainkey.tempkeyq.example": [("SERVFAIL", None)],
}


class FixedRng(random.Random):
    def __init__(self, value: float) -> None:
        super().__init__(0)
        self.value = value

    def random(self) -> float:
        return self.value


def case(frm, *, dkim=None, mail_from="", ip=BAD_IP, policy=None, raw=None, rng=None):
    return dict(frm=frm, dkim=dkim, mail_from=mail_from, ip=ip, policy=policy, raw=raw, rng=rng)


# (id, case, expected reply code or None for 250, dmarc result, substrings of the A-R value)
CASES = [
    ("relaxed-dkim-org-domain",
     case("alice@news.example.org", dkim="example.org"), None, "pass",
     ["dkim=pass", "header.d=example.org", "dmarc=pass", "header.from=news.example.org"]),
    ("relaxed-spf",
     case("alice@example.org", mail_from="b@bounces.example.org", ip=OK_IP), None, "pass",
     ["spf=pass", "smtp.mailfrom=b@bounces.example.org", "dmarc=pass"]),
    ("strict-dkim-subdomain-fails",
     case("alice@strict.example", dkim="news.strict.example"), 550, "fail", ["dmarc=fail", "policy.dmarc=reject"]),
    ("strict-dkim-exact-passes",
     case("alice@strict.example", dkim="strict.example"), None, "pass", ["dmarc=pass"]),
    ("strict-spf-subdomain-fails",
     case("alice@strict.example", mail_from="x@b.strict.example", ip=OK_IP), 550, "fail", ["spf=pass", "dmarc=fail"]),
    ("sp-quarantine-for-subdomain",
     case("alice@news.example.org"), "quarantine", "fail", ["dmarc=fail", "policy.dmarc=quarantine", "dis=QUARANTINE"]),
    ("sp-none-for-subdomain",
     case("alice@news.spnone.example"), None, "fail", ["dmarc=fail", "dis=NONE"]),
    ("p-for-the-org-domain-itself",
     case("alice@spnone.example"), 550, "fail", ["dmarc=fail", "dis=REJECT"]),
    ("subdomain-with-own-record",
     case("alice@own.example.org"), None, "fail", ["dmarc=fail", "p=NONE"]),
    ("psl-org-domain-aligns",
     case("alice@mail.example.co.uk", dkim="example.co.uk"), None, "pass", ["dmarc=pass"]),
    ("psl-public-suffix-does-not-align",
     case("alice@example.co.uk", dkim="other.co.uk"), 550, "fail", ["dmarc=fail"]),
    ("psl-private-section-does-not-align",
     case("alice@foo.github.io", dkim="bar.github.io"), 550, "fail", ["dmarc=fail"]),
    ("pct0-downgrades-reject-to-quarantine",
     case("alice@pct0.example"), "quarantine", "fail", ["dis=QUARANTINE"]),
    ("pct50-sampled",
     case("alice@pct50.example", rng=FixedRng(0.2)), 550, "fail", ["dis=REJECT"]),
    ("pct50-not-sampled",
     case("alice@pct50.example", rng=FixedRng(0.8)), "quarantine", "fail", ["dis=QUARANTINE"]),
    ("p-quarantine",
     case("alice@quar.example"), "quarantine", "fail", ["dmarc=fail", "policy.dmarc=quarantine"]),
    ("hyphenated-domain-pass",
     case('"Support Team" <help@my-company-mail.example>', dkim="my-company-mail.example"), None, "pass",
     ["header.from=my-company-mail.example", "dmarc=pass"]),
    ("hyphenated-domain-fail",
     case("Support <help@my-company-mail.example>"), 550, "fail", ["header.from=my-company-mail.example"]),
    ("idn-domain-pass",
     case("Bücher <info@bücher.example>", dkim="xn--bcher-kva.example"), None, "pass",
     ["header.from=xn--bcher-kva.example", "dmarc=pass"]),
    ("idn-domain-fail",
     case("Bücher <info@bücher.example>"), 550, "fail", ["header.from=xn--bcher-kva.example", "dmarc=fail"]),
    ("no-record",
     case("alice@nodmarc.example"), None, "none", ["dmarc=none", "header.from=nodmarc.example"]),
    ("two-records-means-none",
     case("alice@twice.example"), None, "none", ["dmarc=none"]),
    ("invalid-p-without-rua-ignored",
     case("alice@badp.example"), None, "none", ["dmarc=none"]),
    ("invalid-p-with-rua-is-p-none",
     case("alice@badp-rua.example"), None, "fail", ["dmarc=fail", "p=NONE"]),
    ("tag-names-and-values-case-insensitive",
     case("alice@caps.example"), 550, "fail", ["dmarc=fail"]),
    ("v-not-first-ignored",
     case("alice@notfirst.example"), None, "none", ["dmarc=none"]),
    ("record-servfail-temperror",
     case("alice@servfail.example"), 451, "temperror", ["dmarc=temperror"]),
    ("org-record-servfail-temperror",
     case("alice@sub.orgfail.example"), 451, "temperror", ["dmarc=temperror"]),
    ("aligned-key-temperror-defers-under-reject",
     case("alice@tempkey.example", dkim="tempkey.example"), 451, "temperror", ["dkim=temperror"]),
    ("aligned-key-temperror-accepts-under-none",
     case("alice@tempkeyq.example", dkim="tempkeyq.example"), None, "temperror", ["dkim=temperror"]),
    ("multiple-from-fields",
     case("alice@example.org", raw=b"From: mallory@evil.example\r\n"), 550, "permerror", ["dmarc=permerror"]),
    ("two-authors-strictest-failing-policy",
     case("alice@nodmarc.example, bob@quar.example"), "quarantine", "fail", ["header.from=quar.example"]),
    ("policy-dmarc-reject-as-quarantine",
     case("alice@spnone.example", policy=AuthPolicy(dmarc_reject="quarantine")), "quarantine", "fail", []),
    ("policy-dmarc-reject-as-tag",
     case("alice@spnone.example", policy=AuthPolicy(dmarc_reject="tag")), None, "fail", []),
    ("policy-monitor-mode",
     case("alice@spnone.example", policy=AuthPolicy(honour_dmarc_policy=False)), None, "fail", []),
    ("policy-temperror-accept",
     case("alice@servfail.example", policy=AuthPolicy(dns_temperror="accept")), None, "temperror", []),
]


@pytest.mark.parametrize("cid,c,want_code,want_dmarc,ar_parts", CASES, ids=[x[0] for x in CASES])
def test_dmarc_case(dns_server, cid, c, want_code, want_dmarc, ar_parts):
    dns_server.set_zone(ZONE)
    raw = message(frm=c["frm"], extra=c["raw"] or b"")
    if c["dkim"]:
        raw = sign(raw, c["dkim"], "sel", key=PEM)
    kw = {"rng": c["rng"]} if c["rng"] else {}
    v = run(check(dns_server, raw, peer_ip=c["ip"], helo="mx.sender.example", mail_from=c["mail_from"],
                  policy=c["policy"], **kw))
    assert v.auth["dmarc"]["result"] == want_dmarc, v.auth["dmarc"]
    if want_code is None:
        assert v.action == "accept" and v.reply is None and not v.suspicious
    elif want_code == "quarantine":
        assert v.action == "quarantine" and v.reply is None and v.suspicious and not v.may_act
    elif want_code == 550:
        assert v.action == "reject" and v.reply[0] == 550 and v.reply[1] in ("5.7.1",)
    elif want_code == 451:
        assert v.action == "defer" and v.reply[0] == 451 and v.reply[1].startswith("4.7.")
    assert v.header_value.startswith("mx.support.test; ")
    for part in ar_parts:
        assert part in v.header_value, (part, v.header_value)
    # never a 5xx for a DNS temporary failure
    if want_dmarc == "temperror":
        assert v.reply is None or v.reply[0] < 500


def test_psl_org_lookup_skips_public_suffix(dns_server):
    dns_server.set_zone(ZONE)
    dns_server.queries.clear()
    run(check(dns_server, message(frm="alice@mail.example.co.uk"), peer_ip=BAD_IP, mail_from=""))
    asked = {n for n, t in dns_server.queries if n.startswith("_dmarc.")}
    assert asked == {"_dmarc.mail.example.co.uk", "_dmarc.example.co.uk"}


def test_idn_dmarc_lookup_uses_a_labels(dns_server):
    dns_server.set_zone(ZONE)
    dns_server.queries.clear()
    run(check(dns_server, message(frm="info@bücher.example"), peer_ip=BAD_IP, mail_from=""))
    assert ("_dmarc.xn--bcher-kva.example", "TXT") in dns_server.queries


def test_missing_from_is_refused(dns_server):
    dns_server.set_zone(ZONE)
    raw = b"To: help@support.test\r\nSubject: no from\r\n\r\nbody\r\n"
    v = run(check(dns_server, raw, peer_ip=BAD_IP))
    assert v.reply[:2] == (550, "5.7.1") and v.auth["dmarc"]["result"] == "permerror"
    v = run(check(dns_server, raw, peer_ip=BAD_IP, policy=AuthPolicy(malformed_from="tag")))
    assert v.action == "accept" and not v.may_act


def test_require_dmarc_for_actions(dns_server):
    dns_server.set_zone(ZONE)
    req = AuthPolicy(require_dmarc_for_actions=True)
    v = run(check(dns_server, message(frm="alice@nodmarc.example"), peer_ip=OK_IP,
                  mail_from="alice@nodmarc.example", policy=req))
    assert v.action == "accept" and not v.may_act  # dmarc=none is not a pass
    v = run(check(dns_server, message(frm="alice@nodmarc.example"), peer_ip=OK_IP,
                  mail_from="alice@nodmarc.example"))
    assert v.may_act
    raw = sign(message(frm="alice@example.org"), "example.org", "sel", key=PEM)
    v = run(check(dns_server, raw, peer_ip=BAD_IP, policy=req))
    assert v.auth["dmarc"]["result"] == "pass" and v.may_act
