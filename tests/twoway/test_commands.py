"""Email commands ($Field=Value$)."""
from __future__ import annotations

import pytest

from gateway.pipeline.stages.commands import DEFAULT_FIELDS, MAX_COMMANDS, CommandSet, format_result, parse_commands

FIELDS = {"Priority": {"Low", "Normal", "High"}, "Status": {"Open", "Closed"}, "Assignee": None,
          "Operation": {"AddRequest", "EditRequest", "CloseRequest", "PickupRequest"}}


def test_applied_refused_last_wins() -> None:
    text = ("Done, closing.\n$Priority=High$\n  $status=closed$  \n$Assignee=ann@example.test$\n"
            "$Colour=Red$\n$Priority=Urgent$\n$Priority=low$\n$Operation=CloseRequest$\n")
    cs = parse_commands(text, FIELDS)
    assert cs.applied == {"Status": "Closed", "Assignee": "ann@example.test", "Priority": "Low",
                          "Operation": "CloseRequest"}
    assert [c for c, _ in cs.refused] == ["$Colour=Red$", "$Priority=Urgent$"]
    assert "unknown field 'Colour'" in cs.refused[0][1]
    assert "not an allowed value for Priority" in cs.refused[1][1] and "High, Low, Normal" in cs.refused[1][1]
    assert cs.superseded == ["$Priority=High$"]


def test_several_on_one_line_and_prose_ignored() -> None:
    text = ("It costs $5 and $6, or $5=$6 in total.\nUse $Priority=High$ if needed.\n"
            "$Priority=High$ $Status=Open$\n$5$\n")
    cs = parse_commands(text, FIELDS)
    assert cs.applied == {"Priority": "High", "Status": "Open"} and cs.refused == []


def test_quoted_lines_ignored() -> None:
    cs = parse_commands("> $Status=Closed$\n>$Priority=High$\n", FIELDS)
    assert not cs and cs.applied == {}


def test_malformed_and_empty_values() -> None:
    cs = parse_commands("$=High$\n$Priority=$\n$Pri ority!=x$\n", FIELDS)
    assert [r for _, r in cs.refused] == ["malformed command (expected Field=Value)", "no value given for Priority",
                                          "malformed command (expected Field=Value)"]


def test_value_with_equals_and_free_fields() -> None:
    cs = parse_commands("$Assignee=team=ops$\n", FIELDS)
    assert cs.applied == {"Assignee": "team=ops"}
    assert parse_commands("$Assignee=" + "x" * 300 + "$", FIELDS).refused


@pytest.mark.parametrize("delim", ["##", "%", "@@"])
def test_configurable_delimiter(delim: str) -> None:
    cs = parse_commands(f"{delim}Priority=High{delim}\n$Status=Closed$\n", FIELDS, delimiter=delim)
    assert cs.applied == {"Priority": "High"}


@pytest.mark.parametrize("delim", ["", "a", " ", "="])
def test_bad_delimiters(delim: str) -> None:
    with pytest.raises(ValueError):
        parse_commands("x", FIELDS, delimiter=delim)


def test_too_many_commands() -> None:
    cs = parse_commands("$Priority=High$\n" * (MAX_COMMANDS + 300), FIELDS)
    assert len(cs.refused) == 1 and "the rest ignored" in cs.refused[0][1] and cs.applied == {"Priority": "High"}


def test_defaults_and_result_text() -> None:
    cs = parse_commands("$Operation=PickupRequest$\n$Priority=Urgent$\n$Foo=1$", DEFAULT_FIELDS)
    assert cs.applied == {"Operation": "PickupRequest", "Priority": "Urgent"}
    text = format_result(cs, ticket="HD-1042")
    assert text.startswith("Commands applied on HD-1042:\n  Operation = PickupRequest\n  Priority = Urgent\n")
    assert "Commands refused on HD-1042:\n  $Foo=1$ - unknown field 'Foo'" in text
    assert format_result(CommandSet()) == ""
    assert format_result(parse_commands("no commands here", DEFAULT_FIELDS)) == ""
