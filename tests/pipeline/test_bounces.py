"""Stage "bounce": DSNs from real MTAs (the shared corpus) and hand-built ones of the common shapes."""
from __future__ import annotations

from pathlib import Path

import pytest

from gateway.pipeline.stages.bounces import BounceStage, analyse_bounce, verp_token
from gateway.pipeline.parse.mime import parse_message
from gateway.config.pipeline import BouncePolicy, parse_pipeline_policy
from gateway.pipeline.stages.core import CONTINUE, DROP
from tests.conftest import CORPORA

from .helpers import inbound, message, run

REPORTS = CORPORA / "mail" / "multipart_report_emails"

# What each corpus file must yield: (permanent, temporary)
CORPUS_EXPECTED = {
    "multi_address_bounce1.eml": ({"egyfefsdvsfvvhjsd@gmail.com", "bscdbcjhasbcjhbdscbhbsdhcbj@gmail.com",
                                   "qfvhgsvhgsduiohncdhcvhsdfvsfygusd@gmail.com", "kfhejkfbsjkjsbhds@gmail.com",
                                   "bbbbvhvbbvkjbhfbvbvjhb@gmail.com"}, set()),
    "multi_address_bounce2.eml": ({"egyfefsdvsfvvhjsd@gmail.com", "bscdbcjhasbcjhbdscbhbsdhcbj@gmail.com",
                                   "qfvhgsvhgsduiohncdhcvhsdfvsfygusd@gmail.com", "kfhejkfbsjkjsbhds@gmail.com",
                                   "bbbbvhvbbvkjbhfbvbvjhb@gmail.com"}, set()),
    "multipart_report_multiple_status.eml": ({"u@ci.com"}, set()),
    "report_422.eml": (set(), {"fraser@oooooooo.com.au"}),
    "report_530.eml": ({"edwin@zzzzzzz.com"}, set()),
}


def _corpus_files() -> list[Path]:
    if not REPORTS.is_dir():
        return []
    return sorted(REPORTS.glob("*.eml"))


@pytest.mark.skipif(not REPORTS.is_dir(), reason=f"shared mail corpus not found at {REPORTS} "
                    "(set TICKETMX_CORPORA or check out shared/corpora beside the repo)")
def test_corpus_every_report_detected() -> None:
    files = _corpus_files()
    assert files, "no .eml in the report corpus"
    detected = 0
    for path in files:
        raw = path.read_bytes()
        v = run(BounceStage(), inbound(raw, mail_from=""))
        assert v.action == DROP, path.name
        b = v.data["bounce"]
        assert b["standard"] is True, path.name
        if path.name in CORPUS_EXPECTED:
            perm, temp = CORPUS_EXPECTED[path.name]
            assert set(b["permanent"]) == perm, path.name
            assert set(b["temporary"]) == temp, path.name
        if b["permanent"] or b["temporary"]:
            detected += 1
    assert detected == len(files)


@pytest.mark.skipif(not REPORTS.is_dir(), reason=f"shared mail corpus not found at {REPORTS}")
def test_corpus_reasons_and_original_ids() -> None:
    v = run(BounceStage(), inbound((REPORTS / "report_422.eml").read_bytes(), mail_from=""))
    assert v.reason == "bounce: temporary failure for fraser@oooooooo.com.au"
    v = run(BounceStage(), inbound((REPORTS / "report_530.eml").read_bytes(), mail_from=""))
    assert v.reason == "bounce: permanent failure for edwin@zzzzzzz.com"
    v = run(BounceStage(), inbound((REPORTS / "multi_address_bounce1.eml").read_bytes(), mail_from=""))
    assert v.reason.startswith("bounce: permanent failure for ") and v.reason.endswith(" and 4 more")
    for path in _corpus_files():
        b = run(BounceStage(), inbound(path.read_bytes(), mail_from="")).data["bounce"]
        if b["original_message_id"] is not None:
            assert "<" not in b["original_message_id"] and "@" in b["original_message_id"]


ORIGINAL_HEADERS = (
    "From: HD Support <support@example.test>\r\n"
    "To: gone@customer.example\r\n"
    "Subject: [HD-1001] Your request\r\n"
    "Message-ID: <ticket-1001.n1@mx.example.test>\r\n"
    "Auto-Submitted: auto-replied\r\n"
)

POSTFIX = (
    "Return-Path: <>\r\n"
    "From: MAILER-DAEMON@mail.customer.example (Mail Delivery System)\r\n"
    "Subject: Undelivered Mail Returned to Sender\r\n"
    "To: bounce+n1.abcdef@example.test\r\n"
    "Auto-Submitted: auto-replied\r\n"
    "MIME-Version: 1.0\r\n"
    "Content-Type: multipart/report; report-type=delivery-status;\r\n"
    "\tboundary=\"4B1C2E0A3.1700000000/mail.customer.example\"\r\n"
    "Message-Id: <20240101100000.4B1C2E0A3@mail.customer.example>\r\n"
    "\r\n"
    "This is a MIME-encapsulated message.\r\n"
    "\r\n"
    "--4B1C2E0A3.1700000000/mail.customer.example\r\n"
    "Content-Description: Notification\r\n"
    "Content-Type: text/plain; charset=us-ascii\r\n"
    "\r\n"
    "This is the mail system at host mail.customer.example.\r\n"
    "\r\n"
    "I'm sorry to have to inform you that your message could not\r\n"
    "be delivered to one or more recipients.\r\n"
    "\r\n"
    "<gone@customer.example>: host mx.customer.example[198.51.100.7] said: 550 5.1.1\r\n"
    "    <gone@customer.example>: Recipient address rejected: User unknown\r\n"
    "\r\n"
    "--4B1C2E0A3.1700000000/mail.customer.example\r\n"
    "Content-Description: Delivery report\r\n"
    "Content-Type: message/delivery-status\r\n"
    "\r\n"
    "Reporting-MTA: dns; mail.customer.example\r\n"
    "X-Postfix-Queue-ID: 4B1C2E0A3\r\n"
    "Arrival-Date: Mon,  1 Jan 2024 10:00:00 +0000 (UTC)\r\n"
    "\r\n"
    "Final-Recipient: rfc822; gone@customer.example\r\n"
    "Original-Recipient: rfc822;gone@customer.example\r\n"
    "Action: failed\r\n"
    "Status: 5.1.1\r\n"
    "Remote-MTA: dns; mx.customer.example\r\n"
    "Diagnostic-Code: smtp; 550 5.1.1 <gone@customer.example>: Recipient address\r\n"
    "    rejected: User unknown\r\n"
    "\r\n"
    "--4B1C2E0A3.1700000000/mail.customer.example\r\n"
    "Content-Description: Undelivered Message Headers\r\n"
    "Content-Type: text/rfc822-headers\r\n"
    "\r\n" + ORIGINAL_HEADERS +
    "\r\n"
    "--4B1C2E0A3.1700000000/mail.customer.example--\r\n"
).encode()

EXCHANGE = (
    "From: Microsoft Outlook <postmaster@customer.onmicrosoft.example>\r\n"
    "To: <support@example.test>\r\n"
    "Subject: Undeliverable: [HD-1001] Your request\r\n"
    "Date: Mon, 1 Jan 2024 10:00:05 +0000\r\n"
    "Message-ID: <a1b2c3d4-e5f6@DB8PR01MB0000.eurprd01.prod.outlook.example>\r\n"
    "In-Reply-To: <ticket-1001.n1@mx.example.test>\r\n"
    "References: <ticket-1001.n1@mx.example.test>\r\n"
    "MIME-Version: 1.0\r\n"
    "Content-Type: multipart/report; report-type=delivery-status;\r\n"
    "\tboundary=\"ndr_boundary\"\r\n"
    "X-MS-Exchange-Message-Is-Ndr: \r\n"
    "Content-Language: en-US\r\n"
    "X-MS-PublicTrafficType: Email\r\n"
    "Auto-Submitted: auto-replied\r\n"
    "\r\n"
    "--ndr_boundary\r\n"
    "Content-Type: multipart/alternative; boundary=\"alt\"\r\n"
    "\r\n"
    "--alt\r\n"
    "Content-Type: text/plain; charset=\"us-ascii\"\r\n"
    "\r\n"
    "Your message to mailbox.full@customer.example couldn't be delivered.\r\n"
    "mailbox.full wasn't found at customer.example.\r\n"
    "--alt\r\n"
    "Content-Type: text/html; charset=\"us-ascii\"\r\n"
    "\r\n"
    "<html><body><p>Your message couldn't be delivered.</p></body></html>\r\n"
    "--alt--\r\n"
    "\r\n"
    "--ndr_boundary\r\n"
    "Content-Type: message/delivery-status\r\n"
    "\r\n"
    "Reporting-MTA: dns;DB8PR01MB0000.eurprd01.prod.outlook.example\r\n"
    "Received-From-MTA: dns;mx.example.test\r\n"
    "Arrival-Date: Mon, 1 Jan 2024 10:00:04 +0000\r\n"
    "\r\n"
    "Final-Recipient: rfc822;Mailbox.Full@customer.example\r\n"
    "Action: failed\r\n"
    "Status: 5.1.10\r\n"
    "Diagnostic-Code: smtp;550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup\r\n"
    "\r\n"
    "--ndr_boundary\r\n"
    "Content-Type: message/rfc822\r\n"
    "\r\n" + ORIGINAL_HEADERS +
    "Content-Type: text/plain\r\n"
    "\r\n"
    "Dear customer, ...\r\n"
    "\r\n"
    "--ndr_boundary--\r\n"
).encode()

QMAIL = (
    "Return-Path: <>\r\n"
    "Date: 1 Jan 2024 10:00:00 -0000\r\n"
    "From: MAILER-DAEMON@qmail.customer.example\r\n"
    "To: support@example.test\r\n"
    "Subject: failure notice\r\n"
    "\r\n"
    "Hi. This is the qmail-send program at qmail.customer.example.\r\n"
    "I'm afraid I wasn't able to deliver your message to the following addresses.\r\n"
    "This is a permanent error; I've given up. Sorry it didn't work out.\r\n"
    "\r\n"
    "<nobody@customer.example>:\r\n"
    "Sorry, no mailbox here by that name. (#5.1.1)\r\n"
    "\r\n"
    "--- Below this line is a copy of the message.\r\n"
    "\r\n"
    "Return-Path: <bounce+n1.abcdef@example.test>\r\n" + ORIGINAL_HEADERS +
    "\r\n"
    "Dear customer, ...\r\n"
).encode()

GMAIL = (
    "Delivered-To: support@example.test\r\n"
    "Return-Path: <>\r\n"
    "From: Mail Delivery Subsystem <mailer-daemon@googlemail.com>\r\n"
    "To: support@example.test\r\n"
    "Auto-Submitted: auto-replied\r\n"
    "Subject: Delivery Status Notification (Failure)\r\n"
    "References: <ticket-1001.n1@mx.example.test>\r\n"
    "In-Reply-To: <ticket-1001.n1@mx.example.test>\r\n"
    "X-Failed-Recipients: no.such.user.4711@gmail.com\r\n"
    "Message-ID: <65a1b2c3.abc@mx.google.com>\r\n"
    "Date: Mon, 01 Jan 2024 02:00:01 -0800 (PST)\r\n"
    "MIME-Version: 1.0\r\n"
    "Content-Type: multipart/report; boundary=\"000000000000abcdef\"; report-type=delivery-status\r\n"
    "\r\n"
    "--000000000000abcdef\r\n"
    "Content-Type: text/plain; charset=\"UTF-8\"\r\n"
    "\r\n"
    "** Address not found **\r\n"
    "\r\n"
    "Your message wasn't delivered to no.such.user.4711@gmail.com because the address couldn't be found.\r\n"
    "\r\n"
    "--000000000000abcdef\r\n"
    "Content-Type: message/delivery-status\r\n"
    "\r\n"
    "Reporting-MTA: dns; googlemail.com\r\n"
    "Received-From-MTA: dns; mx.example.test\r\n"
    "Arrival-Date: Mon, 01 Jan 2024 02:00:00 -0800 (PST)\r\n"
    "\r\n"
    "Final-Recipient: rfc822; no.such.user.4711@gmail.com\r\n"
    "Action: failed\r\n"
    "Status: 5.1.1\r\n"
    "Remote-MTA: dns; gmail-smtp-in.l.google.com. (2607:f8b0::1b, the server for the domain gmail.com.)\r\n"
    "Diagnostic-Code: smtp; 550-5.1.1 The email account that you tried to reach does not exist.\r\n"
    "Last-Attempt-Date: Mon, 01 Jan 2024 02:00:01 -0800 (PST)\r\n"
    "\r\n"
    "--000000000000abcdef\r\n"
    "Content-Type: message/rfc822\r\n"
    "\r\n"
    "From: HD Support <support@example.test>\r\n"
    "To: no.such.user.4711@gmail.com\r\n"
    "Subject: [HD-1002] Hello\r\n"
    "Message-ID: <ticket-1002.n7@mx.example.test>\r\n"
    "\r\n"
    "Hello\r\n"
    "\r\n"
    "--000000000000abcdef--\r\n"
).encode()

EXIM = (
    "Return-path: <>\r\n"
    "From: Mail Delivery System <Mailer-Daemon@exim.customer.example>\r\n"
    "To: support@example.test\r\n"
    "Subject: Mail delivery failed: returning message to sender\r\n"
    "Message-Id: <E1abc-0001@exim.customer.example>\r\n"
    "X-Failed-Recipients: left.company@customer.example\r\n"
    "Auto-Submitted: auto-replied\r\n"
    "\r\n"
    "This message was created automatically by mail delivery software.\r\n"
    "\r\n"
    "A message that you sent could not be delivered to one or more of its\r\n"
    "recipients. This is a permanent error. The following address(es) failed:\r\n"
    "\r\n"
    "  left.company@customer.example\r\n"
    "    Unrouteable address\r\n"
    "\r\n"
    "------ This is a copy of the message, including all the headers. ------\r\n"
    "\r\n" + ORIGINAL_HEADERS.replace("n1@", "n9@") +
    "\r\n"
    "Dear customer\r\n"
).encode()

DELAYED = (
    "From: MAILER-DAEMON@mail.customer.example (Mail Delivery System)\r\n"
    "To: support@example.test\r\n"
    "Subject: Delayed Mail (still being retried)\r\n"
    "MIME-Version: 1.0\r\n"
    "Content-Type: multipart/report; report-type=delivery-status; boundary=\"b\"\r\n"
    "\r\n"
    "--b\r\nContent-Type: text/plain\r\n\r\nStill trying.\r\n"
    "--b\r\nContent-Type: message/delivery-status\r\n\r\n"
    "Reporting-MTA: dns; mail.customer.example\r\n\r\n"
    "Final-Recipient: rfc822; slow@customer.example\r\nAction: delayed\r\nStatus: 4.4.1\r\n"
    "Diagnostic-Code: X-Postfix; connect to mx.customer.example: Connection timed out\r\n\r\n"
    "--b\r\nContent-Type: text/rfc822-headers\r\n\r\n" + ORIGINAL_HEADERS + "\r\n--b--\r\n"
).encode()

SUCCESS = DELAYED.replace(b"Action: delayed", b"Action: delivered").replace(b"Status: 4.4.1", b"Status: 2.0.0") \
    .replace(b"Delayed Mail (still being retried)", b"Successful Mail Delivery Report")


def _bounce(raw: bytes, **kw):
    kw.setdefault("mail_from", "")
    return run(BounceStage(), inbound(raw, **kw))


def test_postfix_dsn() -> None:
    v = _bounce(POSTFIX, rcpt=("bounce+n1.abcdef@example.test",))
    assert v.action == DROP and v.reason == "bounce: permanent failure for gone@customer.example"
    b = v.data["bounce"]
    assert b["permanent"] == ["gone@customer.example"] and b["temporary"] == []
    assert b["original_message_id"] == "ticket-1001.n1@mx.example.test"
    assert b["original_is_ours"] is True
    assert b["verp"] == "n1.abcdef" and b["verp_address"] == "bounce+n1.abcdef@example.test"
    assert b["standard"] is True
    assert b["details"] == [{"recipient": "gone@customer.example", "action": "failed", "status": "5.1.1",
                             "diagnostic": "smtp; 550 5.1.1 <gone@customer.example>: Recipient address "
                                           "rejected: User unknown"}]


def test_exchange_ndr() -> None:
    v = _bounce(EXCHANGE, mail_from="")
    b = v.data["bounce"]
    assert v.action == DROP
    assert b["permanent"] == ["Mailbox.Full@customer.example"]
    assert b["original_message_id"] == "ticket-1001.n1@mx.example.test"
    assert b["details"][0]["status"] == "5.1.10"
    assert b["verp"] is None


def test_qmail_bounce() -> None:
    v = _bounce(QMAIL)
    b = v.data["bounce"]
    assert v.action == DROP and b["permanent"] == ["nobody@customer.example"]
    assert b["standard"] is False
    assert b["original_message_id"] == "ticket-1001.n1@mx.example.test"     # from the inlined copy


def test_gmail_dsn() -> None:
    v = _bounce(GMAIL)
    b = v.data["bounce"]
    assert b["permanent"] == ["no.such.user.4711@gmail.com"]
    assert b["original_message_id"] == "ticket-1002.n7@mx.example.test"     # attached message wins


def test_exim_bounce() -> None:
    v = _bounce(EXIM)
    b = v.data["bounce"]
    assert v.action == DROP and b["permanent"] == ["left.company@customer.example"]
    assert b["original_message_id"] == "ticket-1001.n9@mx.example.test"


def test_delayed_is_temporary() -> None:
    v = _bounce(DELAYED)
    b = v.data["bounce"]
    assert b["permanent"] == [] and b["temporary"] == ["slow@customer.example"]
    assert v.reason == "bounce: temporary failure for slow@customer.example"


def test_success_dsn_is_dropped_without_failures() -> None:
    v = _bounce(SUCCESS)
    assert v.action == DROP and v.reason == "bounce: delivery status notification without failures"
    assert v.data["bounce"]["permanent"] == [] and v.data["bounce"]["temporary"] == []


def test_person_mail_is_not_a_bounce() -> None:
    # a person whose subject looks like a bounce, and a person writing about failures
    raw = message(subject="Undeliverable package - where is my order?",
                  body="Hi, my package could not be delivered to gone@customer.example.\r\n")
    assert _bounce(raw, mail_from="alice@example.org").action == CONTINUE
    assert _bounce(message(), mail_from="alice@example.org").action == CONTINUE
    # null sender but not a bounce (e.g. a calendar robot): the automatic stage handles it
    assert _bounce(message(), mail_from="").action == CONTINUE


def test_verp_without_recognisable_failure() -> None:
    raw = message(subject="Out of office", sender="bob@customer.example")
    v = _bounce(raw, mail_from="bob@customer.example", rcpt=("bounce+tok123@example.test",))
    assert v.action == DROP and v.data["bounce"]["verp"] == "tok123"
    assert v.reason == "bounce: mail to our VERP return path (no failed recipient recognised)"


def test_verp_prefix_configurable_and_off() -> None:
    assert verp_token(["Bounces-abc@x.test"], "bounces-") == ("abc", "Bounces-abc@x.test")
    assert verp_token(["bounce+@x.test"], "bounce+") is None
    assert verp_token(["bounce+abc@x.test"], "") is None
    pol = parse_pipeline_policy({"bounce": {"verp_prefix": ""}}).bounce
    raw = message(subject="Out of office", sender="bob@customer.example")
    v = run(BounceStage(pol), inbound(raw, mail_from="bob@customer.example", rcpt=("bounce+tok@example.test",)))
    assert v.action == CONTINUE


def test_scan_suspects_off_only_standard_reports() -> None:
    pol = BouncePolicy(scan_suspects=False)
    assert run(BounceStage(pol), inbound(QMAIL, mail_from="")).action == CONTINUE
    assert run(BounceStage(pol), inbound(POSTFIX, mail_from="")).action == DROP


def test_analyse_never_raises_on_garbage() -> None:
    for raw in (b"", b"\x00\xff" * 100, b"Content-Type: multipart/report; report-type=delivery-status\r\n\r\n--x",
                POSTFIX[: len(POSTFIX) // 2]):
        analyse_bounce(raw, parse_message(raw), "", ("support@example.test",), BouncePolicy())


@pytest.mark.skipif(not (CORPORA / "mail").is_dir(), reason=f"shared mail corpus not found at {CORPORA / 'mail'}")
def test_corpus_no_false_positives() -> None:
    """Across the rest of the corpus only the one real DSN (in mime_emails/) is taken for a bounce."""
    found = []
    for path in sorted((CORPORA / "mail").glob("*/*.eml")):
        if path.parent.name == "multipart_report_emails":
            continue
        v = run(BounceStage(), inbound(path.read_bytes(), mail_from="someone@example.org"))
        if v.action != CONTINUE:
            found.append(f"{path.parent.name}/{path.name}")
    assert found == ["mime_emails/raw_email_with_mimepart_without_content_type.eml"]


def test_a_detector_choking_on_hostile_bytes_logs_one_quiet_line(caplog):
    """A raw 8-bit byte in From made flufl.bounce log an ERROR with a full traceback per detector and
    message: a sender could flood the log at will. Now: one DEBUG line each, no traceback."""
    import logging
    raw = b"From: mailer-daemon\xff@x.test\r\nSubject: Undelivered Mail\r\nTo: support@example.test\r\n\r\nfailed\r\n"
    with caplog.at_level(logging.DEBUG):
        analyse_bounce(raw, parse_message(raw), "", ["support@example.test"], BouncePolicy())
    flufl = [r for r in caplog.records if r.name.startswith("flufl.bounce")]
    assert flufl, "the hostile From did not reach a detector: the test proves nothing"
    assert all(r.levelno == logging.DEBUG and not r.exc_info and len(r.getMessage()) <= 300 for r in flufl)
    assert "Traceback" not in caplog.text
