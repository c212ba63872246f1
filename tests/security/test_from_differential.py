"""The requester is the From that DMARC evaluated (issue 18, class 1-2): a differential on generated From fields.

Two readers read From: the SMTP side (``gateway.auth.dmarc.parse_from``: what DMARC evaluates) and the
pipeline's MIME parser (the email package's header registry). On ≥ 30,000 generated From values (quotes,
comments, encoded words in the phrase and in the address, encoded words carrying a comma or an address in
the phrase, quoted local parts, single-label domains, groups, CR/LF/NUL, white space before the colon,
obsolete routes, several addresses) each message goes the way the gateway takes it: the DATA check
(refused, or normalised), the From reading stored with the spool entry, then the real pipeline stages. The
outcome is a refusal, a quarantine, or a ticket article — and an article's sender is always the address
DMARC evaluated, at the domain DMARC evaluated; never the envelope sender when a From field exists.
"""
from __future__ import annotations

import random
from collections import Counter

import pytest

from gateway.auth.authenticator import from_record
from gateway.auth.dmarc import parse_from
from gateway.auth.headers import header_section_problem, normalise_header_section
from gateway.pipeline.parse.mime import parse_message
from gateway.pipeline.stages.core import Inbound
from gateway.pipeline.runner.worker import Worker, make_executor
from gateway.store.base import SpoolEntry

from ..conftest import make_config

ATOMS = ["alice", "Bob", "o'neil", "a.b", "x+tag", "victim", "ceo", "info", "ÿ", "Müller"]
DOMAINS = ["customer.test", "reject.test", "evil.test", "Reject.TEST", "sub.reject.test", "[127.0.0.1]",
           "localhost", "reject.test.", "xn--caf-dma.test"]


def _address(rng: random.Random) -> str:
    local = rng.choice(ATOMS)
    r = rng.random()
    if r < 0.1:
        local = f'"{local} {rng.choice(ATOMS)}"'
    elif r < 0.15:
        local = f'"{local}@{rng.choice(DOMAINS)}"'
    elif r < 0.22:
        local = f"=?utf-8?q?{local}=40{rng.choice(DOMAINS)}?="
    elif r < 0.27:  # a quoted local part that needs no quotes (stored without them, issue 20)
        local = f'"{local}"'
    domain = rng.choice(DOMAINS)
    if rng.random() < 0.05:
        domain = f"=?utf-8?q?{domain}?="
    return f"{local}@{domain}"


def _phrase(rng: random.Random) -> str:
    r = rng.random()
    if r < 0.2:
        return rng.choice(ATOMS)
    if r < 0.35:
        return f'"{rng.choice(ATOMS)}, {rng.choice(ATOMS)}"'
    if r < 0.45:
        return f'"{_address(rng)}"'
    if r < 0.55:
        return f"=?utf-8?q?{_address(rng).replace('@', '=40')}?="
    if r < 0.62:
        return f"=?utf-8?b?{__import__('base64').b64encode(_address(rng).encode()).decode()}?="
    if r < 0.7:
        return '"' + '\\"' * rng.randint(1, 5) + '"'
    if r < 0.76:  # issue 20: an encoded word with a literal comma in the phrase (forbidden, common)
        return f"=?iso-8859-1?Q?{rng.choice(ATOMS)},=20{rng.choice(ATOMS)}?="
    if r < 0.8:   # ... and one that carries other specials, an address among them
        return f"=?utf-8?Q?<{_address(rng)}>,_{rng.choice(ATOMS)}?="
    return " ".join(rng.choice(ATOMS) for _ in range(rng.randint(1, 3)))


def _mailbox(rng: random.Random) -> str:
    r = rng.random()
    if r < 0.25:
        return _address(rng)
    if r < 0.35:
        return f"{_address(rng)} ({_phrase(rng)})"
    if r < 0.4:
        return f"{_phrase(rng)} <@route.test:{_address(rng)}>"
    if r < 0.45:
        return f"{_phrase(rng)} <{_address(rng)}> <{_address(rng)}>"
    if r < 0.5:
        return f"<{_address(rng)}>"
    return f"{_phrase(rng)} <{_address(rng)}>"


def from_value(rng: random.Random) -> bytes:
    r = rng.random()
    if r < 0.08:
        value = f"Group: {_mailbox(rng)}, {_mailbox(rng)};"
    elif r < 0.15:
        value = f"{_mailbox(rng)}, {_mailbox(rng)}"
    elif r < 0.18:
        value = "undisclosed-recipients:;"
    else:
        value = _mailbox(rng)
    if rng.random() < 0.1:
        value = f"({_phrase(rng)}) {value}"
    raw = value.encode()
    r = rng.random()
    if r < 0.04:
        i = rng.randint(0, len(raw))
        raw = raw[:i] + rng.choice([b"\r", b"\n", b"\x00", b"\r\n", b"\r\nFrom: victim@reject.test\r\n"]) + raw[i:]
    elif r < 0.08:
        i = rng.randint(0, len(raw))
        raw = raw[:i] + b"\r\n " + raw[i:]  # a fold anywhere
    name = b"From"
    if rng.random() < 0.03:
        name = rng.choice([b"From ", b"From\t", b"FROM", b"from"])
    return name + b": " + raw


def message(frm: bytes, n: int) -> bytes:
    return (b"Received: from client.test by mx.example.test\r\n" + frm + b"\r\nTo: support@example.test\r\n"
            b"Subject: differential " + str(n).encode() + b"\r\nMessage-ID: <d" + str(n).encode()
            + b"@x.test>\r\n\r\nHello.\r\n")


def _norm(addr: str) -> str:
    local, _, domain = addr.strip().rpartition("@")
    return f"{local}@{domain.lower()}"


@pytest.fixture
async def worker(tmp_path):
    cfg = make_config(tmp_path)
    from gateway.store import open_store
    store = open_store(cfg)
    await store.open()
    executor = make_executor()
    from gateway.runtime.metrics import Metrics
    from gateway.pipeline.runner.worker import MetricsSink
    w = Worker(cfg, store, MetricsSink(Metrics()), executor)
    yield w
    executor.shutdown()
    await store.close()


async def test_the_requester_is_always_the_from_dmarc_evaluated(worker) -> None:
    rng = random.Random(1818)
    outcomes: Counter[str] = Counter()
    wrong: list[tuple[bytes, str]] = []
    for n in range(30_000):
        frm = from_value(rng)
        raw = message(frm, n)
        if header_section_problem(raw) is not None:
            outcomes["refused at DATA: header section"] += 1
            continue
        raw = normalise_header_section(raw)
        info = parse_from(raw)
        entry = SpoolEntry(id=f"{n:032x}", received_at=0.0, mail_from="env@envelope.test",
                           rcpt_tos=("support@example.test",), mailboxes=("support@example.test",), peer_ip="192.0.2.1",
                           helo="client.test", tls=None, message_id="", raw=raw,
                           auth={"from": from_record(info), "dmarc": {"result": "none"}})
        delivery = await worker._run_stages(Inbound(entry, parse_message(raw)))
        if delivery.kind == "quarantine":
            kind = "sender identity" if delivery.reason.startswith("sender identity") else delivery.reason[:40]
            outcomes[f"quarantined: {kind}"] += 1
            continue
        if delivery.kind != "ticket" or delivery.article is None:
            outcomes[f"{delivery.kind}: {delivery.reason[:40]}"] += 1
            continue
        outcomes["ticket" + (" (DMARC could not apply: refused at DATA by default)" if info.error else "")] += 1
        got = delivery.article.from_addr
        if not info.addresses:
            wrong.append((frm, f"a ticket for {got!r} although the SMTP side read no From address ({info.error})"))
        elif got != _norm(info.addresses[0]):
            wrong.append((frm, f"requester {got!r} is not the authenticated From {info.addresses[0]!r}"))
        elif not info.error and got.rpartition("@")[2].strip("[]").rstrip(".").lower() not in {
                d.lower() for d in info.domains + info.unevaluated}:
            wrong.append((frm, f"requester {got!r} is not at a domain DMARC evaluated {info.domains}"))
        elif got == "env@envelope.test":
            wrong.append((frm, "MAIL FROM stood in for a message with a From field"))
    print("\nFrom differential:", dict(outcomes.most_common()))
    assert sum(outcomes.values()) == 30_000
    assert outcomes["ticket"] > 10_000 and outcomes["quarantined: sender identity"] > 100
    assert not wrong, wrong[:10]
