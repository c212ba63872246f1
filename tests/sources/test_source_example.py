"""The commented [[source]] example of conf/ticketmx.example.toml, uncommented, loads as documented."""
from __future__ import annotations

import os
import tomllib
from pathlib import Path

from gateway.config.load import build_config

from ..conftest import BASE_CONFIG, merge


def test_the_commented_source_example_loads(tmp_path: Path) -> None:
    text = (Path(__file__).resolve().parents[2] / "conf" / "ticketmx.example.toml").read_text()
    start = text.index("# [[source]]\n# name = \"support-imap\"")
    block = []
    for line in text[start:].splitlines():
        if not line.startswith("#"):
            break
        block.append(line[2:] if line.startswith("# ") else line[1:])
    data = tomllib.loads("\n".join(block))
    pw = tmp_path / "imap-password"
    pw.write_text("secret\n")
    os.chmod(pw, 0o600)
    data["source"][0]["password_file"] = str(pw)
    base = merge(BASE_CONFIG, {"store": {"url": f"sqlite:///{tmp_path}/t.db"}})
    base["mailbox"] = [*base.get("mailbox", []), {"address": "support@example.net", "queue": "support"}]
    cfg = build_config({**base, "source": data["source"]}, "example")
    sc = cfg.sources[0]
    assert (sc.name, sc.kind, sc.port, sc.tls, sc.poll_interval, sc.stop_after_failures) == \
        ("support-imap", "imap", 993, "implicit", 60.0, 10)
    assert sc.password == "secret" and sc.success_folder == "Processed" and sc.since
