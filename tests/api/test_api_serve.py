"""`ticketmx serve` with ``[http] listen``: the API over real HTTP in the real process; SIGHUP keeps it
serving (uvicorn does not take the gateway's signals), SIGTERM stops it cleanly."""
from __future__ import annotations

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
    p.proc.send_signal(signal.SIGHUP)  # a reload: the process and both servers stay up
    time.sleep(1.0)
    assert p.proc.poll() is None, p.log.read_text()
    assert httpx.get(f"{base}/api/v1/me", headers={"Authorization": f"Bearer {token}"}, timeout=10).status_code == 200
    assert "config reloaded" in p.log.read_text()

    started = time.monotonic()
    assert p.stop(signal.SIGTERM) == 0, p.log.read_text()
    assert time.monotonic() - started < 20
    log = p.log.read_text()
    assert "HTTP API listening" in log and "ticketmx stopped" in log


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
