"""Routing rules: conditions, actions, ordering, config errors."""
from __future__ import annotations

import pytest

from gateway.config.errors import ConfigError
from gateway.pipeline.stages.routing import RoutingResult, route
from gateway.config.routing import parse_routing

from .helpers import parsed

RULES = [
    {"name": "vip", "conditions": [{"field": "from", "op": "domain", "value": ["bigcustomer.test"]}],
     "manual_handling": True, "tags": ["vip"], "priority": "high"},
    {"name": "password reset", "match": "any",
     "conditions": [{"field": "subject", "op": "contains", "value": ["password reset", "locked out"]},
                    {"field": "body", "op": "regex", "value": r"forgot (my )?password"}],
     "category": "Access", "tags": ["password"]},
    {"name": "urgent words", "match": "any",
     "conditions": [{"field": "subject", "op": "regex", "value": r"\b(urgent|asap|down|outage)\b"},
                    {"header": "X-Priority", "op": "regex", "value": "^[12]"}],
     "priority": "urgent", "alert": True, "tags": ["urgent"]},
    {"name": "billing", "conditions": [{"field": "to_or_cc", "op": "equals", "value": "billing@example.test"}],
     "queue": "Billing", "fields": {"source": "mail", "sla": 8}, "stop": True},
    {"name": "default", "queue": "IT", "category": "General"},
]


def test_rules_fire_in_order_first_setter_wins() -> None:
    rules = parse_routing(RULES, "routing.rule")
    p = parsed(subject="URGENT: password reset please", from_addr="ceo@mail.bigcustomer.test")
    r = route(p, "bounce@bigcustomer.test", rules)
    assert r.fired == ("vip", "password reset", "urgent words", "default")
    assert r.priority == "high"                      # vip came first
    assert r.category == "Access" and r.queue == "IT"
    assert r.tags == ("vip", "password", "urgent")
    assert r.alert and r.manual_handling


def test_stop_and_custom_fields() -> None:
    rules = parse_routing(RULES, "routing.rule")
    r = route(parsed(to=("billing@example.test",), subject="Invoice"), "", rules)
    assert r.fired == ("billing",) and r.queue == "Billing" and r.category is None
    assert r.fields == {"source": "mail", "sla": "8"}


def test_header_body_and_case() -> None:
    rules = parse_routing(RULES, "routing.rule")
    p = parsed(subject="Printer", body="I forgot password again", headers=(("X-Priority", "1 (Highest)"),))
    r = route(p, "", rules)
    assert r.fired == ("password reset", "urgent words", "default")
    # body override: route on the quote-stripped new text
    assert route(p, "", rules, body="hello").fired == ("urgent words", "default")


def test_no_rules_and_nothing_fires() -> None:
    assert route(parsed(), "", ()) == RoutingResult()
    rules = parse_routing([{"name": "x", "conditions": [{"field": "subject", "op": "equals", "value": "nope"}],
                            "tags": ["t"]}], "r")
    assert route(parsed(), "", rules).fired == ()


@pytest.mark.parametrize("cond,hit", [
    ({"field": "subject", "op": "equals", "value": "  printer on FIRE "}, True),
    ({"field": "subject", "op": "equals", "value": "Printer on fire", "case_sensitive": True}, True),
    ({"field": "subject", "op": "equals", "value": "printer on fire", "case_sensitive": True}, False),
    ({"field": "subject", "op": "contains", "value": "ON FI"}, True),
    ({"field": "subject", "op": "regex", "value": "^printer"}, True),
    ({"field": "subject", "op": "regex", "value": "^printer", "case_sensitive": True}, False),
    ({"field": "subject", "op": "contains", "value": "fire", "negate": True}, False),
    ({"field": "from", "op": "domain", "value": "customer.test"}, True),
    ({"field": "from", "op": "domain", "value": "@Customer.Test."}, True),
    ({"field": "from", "op": "domain", "value": "stomer.test"}, False),
    ({"field": "mail_from", "op": "domain", "value": "bounces.test"}, True),
    ({"field": "from_name", "op": "equals", "value": "alice"}, True),
    ({"field": "to", "op": "equals", "value": "support@example.test"}, True),
    ({"field": "cc", "op": "contains", "value": "@"}, False),
    ({"field": "cc", "op": "contains", "value": "@", "negate": True}, True),
    ({"header": "List-Id", "op": "contains", "value": "announce"}, True),
    ({"header": "Reply-To", "op": "domain", "value": "lists.test"}, True),
    ({"header": "X-Missing", "op": "contains", "value": "x"}, False),
])
def test_condition_ops(cond: dict, hit: bool) -> None:
    rules = parse_routing([{"name": "r", "conditions": [cond], "tags": ["t"]}], "routing.rule")
    p = parsed(headers=(("List-Id", "Announce <announce.lists.test>"), ("Reply-To", "List <l@lists.test>")))
    assert (route(p, "b@bounces.test", rules).fired == ("r",)) is hit


def test_from_falls_back_to_envelope() -> None:
    rules = parse_routing([{"name": "r", "conditions": [{"field": "from", "op": "domain", "value": "env.test"}],
                            "tags": ["t"]}], "r")
    assert route(parsed(from_addr=""), "x@env.test", rules).fired == ("r",)


@pytest.mark.parametrize("tables,key", [
    ("nope", "routing.rule"),
    ([{"name": "a", "tags": ["x"], "colour": "red"}], "routing.rule[0].colour"),
    ([{"tags": ["x"]}], "routing.rule[0].name"),
    ([{"name": "a", "tags": ["x"]}, {"name": "a", "tags": ["y"]}], "routing.rule[1].name"),
    ([{"name": "a"}], "routing.rule[0]"),
    ([{"name": "a", "match": "some", "tags": ["x"]}], "routing.rule[0].match"),
    ([{"name": "a", "priority": "meh"}], "routing.rule[0].priority"),
    ([{"name": "a", "alert": "yes"}], "routing.rule[0].alert"),
    ([{"name": "a", "tags": [1]}], "routing.rule[0].tags"),
    ([{"name": "a", "fields": {"x": [1]}}], "routing.rule[0].fields.x"),
    ([{"name": "a", "tags": ["x"], "conditions": {"field": "subject"}}], "routing.rule[0].conditions"),
    ([{"name": "a", "tags": ["x"], "conditions": ["subject"]}], "routing.rule[0].conditions[0]"),
    ([{"name": "a", "tags": ["x"], "conditions": [{"field": "subjekt", "op": "contains", "value": "x"}]}],
     "routing.rule[0].conditions[0].field"),
    ([{"name": "a", "tags": ["x"], "conditions": [{"field": "subject", "op": "like", "value": "x"}]}],
     "routing.rule[0].conditions[0].op"),
    ([{"name": "a", "tags": ["x"], "conditions": [{"field": "subject", "op": "domain", "value": "x"}]}],
     "routing.rule[0].conditions[0].op"),
    ([{"name": "a", "tags": ["x"], "conditions": [{"field": "subject", "op": "regex", "value": "(unclosed"}]}],
     "routing.rule[0].conditions[0].value"),
    ([{"name": "a", "tags": ["x"], "conditions": [{"field": "subject", "op": "regex", "value": ["ok", "("]}]}],
     "routing.rule[0].conditions[0].value[1]"),
    ([{"name": "a", "tags": ["x"], "conditions": [{"field": "subject", "op": "contains"}]}],
     "routing.rule[0].conditions[0].value"),
    ([{"name": "a", "tags": ["x"], "conditions": [{"field": "subject", "op": "contains", "value": []}]}],
     "routing.rule[0].conditions[0].value"),
    ([{"name": "a", "tags": ["x"], "conditions": [{"field": "subject", "header": "X", "op": "contains",
                                                   "value": "x"}]}], "routing.rule[0].conditions[0]"),
    ([{"name": "a", "tags": ["x"], "conditions": [{"header": "Bad Name", "op": "contains", "value": "x"}]}],
     "routing.rule[0].conditions[0].header"),
    ([{"name": "a", "tags": ["x"], "conditions": [{"field": "subject", "op": "contains", "value": "x",
                                                   "flags": "i"}]}], "routing.rule[0].conditions[0].flags"),
])
def test_config_errors_name_the_dotted_key(tables: object, key: str) -> None:
    with pytest.raises(ConfigError) as exc:
        parse_routing(tables, "routing.rule")
    assert exc.value.key == key, exc.value


def test_empty_config() -> None:
    assert parse_routing(None, "routing.rule") == ()
    assert parse_routing([], "routing.rule") == ()
