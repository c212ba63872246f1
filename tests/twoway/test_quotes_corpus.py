"""Quote and signature stripping against talon's fixtures (shared corpus, replies/).

Test rules: /work/shared/corpora/README.md ("replies/"). Each fixture is its own test; a
last test computes the match rate per category, prints it (terminal summary) and asserts
the floor we reach, so a regression shows as a failure and an improvement as a new floor.
"""
from __future__ import annotations

import email
import email.policy
import re
from pathlib import Path

import pytest

from gateway.pipeline.stages.quotes import extract_signature, split_reply, strip_html_quotes
from tests.conftest import CORPORA

from .conftest import RATES

REPLIES = CORPORA / "replies"
pytestmark = pytest.mark.skipif(not REPLIES.is_dir(), reason=f"reply corpus not found at {REPLIES}")

HTML_EXPECTED = "Hi. I am fine.\n\nThanks,\nAlex"
# Floors: what this implementation reaches (see the rate test). Raise them when it improves.
FLOORS = {"standard_replies": 12, "html_replies": 9, "single_samples": 2, "signatures": 6}
# reply-separated-by-hr.html: talon drops the reply's last line ("Bob", the sign-off that
# shares a <div> with the <hr> separator) together with the quote. We cut at the <hr> and
# keep "Bob": a deliberate difference, counted as a mismatch in the rate.
HR_TALON = "<div>Hi<div>there</div></div></body>"
HR_OURS = "<div>Hi<div>there</div><div>Bob</div></div></body>"


def _files(sub: str, pattern: str) -> list[Path]:
    d = REPLIES / sub
    return sorted(d.glob(pattern)) if d.is_dir() else []


def _squash(s: str) -> str:
    return re.sub(r"\s", "", s)


def _first_plain(path: Path) -> str:
    msg = email.message_from_bytes(path.read_bytes())
    for part in msg.walk():
        if part.get_content_type() == "text/plain":
            payload = part.get_payload(decode=True)
            assert isinstance(payload, bytes)
            return payload.decode(part.get_content_charset() or "ascii", "replace")
    raise AssertionError(f"{path.name}: no text/plain part")


def _html_part(path: Path) -> str | None:
    msg = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
    part = msg.get_body(preferencelist=("html",))
    return part.get_content() if part is not None else None


# ----------------------------------------------------------------- standard_replies
def standard_ok(path: Path) -> tuple[bool, str, str]:
    expected_file = path.with_name(path.stem + "_reply_text")
    expected = expected_file.read_text().strip() if expected_file.exists() else "Hello"
    got = split_reply(_first_plain(path)).reply.strip()
    return got == expected, got, expected


@pytest.mark.parametrize("path", _files("standard_replies", "*.eml"), ids=lambda p: p.name)
def test_standard_reply(path: Path) -> None:
    ok, got, expected = standard_ok(path)
    assert ok, f"{path.name}: got {got!r}, expected {expected!r}"


@pytest.mark.parametrize("path", _files("standard_replies", "*.eml"), ids=lambda p: p.name)
def test_standard_reply_with_html_alternative_agrees(path: Path) -> None:
    """Given the HTML part too (as the pipeline does), the plain text still decides."""
    html = _html_part(path)
    plain = split_reply(_first_plain(path)).reply
    assert split_reply(_first_plain(path), html).reply == plain
    if html:                           # the HTML alone also finds the quote
        assert split_reply("", html).has_quote, path.name


# ----------------------------------------------------------------- html_replies
def html_ok(path: Path) -> tuple[bool, str]:
    got = split_reply("", path.read_text(encoding="utf-8")).reply
    return _squash(got) == _squash(HTML_EXPECTED), got


@pytest.mark.parametrize("path", _files("html_replies", "*.html"), ids=lambda p: p.name)
def test_html_reply(path: Path) -> None:
    ok, got = html_ok(path)
    assert ok, f"{path.name}: got {got!r}"


# ----------------------------------------------------------------- single samples
def olk_ok() -> bool:
    out = strip_html_quotes((REPLIES / "OLK_SRC_BODY_SECTION.html").read_text())
    return _squash(out) == "<html><head></head><body><div>Reply</div></body></html>"


def hr_output() -> str:
    return _squash(strip_html_quotes((REPLIES / "reply-separated-by-hr.html").read_text()))


def share_block_ok() -> bool:
    text = (REPLIES / "reply-quotations-share-block.eml").read_bytes().decode("utf-8")
    got = split_reply(text).reply
    return bool(got) and "From" not in got


def test_olk_src_body_section() -> None:
    assert olk_ok()


def test_reply_separated_by_hr_keeps_reply_sign_off() -> None:
    """Documented difference from talon (see HR_TALON / HR_OURS above)."""
    out = hr_output()
    assert HR_OURS in out, out
    assert "From:" not in out and "Hello" not in out


def test_reply_quotations_share_block() -> None:
    assert share_block_ok()


def test_reply_quotations_share_block_real_content() -> None:
    """The same message parsed properly: Yahoo's '--- On … wrote:' attribution."""
    path = REPLIES / "reply-quotations-share-block.eml"
    parts = split_reply(_first_plain(path), _html_part(path), sender="Joe Doe <xxx@example.com>")
    assert parts.reply.startswith("Hi Katharine.") and parts.reply.endswith("Joe XXX")
    assert "booking inquiry" in parts.quoted and "booking inquiry" not in parts.reply


# ----------------------------------------------------------------- signatures
def signature_ok(body_path: Path) -> tuple[bool, str]:
    name = body_path.name[: -len("_body")]
    body = body_path.read_text()
    sender = body_path.with_name(name + "_sender").read_text().strip()
    expected_sig = body_path.with_name(name + "_signature").read_text()
    text, sig = extract_signature(body, sender)
    rest = body.strip()[: len(body.strip()) - len(expected_sig)]
    return sig.strip() == expected_sig.strip() and text.strip() == rest.strip(), sig


@pytest.mark.parametrize("path", _files("signature/emails/stripped", "*_body"), ids=lambda p: p.name)
def test_signature(path: Path) -> None:
    ok, sig = signature_ok(path)
    assert ok, f"{path.name}: got signature {sig!r}"


@pytest.mark.parametrize("path", [p for p in _files("signature/emails/P", "*") if not p.name.endswith("_sender")],
                         ids=lambda p: p.name)
def test_signature_inputs_do_not_crash(path: Path) -> None:
    body = path.read_text(encoding="utf-8")
    sender_file = path.with_name(path.name.replace("_body", "_sender"))
    sender = sender_file.read_text().strip() if sender_file != path and sender_file.exists() else ""
    text, sig = extract_signature(body, sender)
    assert text or sig
    parts = split_reply(body, sender=sender)
    # Nothing is lost: what is not reply is quoted (102682_R_S starts with a header block,
    # so all of it counts as history and the reply is empty).
    assert parts.reply or parts.quoted
    words = set(body.split())
    assert words <= set(parts.reply.split()) | set(parts.quoted.split())


# ----------------------------------------------------------------- the rate
def test_corpus_match_rate() -> None:
    results: dict[str, list[tuple[str, bool]]] = {
        "standard_replies": [(p.name, standard_ok(p)[0]) for p in _files("standard_replies", "*.eml")],
        "html_replies": [(p.name, html_ok(p)[0]) for p in _files("html_replies", "*.html")],
        "single_samples": [("OLK_SRC_BODY_SECTION.html", olk_ok()),
                           ("reply-separated-by-hr.html", HR_TALON in hr_output()),
                           ("reply-quotations-share-block.eml", share_block_ok())],
        "signatures": [(p.name, signature_ok(p)[0]) for p in _files("signature/emails/stripped", "*_body")],
    }
    lines = []
    for category, rows in results.items():
        ok = sum(1 for _, good in rows if good)
        misses = [name for name, good in rows if not good]
        RATES[category] = (ok, len(rows), misses)
        lines.append(f"{category}: {ok}/{len(rows)}")
        assert ok >= FLOORS[category], f"{category}: {ok}/{len(rows)} below the floor {FLOORS[category]}: {misses}"
    total = sum(len(r) for r in results.values())
    good = sum(1 for r in results.values() for _, g in r if g)
    print(f"\nquote-stripping corpus: {good}/{total} ({100 * good / total:.1f}%): " + ", ".join(lines))
    assert total == 30
