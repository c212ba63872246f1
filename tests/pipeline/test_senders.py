"""Stage "sender_policy": allow/deny lists (deny wins), unknown senders, replies-only mailboxes."""
from __future__ import annotations

import pytest

from gateway.config.errors import ConfigError
from gateway.config.pipeline import parse_pipeline_policy
from gateway.pipeline.stages.senders import SenderPolicyStage, classify_sender
from gateway.pipeline.stages.core import CONTINUE, DROP, QUARANTINE

from .helpers import inbound, message, run

POLICY = parse_pipeline_policy({"sender_policy": {
    "allowed_domains": ["customer.example", "*.partner.example"],
    "allowed_addresses": ["Freelancer@Gmail.example"],
    "deny_domains": ["evil.customer.example", "spam.example"],
    "deny_addresses": ["fired@customer.example"],
    "unknown": "quarantine",
}}).sender_policy

CASES = [
    # (From, MAIL FROM, action, sender status)
    ("anna@customer.example", "anna@customer.example", CONTINUE, "allowed"),
    ("anna@sub.customer.example", "anna@customer.example", CONTINUE, "allowed"),          # subdomain
    ("bob@partner.example", "bob@partner.example", CONTINUE, "allowed"),
    ("freelancer@gmail.example", "x@gmail.example", CONTINUE, "allowed"),                # address, any case
    ("FRELANCER@gmail.example", "x@gmail.example", QUARANTINE, "unknown"),
    ("eve@evil.customer.example", "eve@evil.customer.example", DROP, "denied"),         # deny beats allow
    ("fired@customer.example", "fired@customer.example", DROP, "denied"),
    ("Fired@Customer.Example", "x@customer.example", DROP, "denied"),
    ("anna@customer.example", "bulk@spam.example", DROP, "denied"),                     # envelope denied
    ("someone@else.example", "someone@else.example", QUARANTINE, "unknown"),
    ("someone@notcustomer.example", "someone@notcustomer.example", QUARANTINE, "unknown"),
]


@pytest.mark.parametrize("from_,mail_from,action,status", CASES)
def test_allow_deny_unknown(from_: str, mail_from: str, action: str, status: str) -> None:
    v = run(SenderPolicyStage(POLICY), inbound(message(sender=from_), mail_from=mail_from))
    assert v.action == action, v
    assert v.data["sender"] == status
    if action == DROP:
        assert v.reason.startswith("sender policy: denied ")
    if action == QUARANTINE:
        assert v.reason.startswith("sender policy: unknown sender ")


def test_unknown_drop_and_accept() -> None:
    drop = parse_pipeline_policy({"sender_policy": {"allowed_domains": ["customer.example"],
                                                    "unknown": "drop"}}).sender_policy
    assert run(SenderPolicyStage(drop), inbound(message(sender="x@else.example"))).action == DROP
    accept = parse_pipeline_policy({}).sender_policy
    v = run(SenderPolicyStage(accept), inbound(message(sender="x@else.example")))
    assert v.action == CONTINUE and v.data == {"sender": "unknown"}


def test_envelope_sender_when_no_from() -> None:
    raw = b"To: support@example.test\r\nSubject: no from\r\n\r\nbody\r\n"
    v = run(SenderPolicyStage(POLICY), inbound(raw, mail_from="anna@customer.example"))
    assert v.action == CONTINUE and v.data["sender"] == "allowed"


def test_allowed_requires_dmarc() -> None:
    pol = parse_pipeline_policy({"sender_policy": {"allowed_domains": ["customer.example"], "unknown": "quarantine",
                                                   "allowed_requires_dmarc": True}}).sender_policy
    raw = message(sender="ceo@customer.example")
    assert run(SenderPolicyStage(pol), inbound(raw, auth={"dmarc": {"result": "fail"}})).action == QUARANTINE
    assert run(SenderPolicyStage(pol), inbound(raw)).action == QUARANTINE
    assert run(SenderPolicyStage(pol), inbound(raw, auth={"dmarc": {"result": "pass"}})).action == CONTINUE
    assert run(SenderPolicyStage(pol), inbound(raw, auth={"dmarc": {"result": "fail", "override": "arc"}})
               ).action == CONTINUE


def test_replies_only_per_mailbox() -> None:
    glob = parse_pipeline_policy({})
    mb = parse_pipeline_policy({"sender_policy": {"replies_only": True, "replies_only_action": "quarantine"}},
                               "mailbox[1].pipeline", glob)
    stage = SenderPolicyStage(glob.sender_policy, {"billing@example.test": mb.sender_policy})
    v = run(stage, inbound(message(), rcpt=("billing@example.test",)))
    assert v.action == CONTINUE
    assert v.data == {"sender": "unknown", "replies_only": True, "action": "quarantine"}
    v = run(stage, inbound(message()))                                    # support@: new tickets welcome
    assert "replies_only" not in v.data


def test_classify_pure() -> None:
    assert classify_sender(POLICY, "", "") == ("unknown", "")
    assert classify_sender(POLICY, "<anna@CUSTOMER.example.>", "") == ("allowed", "anna@customer.example")


@pytest.mark.parametrize("table,key", [
    ({"allowed_domains": ["not a domain"]}, "pipeline.sender_policy.allowed_domains[0]"),
    ({"deny_addresses": ["nobody"]}, "pipeline.sender_policy.deny_addresses[0]"),
    ({"unknown": "reject"}, "pipeline.sender_policy.unknown"),
    ({"replies_only": "yes"}, "pipeline.sender_policy.replies_only"),
    ({"allowed_domain": []}, "pipeline.sender_policy.allowed_domain"),
    ({"deny_domains": "spam.example"}, "pipeline.sender_policy.deny_domains"),
])
def test_config_errors(table: dict, key: str) -> None:
    with pytest.raises(ConfigError) as exc:
        parse_pipeline_policy({"sender_policy": table})
    assert exc.value.key == key
