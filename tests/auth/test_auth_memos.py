"""The per-process memos of the SMTP-time check give the same answers as the functions they remember."""
from __future__ import annotations

from gateway.auth import dmarc, spfcheck

HELOS = ["mail.example.org", "example.org", "localhost", "[192.0.2.1]", "192.0.2.1", "::1", "",
         "mail..example.org", "xn--bcher-kva.example", "bücher.example", "a" * 64 + ".example",
         "mail.example.org.", "-bad.example", "under_score.example"]


def test_helo_memo_matches_the_function_and_is_bounded() -> None:
    spfcheck._HELO_SEEN.clear()
    for _ in range(2):  # the second round answers from the memo
        for helo in HELOS:
            assert spfcheck.helo_is_domain(helo) is spfcheck._helo_is_domain(helo), helo
    assert spfcheck.helo_is_domain("mail.example.org") is True
    assert spfcheck.helo_is_domain("[192.0.2.1]") is False
    for i in range(5000):
        spfcheck.helo_is_domain(f"h{i}.example")
    assert len(spfcheck._HELO_SEEN) <= 4096


RECORDS = ["v=DMARC1; p=reject", "v=DMARC1; p=none; rua=mailto:a@example.org", "v=DMARC1; p=bogus",
           "v=DMARC1; p=bogus; rua=mailto:x@example.org", "v=spf1 -all", "v=DMARC1; p=quarantine; sp=reject; pct=50",
           "v=DMARC1; p=reject; adkim=s; aspf=x"]


def test_dmarc_record_memo_matches_the_parser() -> None:
    dmarc._PARSED.clear()
    for _ in range(2):
        for txt in RECORDS:
            assert dmarc._parsed_record(txt) == dmarc.parse_dmarc_record(txt), txt
    assert dmarc._parsed_record("v=DMARC1; p=reject").p == "reject"
    assert dmarc._parsed_record("v=DMARC1; p=bogus") is None
