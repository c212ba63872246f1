"""The reply-template checker and renderer (gateway/http/reply_templates.py) on their own: what a template
may hold, what is refused with the line named, the size caps, the render context."""
from __future__ import annotations

import time

import pytest

from gateway.http import reply_templates as rt
from gateway.http.ticket_mail import with_signature
from gateway.ui import users

TICKET = {"number": "HD-7", "subject": "VPN down", "status": "open", "priority": "high", "queue": "IT",
          "requester_name": "Alice", "requester": "alice@customer.test", "assignee": "secret@x"}
CTX = rt.context(TICKET, "Ann", "ann@staff.test")


def test_the_allowed_syntax_renders() -> None:
    src = ("Hello {{ requester.name | default('there', true) | title }},\n"
           "{{ ticket.number }} ({{ ticket.subject | upper }}) is {{ ticket.status }}.\n"
           "{% if ticket.priority == 'high' and not ticket.queue != 'IT' %}Urgent.{% elif ticket.priority == 'low' %}"
           "Later.{% else %}Soon.{% endif %}\n"
           "{{ agent.name ~ ' <' ~ agent.email ~ '>' }} {{ 'x' if requester.email else 'y' }} {{ '  a  ' | trim }}\n"
           "{% raw %}{{ literal }}{% endraw %}")
    assert rt.render(src, CTX) == ("Hello Alice,\nHD-7 (VPN DOWN) is open.\nUrgent.\nAnn <ann@staff.test> x a\n"
                                   "{{ literal }}")
    empty = rt.context({**TICKET, "requester_name": ""}, "Ann", "a@b")
    assert rt.render("Hi {{ requester.name | default('there', true) }}", empty) == "Hi there"


def test_field_values_are_data_never_template_code() -> None:
    ctx = rt.context({**TICKET, "subject": "{{ agent.email }}{% for x in y %}", "requester_name": "<b>Eve</b>"},
                     "Ann", "ann@staff.test")
    assert rt.render("{{ ticket.subject }} {{ requester.name }}", ctx) == "{{ agent.email }}{% for x in y %} <b>Eve</b>"


def test_the_context_holds_only_the_named_fields() -> None:
    assert set(CTX) == {"ticket", "requester", "agent"}
    assert "assignee" not in CTX["ticket"]
    with pytest.raises(rt.TemplateError, match="line 2: ticket.assignee is not a field"):
        rt.check("ok\n{{ ticket.assignee }}")


@pytest.mark.parametrize("src, why", [
    ("a\n{% for c in ticket.subject %}{{ c }}{% endfor %}", "line 2: loops"),
    ("{{ ticket.subject.upper() }}", "line 1: calls"),
    ("{{ range(10) }}", "calls"),
    ("{{ lipsum(n=100000) }}", "calls"),
    ("{% macro m() %}x{% endmacro %}", "macros"),
    ("{% set x = 1 %}", "{% set %}"),
    ("{% set x %}y{% endset %}", "{% set %}"),
    ("{% include 'base.html' %}", "{% include %}"),
    ("{% import 'x' as y %}", "{% import %}"),
    ("{% from 'x' import y %}", "import"),
    ("{% extends 'base.html' %}", "{% extends %}"),
    ("{% filter upper %}x{% endfilter %}", "{% filter %}"),
    ("{% with a = 1 %}{% endwith %}", "{% with %}"),
    ("{{ 'x' * 1000000000 }}", "arithmetic"),
    ("{{ 9 ** 9 ** 9 }}", "arithmetic"),
    ("{{ ticket['number'] }}", "subscripts"),
    ("{{ ticket.__class__ }}", "not a field"),
    ("{{ ticket.number.__class__ }}", "one level"),
    ("{{ config }}", "unknown name 'config'"),
    ("{{ ticket }}", "'ticket' alone"),
    ("{{ ticket.number | replace('a', 'b') }}", "filter 'replace' is not allowed"),
    ("{{ ticket.number | format('%s') }}", "filter 'format'"),
    ("{{ ticket.number | default(agent.name) }}", "arguments must be constants"),
    ("{{ ticket.number is defined }}", "tests"),
    ("{{ [1, 2] }}", "lists"),
    ("{{ ticket.number < 'x' }}", "only == and !="),
    ("x\n\n{{ ticket.number", "line 3"),
    ("{% if ticket.number %}x", "line 1"),
])
def test_refused_with_the_reason_and_line(src: str, why: str) -> None:
    with pytest.raises(rt.TemplateError) as exc:
        rt.check(src)
    assert why in str(exc.value)
    assert str(exc.value).startswith("line ")


def test_size_caps_and_nesting() -> None:
    with pytest.raises(rt.TemplateError, match="at most 20,000"):
        rt.check("x" * (rt.MAX_TEMPLATE + 1))
    rt.check("x" * rt.MAX_TEMPLATE)
    with pytest.raises(rt.TemplateError, match="nested too deeply"):
        rt.check("{{ " + "(" * 5000 + "ticket.number" + ")" * 5000 + " }}")
    # the rendered size is capped too: a template at its cap repeating a long field
    long = rt.context({**TICKET, "subject": "s" * 10_000}, "Ann", "a@b")
    with pytest.raises(rt.TemplateError, match="rendered template is over 50,000"):
        rt.render("{{ ticket.subject }}" * 10, long)
    # and the worst allowed template stays cheap to check and render
    worst = "{{ ticket.subject ~ ticket.subject | upper | lower | title | trim }}" * 250
    t0 = time.perf_counter()
    with pytest.raises(rt.TemplateError):
        rt.render(worst, long)
    assert time.perf_counter() - t0 < 2.0


def test_clean_name_and_body() -> None:
    assert rt.clean_name("  Hello \t  there ") == "Hello there"
    for bad, why in (("", "empty"), ("x" * 101, "at most 100"), ("a\x00b", "control")):
        with pytest.raises(rt.TemplateError, match=why):
            rt.clean_name(bad)
    assert rt.clean_body("a\r\nb\rc") == "a\nb\nc"
    with pytest.raises(rt.TemplateError, match="empty"):
        rt.clean_body(" \n ")


def test_signature_cleaning_and_appending() -> None:
    assert users.clean_signature("-- \r\nAnn\r\nSupport  \r\n\r\n") == "Ann\nSupport"
    assert users.clean_signature("") == ""
    with pytest.raises(users.UserError, match="at most 2,000"):
        users.clean_signature("x" * 2001)
    users.clean_signature("x" * 2000)
    for bad in ("a\x1bb", "a\u202eb"):
        with pytest.raises(users.UserError, match="control"):
            users.clean_signature(bad)
    assert with_signature("Hi.\n\n", "Ann\nSupport") == "Hi.\n\n-- \nAnn\nSupport\n"
    assert with_signature("Hi.", "  ") == "Hi."
