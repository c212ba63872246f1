"""Seeded random inputs: nothing raises, and quote splitting never loses a line."""
from __future__ import annotations

import random

from gateway.pipeline.stages.commands import DEFAULT_FIELDS, parse_commands
from gateway.pipeline.stages.forwards import parse_inline_forward
from gateway.pipeline.stages.quotes import extract_signature, split_reply
from gateway.pipeline.stages.redact import redact
from gateway.pipeline.stages.subjects import normalize_subject

PIECES = [
    "Hello", "Thanks,", "Ann", "-- ", "> quoted", ">", "", " ", "On Mon, Apr 2, 2012 at 6:26 PM, X <x@y.test> wrote:",
    "-----Original Message-----", "From: Megan <m@x.test>", "Sent: Monday", "To: you", "Subject: Re: x",
    "Am 2. April 2012 schrieb Bob:", "Sent from my iPhone", "________________", "$Priority=High$", "$$$$",
    "4111 1111 1111 1111", "Re: AW: [list] [HD-7] x", "---------- Forwarded message ---------", "<b>", "ü", "写道：",
    "Best regards,", "www.example.test", "+1 555 123 4567", "\t", "::::", "wrote:", "Begin forwarded message:",
]


def _random_text(rng: random.Random) -> str:
    return "\n".join(rng.choice(PIECES) for _ in range(rng.randint(0, 25)))


def test_random_bodies_keep_every_line() -> None:
    rng = random.Random(20261122)
    for _ in range(600):
        text = _random_text(rng)
        parts = split_reply(text, sender="Ann <ann@x.test>")
        assert parts.reply.startswith(parts.new_text)
        assert parts.reply.endswith(parts.signature)
        for line in text.split("\n"):
            if line.strip():
                assert line.strip() in parts.reply or line.strip() in parts.quoted, (text, line)
        extract_signature(text, "Ann")
        parse_commands(text, DEFAULT_FIELDS)
        parse_inline_forward(text)
        redact(text)
        normalize_subject(text)


def test_random_html_does_not_raise() -> None:
    rng = random.Random(7)
    tags = ["<div>", "</div>", "<blockquote>", "</blockquote>", "<hr>", "<br>", "<p>", "</p>",
            '<div class="gmail_quote">', '<span id="OLK_SRC_BODY_SECTION">', "</span>", "<b>From:</b> x",
            "Sent: y", "text", "On Mon, X <x@y.test> wrote:", "&nbsp;", "<!-- c -->", "<", ">"]
    for _ in range(300):
        html = "".join(rng.choice(tags) for _ in range(rng.randint(0, 40)))
        split_reply("", html)
        split_reply("plain", html)
