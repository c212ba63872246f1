"""`ticketmx serve` with ``[http] listen``: the API over real HTTP in the real process; SIGHUP keeps it
serving (uvicorn does not take the gateway's signals), SIGTERM stops it cleanly."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import httpx

from ..conftest import ROOT, free_port, wait_port
from ..test_serve import serve  # noqa: F401 - the fixture


def test_serve_runs_the_api_and_keeps_the_signals(serve) -> None:  # noqa: F811
    http_port = free_port()
    p = serve(http={"listen": f"127.0.0.1:{http_port}"}).start()
    wait_port(http_port)
    token = p.cli("token", "create", "--name", "ops", "--role", "admin").strip()
    base = f"http://127.0.0.1:{http_port}"
    r = httpx.get(f"{base}/api/v1/me", headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert r.status_code == 200 and r.json()["name"] == "ops", r.text
    assert httpx.get(f"{base}/readyz", timeout=10).status_code == 200

    assert p.proc is not None
    # The API has its own process (docs/api.md): a child of serve, named ticketmx-http1.
    children = _children(p.proc.pid)
    assert "ticketmx-http1" in children.values(), children
    http_pid = next(pid for pid, name in children.items() if name == "ticketmx-http1")

    # A reload (SIGHUP to serve, which validates the file and sends it on): the process and both
    # servers stay up, and the HTTP process applies the new [http] rate_per_token to the next request.
    p.config.write_text(p.config.read_text().replace("[http]\n", '[http]\nrate_per_token = "1/1m"\n'))
    p.proc.send_signal(signal.SIGHUP)
    time.sleep(1.0)
    assert p.proc.poll() is None, p.log.read_text()
    assert "config reloaded" in p.log.read_text()
    codes = [httpx.get(f"{base}/api/v1/me", headers={"Authorization": f"Bearer {token}"}, timeout=10).status_code
             for _ in range(2)]
    assert codes == [200, 429], codes
    assert _children(p.proc.pid).get(http_pid) == "ticketmx-http1"  # the same process: not restarted

    started = time.monotonic()
    assert p.stop(signal.SIGTERM) == 0, p.log.read_text()
    assert time.monotonic() - started < 20
    log = p.log.read_text()
    assert "HTTP API listening" in log and "ticketmx stopped" in log
    assert not os.path.exists(f"/proc/{http_pid}"), "the HTTP process outlived serve"


def _children(pid: int) -> dict[int, str]:
    """pid -> name (ps -o comm) of the processes whose parent is ``pid``."""
    out = {}
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = open(f"/proc/{entry}/stat").read()
        except OSError:
            continue
        name, rest = stat[stat.index("(") + 1:stat.rindex(")")], stat[stat.rindex(")") + 2:].split()
        if int(rest[1]) == pid:
            out[int(entry)] = name
    return out


def test_http_port_in_use_fails_the_start_with_the_key(serve) -> None:  # noqa: F811
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        p = serve(http={"listen": f"127.0.0.1:{port}"})
        p.proc = subprocess.Popen([sys.executable, "-m", "gateway", "serve", "--config", str(p.config)],
                                  cwd=ROOT, stdout=open(p.log, "ab"), stderr=subprocess.STDOUT)
        assert p.proc.wait(timeout=60) == 1  # not 75: restarting does not free the port
    log = p.log.read_text()
    assert f"[http] listen 127.0.0.1:{port}" in log and "in use" in log, log
