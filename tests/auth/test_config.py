from __future__ import annotations

import ipaddress

import pytest

from gateway.auth import AuthPolicy, parse_auth_policy
from gateway.config.errors import ConfigError


def test_defaults_honour_published_policy():
    p = parse_auth_policy({}, "auth")
    assert p == AuthPolicy()
    assert (p.dmarc_reject, p.dmarc_quarantine, p.spf_fail, p.dns_temperror) == ("reject", "quarantine", "tag", "defer")
    assert p.honour_dmarc_policy and not p.require_dmarc_for_actions


def test_full_table_and_mailbox_override():
    g = parse_auth_policy({
        "dmarc_reject": "quarantine", "spf_fail": "reject", "trusted_relays": ["10.0.0.0/8", "2001:db8::/32"],
        "trusted_arc_sealers": ["Google.com", "microsoft.com", "bücher.example"],
        "require_dmarc_for_actions": True, "check_helo": False, "dns_temperror": "accept",
        "malformed_from": "tag", "honour_dmarc_policy": True, "enabled": True, "dmarc_quarantine": "tag",
    }, "auth")
    assert g.trusted_relays == (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("2001:db8::/32"))
    assert g.trusted_arc_sealers == ("google.com", "microsoft.com", "xn--bcher-kva.example")
    assert g.is_trusted_relay("10.1.2.3") and g.is_trusted_relay("::ffff:10.1.2.3")
    assert not g.is_trusted_relay("192.0.2.1")
    assert g.is_trusted_sealer("google.com") and g.is_trusted_sealer("arc.google.com")
    assert not g.is_trusted_sealer("evilgoogle.com")
    m = parse_auth_policy({"dmarc_reject": "reject"}, "mailbox[0].auth", base=g)
    assert m.dmarc_reject == "reject" and m.spf_fail == "reject" and m.trusted_relays == g.trusted_relays


@pytest.mark.parametrize("table,key", [
    ({"dmarc_rejct": "reject"}, "auth.dmarc_rejct"),
    ({"dmarc_reject": "bounce"}, "auth.dmarc_reject"),
    ({"spf_fail": True}, "auth.spf_fail"),
    ({"enabled": "yes"}, "auth.enabled"),
    ({"trusted_relays": "10.0.0.0/8"}, "auth.trusted_relays"),
    ({"trusted_relays": ["10.0.0.0/8", "10.0.0.1/8"]}, "auth.trusted_relays[1]"),
    ({"trusted_relays": ["nonsense"]}, "auth.trusted_relays[0]"),
    ({"trusted_arc_sealers": ["not a domain"]}, "auth.trusted_arc_sealers[0]"),
    ({"trusted_arc_sealers": [3]}, "auth.trusted_arc_sealers[0]"),
    ({"dns_temperror": "reject"}, "auth.dns_temperror"),
])
def test_errors_name_the_dotted_key(table, key):
    with pytest.raises(ConfigError) as e:
        parse_auth_policy(table, "auth")
    assert e.value.key == key


def test_not_a_table():
    with pytest.raises(ConfigError) as e:
        parse_auth_policy(["x"], "mailbox[3].auth")  # type: ignore[arg-type]
    assert e.value.key == "mailbox[3].auth"
