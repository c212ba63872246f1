"""The verification snippets of docs/webhooks.md (Python and shell) accept a request ticketmx signed and
refuse a tampered one."""
from __future__ import annotations

import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from gateway.webhooks.sign import sign

from .conftest import SECRET

DOC = (Path(__file__).resolve().parents[2] / "docs" / "webhooks.md").read_text()


def _block(lang: str) -> str:
    (code,) = re.findall(rf"^```{lang}\n(.*?)^```", DOC, re.S | re.M)
    return code


def test_python_snippet():
    ns: dict = {}
    exec(_block("python"), ns)  # noqa: S102 - our own documentation
    body = b'{"event":"ticket.created","id":"x"}'
    header = sign(SECRET, body)
    assert ns["verify"](SECRET, header, body)
    assert not ns["verify"](SECRET, header, body.replace(b"x", b"y"))
    assert not ns["verify"](SECRET, sign(SECRET, body, int(time.time()) - 600), body)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed")
def test_shell_snippet(tmp_path):
    body = '{"event":"ticket.created","ticket":{"subject":"Ünïcode €"}}'.encode()
    (tmp_path / "body.json").write_bytes(body)
    (tmp_path / "webhook.secret").write_text(SECRET + "\n")
    script = _block("sh")

    def run(sig: str) -> str:
        return subprocess.run(["sh", "-c", script], cwd=tmp_path, env={"sig": sig, "PATH": "/usr/bin:/bin"},
                              capture_output=True, text=True, timeout=10).stdout.strip()
    assert run(sign(SECRET, body)) == "valid"
    assert run(sign("another-secret-0123456789", body)) == "INVALID"
    assert run(sign(SECRET, body, int(time.time()) - 3600)) == "INVALID"
