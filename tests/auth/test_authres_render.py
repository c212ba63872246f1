"""The DKIM part of our Authentication-Results, rendered from a per-signer template, is exactly what
authres renders for the same signature."""
from __future__ import annotations

import random
import string

from gateway.auth import authenticator as A
from gateway.auth.dkimcheck import SigPlan

B64 = string.ascii_letters + string.digits + "+/="


def _random_sig(rng: random.Random) -> SigPlan:
    s = SigPlan(index=0)
    s.d = rng.choice(["example.org", "mail.example.co.uk", None, "bad domain", "a..b", "xn--bcher-kva.example"])
    s.s = rng.choice(["sel", "s2023", None, "bad sel", "", "ticketmxBvalue"])
    s.a = rng.choice(["rsa-sha256", "ed25519-sha256", "rsa-sha1", None, "hmac-md5"])
    s.b = rng.choice([None, "", "".join(rng.choice(B64) for _ in range(rng.randint(1, 40))), "abc def", 'ab"c',
                      "ticketmxBvalue", "/" * 9])
    s.result = rng.choice(["pass", "fail", "permerror", "temperror", "policy", "neutral", None])
    s.reason = rng.choice(["", "signature did not verify", 'key: "odd" ; value', "x;y", "a@b", "tab\there"])
    s.key_bits = rng.choice([None, 1024, 2048, 4096])
    return s


def test_template_rendering_equals_authres() -> None:
    rng = random.Random(20261123)
    A._RENDERED.clear()
    for _ in range(5000):
        s = _random_sig(rng)
        b = s.b[:8] if s.b and A._B_SHOWN.fullmatch(s.b) else None
        assert A._dkim_result(s) == str(A._dkim_result_object(s, b)), s


def test_quoting_of_the_b_value() -> None:
    s = SigPlan(index=0)
    s.d, s.s, s.a, s.result, s.reason, s.key_bits = "example.org", "sel", "rsa-sha256", "pass", "", 2048
    s.b = "AbCd+123xyz"
    assert A._dkim_result(s) == ("dkim=pass (2048-bit key) header.b=AbCd+123 header.d=example.org"
                                 " header.a=rsa-sha256 header.s=sel")
    s.b = "Ab/d=123xyz"
    assert 'header.b="Ab/d=123"' in A._dkim_result(s)
