"""Real-world mail read as the big helpdesks read it (issue 20, section 1).

Every message of tests/fidelity/mail (written for this project by build_corpus.py: legacy 8-bit
headers, encoded words with a comma in the phrase, ``root@localhost``, ``addr (Name)``, quoted local
parts, forwarded messages, parts without Content-Type, HTML with only a <title>, and ordinary mail) goes
through a real SMTP socket into a gateway that authenticates against the tests' DNS server, and the
ticket article is compared with the ``*.expected.json`` beside it. Prints the match rate per field.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import aiosmtplib

from gateway.pipeline.parse.mime import MAX_GUESSES, parse_message

from ..conftest import queued_id

MAIL = Path(__file__).with_name("mail")
FIELDS = ("subject", "from_addr", "from_name", "body", "attachments")
TARGET = 0.98


def corpus() -> list[tuple[Path, dict]]:
    return [(p, json.loads(p.with_name(p.name[:-4] + ".expected.json").read_text(encoding="utf-8")))
            for p in sorted(MAIL.glob("*.eml"))]


def compare(art: dict, want: dict) -> dict[str, str | None]:
    """Field -> None when it matches, else what was found."""
    body = art["body_text"]
    found = {"subject": art["subject"], "from_addr": art["from"], "from_name": art["from_name"]}
    out: dict[str, str | None] = {k: None if found[k] == want[k] else repr(found[k]) for k in found}
    ok = True
    if "body_startswith" in want:
        ok = body.lstrip().startswith(want["body_startswith"])
    if ok and "body_contains" in want:
        ok = want["body_contains"] in body
    if ok and "body_not_contains" in want:
        ok = want["body_not_contains"] not in body
    out["body"] = None if ok else repr(body[:80])
    names = sorted([a["filename"] for a in art["attachments"]] + [a["filename"] for a in art["stripped_attachments"]])
    out["attachments"] = None if names == sorted(want.get("attachments", [])) else repr(names)
    return out


def test_corpus_is_big_enough_and_byte_exact() -> None:
    cases = corpus()
    assert len(cases) >= 40
    for path, _want in cases:
        raw = path.read_bytes()
        assert b"\r\n" in raw and b"\n" not in raw.replace(b"\r\n", b""), f"{path.name}: not CRLF (see .gitattributes)"


async def test_fidelity_corpus_through_smtp(start_gateway) -> None:
    cases = corpus()
    gw = await start_gateway()
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=gw.port, timeout=20, start_tls=False)
    await client.connect()
    sent: dict[str, tuple[Path, dict]] = {}
    refused: list[str] = []
    for path, want in cases:
        try:
            _e, text = await client.sendmail("fidelity@bounce.test", ["support@example.test"], path.read_bytes())
            sent[queued_id(text)] = (path, want)
        except aiosmtplib.SMTPResponseException as exc:
            refused.append(f"{path.name}: {exc.code} {exc.message}")
            await client.rset()
    await client.quit()
    articles: dict[str, dict] = {}
    states: dict[str, str] = {}
    for sid in sent:
        entry = await gw.wait_done(sid, timeout=30)
        states[sid] = f"{entry.state} {entry.reason or ''}".strip()
    for t in await gw.store.tickets_list():
        for art in (await gw.store.ticket_get(str(t["id"])))["articles"]:
            articles[art["spool_id"]] = art
    hits = dict.fromkeys(FIELDS, 0)
    misses: list[str] = []
    for sid, (path, want) in sent.items():
        art = articles.get(sid)
        if art is None:
            misses.append(f"{path.name}: no article ({states[sid]})")
            continue
        for field, got in compare(art, want).items():
            if got is None:
                hits[field] += 1
            else:
                misses.append(f"{path.name}: {field} = {got}")
    total = len(cases)
    print(f"\nfidelity corpus: {total} messages, {len(refused)} refused")
    for field in FIELDS:
        print(f"  {field:12s} {hits[field]:3d}/{total} ({hits[field] / total:.1%})")
    for line in refused + misses:
        print("  " + line)
    assert not refused, refused
    for field in FIELDS:
        assert hits[field] / total >= TARGET, (field, misses)


def test_charset_guessing_is_bounded_per_message() -> None:
    """Detection runs on at most MAX_GUESSES short header values a message: 5,000 raw 8-bit header
    lines cost about what a few dozen do."""
    def message(n: int) -> bytes:
        lines = b"".join(b"X-Note-%d: " % i + "Проблема с доступом".encode("koi8_r") + b"\r\n" for i in range(n))
        return (b"From: a@example.org\r\n" + lines + b"Subject: " + "Заявка".encode("koi8_r") + b"\r\n\r\nbody\r\n")

    def cpu(raw: bytes) -> float:
        t0 = time.process_time()
        for _ in range(3):
            pm = parse_message(raw)
        assert pm.from_addr == "a@example.org"
        return (time.process_time() - t0) / 3

    parse_message(message(10))                       # warm the detector
    small, large = cpu(message(50)), cpu(message(5_000))
    pm = parse_message(message(5_000))
    assert f"charset-guess-limit:{MAX_GUESSES}" in pm.defects
    # 100x the header lines: linear work for the rest, no more guesses; generous margin for a busy machine
    assert large < small * 100 * 3, (small, large)


def _from(value: bytes) -> bytes:
    return b"From: " + value + b"\r\nTo: support@example.test\r\nSubject: s\r\n\r\nx\r\n"


def test_both_readers_read_the_wild_senders_alike() -> None:
    """DMARC's reading (parse_from) and the parser's (parse_message) agree on every shape, and none is
    an error: the encoded word with a comma stays one phrase, the dotless domain is readable but
    unevaluated, the comment is the name, needless quotes go."""
    from gateway.auth.dmarc import parse_from
    for value, addr, name, unevaluated in (
            (b"=?iso-8859-1?Q?M=FCller,=20Hans?= <a@example.de>", "a@example.de", "Müller, Hans", ()),
            (b"root@localhost", "root@localhost", "", ("localhost",)),
            (b"Nagios <nagios@monitor>", "nagios@monitor", "Nagios", ("monitor",)),
            (b"a@example.org (Display Name)", "a@example.org", "Display Name", ()),
            (b'"john.doe"@example.com', "john.doe@example.com", "", ()),
            (b'"quoted local"@example.com', '"quoted local"@example.com', "", ())):
        info = parse_from(_from(value))
        pm = parse_message(_from(value))
        assert info.error is None and info.addresses == (addr,) and info.unevaluated == unevaluated, value
        assert (pm.from_addr, pm.from_name) == (addr, name), value


def test_a_dotless_from_address_never_makes_dmarc_pass() -> None:
    """With root@localhost beside an evaluated, passing domain the message is not DMARC-authenticated:
    the requester (the first address) was not evaluated."""
    from gateway.auth.authenticator import Authenticator
    from gateway.auth.dmarc import DmarcDomainResult, parse_from
    passing = [DmarcDomainResult("example.org", "example.org", "pass")]
    both = parse_from(_from(b"root@localhost, a@example.org"))
    assert both.error is None and both.domains == ("example.org",)
    assert Authenticator._combine_dmarc(both, passing)["result"] == "none"
    assert Authenticator._combine_dmarc(parse_from(_from(b"a@example.org")), passing)["result"] == "pass"
    assert Authenticator._combine_dmarc(parse_from(_from(b"root@localhost")), [])["result"] == "none"
