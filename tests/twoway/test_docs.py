"""The TOML examples in docs/threading.md parse and do what the doc says."""
from __future__ import annotations

import re
import tomllib
from pathlib import Path

from gateway.pipeline.stages.redact import redact

from gateway.config.redaction import parse_redaction
from gateway.pipeline.stages.routing import route
from gateway.config.routing import parse_routing
from gateway.config.threading import parse_keys, parse_token_style

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


def test_doc_team_mail_blocks_build_a_config() -> None:
    """The [[queue]] notify, [[agent]] language, [routing] alert and thanks blocks are valid config."""
    from gateway.pipeline.stages.thanks import is_thanks_only
    from gateway.config.twoway import parse_twoway
    blocks = _toml_blocks()
    tw = parse_twoway({k: blocks[k] for k in ("threading", "queue", "agent", "routing") if k in blocks})
    q = tw.queue("IT")
    assert q is not None and q.notify == ("ann@staff.example", "it-team@staff.example") and q.language == "de"
    assert tw.agent("ann@staff.example").language == "en" and tw.alert_to == ("oncall@staff.example",)
    assert tw.agent_conflict_window == 600.0
    assert is_thanks_only("Danke, funktioniert jetzt. Viele Grüße", phrases=tw.thanks_phrases, filler=tw.thanks_filler)
    assert not is_thanks_only("Thanks, but it broke again", phrases=tw.thanks_phrases, filler=tw.thanks_filler)
