"""Every CLI command, config key and metric name the documentation mentions exists (issue 20).

Documents: README.md, docs/*.md, conf/ticketmx.example.toml. Extraction rules, kept simple on purpose:

* **Code** is the text of fenced blocks (```` ``` ````) and of inline backtick spans; only code is read
  for commands and config keys (prose may say "the ticketmx user").
* **CLI commands**: in code, ``ticketmx`` or ``tmx`` (the alias in docs/operations.md) at the start of a
  line or after a space, ``/bin/``, ``(``, ``;``, ``|`` or ``&``, followed by a space and lowercase words:
  the words are walked down the argparse tree of ``gateway.cli._parser()`` (command, then action when the
  command has actions), and every ``--option`` up to the end of that line / span (or ``|``, ``;``, ``&``,
  ``>``, ``#``) must be an option of the parser reached.
* **Config keys**: inline spans ``[table] key``, ``[[table]] key``, ``[table]``, ``[[table]]`` and
  dotted names ``table.key`` / ``table[0].key.sub`` whose first part is a config table (a bare ``[x]``
  too only then: ``[users]`` is a mailing-list tag; ``[[x]]`` is always a table). Each is checked
  with the config reader itself: a config holding just that key (a placeholder value) must not be
  answered "unknown key" for it or its table. Dotted spans that are Python modules (``relay.notify``) or
  file names (``relay.md``) are not config keys.
* **Metric names**: every ``ticketmx_[a-z0-9_]+`` anywhere; it must be a metric of the registries
  (``gateway.runtime.metrics.Metrics``, ``relay.worker.RelayMetrics``,
  ``gateway.webhooks.worker.WebhookMetrics``, ``gateway.ingress.sources.manager.SourceMetrics``) with the sample suffixes prometheus_client
  exposes (``_total``, ``_bucket``, ``_count``, ``_sum``); a name ending in ``_`` (``ticketmx_relay_*``)
  is a prefix that must match some metric.
"""
from __future__ import annotations

import argparse
import importlib.util
import re
from pathlib import Path
from typing import Any, Iterator

import pytest

from gateway.config.load import build_config
from gateway.config.errors import ConfigError, ConfigErrors

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "conf" / "ticketmx.example.toml"]

FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.S | re.M)
SPAN = re.compile(r"`([^`\n]+)`")
COMMAND = re.compile(r"(?:^|(?<=[\s(;|&])|(?<=/bin/))(?:ticketmx|tmx)[ \t]+([a-z][a-z0-9-]*(?:[ \t]+[^\n`|;&>#]*)?)",
                     re.M)
TABLE_KEY = re.compile(r"^\[\[?([a-z_][a-z0-9_.]*)\]\]?(?:\s+([a-z_][a-z0-9_]*))?(?:\s|$|=)")
DOTTED = re.compile(r"^[a-z_][a-z0-9_]*(?:\[\d+\])?(?:\.[a-z_][a-z0-9_]*(?:\[\d+\])?)+$")
NOT_KEYS = {"py", "md", "toml", "yml", "yaml", "json", "db", "txt", "html", "subject", "pem", "key", "eml",
            "service", "sysusers", "conf", "sh", "ini", "example", "test", "com", "org", "net"}
METRIC = re.compile(r"\bticketmx_[a-z0-9_]+")


def code_of(text: str) -> Iterator[str]:
    """Fenced blocks, then inline spans of the text outside them."""
    yield from FENCE.findall(text)
    yield from SPAN.findall(FENCE.sub("", text))


# -- CLI ----------------------------------------------------------------------------------------------

def _subparsers(p: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for a in p._actions:
        if isinstance(a, argparse._SubParsersAction):
            return dict(a.choices)
    return {}


def check_command(parser: argparse.ArgumentParser, words: str) -> str | None:
    """None when ``words`` (after ``ticketmx``) names a command and options that exist; else why not."""
    tokens = words.split()
    p, path = parser, []
    for tok in tokens:
        subs = _subparsers(p)
        if not subs or not re.fullmatch(r"[a-z][a-z0-9-]*", tok):
            break
        if tok not in subs:
            return f"no command {' '.join(path + [tok])!r} (known: {', '.join(sorted(subs))})"
        p, path = subs[tok], path + [tok]
    options = {o for a in p._actions for o in a.option_strings}
    for opt in re.findall(r"(?:^|\s|\[)(--[a-z][a-z0-9-]*)", words):
        if opt not in options:
            return f"{' '.join(path)!r} has no option {opt}"
    return None


def commands_in(text: str) -> Iterator[str]:
    for code in code_of(text):
        for m in COMMAND.finditer(code):
            yield m.group(1).strip()


# -- config keys ----------------------------------------------------------------------------------------

def _parts(path: str) -> list[tuple[str, bool]]:
    """``relay.smarthost[0].tls`` -> [("relay", False), ("smarthost", True), ("tls", False)]."""
    return [(re.sub(r"\[\d+\]$", "", p), p.endswith("]")) for p in path.split(".")]


def _probe_data(parts: list[tuple[str, bool]], leaf: Any, siblings: dict[str, Any]) -> dict[str, Any]:
    """The config holding just ``parts`` = ``leaf``, plus ``siblings`` (required keys next to the leaf)."""
    inner: Any = {parts[-1][0]: leaf, **siblings}
    for name, is_list in reversed(parts[:-1]):
        inner = {name: [inner] if is_list else inner}
    return inner


def _errors(data: dict[str, Any]) -> list[ConfigError]:
    try:
        build_config(data, "probe")
    except ConfigErrors as exc:
        return list(exc.errors)
    except ConfigError as exc:
        return [exc]
    return []


def key_problem(path: str, table_only: bool = False) -> str | None:
    """None when the config reader knows ``path`` (a dotted key, or a table when ``table_only``)."""
    parts = _parts(path)
    if table_only:
        parts = parts + [("zz_probe_key", False)]
    siblings: dict[str, Any] = {}
    names = [n for n, _ in parts]
    checked = names[:-1] if table_only else names
    for _ in range(len(parts) + 4):
        errors = _errors(_probe_data(parts, "__probe__", siblings))
        plain = [re.sub(r"\[\d+\]", "", e.key) for e in errors]
        for i in range(1, len(checked) + 1):
            prefix = ".".join(checked[:i])
            if any(k == prefix and e.message.startswith("unknown key") for k, e in zip(plain, errors)):
                return f"{prefix}: unknown key"
        fixed = False
        for k, e in zip(plain, errors):
            if "array" in e.message:  # a list of tables was expected there
                for i in range(len(parts) - 1):
                    if ".".join(names[:i + 1]) == k and not parts[i][1]:
                        parts[i] = (parts[i][0], True)
                        fixed = True
            elif e.message == "required" and k.rpartition(".")[0] == ".".join(names[:-1]) and \
                    k.rpartition(".")[2] not in siblings:  # a parser that stops at a missing required key
                siblings[k.rpartition(".")[2]] = "probe@example.test"
                fixed = True
        if not fixed:
            return None
    return None


_TABLES: dict[str, bool] = {}


def is_table(name: str) -> bool:
    if name not in _TABLES:
        _TABLES[name] = key_problem(name, table_only=True) is None
    return _TABLES[name]


def _is_module(dotted: str) -> bool:
    parts = re.sub(r"\[\d+\]", "", dotted).split(".")
    for i in range(len(parts), 0, -1):
        try:
            if importlib.util.find_spec(".".join(parts[:i])) is not None:
                return True
        except (ImportError, ValueError):
            pass
    return False


def config_refs_in(text: str) -> Iterator[tuple[str, bool]]:
    """(dotted path, table_only) for each key or table named in an inline span."""
    for span in SPAN.findall(text):
        span = span.strip()
        m = TABLE_KEY.match(span + " ")
        if m:
            if m.group(2):
                yield f"{m.group(1)}.{m.group(2)}", False
            elif span.startswith("[[") or is_table(m.group(1).split(".")[0]):  # "[users]" is a list tag
                yield m.group(1), True
            continue
        if DOTTED.match(span) and span.rsplit(".", 1)[1] not in NOT_KEYS and not _is_module(span):
            first = re.sub(r"\[\d+\]", "", span.split(".")[0])
            if is_table(first):
                yield span, False


# -- metrics --------------------------------------------------------------------------------------------

def metric_names() -> set[str]:
    from prometheus_client import CollectorRegistry

    from gateway.runtime.metrics import Metrics
    from relay.worker import RelayMetrics
    from types import SimpleNamespace

    from gateway.auth.dns import ResolverStats
    metrics = Metrics()
    metrics.watch_resolver(lambda: SimpleNamespace(stats=ResolverStats()))  # as the gateway does
    regs = [metrics.registry, CollectorRegistry()]
    RelayMetrics(regs[1])
    from gateway.webhooks.worker import WebhookMetrics
    WebhookMetrics(regs[1])
    from gateway.ingress.sources.manager import SourceMetrics
    SourceMetrics(regs[1])
    names: set[str] = set()
    for reg in regs:
        for fam in reg.collect():
            names.add(fam.name)
            names.update(s.name for s in fam.samples)
            suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"),
                        "summary": ("_count", "_sum")}.get(fam.type, ())
            names.update(fam.name + s for s in suffixes)
    return names


def metric_problem(name: str, known: set[str]) -> str | None:
    if name.endswith("_"):
        return None if any(k.startswith(name) for k in known) else f"no metric starts with {name}"
    return None if name in known else f"no metric {name}"


# -- the tests ------------------------------------------------------------------------------------------

def problems(text: str, parser: argparse.ArgumentParser, known_metrics: set[str]) -> list[str]:
    out = []
    for words in commands_in(text):
        if why := check_command(parser, words):
            out.append(f"`ticketmx {words}`: {why}")
    for path, table_only in config_refs_in(text):
        if why := key_problem(path, table_only):
            out.append(f"config {'table' if table_only else 'key'} `{path}`: {why}")
    for name in METRIC.findall(text):
        if why := metric_problem(name, known_metrics):
            out.append(f"metric `{name}`: {why}")
    return out


@pytest.fixture(scope="module")
def parser() -> argparse.ArgumentParser:
    from gateway.cli import _parser
    return _parser()


@pytest.fixture(scope="module")
def known_metrics() -> set[str]:
    return metric_names()


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_command_key_and_metric_the_docs_name_exists(doc, parser, known_metrics):
    found = problems(doc.read_text(), parser, known_metrics)
    assert not found, f"{doc.relative_to(ROOT)} names things that do not exist:\n  " + "\n  ".join(found)


def test_the_extraction_finds_what_the_docs_name(parser, known_metrics):
    """The rules are not vacuous: the docs as a whole yield many commands, keys and metrics."""
    text = "\n".join(d.read_text() for d in DOCS)
    assert len(set(commands_in(text))) >= 20
    assert len({p for p, _ in config_refs_in(text)}) >= 50
    assert len(set(METRIC.findall(text))) >= 20


@pytest.mark.parametrize("mutation, expected", [
    ("Run `ticketmx spool purge --all` nightly.", "no command 'spool purge'"),
    ("```sh\nticketmx tickets list --sort newest\n```", "'tickets list' has no option --sort"),
    ("```sh\n/opt/ticketmx/bin/ticketmx chek-config\n```", "no command 'chek-config'"),
    ("Set `[smtp] idle_timout = \"5m\"`.", "config key `smtp.idle_timout`: smtp.idle_timout: unknown key"),
    ("See `smtp.idle_timout`.", "smtp.idle_timout: unknown key"),
    ("Each `[[relay.smarthost]] pasword_file`.", "relay.smarthost.pasword_file: unknown key"),
    ("Per agent, `agent[0].permisions`.", "agent.permisions: unknown key"),
    ("The `[[relays]]` table.", "config table `relays`"),
    ("The `[relay.smarthosts]` table.", "config table `relay.smarthosts`"),
    ("Alert on `ticketmx_smtp_rejected_total`.", "metric `ticketmx_smtp_rejected_total`: no metric"),
])
def test_a_deliberate_mistake_is_caught(mutation, expected, parser, known_metrics):
    base = (ROOT / "docs" / "operations.md").read_text()
    assert not problems(base, parser, known_metrics)
    found = problems(base + "\n" + mutation + "\n", parser, known_metrics)
    assert any(expected in f for f in found), found


@pytest.mark.parametrize("fine", [
    "```sh\nsystemctl status ticketmx\njournalctl -u ticketmx -f\nid ticketmx\n```",
    "`useradd --comment \"ticketmx mail-to-ticket gateway\" ticketmx`",
    "`[smtp] idle_timeout`, `smtp.idle_timeout`, `[[mailbox]] acknowledge`, `relay.smarthost[0].password_file`",
    "`relay.notify`, `relay.md`, `[[relay.dkim]]`, `ticketmx_relay_*`",
])
def test_what_exists_or_is_not_a_reference_passes(fine, parser, known_metrics):
    assert not problems(fine, parser, known_metrics)
