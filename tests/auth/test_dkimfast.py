"""``dkimfast`` (dkimpy's verification steps without its overhead) gives dkimpy's own result.

Each case runs ``verify_sync`` three ways on the same message and keys: dkimpy on the whole message
(the reference), the inline body-hash path with dkimfast, and the same path with dkimfast off. All
three must agree on every signature's result and reason. Messages are random: folded and unusual
header fields, fields added, removed, renamed or re-cased after signing, several signatures,
both canonicalisations, rsa and ed25519, tampered signatures, odd key records and tags."""
from __future__ import annotations

import base64
import random
import time

import dkim
import pytest

from gateway.auth import dkimcheck, dkimfast

from .helpers import ed_key, rsa_key

NAMES = [b"From", b"To", b"Subject", b"Date", b"Message-ID", b"Cc", b"Reply-To", b"X-Extra", b"Received"]


def _three(raw: bytes, keys_by_selector: dict[bytes, str], monkeypatch) -> tuple[list, list, list]:
    p = dkimcheck.plan(raw, check_arc=False)
    keys = {}
    for s in p.sigs:
        if s.key_name:
            sel = s.key_name.split(b"._domainkey.")[0]
            keys[s.key_name] = keys_by_selector.get(sel, "v=DKIM1; p=").encode()
    ref = dkimcheck.verify_sync(raw, p.sigs, keys, False)
    fast = dkimcheck.verify_sync(raw, p.sigs, keys, False, body_keys=p.body_keys)
    monkeypatch.setattr(dkimcheck, "FAST_VERIFY", False)
    slow = dkimcheck.verify_sync(raw, p.sigs, keys, False, body_keys=p.body_keys)
    monkeypatch.setattr(dkimcheck, "FAST_VERIFY", True)
    return ([(s.result, s.reason) for s in out["sigs"]] for out in (ref, fast, slow))  # type: ignore[return-value]


def _value(rng: random.Random) -> bytes:
    parts = [b"hello", b" ", b"\t", b"  ", b"world", b"\r\n\t", b"\r\n ", b";", b":", b"\xc3\xa9", b"x" * 30,
             b"<a@example.org>", b"  \t "]
    v = b"".join(rng.choice(parts) for _ in range(rng.randrange(0, 8)))
    return v.rstrip(b"\r\n\t ") if rng.random() < 0.7 else v


def _message(rng: random.Random) -> bytes:
    fields = [b"From: " + rng.choice([b"Alice <alice@example.org>", b"bob@example.org", b" x\r\n\t<c@example.org>"])]
    for _ in range(rng.randrange(1, 8)):
        fields.append(rng.choice(NAMES[1:]) + b":" + rng.choice([b" ", b"", b"\t"]) + _value(rng))
    rng.shuffle(fields)
    body = b"".join(rng.choice([b"text ", b"\r\n", b"  \r\n", b"\tz", b".\r\n"]) for _ in range(rng.randrange(0, 30)))
    return b"\r\n".join(fields) + b"\r\n\r\n" + body


def _sign(rng: random.Random, msg: bytes, sel: bytes, key: bytes, algo: bytes) -> bytes:
    canon = (rng.choice([b"relaxed", b"simple"]), rng.choice([b"relaxed", b"simple"]))
    include = [b"from"] + rng.sample([n.lower() for n in NAMES[1:7]], rng.randrange(0, 5))
    if rng.random() < 0.3:
        include += [b"from", b"subject"]  # over-signing, and names that may be absent
    return dkim.sign(msg, sel, b"example.org", key, signature_algorithm=algo, canonicalize=canon,
                     include_headers=include, identity=rng.choice([None, b"@example.org", b"x@sub.example.org"]),
                     length=rng.random() < 0.15)


def _mutate(rng: random.Random, raw: bytes) -> bytes:
    head, sep, body = raw.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    kind = rng.randrange(12)
    if kind == 0:
        return raw
    if kind == 1:  # another From after signing (dkimpy's bug#644046 rule)
        lines.append(b"From: mallory@example.net")
    elif kind == 2:  # a signed-looking field re-cased / re-spaced
        i = rng.randrange(len(lines))
        if b":" in lines[i] and not lines[i].lower().startswith(b"dkim-signature"):
            n, _c, v = lines[i].partition(b":")
            lines[i] = rng.choice([n.upper(), n.lower()]) + b":" + rng.choice([v, v + b" ", b"  " + v, v.replace(b" ", b"\t")])
    elif kind == 3:  # a field dropped
        i = rng.randrange(len(lines))
        if not lines[i].lower().startswith(b"dkim-signature") and not lines[i].startswith((b" ", b"\t")):
            del lines[i]
    elif kind == 4:  # one character of b= changed
        i = raw.find(b" b=")
        if i > 0:
            j = i + 3 + rng.randrange(20)
            c = raw[j:j + 1]
            return raw[:j] + (b"A" if c != b"A" else b"B") + raw[j + 1:]
    elif kind == 5:  # body changed
        return head + sep + body + b"more\r\n"
    elif kind == 6:  # odd lines dkimpy's parser treats specially
        lines.insert(rng.randrange(len(lines) + 1), rng.choice([b"From mbox line", b"Bad Name: x", b": empty name",
                                                                  b"\tleading continuation", b"::x"]))
    elif kind == 7:  # an extra unsigned field, folded
        lines.insert(rng.randrange(len(lines) + 1), b"X-Late: " + _value(rng) + b"\r\n\tmore")
    elif kind == 8:  # bare LF everywhere
        return raw.replace(b"\r\n", b"\n")
    elif kind == 9:  # whitespace inside the signature field, where relaxed forgives it
        return raw.replace(b"; d=", b";  d=", 1)
    elif kind == 10:
        return raw.replace(b"a=rsa-sha256", b"a=rsa-sha1", 1)
    else:  # t= far in the future / x= in the past: dkimpy refuses, and so does the plan
        return raw.replace(b"; t=", b"; x=1; t=", 1) if rng.random() < 0.5 else raw
    return b"\r\n".join(lines) + sep + body


def test_same_results_as_dkimpy_on_random_messages(monkeypatch) -> None:
    rng = random.Random(6376)
    pem, txt = rsa_key()
    pem2, txt2 = rsa_key(1024, 1)
    seed, _p, ed_txt = ed_key()
    keys = {b"r": txt, b"r2": txt2, b"ed": ed_txt, b"odd": txt2.replace("v=DKIM1; ", "v=DKIM1; s=tlsrpt; "),
            b"star": txt + "; s=*; h=sha256; t=y", b"wrong": txt2}
    used = []
    real = dkimfast.verify

    def counting(*a, **kw):
        out = real(*a, **kw)
        used.append(out is not None)
        return out

    monkeypatch.setattr(dkimfast, "verify", counting)
    outcomes: set[str] = set()
    for i in range(700):
        msg = _message(rng)
        raw = msg
        for _ in range(rng.choice([1, 1, 1, 2, 3])):
            sel, key, algo = rng.choice([(b"r", pem, b"rsa-sha256"), (b"r2", pem2, b"rsa-sha256"),
                                         (b"ed", seed, b"ed25519-sha256"), (b"odd", pem2, b"rsa-sha256"),
                                         (b"star", pem, b"rsa-sha256"), (b"wrong", pem, b"rsa-sha256")])
            raw = _sign(rng, raw, sel, key, algo) + raw
        raw = _mutate(rng, raw)
        ref, fast, slow = _three(raw, keys, monkeypatch)
        assert fast == ref == slow, raw
        outcomes.update(r for r, _ in ref)
    assert {"pass", "fail", "permerror", "policy"} <= outcomes
    assert sum(used) > 500 and not all(used)  # dkimfast decided most, and handed some back to dkimpy


def test_parse_header_section_matches_dkimpy() -> None:
    rng = random.Random(822)
    for _ in range(2000):
        lines = [rng.choice(NAMES) + b":" + _value(rng) for _ in range(rng.randrange(0, 6))]
        for _ in range(rng.randrange(0, 3)):
            lines.insert(rng.randrange(len(lines) + 1),
                         rng.choice([b" cont", b"\tcont", b"From x", b"No colon", b"A :b", b"\x7fX: y", b"::", b"K:"]))
        sep = rng.choice([b"\r\n", b"\n"])
        head = sep.join(lines) + sep + rng.choice([sep + b"body", b"", sep])
        ours = dkimfast.parse_header_section(head)
        try:
            theirs = [tuple(f) for f in dkim.rfc822_parse(head)[0]]
        except Exception:  # noqa: BLE001 - dkimpy raises: we must hand it back
            assert ours is None
            continue
        # handed back (None) only for an mbox "From " line or a field name that starts with a colon
        special = any(line.startswith((b"From ", b":")) for line in head.split(sep))
        assert ours == theirs or (ours is None and special), head


@pytest.mark.parametrize("algo", [b"rsa-sha256", b"ed25519-sha256"])
def test_the_fast_path_passes_and_fails_like_dkimpy(algo, monkeypatch) -> None:
    seed, _p, ed_txt = ed_key()
    pem, txt = rsa_key()
    key, key_txt = (pem, txt) if algo == b"rsa-sha256" else (seed, ed_txt)
    msg = b"From: a@example.org\r\nSubject: hi\r\n\r\nbody\r\n"
    raw = dkim.sign(msg, b"s", b"example.org", key, signature_algorithm=algo, include_headers=[b"from", b"subject"]) + msg
    p = dkimcheck.plan(raw, check_arc=False)
    sp = p.sigs[0]
    head, body = dkimcheck.split_for_dkim(raw)
    fields = dkimfast.parse_header_section(head)
    hashes = dkimcheck.bodyhash.body_hashes((body,), p.body_keys)
    bkey = dkimcheck._body_key(sp.tags, b"simple/simple")
    assert dkimfast.verify(fields, 0, sp.tags, sp.key_name, key_txt.encode(), hashes, bkey, 1024) is True
    tampered = [(n, b" ho\r\n" if n == b"Subject" else v) for n, v in fields]
    assert dkimfast.verify(tampered, 0, sp.tags, sp.key_name, key_txt.encode(), hashes, bkey, 1024) is False
    bad = {bkey: (b"\0" * 32, hashes[bkey][1])}
    with pytest.raises(dkim.ValidationError, match="body hash mismatch"):
        dkimfast.verify(fields, 0, sp.tags, sp.key_name, key_txt.encode(), bad, bkey, 1024)
    other = dict(sp.tags, t=str(int(time.time()) + 86400).encode())  # not what was planned: dkimpy decides
    assert dkimfast.verify(fields, 0, other, sp.key_name, key_txt.encode(), hashes, bkey, 1024) is None
    assert base64.b64decode(sp.tags[b"bh"]) == hashes[bkey][0]


def test_parse_tag_value_matches_dkimpy() -> None:
    """Same dict, or the same exception class, on random tag lists (the regex it drops only asked
    that a tag name start with an ASCII letter)."""
    import dkim.util
    rng = random.Random(32)
    atoms = [b"a", b"b", b"v", b"=", b";", b" ", b"\t", b"\r\n ", b"1", b"_", b"-", b"\xc3\xa9", b"rsa-sha256",
             b"Z9", b"", b"==", b";;", b"9x", b"\x0b", b"\x0c", b"a=1;", b" v = x ;", b"bh=Zm9v"]
    seen = set()
    for _ in range(20000):
        value = b"".join(rng.choice(atoms) for _ in range(rng.randrange(0, 12)))
        try:
            want: object = dkim.util.parse_tag_value(value)
        except Exception as e:  # noqa: BLE001
            want = type(e)
        try:
            got: object = dkimfast.parse_tag_value(value)
        except Exception as e:  # noqa: BLE001
            got = type(e)
        assert got == want, value
        seen.add(want if isinstance(want, type) else dict)
    assert {dict, dkim.util.InvalidTagSpec, dkim.util.DuplicateTag} <= seen
