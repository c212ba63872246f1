"""systemd/ticketmx.service: `systemd-analyze security` rates it 2.0 or lower, `verify` is clean,
and the settings the gateway's lifecycle depends on are there."""
from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest

from gateway.config.load import load_config

from ..conftest import ROOT

UNIT = ROOT / "systemd" / "ticketmx.service"
EXEC_PATH = "/opt/ticketmx/bin/ticketmx"
MAX_EXPOSURE = 2.0

needs_systemd_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None,
    reason="systemd-analyze not found: install the Debian package `systemd` (apt-get install -y systemd; "
           "installing it starts nothing in a container)")


def settings() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        line = line.strip()
        if line and line[0] not in "#;[" and "=" in line:
            key, value = line.split("=", 1)
            out.setdefault(key, []).append(value)
    return out


def one(key: str) -> str:
    values = settings().get(key)
    assert values, f"{key}= missing from {UNIT.name}"
    return values[-1]


def seconds(value: str) -> float:
    units = {"": 1, "s": 1, "sec": 1, "min": 60, "m": 60, "h": 3600, "ms": 0.001}
    total = 0.0
    for num, unit in re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", value):
        total += float(num) * units[unit]
    return total


@needs_systemd_analyze
def test_security_exposure_is_2_or_lower():
    proc = subprocess.run(["systemd-analyze", "security", "--offline=true", "--no-pager", str(UNIT)],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    m = re.search(r"Overall exposure level for ticketmx\.service: (\d+\.\d+)", out)
    assert m, out
    assert float(m.group(1)) <= MAX_EXPOSURE, out


@needs_systemd_analyze
def test_verify_is_clean(tmp_path):
    """`systemd-analyze verify` on the unit as shipped, except that ExecStart/ExecStartPre point at a
    stand-in executable (verify checks that commands exist; /opt/ticketmx is not installed here).
    Any other message at all fails the test."""
    fake = tmp_path / "opt" / "ticketmx" / "bin" / "ticketmx"
    fake.parent.mkdir(parents=True)
    fake.write_text("#!/bin/sh\nexit 0\n")
    fake.chmod(0o755)
    text = UNIT.read_text()
    assert text.count(EXEC_PATH) == 2  # ExecStartPre (check-config) and ExecStart (serve)
    unit = tmp_path / "units" / "ticketmx.service"
    unit.parent.mkdir()
    unit.write_text(text.replace(EXEC_PATH, str(fake)))
    proc = subprocess.run(["systemd-analyze", "verify", "--no-pager", str(unit)],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path,
                          env={**os.environ, "SYSTEMD_LOG_LEVEL": "notice"})
    out = (proc.stdout + proc.stderr).strip()
    assert proc.returncode == 0 and out == "", out


@pytest.mark.skipif(shutil.which("systemd-sysusers") is None,
                    reason="systemd-sysusers not found: install the Debian package `systemd`")
def test_sysusers_entry_creates_the_service_user(tmp_path):
    (tmp_path / "etc").mkdir()
    proc = subprocess.run(["systemd-sysusers", "--dry-run", f"--root={tmp_path}",
                           str(ROOT / "systemd" / "ticketmx.sysusers")],
                          capture_output=True, text=True, timeout=60)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "Creating group 'ticketmx'" in out and "Creating user 'ticketmx'" in out, out
    assert not [line for line in out.splitlines() if not line.startswith(("Creating ", "Would write "))], out


def test_lifecycle_settings():
    s = settings()
    assert one("Type") == "notify"
    assert one("NotifyAccess") == "main"          # worker processes never speak for the service
    assert seconds(one("WatchdogSec")) == 30
    assert one("ExecStartPre") == f"{EXEC_PATH} check-config --config /etc/ticketmx/ticketmx.toml"
    assert one("ExecStart") == f"{EXEC_PATH} serve --config /etc/ticketmx/ticketmx.toml"
    assert one("ExecReload") == "/bin/kill -HUP $MAINPID"
    assert "TICKETMX_CONFIG=/etc/ticketmx/ticketmx.toml" in s["Environment"]
    assert one("StateDirectory") == "ticketmx" and one("ConfigurationDirectory") == "ticketmx"
    # A dedicated static user (see docs/install.md), with what DynamicUser= would imply set explicitly.
    assert one("User") == "ticketmx" and one("Group") == "ticketmx" and "DynamicUser" not in s
    for key in ("PrivateTmp", "RemoveIPC", "NoNewPrivileges", "RestrictSUIDSGID", "ProtectHome"):
        assert one(key) == "yes", key
    assert one("ProtectSystem") == "strict"
    assert one("AmbientCapabilities") == "CAP_NET_BIND_SERVICE"
    assert one("CapabilityBoundingSet") == "CAP_NET_BIND_SERVICE"
    assert one("RestrictAddressFamilies").split() == ["AF_INET", "AF_INET6", "AF_UNIX"]
    assert s["SystemCallFilter"][0] == "@system-service"
    assert one("RestartPreventExitStatus") == "78"  # check-config's EX_CONFIG
    # SIGTERM to the main process only; it stops its own workers.
    assert one("KillMode") == "mixed"


def test_stop_timeout_covers_the_shutdown_sequence():
    """The main process needs up to shutdown_grace for sessions, then up to max(5 s, shutdown_grace)
    for the worker processes to drain (Gateway.stop): systemd must not SIGKILL before that."""
    grace = load_config(str(ROOT / "conf" / "ticketmx.example.toml")).smtp.shutdown_grace
    needed = grace + max(5.0, grace)
    assert seconds(one("TimeoutStopSec")) >= needed + 15, (one("TimeoutStopSec"), needed)
