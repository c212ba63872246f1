"""DMARC's From parse takes a fast path for the everyday value; it must find exactly the addresses
``email.utils.getaddresses`` finds, and hand everything else to it."""
from __future__ import annotations

import email.utils
import random

from gateway.auth import dmarc


def test_fast_path_finds_what_getaddresses_finds() -> None:
    rng = random.Random(7489)
    atoms = ["Alice", " ", "  ", "\t", "Example", ".", "J.", "o'Neil", "=?utf-8?q?J=C3=A9r=C3=B4me?=", "<", ">", "@",
             "alice", "example.org", "a.b", "-", "_", "+tag", ",", ";", ":", '"', "(", ")", "[", "]", "\\", "é",
             "bob@example.org", "<carol@mail.example.org>", "x..y", ".x", "x.", "@@", "a@b@c", "0", "{", "|"]
    fast_hits = 0
    phrase = ["Alice", "J.", "o'Neil", "=?utf-8?q?J=C3=A9r=C3=B4me?=", "Smith-Jones", "#1", "a.b", "."]
    local = ["alice", "a.b", "x+y", "o'neil", "_", "a..b", ".a", "a.", "{x}", "~"]
    domain = ["example.org", "mail.example.org", "ex-ample.org", "example..org", "-x.org", "org", "EXAMPLE.ORG"]
    for i in range(30000):
        if i % 2:
            value = "".join(rng.choice(atoms) for _ in range(rng.randrange(1, 9)))
        else:  # the shapes the fast path is for, with near misses
            addr = rng.choice(local) + rng.choice(["@", "@", "@", ""]) + rng.choice(domain)
            name = rng.choice(["", " "]).join(rng.choice(phrase) for _ in range(rng.randrange(0, 4)))
            value = rng.choice(["", " ", "\t"]) + (f"{name}{rng.choice(['', ' ', '  '])}<{addr}>" if rng.random() < 0.7
                                                   else addr) + rng.choice(["", " ", "\t"])
        fast = dmarc._simple_from(value)
        if fast is None:
            continue
        fast_hits += 1
        assert fast == [a for _n, a in email.utils.getaddresses([value]) if a], value
    assert fast_hits > 5000


def test_everyday_values_take_the_fast_path() -> None:
    for value, want in (("Alice Example <alice@example.org>", "alice@example.org"), ("bob@example.org", "bob@example.org"),
                        ("  J. R. Smith <j.r+x@mail.example.org> ", "j.r+x@mail.example.org"),
                        ("=?utf-8?q?J=C3=A9r=C3=B4me?= <jerome@example.fr>", "jerome@example.fr")):
        assert dmarc._simple_from(value) == [want] == [a for _n, a in email.utils.getaddresses([value]) if a]
    for value in ('"Alice, Example" <alice@example.org>', "a@example.org, b@example.org", "Alice <alice@example.org> (x)",
                  "evil@example.net <alice@example.org>", "Alice <alice@[192.0.2.1]>"):
        assert dmarc._simple_from(value) is None  # getaddresses decides
