"""Redaction, forwarded originals, importance headers."""
from __future__ import annotations

import hashlib

import pytest

from gateway.config.errors import ConfigError
from gateway.pipeline.stages.forwards import find_forwarded, parse_inline_forward
from gateway.pipeline.stages.importance import importance, importance_from_headers
from gateway.pipeline.parse.mime import parse_message
from gateway.pipeline.parse.model import Attachment
from gateway.pipeline.stages.redact import luhn_ok, redact
from gateway.config.redaction import CARD_RULE, parse_redaction

from .helpers import parsed


# ------------------------------------------------------------------ redaction
@pytest.mark.parametrize("text,expected,n", [
    ("card 4111 1111 1111 1111 exp 12/25", "card [card redacted] exp 12/25", 1),
    ("4111-1111-1111-1111", "[card redacted]", 1),
    ("4111111111111111 and 4111111111111112", "[card redacted] and 4111111111111112", 1),
    ("4111 1111 1111 1111 123", "[card redacted] 123", 1),           # trailing CVV kept
    ("amex 378282246310005.", "amex [card redacted].", 1),
    ("mc 5555555555554444, visa 4012888888881881", "mc [card redacted], visa [card redacted]", 2),
    ("order 1234567890123", "order 1234567890123", 0),                 # fails Luhn
    ("tracking 79927398713000", "tracking 79927398713000", 0),         # starts with 7: no card
    ("0000 0000 0000 0000", "0000 0000 0000 0000", 0),
    ("+49 170 1234567", "+49 170 1234567", 0),
    ("iban DE89 3704 0044 0532 0130 00", "iban DE89 3704 0044 0532 0130 00", 0),
    ("41111111111111111111111", "41111111111111111111111", 0),         # 23 digits: part of a longer number
])
def test_card_redaction(text: str, expected: str, n: int) -> None:
    assert redact(text) == (expected, {"card": n})


def test_luhn() -> None:
    assert luhn_ok("79927398713") and not luhn_ok("79927398710")


def test_configured_rules_and_last4() -> None:
    rules = parse_redaction([
        {"name": "card", "builtin": "card", "replacement": "[card ****{last4}]"},
        {"name": "iban-de", "pattern": r"\bDE\d{2}(?: ?\d{4}){4} ?\d{2}\b", "replacement": "[IBAN]"},
        {"name": "password", "pattern": r"(password\s*[:=]\s*)[^\s,]+", "replacement": r"\1[redacted]"},
    ], "redaction.rule")
    text = "pay 4111 1111 1111 1111, iban DE89 3704 0044 0532 0130 00, Password: hunter2, password=x"
    out, counts = redact(text, rules)
    assert out == "pay [card ****1111], iban [IBAN], Password: [redacted], password=[redacted]"
    assert counts == {"card": 1, "iban-de": 1, "password": 2}
    assert redact("nothing", rules)[1] == {"card": 0, "iban-de": 0, "password": 0}
    assert redact("x", ())[1] == {}
    assert CARD_RULE.luhn


@pytest.mark.parametrize("tables,key", [
    ({"name": "x"}, "redaction.rule"),
    ([{"pattern": "x"}], "redaction.rule[0].name"),
    ([{"name": "x", "pattern": "("}], "redaction.rule[0].pattern"),
    ([{"name": "x", "pattern": "a*"}], "redaction.rule[0].pattern"),
    ([{"name": "x", "pattern": "a", "colour": 1}], "redaction.rule[0].colour"),
    ([{"name": "x", "builtin": "iban"}], "redaction.rule[0].builtin"),
    ([{"name": "x", "builtin": "card", "pattern": "a"}], "redaction.rule[0]"),
    ([{"name": "x", "pattern": "(a)", "replacement": r"\2"}], "redaction.rule[0].replacement"),
    ([{"name": "x", "pattern": "a", "replacement": r"\g<nope>"}], "redaction.rule[0].replacement"),
    ([{"name": "x", "pattern": "a"}, {"name": "x", "pattern": "b"}], "redaction.rule[1].name"),
])
def test_redaction_config_errors(tables: object, key: str) -> None:
    with pytest.raises(ConfigError) as exc:
        parse_redaction(tables, "redaction.rule")
    assert exc.value.key == key


# ------------------------------------------------------------------ forwards
GMAIL_FWD = ("FYI, customer below.\n\n---------- Forwarded message ---------\n"
             "From: Alice Smith <alice@Customer.TEST>\nDate: Mon, Apr 2, 2012 at 6:26 PM\nSubject: Printer on fire\n"
             "To: <bob@example.test>\n\n\nIt is on fire.\nHelp.\n")
APPLE_FWD = ("Begin forwarded message:\n\n> From: Alice Smith <alice@customer.test>\n> Subject: Printer on fire\n"
             "> Date: 2 April 2012 18:26:00 CEST\n> To: bob@example.test\n> \n> It is on fire.\n")
OUTLOOK_FWD = ("Please handle.\n\n________________________________\nFrom: Alice Smith [mailto:alice@customer.test]\n"
               "Sent: Monday, April 2, 2012 6:26 PM\nTo: Bob\nSubject: Printer on fire\n\nIt is on fire.")
THUNDERBIRD_DE = ("-------- Weitergeleitete Nachricht --------\nBetreff: \tDrucker brennt\n"
                  "Datum: \tMon, 2 Apr 2012 18:26:00 +0200\nVon: \tAlice Smith <alice@customer.test>\n"
                  "An: \tsupport@example.test\n\nEr brennt.")
FRENCH_NAME_ONLY = ("-----Message d'origine-----\nDe : Alice Smith\nEnvoyé : lundi\nÀ : Bob\nObjet : Imprimante\n\n"
                    "Elle brûle.")
BARE_BLOCK = 'From: "Smith, Alice" <alice@customer.test>\nSent: Monday\nTo: Bob\nSubject: X\n\nbody'


@pytest.mark.parametrize("text,name,subject,body,kind", [
    (GMAIL_FWD, "Alice Smith", "Printer on fire", "It is on fire.\nHelp.", "inline"),
    (APPLE_FWD, "Alice Smith", "Printer on fire", "It is on fire.", "inline"),
    (OUTLOOK_FWD, "Alice Smith", "Printer on fire", "It is on fire.", "inline"),
    (THUNDERBIRD_DE, "Alice Smith", "Drucker brennt", "Er brennt.", "inline"),
    (BARE_BLOCK, "Smith, Alice", "X", "body", "header-block"),
])
def test_inline_forwards(text: str, name: str, subject: str, body: str, kind: str) -> None:
    f = parse_inline_forward(text)
    assert f is not None
    assert (f.from_addr, f.from_name, f.subject, f.body, f.kind) == ("alice@customer.test", name, subject, body, kind)


def test_forward_note_date_and_html_address() -> None:
    f = parse_inline_forward(GMAIL_FWD)
    assert f is not None and f.note == "FYI, customer below." and f.date == "Mon, Apr 2, 2012 at 6:26 PM"
    f = parse_inline_forward(FRENCH_NAME_ONLY)
    assert f is not None and (f.from_addr, f.from_name) == ("", "Alice Smith")
    html = '<p>De : <a href="mailto:alice@customer.test">Alice Smith</a></p>'
    f = parse_inline_forward(FRENCH_NAME_ONLY, html)
    assert f is not None and f.from_addr == "alice@customer.test"


def test_no_forward() -> None:
    assert parse_inline_forward("Just a message.\nFrom: me") is None
    assert find_forwarded(parsed(body="Plain mail")) is None


def test_forward_subject_falls_back_to_outer_subject() -> None:
    f = parse_inline_forward("---------- Forwarded message ---------\nFrom: a@b.test\nDate: x\n\nhi",
                             subject="Fwd: Printer")
    assert f is not None and f.subject == "Printer"


def _eml_attachment(raw: bytes) -> Attachment:
    return Attachment("message.eml", "message/rfc822", raw, hashlib.sha256(raw).hexdigest())


def test_attached_message() -> None:
    inner = b"From: Alice <alice@customer.test>\r\nSubject: Printer\r\n\r\nfire\r\n"
    f = find_forwarded(parsed(subject="Fwd: Printer", from_addr="agent@example.test", body="see attached",
                              attachments=(_eml_attachment(inner),)))
    assert f is not None
    assert (f.from_addr, f.from_name, f.subject, f.body, f.kind, f.note) == (
        "alice@customer.test", "Alice", "Printer", "fire", "rfc822", "see attached")


def test_attached_message_through_the_mime_parser() -> None:
    raw = (b"From: Bob <bob@example.test>\r\nTo: support@example.test\r\nSubject: Fwd: x\r\nMIME-Version: 1.0\r\n"
           b"Content-Type: multipart/mixed; boundary=XX\r\n\r\n--XX\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n"
           b"--XX\r\nContent-Type: message/rfc822\r\n\r\nFrom: Alice <alice@customer.test>\r\nSubject: Printer\r\n\r\n"
           b"fire\r\n--XX--\r\n")
    f = find_forwarded(parse_message(raw))
    assert f is not None and f.kind == "rfc822" and f.from_addr == "alice@customer.test"


def test_inline_marker_beats_attachment() -> None:
    inner = b"From: Carol <carol@other.test>\r\nSubject: Other\r\n\r\nx\r\n"
    f = find_forwarded(parsed(body=GMAIL_FWD, attachments=(_eml_attachment(inner),)))
    assert f is not None and f.from_addr == "alice@customer.test" and f.kind == "inline"


# ------------------------------------------------------------------ importance
@pytest.mark.parametrize("headers,level", [
    ((), "normal"),
    ((("Importance", "High"),), "high"),
    ((("Importance", "low"),), "low"),
    ((("X-Priority", "1 (Highest)"),), "high"),
    ((("X-Priority", "2"),), "high"),
    ((("X-Priority", "3 (Normal)"),), "normal"),
    ((("X-Priority", "5 (Lowest)"),), "low"),
    ((("Priority", "urgent"),), "high"),
    ((("Priority", "non-urgent"),), "low"),
    ((("X-MSMail-Priority", "High"),), "high"),
    ((("X-Priority", "garbage"), ("X-MSMail-Priority", "Low")), "low"),
    ((("X-Priority", "1"), ("Importance", "low")), "low"),            # Importance is consulted first
    ((("importance", "HIGH"),), "high"),
    ((("Importance", ""),), "normal"),
])
def test_importance(headers: tuple, level: str) -> None:
    assert importance_from_headers(headers) == level
    assert importance(parsed(headers=headers)) == level
