"""A start that cannot open the store exits, with a documented code and one line (issue 25, item 5).

Real `ticketmx serve` processes against real faults: a database another process holds with
``BEGIN EXCLUSIVE`` for longer than the busy timeout, a filesystem that is full, one mounted read-only
(small tmpfs mounts: skipped where this sandbox may not mount). Before, the traceback was logged,
nothing listened and the process never exited (the store's connection thread is not a daemon).
"""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest

from .conftest import ROOT
from .test_store_write_error import fill_filesystem
from .test_serve import ServeProcess

EX_TEMPFAIL = 75


def _run_serve(srv: ServeProcess, timeout: float, env: dict[str, str] | None = None) -> tuple[int, float, str]:
    """Start `ticketmx serve`, wait for it to exit; (exit code, seconds, log)."""
    started = time.monotonic()
    with open(srv.log, "ab") as out:
        proc = subprocess.run([sys.executable, "-m", "gateway", "serve", "--config", str(srv.config)],
                              cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, timeout=timeout,
                              env={**os.environ, **(env or {})})
    return proc.returncode, time.monotonic() - started, srv.log.read_text()


def _notifications(sock: socket.socket) -> list[str]:
    out = []
    while True:
        try:
            out.append(sock.recv(4096).decode())
        except BlockingIOError:
            return out


def _assert_one_line(log: str, *fragments: str) -> None:
    errors = [line for line in log.splitlines() if " ERROR " in line]
    assert len(errors) == 1, log
    assert "cannot start" in errors[0] and f"exiting with code {EX_TEMPFAIL}" in errors[0], errors[0]
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    assert "Traceback" not in log, log


def _created(srv: ServeProcess) -> None:
    """A first, clean run: the database exists and is migrated."""
    srv.start()
    assert srv.stop() == 0
    srv.log.write_text("")


@contextlib.contextmanager
def exclusive_lock(db: Path) -> Iterator[None]:
    """Another process's view of the database: a thread holds ``BEGIN EXCLUSIVE`` on it until the block ends."""
    holding, release = threading.Event(), threading.Event()

    def hold() -> None:
        conn = sqlite3.connect(db, isolation_level=None)
        conn.execute("BEGIN EXCLUSIVE")
        holding.set()
        release.wait(60)
        conn.execute("ROLLBACK")
        conn.close()

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert holding.wait(10)
        yield
    finally:
        release.set()
        holder.join()


def test_a_database_locked_past_the_busy_timeout_exits_75_within_bounded_time(tmp_path, dns_server):
    srv = ServeProcess(tmp_path, dns_server.port)
    _created(srv)
    with exclusive_lock(tmp_path / "serve.db"):
        code, seconds, log = _run_serve(srv, timeout=60)
    assert code == EX_TEMPFAIL, log
    assert 9.0 < seconds < 10.0 + 8.0, seconds  # the 10 s busy timeout, then out at once
    _assert_one_line(log, "database is locked")
    with socket.socket() as s:  # nothing is left listening
        assert s.connect_ex(("127.0.0.1", srv.port)) != 0
    # Once the lock is gone the same command starts and serves.
    srv.log.write_text("")
    srv.start()
    assert srv.stop() == 0


@pytest.fixture
def small_fs(tmp_path):
    """A 16 MiB tmpfs of our own (root only); unmounted afterwards."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    # 16 MiB: a new store (every migration, the full-text index of issue 22 included) plus room to fill
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mnt)], capture_output=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.decode().strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=True)


def _fill(mnt: Path) -> None:
    # unbuffered (tests/test_store_write_error.py): a buffered file's close would flush the part of the
    # last write that did not fit and raise ENOSPC itself
    fill_filesystem(mnt / "filler")


@pytest.mark.parametrize("fault", ["full", "read-only"])
def test_a_full_or_read_only_store_exits_75_at_once(tmp_path, dns_server, small_fs, fault):
    srv = ServeProcess(tmp_path, dns_server.port, store={"url": f"sqlite:///{small_fs}/serve.db"})
    _created(srv)
    if fault == "full":
        _fill(small_fs)
    else:
        subprocess.run(["mount", "-o", "remount,ro", str(small_fs)], check=True)
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:  # systemd's side of sd_notify
        notify.bind(str(tmp_path / "notify.sock"))
        notify.setblocking(False)
        code, seconds, log = _run_serve(srv, timeout=60, env={"NOTIFY_SOCKET": str(tmp_path / "notify.sock")})
        told = _notifications(notify)
    assert code == EX_TEMPFAIL, log
    assert seconds < 8.0, seconds
    _assert_one_line(log, "the store is not available")
    assert not any("READY=1" in m for m in told), told  # never claimed to be ready
    assert any(m.startswith("STATUS=cannot start: the store is not available") for m in told), told
    if fault == "full":
        (small_fs / "filler").unlink()
    else:
        subprocess.run(["mount", "-o", "remount,rw", str(small_fs)], check=True)
    srv.log.write_text("")
    srv.start()  # the cause gone, the next start (systemd's restart) works
    assert srv.stop() == 0


def test_a_listen_address_in_use_exits_1_with_one_line(tmp_path, dns_server):
    srv = ServeProcess(tmp_path, dns_server.port)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", srv.port))
        taken.listen()
        code, seconds, log = _run_serve(srv, timeout=60)
    assert code == 1 and seconds < 15.0, log
    errors = [line for line in log.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and "cannot start" in errors[0] and "exiting with code 1" in errors[0], log
    assert "Traceback" not in log, log


def test_a_worker_that_cannot_open_the_store_says_so_once_and_comes_back(tmp_path, dns_server):
    """A pipeline worker started (by a reload) while the database is locked: one line per try, backoff,
    no traceback, and it works again once the lock is gone."""
    import re

    import aiosmtplib
    import asyncio

    from .conftest import queued_id, simple_message
    srv = ServeProcess(tmp_path, dns_server.port, pipeline={"poll_interval": "200ms", "processes": 1})
    srv.start()
    deadline = time.monotonic() + 20
    while not re.findall(r"pipeline worker \S+ started \(pid (\d+)\)", srv.log.read_text()):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    with exclusive_lock(tmp_path / "serve.db"):
        srv.proc.send_signal(signal.SIGHUP)  # a reload starts a new worker at once: it meets the lock
        deadline = time.monotonic() + 30
        while "could not open the store; next try in" not in srv.log.read_text():
            assert time.monotonic() < deadline, srv.log.read_text()[-3000:]
            time.sleep(0.2)
    log = srv.log.read_text()
    assert log.count("cannot open the store: OperationalError: database is locked; exiting with code 75") >= 1, log
    assert "could not open the store; next try in" in log
    assert "Traceback" not in log, log

    async def send() -> str:
        _e, text = await aiosmtplib.send(simple_message(subject="after the lock"), sender="a@customer.test",
                                         recipients=["support@example.test"], hostname="127.0.0.1",
                                         port=srv.port, start_tls=False)
        return queued_id(text)
    sid = asyncio.run(send())
    deadline = time.monotonic() + 20
    while srv.cli_json("spool", "show", sid)["state"] != "ticket_created":
        assert time.monotonic() < deadline, srv.log.read_text()[-2000:]
        time.sleep(0.2)
    assert srv.stop() == 0
