"""policy.py: TOML tables -> frozen policies, mailbox overrides, errors naming dotted keys, stages."""
from __future__ import annotations

import dataclasses
import re
import tomllib
from pathlib import Path

import pytest

from gateway.config.errors import ConfigError
from gateway.pipeline.runner.assemble import _registry, build_stages
from gateway.smtp.rspamd_check import build_data_checks
from gateway.config.pipeline import (
    DEFAULT_ORDER, RECOMMENDED_ORDER, AutomaticPolicy, PipelinePolicy, parse_mailbox_policies, parse_pipeline_policy)

ROOT = Path(__file__).resolve().parents[2]


def test_defaults() -> None:
    pol = parse_pipeline_policy({})
    assert pol == PipelinePolicy()
    assert pol.automatic.action == "suppress" and pol.rspamd.enabled is False
    assert pol.sender_policy.unknown == "accept" and pol.attachments.tnef == "decode"
    with pytest.raises(dataclasses.FrozenInstanceError):
        pol.automatic.action = "note"       # type: ignore[misc]


def test_other_keys_and_unknown_keys() -> None:
    table = {"processes": 2, "batch_size": 64, "automatic": {"action": "note"}}
    pol = parse_pipeline_policy(table, "pipeline", other_keys=("processes", "batch_size"))
    assert pol.automatic.action == "note"
    with pytest.raises(ConfigError) as exc:
        parse_pipeline_policy(table)
    assert exc.value.key == "pipeline.processes" and "unknown key" in exc.value.message
    with pytest.raises(ConfigError) as exc:
        parse_pipeline_policy({"automatik": {}})
    assert exc.value.key == "pipeline.automatik"
    with pytest.raises(ConfigError) as exc:
        parse_pipeline_policy({"html": {"allow_remote": True}})
    assert exc.value.key == "pipeline.html.allow_remote"
    with pytest.raises(ConfigError) as exc:
        parse_pipeline_policy({"html": []})
    assert exc.value.key == "pipeline.html" and "table" in exc.value.message


@pytest.mark.parametrize("table,key", [
    ({"automatic": {"action": "ignore"}}, "pipeline.automatic.action"),
    ({"automatic": {"sender_patterns": ["ok", "(bad"]}}, "pipeline.automatic.sender_patterns[1]"),
    ({"automatic": {"ignore_rules": ["precedence", "nope"]}}, "pipeline.automatic.ignore_rules[1]"),
    ({"automatic": {"own_domains": ["x y"]}}, "pipeline.automatic.own_domains[0]"),
    ({"automatic": {"loop_header": "Bad Header:"}}, "pipeline.automatic.loop_header"),
    ({"bounce": {"verp_prefix": "bounce+@x"}}, "pipeline.bounce.verp_prefix"),
    ({"bounce": {"enabled": 1}}, "pipeline.bounce.enabled"),
])
def test_errors_name_the_dotted_key(table: dict, key: str) -> None:
    with pytest.raises(ConfigError) as exc:
        parse_pipeline_policy(table)
    assert exc.value.key == key


def test_mailbox_override_merges_over_global() -> None:
    glob = parse_pipeline_policy({"automatic": {"action": "note", "own_domains": ["example.test"]},
                                  "sender_policy": {"deny_domains": ["spam.example"]}})
    mb = parse_pipeline_policy({"sender_policy": {"replies_only": True}}, "mailbox[0].pipeline", glob)
    assert mb.automatic == glob.automatic                       # untouched table: the global one
    assert mb.sender_policy.deny_domains == ("spam.example",)   # untouched key: the global value
    assert mb.sender_policy.replies_only is True
    with pytest.raises(ConfigError) as exc:
        parse_pipeline_policy({"sender_policy": {"unknown": "bounce"}}, "mailbox[2].pipeline", glob)
    assert exc.value.key == "mailbox[2].pipeline.sender_policy.unknown"
    many = parse_mailbox_policies(glob, [("Support@Example.test", {"html": {"allow_remote_images": True}},
                                          "mailbox[0].pipeline"), ("billing@example.test", None, "mailbox[1].pipeline")])
    assert list(many) == ["support@example.test"] and many["support@example.test"].html.allow_remote_images


def test_custom_sender_patterns_are_compiled() -> None:
    pol = parse_pipeline_policy({"automatic": {"sender_patterns": ["robot\\d+"]}}).automatic
    assert [p.pattern for p in pol.compiled_patterns] == ["robot\\d+"]
    assert pol.compiled_patterns[0].flags & re.IGNORECASE
    assert len(AutomaticPolicy().compiled_patterns) == 4


def test_build_stages_and_checks() -> None:
    glob = parse_pipeline_policy({})
    stages = build_stages(glob, {"billing@example.test": glob})
    assert set(stages) == {"automatic", "bounce", "spam", "rspamd", "sender_policy", "attachments", "html"}
    assert all(s.name == n for n, s in stages.items())
    assert not set(stages) & set(_registry())                   # no clash with the other stage names
    assert set(RECOMMENDED_ORDER) <= set(DEFAULT_ORDER) == set(stages) | set(_registry())
    assert build_data_checks(glob) == []
    on = parse_pipeline_policy({"rspamd": {"enabled": True}})
    assert [c.name for c in build_data_checks(on)] == ["rspamd"]
    assert build_data_checks(parse_pipeline_policy({"rspamd": {"enabled": True, "reject_score": False}})) == []


def _example_block() -> str:
    text = (ROOT / "docs" / "pipeline.md").read_text()
    block = text.split("<!-- pipeline-example-toml -->", 1)[1].split("<!-- /pipeline-example-toml -->", 1)[0]
    block = block.split("```toml", 1)[1].rsplit("```", 1)[0]
    return "\n".join(line[2:] for line in block.splitlines() if line.startswith("# "))


def test_docs_example_block() -> None:
    """The TOML in docs/pipeline.md, uncommented, is valid and shows the real defaults."""
    data = tomllib.loads(_example_block())
    pol = parse_pipeline_policy(data["pipeline"])
    default = PipelinePolicy()
    for name in ("automatic", "bounce", "rspamd", "sender_policy", "attachments", "html"):
        assert getattr(pol, name) == getattr(default, name), name
    assert dataclasses.replace(pol.spam, rules=()) == default.spam
    assert [r.name for r in pol.spam.rules] == ["crypto-scam", "newsletter"]
    documented = {k for t in data["pipeline"].values() for k in t} - {"rule"}
    every = {f.name for cls in (type(getattr(default, n)) for n in
                                ("automatic", "bounce", "spam", "rspamd", "sender_policy", "attachments", "html"))
             for f in dataclasses.fields(cls)} - {"compiled_patterns", "rules"}
    assert every <= documented, every - documented
