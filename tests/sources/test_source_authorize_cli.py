"""`ticketmx source authorize NAME [--loopback]` as a real subprocess against the Graph EMULATOR's identity endpoints."""
from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest

from tests.conftest import BASE_CONFIG, ROOT, merge, toml_dump
from tests.sources.graph_emulator import GraphEmulator

USER = "support@example.test"


@pytest.fixture
def emu() -> Iterator[GraphEmulator]:
    with GraphEmulator() as e:
        yield e


def config(tmp_path: Path, emu: GraphEmulator, **over: Any) -> Path:
    src = {"name": "m365", "kind": "graph", "status": "draft", "mailbox": USER, "tenant": emu.tenant, "user": USER,
           "endpoint": emu.base, "authority": emu.base, "oauth_client_id": emu.client_id,
           "oauth_refresh_token_file": str(tmp_path / "m365.refresh")}
    src.update(over)
    data = merge(BASE_CONFIG, {"store": {"url": f"sqlite:///{tmp_path}/t.db"}, "source": [src]})
    path = tmp_path / "ticketmx.toml"
    path.write_text(toml_dump(data))
    return path


def start(path: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "gateway", "source", "authorize", "m365", "--config", str(path),
                             *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_device_code_writes_the_refresh_token_0600(tmp_path: Path, emu: GraphEmulator) -> None:
    path = config(tmp_path, emu)
    proc = start(path)
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline(), proc.stdout.readline()]
        m = re.search(r"Open (\S+) in a browser and enter the code (\w+)", lines[1])
        assert m, lines
        assert "offline_access" in lines[0]
        emu.approve_device(m.group(2), USER)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    token_file = tmp_path / "m365.refresh"
    assert stat.S_IMODE(os.stat(token_file).st_mode) == 0o600
    assert emu.refresh_tokens[token_file.read_text().strip()] == USER
    assert "written to" in out and "status = \"active\"" in out and token_file.read_text().strip() not in out + err


def test_loopback_with_pkce(tmp_path: Path, emu: GraphEmulator) -> None:
    path = config(tmp_path, emu)
    proc = start(path, "--loopback", "--timeout", "30")
    try:
        assert proc.stdout is not None
        url = ""
        while not url.startswith("http"):
            url = proc.stdout.readline().strip()
            assert url or proc.poll() is None
        page = httpx.get(url, follow_redirects=True, timeout=10)   # the admin's browser
        assert page.status_code == 200
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert emu.refresh_tokens[(tmp_path / "m365.refresh").read_text().strip()] == USER   # login_hint = user


def test_refusals_name_the_key(tmp_path: Path, emu: GraphEmulator) -> None:
    pw = tmp_path / "pw"
    pw.write_text("x\n")
    pw.chmod(0o600)
    data = merge(BASE_CONFIG, {"store": {"url": f"sqlite:///{tmp_path}/t.db"}, "source": [
        {"name": "m365", "kind": "imap", "mailbox": USER, "host": "127.0.0.1", "username": USER,
         "password_file": str(pw)}]})
    path = tmp_path / "imap.toml"
    path.write_text(toml_dump(data))
    proc = start(path)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 78 and "source[0].auth" in err
    path = config(tmp_path, emu, oauth_client_id="unknown-client")
    proc = start(path)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 1 and "error=unauthorized_client" in err
    assert not (tmp_path / "m365.refresh").exists()
