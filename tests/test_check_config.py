"""``check-config`` catches what used to fail only at send time (issue 20): unknown agent
permissions, a loop marker that is not a header field name, a templates directory that does not
exist, and notification templates that do not render. Each names the dotted key and the file and
exits 78; a reload refuses the same configs and keeps the running one."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from .conftest import BASE_CONFIG, ROOT, merge, run_cli, toml_dump

SMARTHOST = {"from": "Helpdesk <help@example.test>",
             "smarthost": [{"name": "a", "host": "127.0.0.1", "port": 2599, "tls": "none"}]}


def config(tmp_path: Path, **sections) -> str:
    path = tmp_path / "ticketmx.toml"
    path.write_text(toml_dump(merge(BASE_CONFIG, {"store": {"url": f"sqlite:///{tmp_path}/t.db"}, **sections})))
    return str(path)


def templates(tmp_path: Path) -> Path:
    dest = tmp_path / "templates"
    shutil.copytree(ROOT / "conf" / "templates", dest)
    return dest


def check(path: str) -> tuple[int, str]:
    proc = run_cli("check-config", "--config", path, check=False)
    return proc.returncode, proc.stderr


@pytest.mark.parametrize("sections, key, fragment", [
    ({"agent": [{"address": "ann@agents.test", "permissions": ["commmands"]}]},
     "agent[0].permissions", "unknown permission(s) 'commmands'"),
    ({"smtp": {"loop_marker": "X Ticketmx Loop"}}, "smtp.loop_marker", "is not a header field name"),
    ({"smtp": {"loop_marker": "X-Loop:"}}, "smtp.loop_marker", "is not a header field name"),
    ({"relay": {"templates": "/nonexistent/ticketmx-templates"}}, "relay.templates",
     "not a directory: /nonexistent/ticketmx-templates"),
    ({"relay": {"templates": "no/such/relative/dir"}}, "relay.templates", "not a directory: no/such/relative/dir"),
])
def test_refused_with_the_dotted_key_and_file(tmp_path, sections, key, fragment):
    path = config(tmp_path, **sections)
    code, err = check(path)
    assert code == 78, err
    assert f"{path}: {key}: " in err and fragment in err, err


def test_shipped_templates_render_for_every_mailbox_and_language(tmp_path):
    tpl = templates(tmp_path)
    path = config(tmp_path, relay={**SMARTHOST, "templates": str(tpl)},
                  mailbox=[{"address": "support@example.test", "language": "de"},
                           {"address": "billing@example.test"}])
    code, err = check(path)
    assert code == 0, err


@pytest.mark.parametrize("edit, fragment", [
    (lambda t: (t / "default/de/ack.txt").write_text("{% if ticket.number %}unclosed"),
     "default/de/ack.txt: TemplateSyntaxError at line 1"),
    (lambda t: (t / "default/en/status.txt").write_text("a\n{{ ticket.nope.deeper }}\n"),
     "default/en/status.txt: UndefinedError at line 2"),
    (lambda t: (t / "default/en/escalation.txt").write_text("{% include 'default/en/missing.txt' %}\n"),
     "default/en/escalation.txt: TemplateNotFound"),
    (lambda t: (t / "default/en/reply.subject").unlink(),
     "reply notification for support@example.test (en): FileNotFoundError"),
    (lambda t: (t / "default/en/commands.subject").write_text("{{ 1 // 0 }}"),
     "default/en/commands.subject: ZeroDivisionError"),
])
def test_a_template_that_does_not_render_is_a_config_error(tmp_path, edit, fragment):
    tpl = templates(tmp_path)
    edit(tpl)
    path = config(tmp_path, relay={**SMARTHOST, "templates": str(tpl)})
    code, err = check(path)
    assert code == 78, err
    assert f"{path}: relay.templates: " in err and fragment in err, err
    assert "Traceback" not in err


def test_templates_are_not_rendered_without_a_smarthost(tmp_path):
    """No smarthost, no notifications: a template nobody sends does not block the gateway (the
    directory itself, when set, must still exist)."""
    tpl = templates(tmp_path)
    (tpl / "default/en/ack.txt").write_text("{% if %}")
    code, err = check(config(tmp_path, relay={"templates": str(tpl)}))
    assert code == 0, err


async def test_reload_refuses_a_missing_templates_directory_and_a_broken_template(start_gateway, tmp_path):
    gw = await start_gateway()
    before = gw.gw.cfg
    store = {"store": {"url": before.store.url}}
    missing = tmp_path / "m.toml"
    missing.write_text(toml_dump(merge(BASE_CONFIG, {**store, "relay": {**SMARTHOST, "templates": "/nonexistent/t"}})))
    assert not gw.gw.reload(str(missing))
    assert gw.gw.cfg is before
    tpl = templates(tmp_path)
    (tpl / "default/en/ack.subject").write_text("{{ ticket.number")
    broken = tmp_path / "b.toml"
    broken.write_text(toml_dump(merge(BASE_CONFIG, {**store, "relay": {**SMARTHOST, "templates": str(tpl)}})))
    assert not gw.gw.reload(str(broken))
    assert gw.gw.cfg is before
    shutil.copy(ROOT / "conf/templates/default/en/ack.subject", tpl / "default/en/ack.subject")
    assert gw.gw.reload(str(broken))  # fixed: accepted
    assert gw.gw.cfg is not before and gw.gw.cfg.relay.templates == str(tpl)
