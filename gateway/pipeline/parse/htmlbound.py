"""Bound sender HTML before any HTML parser sees it: attributes per element and nesting depth.

Why: the parsers we hand mail HTML to are super-linear in these two dimensions. libxml2 (lxml,
used by the quote splitter and by inscriptis) checks each new attribute against all earlier ones of
the element (100k attributes: minutes); inscriptis does the same again; html5ever (nh3, the
sanitiser) scans the stack of open elements at each tag (200k nested <div>: seconds). Real mail
never comes near the limits below, so for it this pass changes nothing.

One linear scan with a tokenizer that follows the HTML rules for where a tag ends (a ``>`` inside a
quoted attribute value does not end it; quotes count only after ``=``), possessive quantifiers
throughout (no backtracking). Start tags beyond ``MAX_HTML_DEPTH`` open elements are removed with
their end tags (the text stays); attributes beyond ``MAX_HTML_ATTRIBUTES`` on one element are cut.
"""
from __future__ import annotations

import re

__all__ = ["MAX_HTML_ATTRIBUTES", "MAX_HTML_DEPTH", "MAX_RENDER_TAGS", "bound_html"]

MAX_HTML_ATTRIBUTES = 256   # attributes kept per element (Outlook's busiest tags carry ~20)
MAX_HTML_DEPTH = 256        # open elements (libxml2's own limit); deeper start tags are dropped
MAX_RENDER_TAGS = 20_000    # beyond this many tags, HTML is turned into text by a plain tag strip

_TAG = re.compile(r"""<(/?)([A-Za-z][^\s/>]*+)((?:\s++|=\s*+(?:"[^"]*+"?|'[^']*+'?|[^\s>]*+)|[^\s=>]++)*+)(>?)""")
_ATTR_NAME = re.compile(r"""\s*+(?:=\s*+(?:"[^"]*+"?|'[^']*+'?|[^\s>]*+)|([^\s=>]++))""")
# Elements that never nest in practice (void, or closed implicitly by the next one of their kind).
_FLAT = frozenset({
    "area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "param", "source", "track",
    "wbr", "p", "li", "dt", "dd", "option", "optgroup", "tr", "td", "th", "tbody", "thead", "tfoot",
    "colgroup", "caption", "rb", "rt", "rp", "!doctype"})


def _cut_attributes(body: str) -> str | None:
    """``body`` (a start tag's attribute text) cut after MAX_HTML_ATTRIBUTES names; None if within."""
    n = 0
    for m in _ATTR_NAME.finditer(body):
        if m.group(1) is not None:
            n += 1
            if n > MAX_HTML_ATTRIBUTES:
                return body[:m.start()]
    return None


def bound_html(html: str) -> tuple[str, list[str]]:
    """(``html`` within the limits, what was changed: "html-attributes-cut", "html-depth-cut")."""
    if "<" not in html:
        return html, []
    out: list[str] = []
    pos = 0
    changed: set[str] = set()
    stack: list[str] = []
    open_count: dict[str, int] = {}
    dropped: dict[str, int] = {}
    for m in _TAG.finditer(html):
        close, name, body = m.group(1), m.group(2).lower(), m.group(3)
        if close:
            if dropped.get(name):
                dropped[name] -= 1
                out.append(html[pos:m.start()])
                pos = m.end()
                continue
            if open_count.get(name):
                while stack:               # the parser closes everything opened inside it
                    top = stack.pop()
                    open_count[top] -= 1
                    if top == name:
                        break
            continue
        if len(body) > 2 * MAX_HTML_ATTRIBUTES:
            cut = _cut_attributes(body)
            if cut is not None:
                changed.add("html-attributes-cut")
                out.append(html[pos:m.start(3)])
                out.append(cut)
                pos = m.end(3)
        if name in _FLAT:
            continue
        if len(stack) >= MAX_HTML_DEPTH:
            changed.add("html-depth-cut")
            dropped[name] = dropped.get(name, 0) + 1
            out.append(html[pos:m.start()])
            pos = m.end()
            continue
        stack.append(name)
        open_count[name] = open_count.get(name, 0) + 1
    if not changed:
        return html, []
    out.append(html[pos:])
    return "".join(out), sorted(changed)
