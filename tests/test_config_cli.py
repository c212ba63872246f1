"""Config validation and the CLI's exit codes and messages."""
from __future__ import annotations

import pytest

from gateway.config.load import load_config
from gateway.config.errors import ConfigErrors

from .conftest import ROOT, run_cli


def write(tmp_path, text: str):
    p = tmp_path / "t.toml"
    p.write_text(text)
    return str(p)


def test_example_config_is_valid():
    proc = run_cli("check-config", "--config", str(ROOT / "conf" / "ticketmx.example.toml"))
    assert "OK" in proc.stdout
    cfg = load_config(ROOT / "conf" / "ticketmx.example.toml")
    assert cfg.smtp.listen == (("127.0.0.1", 2525),)
    assert cfg.smtp.max_message_size == 25 * 1024 * 1024
    assert [mb.queue for mb in cfg.mailboxes] == ["IT", "Billing"]
    assert cfg.metrics.listen == ("127.0.0.1", 9101)


def test_required_keys_parse(tmp_path):
    cfg = load_config(write(tmp_path, """
[smtp]
listen = ["127.0.0.1:2525", "[::1]:2526"]
hostname = "mx.example.test"
max_message_size = "10MB"
[store]
url = "sqlite:///var/lib/ticketmx/ticketmx.db"
[[mailbox]]
address = "Support@Example.test"
aliases = ["help@example.test"]
queue = "IT"
[dns]
nameservers = ["127.0.0.1:5353", "10.0.0.1"]
timeout = "1500ms"
[metrics]
listen = "127.0.0.1:9101"
"""))
    assert cfg.smtp.listen == (("127.0.0.1", 2525), ("::1", 2526))
    assert cfg.smtp.max_message_size == 10_000_000
    assert str(cfg.sqlite_path()) == "/var/lib/ticketmx/ticketmx.db"
    assert cfg.mailboxes[0].address == "support@example.test"
    assert cfg.dns.nameservers == (("127.0.0.1", 5353), ("10.0.0.1", 53))
    assert cfg.dns.timeout == 1.5


@pytest.mark.parametrize("text, key, fragment", [
    ("[smtp]\nlisten = [\"127.0.0.1\"]\n", "smtp.listen", "no port"),
    ("[smtp]\nmax_message_size = \"lots\"\n", "smtp.max_message_size", "invalid size"),
    ("[smtp]\nbogus = 1\n", "smtp.bogus", "unknown key"),
    ("[smtpp]\nlisten = []\n", "smtpp", "unknown key"),
    ("[dns]\ntimeout = \"soon\"\n", "dns.timeout", "invalid duration"),
    ("[dns]\nnameservers = [\"dns.example\"]\n", "dns.nameservers", "does not appear to be an IPv4 or IPv6"),
    ("[[mailbox]]\naddress = \"not-an-address\"\n", "mailbox[0].address", "not an email address"),
    ("[[mailbox]]\nqueue = \"IT\"\n", "mailbox[0].address", "required"),
    ("[[mailbox]]\naddress = \"a@x.test\"\n[[mailbox]]\naddress = \"b@x.test\"\naliases = [\"A@x.test\"]\n",
     "mailbox[1].aliases", "already used"),
    ("[store]\nurl = \"mysql://x\"\n", "store.url", "expected sqlite"),
    ("[pipeline]\nprocesses = \"many\"\n", "pipeline.processes", "or \"auto\""),
    ("[pipeline]\nmessage_budget = \"0s\"\n", "pipeline.message_budget", "between 100ms and 1h"),
    ("[smtp]\nevent_loop = \"trio\"\n", "smtp.event_loop", "expected \"auto\""),
    ("[smtp]\nspill_threshold = \"4KiB\"\n", "smtp.spill_threshold", "at least 64 KiB"),
    ("[smtp]\nspill_dir = \"/nonexistent/spill\"\n", "smtp.spill_dir", "not a directory"),
    ("[smtp]\ntls_cert = \"/nonexistent.pem\"\ntls_key = \"/nonexistent.key\"\n", "smtp.tls_cert", "not found"),
])
def test_bad_values_name_the_key_and_file(tmp_path, text, key, fragment):
    path = write(tmp_path, text)
    with pytest.raises(ConfigErrors) as exc:
        load_config(path)
    messages = [str(e) for e in exc.value.errors]
    assert any(m.startswith(f"{path}: {key}:") and fragment in m for m in messages), messages
    proc = run_cli("check-config", "--config", path, check=False)
    assert proc.returncode == 78
    assert f"{path}: {key}:" in proc.stderr


def test_all_errors_reported_at_once(tmp_path):
    path = write(tmp_path, "[smtp]\nfoo = 1\nbar = 2\nmax_recipients = 0\n")
    proc = run_cli("check-config", "--config", path, check=False)
    assert proc.returncode == 78
    for key in ("smtp.foo", "smtp.bar", "smtp.max_recipients"):
        assert key in proc.stderr


def test_invalid_toml_and_missing_file(tmp_path):
    proc = run_cli("check-config", "--config", write(tmp_path, "[smtp\n"), check=False)
    assert proc.returncode == 78 and "invalid TOML" in proc.stderr
    proc = run_cli("check-config", "--config", str(tmp_path / "nope.toml"), check=False)
    assert proc.returncode == 78 and "not found" in proc.stderr


def test_env_names_default_config(tmp_path):
    path = write(tmp_path, "[smtp]\nhostname = \"\"\n")
    proc = run_cli("check-config", env={"TICKETMX_CONFIG": path}, check=False)
    assert proc.returncode == 78 and "smtp.hostname" in proc.stderr


def test_read_commands_on_missing_store_explain(tmp_path):
    path = write(tmp_path, f"[store]\nurl = \"sqlite:///{tmp_path}/none.db\"\n")
    proc = run_cli("tickets", "list", "--config", path, check=False)
    assert proc.returncode == 1 and "[store] url" in proc.stderr


def test_pipeline_pause_resume_cli(tmp_path):
    import asyncio
    import json

    from gateway.store.sqlite import SqliteStore

    async def create() -> None:
        store = SqliteStore(tmp_path / "p.db")
        await store.open()
        await store.close()
    asyncio.run(create())
    path = write(tmp_path, f"[store]\nurl = \"sqlite:///{tmp_path}/p.db\"\n")
    assert json.loads(run_cli("pipeline", "status", "--json", "--config", path).stdout) == \
        {"paused": False, "reason": ""}
    assert json.loads(run_cli("pipeline", "pause", "--json", "--config", path).stdout)["paused"] is True
    assert run_cli("pipeline", "status", "--config", path).stdout.startswith("paused: paused by an operator")
    assert json.loads(run_cli("pipeline", "resume", "--json", "--config", path).stdout)["paused"] is False


def test_auto_processes_and_event_loop(tmp_path):
    """"auto" worker processes: one per CPU available to us, 1 to 4; event_loop keeps its value."""
    import os
    cfg = load_config(write(tmp_path, "[pipeline]\nprocesses = \"auto\"\n[smtp]\nevent_loop = \"asyncio\"\n"))
    cpus = len(os.sched_getaffinity(0))
    assert cfg.pipeline.processes == max(1, min(4, cpus))
    assert cfg.smtp.event_loop == "asyncio"
    assert load_config(write(tmp_path, "[pipeline]\nprocesses = 0\n")).pipeline.processes == 0
