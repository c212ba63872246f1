"""Who runs a command, for audit lines: the OS user (and who used sudo to become it)."""
from __future__ import annotations

import os


def operator() -> str:
    import pwd
    uid = os.geteuid()
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        name = f"uid {uid}"
    sudo = os.environ.get("SUDO_USER", "")
    return f"{name} (sudo by {sudo})" if sudo and sudo != name else name
