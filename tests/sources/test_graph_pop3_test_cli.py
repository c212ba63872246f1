"""`ticketmx source test NAME` for the graph kind (Graph EMULATOR) and the pop3 kind (real Dovecot): every step
printed with the server's answers, secrets masked, and the exit code."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.conftest import BASE_CONFIG, ROOT, merge, toml_dump
from tests.sources.conftest import message
from tests.sources.dovecot import Dovecot
from tests.sources.graph_emulator import GraphEmulator

USER = "support@example.test"
PASSWORD = "pop-Secret-Value-4711"


def secret(tmp_path: Path, name: str, value: str) -> str:
    p = tmp_path / name
    p.write_text(value + "\n")
    os.chmod(p, 0o600)
    return str(p)


def source_test(tmp_path: Path, src: dict[str, Any], *args: str) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "t.toml"
    path.write_text(toml_dump(merge(BASE_CONFIG, {"store": {"url": f"sqlite:///{tmp_path}/t.db"}, "source": [src]})))
    return subprocess.run([sys.executable, "-m", "gateway", "source", "test", src["name"], "--config", str(path), *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)


@pytest.fixture
def emu() -> Iterator[GraphEmulator]:
    with GraphEmulator() as e:
        yield e


def test_graph_steps_masked(tmp_path: Path, emu: GraphEmulator) -> None:
    emu.deliver(USER, message(1))
    emu.deliver(USER, message(2), is_read=True)
    src = {"name": "m365", "kind": "graph", "mailbox": USER, "tenant": emu.tenant, "user": USER, "endpoint": emu.base,
           "authority": emu.base, "oauth_client_id": emu.client_id,
           "oauth_client_secret_file": secret(tmp_path, "cs", emu.client_secret)}
    proc = source_test(tmp_path, src)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for step in ("endpoint", "dns", "tcp", "token", "folder", "list", "success_folder", "failure_folder", "exclusion_folder"):
        assert f" {step} " in proc.stdout, proc.stdout
    assert "2 messages, 1 unread" in proc.stdout and "grant=client_credentials" in proc.stdout
    assert emu.client_secret not in proc.stdout + proc.stderr
    assert not any(t in proc.stdout for t in emu.tokens)
    emu.client_secret = "rotated-by-the-admin"        # our secret file is now wrong
    proc = source_test(tmp_path, src, "--json")
    doc = json.loads(proc.stdout)
    assert proc.returncode == 1 and not doc["ok"]
    assert doc["steps"][-1]["name"] == "token" and "error=invalid_client" in doc["steps"][-1]["detail"]


@pytest.fixture
def dove(dove_root: Path) -> Iterator[Dovecot]:
    d = Dovecot(dove_root, users={USER: PASSWORD}).start()
    try:
        yield d
    finally:
        d.stop()


def test_pop3_steps_masked(tmp_path: Path, dove: Dovecot) -> None:
    for i in range(3):
        dove.deliver(USER, message(i))
    src = {"name": "pop", "kind": "pop3", "mailbox": USER, "host": "127.0.0.1", "port": dove.pop3_port,
           "tls": "starttls", "ca_file": str(dove.ca_path), "username": USER,
           "password_file": secret(tmp_path, "pw", PASSWORD)}
    proc = source_test(tmp_path, src)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for step in ("dns", "tcp", "greeting", "capa", "stls", "auth", "login", "stat", "folders"):
        assert f" {step} " in proc.stdout, proc.stdout
    assert "+OK Dovecot" in proc.stdout and "3 messages" in proc.stdout and "USER/PASS" in proc.stdout
    assert "TLSv1.3" in proc.stdout and PASSWORD not in proc.stdout + proc.stderr
    wrong = {**src, "password_file": secret(tmp_path, "pw2", "not-the-" + PASSWORD)}
    proc = source_test(tmp_path, wrong)
    assert proc.returncode == 1 and "FAIL login" in proc.stdout and "Authentication failed" in proc.stdout
    assert PASSWORD not in proc.stdout + proc.stderr
