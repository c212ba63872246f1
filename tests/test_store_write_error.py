"""A batch cut short by a store write error does not strand its messages (issue 25, item 4).

A real full disk: the store on a small tmpfs of the test's own (root only; skipped elsewhere), messages
spooled while the pipeline is paused, the filesystem filled to the last byte, the pipeline resumed.
The delivery transaction fails with SQLITE_FULL, and so do the fallback writes, so most of the batch
stays ``processing``. Before, it stayed so until the next restart; now the worker keeps the ids and
puts them back as soon as the store takes writes again, and they become tickets, each exactly once.
"""
from __future__ import annotations

import asyncio
import os
import random
import re
import sqlite3
import string
import subprocess
import time

import aiosmtplib
import pytest

from .conftest import queued_id, simple_message
from .test_serve import ServeProcess


@pytest.fixture
def small_fs(tmp_path):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    # 32 MiB: the 60 messages, their tickets and the full-text index (issue 22) must fit once the filler is gone
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32m", "tmpfs", str(mnt)], capture_output=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.decode().strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=True)


def _states(db) -> dict[str, int]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)  # reads only: the disk is full
    try:
        return dict(conn.execute("SELECT state, COUNT(*) FROM spool GROUP BY state").fetchall())
    finally:
        conn.close()


def _send(port: int, n: int) -> list[str]:
    rnd = random.Random(25)

    async def go() -> list[str]:
        smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=20, start_tls=False)
        await smtp.connect()
        ids = []
        for i in range(n):  # 40 KB of text each: the deliveries need more room than is left
            text = "".join(rnd.choices(string.ascii_letters + " ", k=40000))
            body = "\r\n".join(text[j:j + 70] for j in range(0, len(text), 70))
            _e, reply = await smtp.sendmail("alice@customer.test", ["support@example.test"],
                                            simple_message(subject=f"full {i}", body=body,
                                                           message_id=f"full-{i}@customer.test"))
            ids.append(queued_id(reply))
        await smtp.quit()
        return ids
    return asyncio.run(go())


def fill_filesystem(path) -> None:
    """Write zeros to ``path`` until its filesystem is full (ENOSPC): a real full disk, not a simulated one."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError:
        pass
    finally:
        os.close(fd)


def test_entries_stranded_by_a_full_disk_are_put_back_once_space_is_freed(tmp_path, dns_server, small_fs):
    db = small_fs / "serve.db"
    srv = ServeProcess(tmp_path, dns_server.port, store={"url": f"sqlite:///{db}"},
                       pipeline={"poll_interval": "1s", "processes": 1, "batch_size": 200}).start()
    try:
        srv.cli("pipeline", "pause")
        ids = _send(srv.port, 60)
        time.sleep(1.0)  # the background WAL checkpoint is done: it would eat the reserve below
        for i in range(3):
            (small_fs / f"reserve{i}").write_bytes(b"\0" * 512 * 1024)
        fill_filesystem(small_fs / "filler")
        for i in range(3):  # room for the resume command, and little more
            (small_fs / f"reserve{i}").unlink()
            try:
                srv.cli("pipeline", "resume")
                break
            except AssertionError:
                assert i < 2, "could not resume the pipeline"
        deadline = time.monotonic() + 20
        while _states(db).get("processing", 0) == 0 or "batch failed" not in srv.log.read_text():
            assert time.monotonic() < deadline, (_states(db), srv.log.read_text()[-3000:])
            time.sleep(0.1)
        time.sleep(2.0)  # the fault lasts: the worker retries, and keeps failing, meanwhile
        stranded = _states(db).get("processing", 0)
        assert stranded > 0, _states(db)  # the fault is real: these are the entries that used to stay

        (small_fs / "filler").unlink()
        freed = time.monotonic()
        while _states(db).get("processing", 0):
            assert time.monotonic() - freed < 5.0, _states(db)  # within the backoff cap (poll_interval)
            time.sleep(0.05)
        unstuck = time.monotonic() - freed
        entries = {e["id"]: e for e in srv.wait_all_done(timeout=30)}
        assert {entries[i]["state"] for i in ids} == {"ticket_created"}, [entries[i]["state"] for i in ids]
        tickets = srv.cli_json("tickets", "list")
        assert sorted(t["subject"] for t in tickets) == sorted(f"full {i}" for i in range(60))
        log = srv.log.read_text()
        assert re.search(r"put back \d+ spool entries left processing by a failed batch", log), log[-3000:]
        assert "batches work again" in log
        assert log.count("Traceback") <= 4, log  # once per kind of error, not once per message or retry
        print(f"{stranded} of 60 stranded; none processing {unstuck:.2f}s after space was freed")
        assert srv.stop() == 0
    finally:
        if srv.proc and srv.proc.poll() is None:
            srv.proc.kill()
            srv.proc.wait()
