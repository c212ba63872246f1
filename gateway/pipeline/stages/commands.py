"""Email commands: ``$Field=Value$`` lines in the body of an authorised sender's mail.

Pure functions, no I/O. Who may send commands (configured agents, DMARC pass) is the
caller's decision; this module only reads them.

Syntax: a line that consists only of one or more commands, each ``<d>Field=Value<d>``
with the delimiter ``<d>`` (default ``$``), e.g.::

    $Priority=High$
    $Status=Closed$ $Assignee=ann@example.test$
    $Operation=CloseRequest$

Field names and listed values are matched without regard to case and reported in their
configured spelling. Unknown fields and values not in the allowed set are refused with
a reason; the last accepted value of a field wins. Lines starting with ``>`` (quoted
history) are ignored — run this on the quote-stripped new text anyway.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = ["CommandSet", "parse_commands", "format_result", "strip_command_lines", "strip_command_html",
           "OPERATIONS", "DEFAULT_FIELDS", "MAX_COMMANDS"]

OPERATIONS = ("AddRequest", "EditRequest", "CloseRequest", "PickupRequest")
DEFAULT_FIELDS: dict[str, set[str] | None] = {
    "Operation": set(OPERATIONS),
    "Priority": {"Low", "Normal", "High", "Urgent"},
    "Status": {"Open", "Pending", "Resolved", "Closed"},
    "Assignee": None,
    "Category": None,
}
MAX_COMMANDS = 50
MAX_VALUE_CHARS = 200
_FIELD_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_. -]{0,63}$")


@dataclass(frozen=True, slots=True)
class CommandSet:
    """``applied``: field → value (configured spelling), last accepted value per field.
    ``refused``: (the command as written, reason) in order. ``superseded``: commands
    overridden by a later value of the same field."""

    applied: dict[str, str] = field(default_factory=dict)
    refused: list[tuple[str, str]] = field(default_factory=list)
    superseded: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.applied or self.refused)


def _command_line(delimiter: str) -> tuple[re.Pattern[str], re.Pattern[str]]:
    d = re.escape(delimiter)
    body = r"(?:(?!" + d + r")[^\n])*"       # never contains the delimiter: one way to split a line
    one = d + r"(" + body + r")" + d
    return re.compile(r"^\s*(?:" + d + body + d + r"\s*)+$"), re.compile(one)


def parse_commands(text: str, allowed_fields: Mapping[str, set[str] | frozenset[str] | None] = DEFAULT_FIELDS,
                   delimiter: str = "$") -> CommandSet:
    """Read the commands in ``text`` (the new text of a reply, quotes already removed).

    ``allowed_fields`` maps each accepted field to its allowed values, or to None for
    free values (such as Assignee). A candidate must contain ``=`` to be a command;
    ``$Field=$``, an unknown field or a value outside the set is refused with a reason.
    """
    if not delimiter or any(c.isspace() or c.isalnum() or c == "=" for c in delimiter):
        raise ValueError("the command delimiter must be non-empty punctuation without '='")
    whole, one = _command_line(delimiter)
    fields_ci = {name.casefold(): name for name in allowed_fields}
    applied: dict[str, str] = {}
    applied_src: dict[str, str] = {}
    refused: list[tuple[str, str]] = []
    superseded: list[str] = []
    count = 0
    for line in (text or "").replace("\r\n", "\n").split("\n"):
        if count > MAX_COMMANDS:
            break
        if line.lstrip().startswith(">") or delimiter not in line or not whole.match(line):
            continue
        for m in one.finditer(line):
            inner = m.group(1)
            if "=" not in inner:
                continue                      # "$5$" and the like: not a command
            written = m.group(0)
            count += 1
            if count > MAX_COMMANDS:
                refused.append((written, f"too many commands (at most {MAX_COMMANDS} per message); "
                                         "this and the rest ignored"))
                break
            name, _, value = inner.partition("=")
            name, value = name.strip(), value.strip()
            if not name or not _FIELD_NAME.match(name):
                refused.append((written, "malformed command (expected Field=Value)"))
                continue
            canon = fields_ci.get(name.casefold())
            if canon is None:
                known = ", ".join(sorted(allowed_fields)) or "none"
                refused.append((written, f"unknown field {name!r} (known fields: {known})"))
                continue
            if not value:
                refused.append((written, f"no value given for {canon}"))
                continue
            if len(value) > MAX_VALUE_CHARS:
                refused.append((written, f"value for {canon} is longer than {MAX_VALUE_CHARS} characters"))
                continue
            allowed = allowed_fields[canon]
            if allowed is not None:
                by_ci = {v.casefold(): v for v in allowed}
                canon_value = by_ci.get(value.casefold())
                if canon_value is None:
                    refused.append((written, f"{value!r} is not an allowed value for {canon} "
                                             f"(allowed: {', '.join(sorted(allowed))})"))
                    continue
                value = canon_value
            if canon in applied:
                superseded.append(applied_src[canon])
                del applied[canon]            # re-insert: order follows the last occurrence
            applied[canon] = value
            applied_src[canon] = written
    return CommandSet(applied=applied, refused=refused, superseded=superseded)


def _is_command_line(line: str, delimiter: str) -> bool:
    """A line :func:`parse_commands` reads as commands (quoted with ``>`` or not): only delimited
    tokens, at least one of them ``Field=Value``."""
    if delimiter not in line:
        return False
    whole, one = _command_line(delimiter)
    line = line.lstrip()
    while line.startswith(">"):          # a command line quoted from an earlier agent mail
        line = line[1:].lstrip()
    return bool(whole.match(line)) and any("=" in m.group(1) for m in one.finditer(line))


def strip_command_lines(text: str, delimiter: str = "$") -> str:
    """``text`` without its command lines, for what the customer receives: the lines
    :func:`parse_commands` would act on, also when quoted, and the blank lines they leave at the
    end. Every other line is kept as written ("costs $5$" is not a command: no ``=``)."""
    if not text or delimiter not in text:
        return text
    lines = text.replace("\r\n", "\n").split("\n")
    kept = [line for line in lines if not _is_command_line(line, delimiter)]
    while kept and not kept[-1].strip() and len(kept) < len(lines):
        kept.pop()
    out = "\n".join(kept)
    return out + "\n" if kept and text.endswith("\n") and not out.endswith("\n") else out


_HTML_TEXT = re.compile(r"(?<=>)([^<]*)(?=<)|^([^<]+)|([^>]+)$")
_HTML_BLOCK = re.compile(r"<(p|div|span|li|pre)(?:\s[^>]*)?>(?:\s|&nbsp;|<br\s*/?>)*</\1>", re.I)


def strip_command_html(html: str, delimiter: str = "$") -> str:
    """``html`` without command lines: every run of text between tags (and every line of it) that
    reads as a command line is removed, then the elements left empty by that."""
    if not html or delimiter not in html:
        return html

    def clean(m: re.Match[str]) -> str:
        chunk = m.group(0)
        if delimiter not in chunk:
            return chunk
        import html as _html
        lines = chunk.split("\n")
        return "\n".join("" if _is_command_line(_html.unescape(line), delimiter) else line for line in lines)

    out = _HTML_TEXT.sub(clean, html)
    for _ in range(3):
        out = _HTML_BLOCK.sub("", out)
    return out


def format_result(commands: CommandSet, *, ticket: str = "") -> str:
    """The human-readable result for the reply mail ("" when there were no commands)."""
    if not commands:
        return ""
    about = f" on {ticket}" if ticket else ""
    lines: list[str] = []
    if commands.applied:
        lines.append(f"Commands applied{about}:")
        lines += [f"  {k} = {v}" for k, v in commands.applied.items()]
    if commands.superseded:
        if lines:
            lines.append("")
        lines.append("Overridden by a later command for the same field:")
        lines += [f"  {c}" for c in commands.superseded]
    if commands.refused:
        if lines:
            lines.append("")
        lines.append(f"Commands refused{about}:")
        lines += [f"  {c} - {why}" for c, why in commands.refused]
    return "\n".join(lines) + "\n"
