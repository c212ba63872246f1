"""Hostile messages of growing size, and the CPU one costs in the pipeline and at SMTP time.

Shared by tests/pipeline/test_linear_cost.py (linearity + absolute limits) and bench/bench_hostile.py
(the figures in docs/benchmarks.md). Each class is a function ``n -> raw message`` whose size grows
linearly with ``n``; ``n`` is picked so that ``SIZES`` stays within about 1 MB.
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from gateway.config.load import Config, MailboxConfig, SmtpConfig
from gateway.config.recipients import RecipientMap

HEAD = ("To: support@example.test\r\nSubject: help\r\nDate: Mon, 1 Jan 2024 10:00:00 +0000\r\n"
        "Message-ID: <h1@example.org>\r\nMIME-Version: 1.0\r\n")


def _msg(from_: str = "Alice <alice@example.org>", extra: str = "", ctype: str = "text/plain; charset=utf-8",
         body: str = "Hello\r\n") -> bytes:
    return (f"From: {from_}\r\n{HEAD}{extra}Content-Type: {ctype}\r\n\r\n{body}").encode("utf-8", "surrogateescape")


def _html(inner: str) -> bytes:
    return _msg(ctype="text/html; charset=utf-8", body=f"<html><body>{inner}</body></html>\r\n")


def _folded(items: list[str], sep: str) -> str:
    """Items joined with ``sep`` and folded every 20 items (header lines stay < 998 octets)."""
    out = []
    for i in range(0, len(items), 20):
        out.append(sep.join(items[i:i + 20]))
    return (sep.rstrip() + "\r\n ").join(out)


def _nested_multipart(n: int) -> bytes:
    head = ""
    for i in range(n):
        head += f'--b{i - 1}\r\n' if i else ""
        head += f'Content-Type: multipart/mixed; boundary="b{i}"\r\n\r\n'
    tail = "".join(f"\r\n--b{i}--\r\n" for i in reversed(range(n)))
    leaf = f"--b{n - 1}\r\nContent-Type: text/plain\r\n\r\nhello\r\n"
    return (f"From: a@example.org\r\n{HEAD}" + head + leaf + tail).encode()


def _many_parts(n: int) -> bytes:
    parts = "".join(f"--b\r\nContent-Type: text/plain\r\n\r\np{i}\r\n" for i in range(n))
    return _msg(ctype='multipart/mixed; boundary="b"', body=parts + "--b--\r\n")


# name -> (generator, n for the smallest size). Sizes: n, 2n, 4n; the 4n message is <= ~1 MB.
CLASSES: dict[str, tuple[Callable[[int], bytes], int]] = {
    # issue 18
    "from_quotes": (lambda n: _msg(from_='"' * n), 25_000),
    "from_quotes_addr": (lambda n: _msg(from_='"' * n + " <a@example.org>"), 25_000),
    "ctype_params": (lambda n: _msg(ctype="text/plain" + "; a=b" * n), 25_000),
    "html_attributes": (lambda n: _html("<blockquote><p " + " ".join(f"a{i}=x" for i in range(n))
                                        + ">q</p></blockquote>"), 25_000),
    "html_hr": (lambda n: _html("<p>new</p>" + "<hr>" * n), 50_000),
    "on_wrote": (lambda n: _msg(body="On Mon, 1 Jan 2024 at 10:00, Bob <bob@example.org> wrote:\r\n" * n), 4_000),
    "mime_parts": (_many_parts, 5_000),
    "card_runs": (lambda n: _msg(body="4" + "-4" * n + "\r\n"), 60_000),
    "card_runs_space": (lambda n: _msg(body="4" + " 4" * n + "\r\n"), 60_000),
    # issue 25
    "to_commas": (lambda n: _msg(extra="Cc: " + "," * n + "\r\n"), 60_000),
    "html_nested_div": (lambda n: _html("<div>" * n + "x" + "</div>" * n), 25_000),
    "nested_multipart": (_nested_multipart, 2_500),
    "html_table_cells": (lambda n: _html("<table><tr>" + "<td>x</td>" * n + "</tr></table>"), 25_000),
    # more of the same families, found by the probe
    "from_angles": (lambda n: _msg(from_="<" * n), 60_000),
    "from_parens": (lambda n: _msg(from_="(" * n + "a@example.org"), 60_000),
    "from_backslash": (lambda n: _msg(from_='"' + "\\\\" * n + '" <a@example.org>'), 30_000),
    "from_encoded_words": (lambda n: _msg(from_="=?utf-8?q?a?= " * n + "<a@example.org>"), 15_000),
    "to_list": (lambda n: _msg(extra="To: " + _folded([f"u{i}@example.org" for i in range(n)], ", ") + "\r\n"),
                12_000),
    "to_groups": (lambda n: _msg(extra="To: " + "g:" * n + ";\r\n"), 60_000),
    "subject_words": (lambda n: _msg(extra="Subject: " + _folded(["=?utf-8?q?Re=3A?="] * n, " ") + "\r\n"),
                      15_000),
    "references": (lambda n: _msg(extra="References: " + _folded([f"<r{i}@example.org>" for i in range(n)], " ")
                                  + "\r\n"), 12_000),
    "many_headers": (lambda n: _msg(extra="".join(f"X-H{i}: v\r\n" for i in range(n))), 25_000),
    "quoted_levels": (lambda n: _msg(body="new\r\n" + ">" * n + " q\r\n"), 250_000),
    "quote_lines": (lambda n: _msg(body="new\r\n" + "> q\r\n" * n), 60_000),
    "header_block_lines": (lambda n: _msg(body="new\r\n" + "From: a\r\nSent: b\r\n" * n), 25_000),
    "commands": (lambda n: _msg(body="$" * n + "\r\n"), 250_000),
    "command_lines": (lambda n: _msg(body="$Status=Closed$\r\n" * n), 15_000),
    "forward_markers": (lambda n: _msg(body="---------- Forwarded message ---------\r\nFrom: b@example.org\r\n" * n),
                        4_000),
    "long_line": (lambda n: _msg(body="a" * n), 250_000),
    "blank_lines": (lambda n: _msg(body="a\r\n" + "\r\n" * n + "b\r\n"), 120_000),
    "signoffs": (lambda n: _msg(body="hi\r\n" + "Thanks,\r\nBob\r\n" * n), 25_000),
    "html_blockquotes": (lambda n: _html("<blockquote>" * n + "x" + "</blockquote>" * n), 20_000),
    "html_comments": (lambda n: _html("<!--" * n), 60_000),
    "html_styles": (lambda n: _html('<p style="' + "color:red;" * n + '">x</p>'), 25_000),
    "param_2231": (lambda n: _msg(ctype="text/plain; " + "; ".join(f"name*{i}*=a" for i in range(n))), 12_000),
    "disp_params": (lambda n: _msg(extra="Content-Disposition: inline" + "; a=b" * n + "\r\n"), 25_000),
    "boundary_lines": (lambda n: _msg(ctype='multipart/mixed; boundary="b"', body="--b\r\n" * n), 60_000),
    "received": (lambda n: _msg(extra="".join(f"Received: from h{i} ([192.0.2.{i % 250}])\r\n" for i in range(n))),
                 6_000),
}


def pipeline_context() -> tuple[object, list]:
    """The real Config and every stage (two-way stages included, an agent, a routing rule, redaction)."""
    from gateway.config.routing import parse_routing
    from gateway.pipeline.runner.assemble import build_pipeline
    from gateway.pipeline.stages.core import Context
    from gateway.config.twoway import parse_twoway
    mbs = (MailboxConfig(address="support@example.test", queue="IT"),)
    tw = parse_twoway({"threading": {}, "agent": [{"address": "alice@example.org"}],
                       "routing": {"rule": [{"name": "r", "conditions": [{"field": "body", "op": "contains",
                                                                          "value": "urgent"}],
                                           "tags": ["urgent"]}]}})
    assert parse_routing  # routing is parsed by parse_twoway
    cfg = Config(smtp=SmtpConfig(hostname="mx.example.test"), mailboxes=mbs, twoway=tw)
    ctx = Context(cfg=cfg, recipients=RecipientMap(mbs), keys=(b"k" * 32,))
    return ctx, build_pipeline(cfg)


def pipeline_cost(raw: bytes, ctx_stages: tuple[object, list] | None = None,
                  per_stage: dict[str, float] | None = None) -> float:
    """CPU seconds to parse ``raw`` and run every stage on it (each stage runs, whatever the verdicts)."""
    from gateway.pipeline.parse.mime import parse_message
    from gateway.pipeline.stages.core import Inbound
    from gateway.store.base import SpoolEntry
    ctx, stages = ctx_stages or pipeline_context()
    entry = SpoolEntry(id="sp-1", received_at=time.time(), mail_from="alice@example.org",
                       rcpt_tos=("support@example.test",), mailboxes=("support@example.test",),
                       peer_ip="192.0.2.10", helo="mail.example.org", tls=None, message_id="", raw=raw,
                       auth={"dmarc": {"result": "pass"}}, flags=())
    t0 = time.process_time()
    parsed = parse_message(raw)
    t1 = time.process_time()
    if per_stage is not None:
        per_stage["parse"] = t1 - t0
    msg = Inbound(entry, parsed)

    async def run() -> None:
        for stage in stages:
            s0 = time.process_time()
            verdict = await stage.run(msg, ctx)
            if verdict.data:
                msg.findings[stage.name] = verdict.data
            if per_stage is not None:
                per_stage[stage.name] = time.process_time() - s0

    asyncio.run(run())
    return time.process_time() - t0


def smtp_cost(raw: bytes, per_reader: dict[str, float] | None = None) -> float:
    """CPU seconds of the SMTP process's readers of the header section (no DNS, no crypto)."""
    from gateway.auth import dkimcheck
    from gateway.auth.dmarc import parse_from
    from gateway.auth.headers import header_fields, header_values, strip_forged_authres
    from gateway.smtp.checks import header_end
    readers: dict[str, Callable[[], object]] = {
        "header_end": lambda: header_end(raw),
        "header_fields": lambda: header_fields(raw),
        "received": lambda: header_values(raw, "Received"),
        "authres": lambda: strip_forged_authres(raw, "mx.example.test"),
        "parse_from": lambda: parse_from(raw),
        "dkim_plan": lambda: dkimcheck.plan(raw, check_arc=True),
    }
    total = 0.0
    for name, fn in readers.items():
        t0 = time.process_time()
        fn()
        dt = time.process_time() - t0
        total += dt
        if per_reader is not None:
            per_reader[name] = dt
    return total
