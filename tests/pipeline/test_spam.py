"""Stage "spam": a rule set over headers, addresses, subject and body; the upstream verdict."""
from __future__ import annotations

import tomllib

import pytest

from gateway.config.errors import ConfigError
from gateway.config.pipeline import parse_pipeline_policy
from gateway.pipeline.stages.spam import SpamStage
from gateway.pipeline.stages.core import CONTINUE, DROP, QUARANTINE

from .helpers import inbound, message, run

RULES = tomllib.loads(r'''
[pipeline.spam]
trusted_relays = ["192.0.2.0/24", "2001:db8::/32"]
upstream_action = "quarantine"

[[pipeline.spam.rule]]
name = "crypto-scam"
match = "all"
action = "drop"
conditions = [
  { field = "subject", op = "regex", value = '\b(bitcoin|btc|crypto)\b' },
  { field = "body", op = "contains", value = "wallet" },
]

[[pipeline.spam.rule]]
name = "known-spammer-domain"
match = "any"
action = "quarantine"
conditions = [
  { field = "from", op = "domain", value = "spam.example" },
  { field = "header:Reply-To", op = "domain", value = "spam.example" },
  { field = "body", op = "domain", value = "phish.example" },
]

[[pipeline.spam.rule]]
name = "newsletter"
action = "tag"
tag = "newsletter"
conditions = [ { field = "header:X-Mailer", op = "contains", value = "MailChimp" } ]

[[pipeline.spam.rule]]
name = "shouting"
action = "tag"
conditions = [ { field = "subject", op = "regex", value = '^[A-Z !]{12,}$', case_sensitive = true } ]

[[pipeline.spam.rule]]
name = "exact-subject"
action = "drop"
conditions = [ { field = "subject", op = "equals", value = "you have won" } ]

[[pipeline.spam.rule]]
name = "not-to-us"
action = "tag"
tag = "bcc"
conditions = [
  { field = "to", op = "domain", value = "example.test", negate = true },
  { field = "cc", op = "domain", value = "example.test", negate = true },
]

[[pipeline.spam.rule]]
name = "has-list-header"
action = "tag"
tag = "list"
conditions = [ { field = "header:List-Id", op = "exists" } ]
''')


@pytest.fixture(scope="module")
def stage() -> SpamStage:
    return SpamStage(parse_pipeline_policy(RULES["pipeline"]).spam)


def test_clean_message_continues(stage: SpamStage) -> None:
    v = run(stage, inbound(message()))
    assert v.action == CONTINUE and v.data == {}


def test_all_conditions_needed(stage: SpamStage) -> None:
    v = run(stage, inbound(message(subject="Cheap BTC today", body="send to my wallet now")))
    assert v.action == DROP and v.reason == "spam: rule crypto-scam"
    v = run(stage, inbound(message(subject="Cheap BTC today", body="nothing here")))
    assert v.action == CONTINUE
    v = run(stage, inbound(message(subject="bitcoins are great", body="wallet")))   # \b: "bitcoins" no match
    assert v.action == CONTINUE


def test_any_condition_and_domains(stage: SpamStage) -> None:
    assert run(stage, inbound(message(sender="x@spam.example"))).action == QUARANTINE
    assert run(stage, inbound(message(sender="x@mail.spam.example"))).action == QUARANTINE    # subdomain
    assert run(stage, inbound(message(sender="x@notspam.example"))).action == CONTINUE
    assert run(stage, inbound(message([("Reply-To", "Z <z@spam.example>")]))).action == QUARANTINE
    v = run(stage, inbound(message(body="Log in at https://login.phish.example/account now")))
    assert v.action == QUARANTINE and v.reason == "spam: rule known-spammer-domain"
    assert run(stage, inbound(message(body="see https://phish.example.org/"))).action == CONTINUE


def test_tags_accumulate(stage: SpamStage) -> None:
    raw = message([("X-Mailer", "mailchimp 5.0"), ("List-Id", "<news.example.org>")], subject="BUY NOW BUY NOW!!")
    v = run(stage, inbound(raw))
    assert v.action == CONTINUE
    assert v.data["tags"] == ["newsletter", "shouting", "list"]
    assert v.data["rules"] == ["newsletter", "shouting", "has-list-header"]
    # case_sensitive regex: lower-case subject does not shout
    v = run(stage, inbound(message(subject="buy now buy now!!")))
    assert "tags" not in v.data


def test_equals_is_case_insensitive_whole_value(stage: SpamStage) -> None:
    assert run(stage, inbound(message(subject="You Have WON"))).action == DROP
    assert run(stage, inbound(message(subject="you have won a car"))).action == CONTINUE


def test_negated_conditions(stage: SpamStage) -> None:
    v = run(stage, inbound(message(to="someone@elsewhere.example")))
    assert v.data["tags"] == ["bcc"]


def test_first_final_rule_wins_after_tags(stage: SpamStage) -> None:
    v = run(stage, inbound(message(subject="YOU HAVE WON")))       # "shouting" (tag) comes before "exact-subject"
    assert v.action == DROP and v.data == {"tags": ["shouting"], "rules": ["shouting", "exact-subject"]}
    # rules run in order: a final rule stops evaluation before later tag rules
    v = run(stage, inbound(message([("X-Mailer", "MailChimp")], sender="a@spam.example")))
    assert v.action == QUARANTINE and v.data == {"rules": ["known-spammer-domain"]}


@pytest.mark.parametrize("header,value", [("X-Spam-Flag", "YES"), ("X-Spam-Status", "Yes, score=9.1 required=5.0"),
                                          ("X-Spam", "yes")])
def test_upstream_verdict_only_from_trusted_relays(stage: SpamStage, header: str, value: str) -> None:
    raw = message([(header, value)])
    v = run(stage, inbound(raw, peer_ip="192.0.2.25"))
    assert v.action == QUARANTINE and "trusted relay 192.0.2.25" in v.reason
    assert run(stage, inbound(raw, peer_ip="2001:db8::5")).action == QUARANTINE
    assert run(stage, inbound(raw, peer_ip="::ffff:192.0.2.25")).action == QUARANTINE
    assert run(stage, inbound(raw, peer_ip="198.51.100.1")).action == CONTINUE     # anyone can write it
    assert run(stage, inbound(message([(header, "NO")]), peer_ip="192.0.2.25")).action == CONTINUE


def test_upstream_default_is_tag() -> None:
    pol = parse_pipeline_policy({"spam": {"trusted_relays": ["127.0.0.0/8"]}}).spam
    v = run(SpamStage(pol), inbound(message([("X-Spam-Flag", "YES")]), peer_ip="127.0.0.1"))
    assert v.action == CONTINUE and v.data["tags"] == ["spam"]


def test_envelope_and_attachment_fields() -> None:
    pol = parse_pipeline_policy({"spam": {"rule": [
        {"name": "env", "action": "drop", "conditions": [{"field": "mail_from", "op": "domain", "value": "bad.example"}]},
        {"name": "rcpt", "action": "tag", "conditions": [{"field": "rcpt", "op": "equals", "value": "help@example.test"}]},
    ]}}).spam
    assert run(SpamStage(pol), inbound(message(), mail_from="x@bad.example")).action == DROP
    assert run(SpamStage(pol), inbound(message(), rcpt=("help@example.test",))).data["tags"] == ["rcpt"]


def test_mailbox_rules_appended_or_replaced() -> None:
    glob = parse_pipeline_policy(RULES["pipeline"])
    extra = {"spam": {"rule": [{"name": "billing-only", "action": "drop",
                                "conditions": [{"field": "subject", "op": "contains", "value": "invoice overdue"}]}]}}
    mb = parse_pipeline_policy(extra, "mailbox[1].pipeline", glob)
    assert [r.name for r in mb.spam.rules][-1] == "billing-only" and len(mb.spam.rules) == len(glob.spam.rules) + 1
    mb2 = parse_pipeline_policy({"spam": {**extra["spam"], "inherit_rules": False}}, "mailbox[1].pipeline", glob)
    assert [r.name for r in mb2.spam.rules] == ["billing-only"]
    stage = SpamStage(glob.spam, {"billing@example.test": mb.spam})
    raw = message(subject="Invoice overdue")
    assert run(stage, inbound(raw)).action == CONTINUE
    assert run(stage, inbound(raw, rcpt=("billing@example.test",))).action == DROP


@pytest.mark.parametrize("table,key,fragment", [
    ({"rule": [{"name": "r", "conditions": [{"field": "subject", "op": "regex", "value": "(unclosed"}]}]},
     "pipeline.spam.rule[0].conditions[0].value", "invalid regular expression"),
    ({"rule": [{"name": "r", "conditions": [{"field": "subjekt", "op": "contains", "value": "x"}]}]},
     "pipeline.spam.rule[0].conditions[0].field", "must be one of"),
    ({"rule": [{"name": "r", "conditions": [{"field": "subject", "op": "like", "value": "x"}]}]},
     "pipeline.spam.rule[0].conditions[0].op", "must be one of"),
    ({"rule": [{"name": "r", "action": "reject", "conditions": [{"field": "subject", "value": "x"}]}]},
     "pipeline.spam.rule[0].action", "must be one of"),
    ({"rule": [{"name": "r", "conditions": []}]}, "pipeline.spam.rule[0].conditions", "non-empty"),
    ({"rule": [{"name": "r", "conditions": [{"field": "subject"}]}]},
     "pipeline.spam.rule[0].conditions[0].value", "required"),
    ({"rule": [{"name": "r", "conditions": [{"field": "from", "op": "domain", "value": "not a domain"}]}]},
     "pipeline.spam.rule[0].conditions[0].value", "not a domain"),
    ({"rule": [{"name": "r", "bogus": 1, "conditions": [{"field": "subject", "value": "x"}]}]},
     "pipeline.spam.rule[0].bogus", "unknown key"),
    ({"rule": [{"name": "r", "conditions": [{"field": "subject", "value": "x"}]},
               {"name": "r", "conditions": [{"field": "subject", "value": "y"}]}]},
     "pipeline.spam.rule[1].name", "duplicate"),
    ({"trusted_relays": ["192.0.2.1/24"]}, "pipeline.spam.trusted_relays[0]", "not a network"),
    ({"upstream_action": "reject"}, "pipeline.spam.upstream_action", "must be one of"),
])
def test_config_errors_name_the_dotted_key(table: dict, key: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as exc:
        parse_pipeline_policy({"spam": table})
    assert exc.value.key == key and fragment in exc.value.message
