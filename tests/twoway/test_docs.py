"""The TOML examples in docs/threading.md parse and do what the doc says."""
from __future__ import annotations

import re
import tomllib
from pathlib import Path

from gateway.pipeline.redact import parse_redaction, redact
from gateway.pipeline.routing import parse_routing, route
from gateway.pipeline.tokens import parse_keys, parse_token_style

from .helpers import parsed

DOC = Path(__file__).resolve().parents[2] / "docs" / "threading.md"


def _toml_blocks() -> dict:
    merged: dict = {}
    for block in re.findall(r"```toml\n(.*?)```", DOC.read_text(encoding="utf-8"), re.S):
        data = tomllib.loads(block)
        for key, value in data.items():
            if isinstance(value, dict) and isinstance(merged.get(key), dict):
                for sub, v in value.items():
                    if isinstance(v, list):
                        merged[key].setdefault(sub, []).extend(v)
                    else:
                        merged[key][sub] = v
            else:
                merged[key] = value
    return merged


def test_doc_routing_rules_work() -> None:
    rules = parse_routing(_toml_blocks()["routing"]["rule"], "routing.rule")
    assert [r.name for r in rules] == ["vip senders", "password reset", "invoices", "urgent", "bulk", "default"]

    r = route(parsed(subject="Password reset please"), "", rules)
    assert (r.category, r.queue, r.fired) == ("Access", "IT", ("password reset", "default"))

    r = route(parsed(subject="Mail server DOWN", from_addr="ceo@bigcustomer.example"), "", rules)
    assert r.priority == "urgent" and r.alert and r.manual_handling and r.tags == ("vip", "urgent")

    r = route(parsed(subject="hello", headers=(("X-Priority", "1 (Highest)"),)), "", rules)
    assert r.priority == "urgent" and r.alert

    r = route(parsed(subject="Weekly news", headers=(("List-Id", "<news.example.test>"),)), "", rules)
    assert r.fired == ("bulk",) and r.priority == "low" and r.queue is None

    r = route(parsed(subject="Rechnung 42"), "", rules)
    assert (r.queue, r.category, r.fields) == ("Billing", "Billing", {"source": "email"})


def test_doc_redaction_rules_work() -> None:
    rules = parse_redaction(_toml_blocks()["redaction"]["rule"], "redaction.rule")
    out, counts = redact("card 4111 1111 1111 1111, password: hunter2", rules)
    assert out == "card [card ****1111], password: [redacted]"
    assert counts == {"card": 1, "iban-de": 0, "password": 1}


def test_doc_threading_block_validates() -> None:
    threading = _toml_blocks()["threading"]
    style = parse_token_style(threading, "threading")
    assert style.format == "[{number}]" and style.mac_length == 8
    assert len(parse_keys(threading["keys"], "threading.keys")) == 2
