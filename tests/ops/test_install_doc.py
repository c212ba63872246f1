"""docs/install.md, run as written (issue 20): the fenced ``sh`` blocks preceded by a line
``<!-- install-test -->`` are extracted from the document itself and run, in document order, as one
``bash -e`` script by root, ending with ``check-config`` run as the service user by ``runuser``.

The host is not touched: the script runs in a private mount namespace (``unshare --mount``) where
``/etc`` and ``/var`` are overlays whose changes land in a temporary directory, and ``/opt`` and
``/usr/local/src`` are empty tmpfs mounts. Step 1 (apt-get, git clone, pip install) needs the network
and is not run: the test puts the source tree at ``/usr/local/src/ticketmx`` (a read-only bind mount)
and ``/opt/ticketmx/bin/ticketmx`` runs this checkout with the test's interpreter. ``editor`` (the one
interactive step) is a no-op. Everything disappears with the namespace; the overlays' upper
directories are the test's tmp_path. Takes a few seconds; skipped (with the reason) when not root
or when mount namespaces / overlayfs are not available (an unprivileged container).
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "install.md"
MARK = "<!-- install-test -->"


def documented_steps(text: str) -> list[str]:
    """The ``sh`` blocks right after a MARK line, in document order."""
    blocks = re.findall(r"^" + re.escape(MARK) + r"\n```sh\n(.*?)^```", text, re.S | re.M)
    return blocks


def test_marked_blocks_are_found():
    """The extraction itself: every marker is followed by an sh block (a marker that lost its block, or
    a block that lost its marker, would silently drop a step from the test)."""
    text = DOC.read_text()
    blocks = documented_steps(text)
    assert len(blocks) == text.count(MARK) >= 4
    script = "\n".join(blocks)
    for needle in ("useradd", "groupadd", "install -m 0640 -o root -g ticketmx", "runuser -u ticketmx",
                   "check-config --config /etc/ticketmx/ticketmx.toml", "/etc/ticketmx/tls"):
        assert needle in script, needle
    assert "/etc/sysusers.d/ticketmx.conf\n" not in script  # absent on stock Debian 12


PRELUDE = r"""
set -euo pipefail
work="$1"; src="$2"; py="$3"
mount --make-rprivate /
for d in etc var; do
    mkdir -p "$work/$d-upper" "$work/$d-work"
    mount -t overlay overlay -o "lowerdir=/$d,upperdir=$work/$d-upper,workdir=$work/$d-work" "/$d"
done
mount -t tmpfs -o mode=0755 tmpfs /opt
mount -t tmpfs -o mode=0755 tmpfs /usr/local/src
mkdir /usr/local/src/ticketmx
mount --bind -o ro "$src" /usr/local/src/ticketmx
# step 1 stands in: the program is this checkout, run by the test's interpreter. An interpreter under a
# private directory (pyenv in /root, mode 0700) gets o+x on its ancestors - in an overlay, not on the host.
real=$(readlink -f "$py"); top=/$(echo "$real" | cut -d/ -f2)
if ! runuser -u nobody -- test -x "$real"; then
    mkdir -p "$work/top-upper" "$work/top-work"
    mount -t overlay overlay -o "lowerdir=$top,upperdir=$work/top-upper,workdir=$work/top-work" "$top"
    d=$(dirname "$real"); while [ "$d" != / ]; do chmod o+x "$d"; d=$(dirname "$d"); done
fi
mkdir -p /opt/ticketmx/bin
printf '#!/bin/sh\nPYTHONPATH=%s exec %s -m gateway "$@"\n' "$src" "$py" > /opt/ticketmx/bin/ticketmx
chmod 0755 /opt/ticketmx/bin/ticketmx
editor() { :; }
cd /
echo "== documented steps =="
"""


@pytest.fixture
def sandbox(tmp_path):
    """tmp_path for the overlays' upper directories, removed afterwards (they hold copies of the
    sandbox's /etc/shadow and /etc/gshadow)."""
    yield tmp_path
    for d in tmp_path.iterdir():
        if d.is_dir():
            shutil.rmtree(d, ignore_errors=True)


def _namespace_usable() -> str | None:
    """Why the mount-namespace sandbox cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root (the documented steps run as root): run the tests as root, e.g. in CI"
    for tool in ("unshare", "runuser", "useradd", "groupadd", "getent", "install", "bash"):
        if shutil.which(tool) is None:
            return f"{tool} not found"
    probe = subprocess.run(["unshare", "--mount", "sh", "-c", "mount --make-rprivate / && mount -t tmpfs t /mnt"],
                           capture_output=True, text=True, timeout=30)
    if probe.returncode != 0:
        return f"no private mount namespace here (unprivileged container?): {probe.stderr.strip()}"
    return None


def test_documented_install_runs_and_ends_with_check_config_as_the_service_user(sandbox):
    tmp_path = sandbox
    why = _namespace_usable()
    if why:
        pytest.skip(f"docs/install.md not run: {why}")
    steps = documented_steps(DOC.read_text())
    script = PRELUDE + "\n".join(steps) + r"""
echo "== checks =="
stat -c '%U:%G %a %n' /etc/ticketmx/ticketmx.toml /etc/ticketmx/tls
getent passwd ticketmx
"""
    (tmp_path / "install.sh").write_text(script)
    proc = subprocess.run(["unshare", "--mount", "bash", str(tmp_path / "install.sh"), str(tmp_path), str(ROOT),
                           sys.executable], capture_output=True, text=True, timeout=120,
                          env={"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                               "LANG": "C.UTF-8"})
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "/etc/ticketmx/ticketmx.toml: OK" in proc.stdout, out  # check-config, as ticketmx
    assert "root:ticketmx 640 /etc/ticketmx/ticketmx.toml" in proc.stdout, out
    assert "root:ticketmx 750 /etc/ticketmx/tls" in proc.stdout, out
    assert re.search(r"^ticketmx:x:\d+:\d+:[^:]*:/var/lib/ticketmx:/usr/sbin/nologin$", proc.stdout, re.M), out
    # the host is untouched: the account and the files exist only in the overlays
    assert not Path("/etc/ticketmx/ticketmx.toml").exists() or (tmp_path / "etc-upper").exists()
    assert "ticketmx:" in (tmp_path / "etc-upper" / "passwd").read_text()
    host_passwd = Path("/etc/passwd").read_text()
    assert not re.search(r"^ticketmx:", host_passwd, re.M) or _preexisting_user()


def _preexisting_user() -> bool:
    """A host that really has ticketmx installed: its account is not ours to judge."""
    return Path("/etc/ticketmx").exists()


def test_check_config_as_the_service_user_fails_when_it_cannot_read_the_config(sandbox):
    tmp_path = sandbox
    """The last step proves something: the same sandbox with the config not readable by the group
    makes ``check-config`` (run as ticketmx) exit 78 naming the file."""
    why = _namespace_usable()
    if why:
        pytest.skip(f"docs/install.md not run: {why}")
    steps = documented_steps(DOC.read_text())
    broken = [s.replace("install -m 0640 -o root -g ticketmx", "install -m 0600 -o root -g ticketmx") for s in steps]
    assert broken != steps
    (tmp_path / "install.sh").write_text(PRELUDE + "\n".join(broken))
    proc = subprocess.run(["unshare", "--mount", "bash", str(tmp_path / "install.sh"), str(tmp_path), str(ROOT),
                           sys.executable], capture_output=True, text=True, timeout=120,
                          env={"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"})
    assert proc.returncode == 78, proc.stdout + proc.stderr
    assert "/etc/ticketmx/ticketmx.toml" in proc.stderr and "cannot read" in proc.stderr, proc.stderr
