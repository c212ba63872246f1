"""kill -9 of `ticketmx serve` during a sync of 2,000 messages from a real Dovecot, ten times: afterwards
every message is one spool entry and one ticket (0 lost, 0 duplicated) and sits in the success folder."""
from __future__ import annotations

import signal
import sqlite3
import time
from pathlib import Path
from typing import Any, Callable

from ..test_serve import ServeProcess
from .conftest import USER, message, source_table
from .dovecot import Dovecot

N = 2000
KILLS = 10


def _count(db: Path, sql: str) -> int:
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            return con.execute(sql).fetchone()[0]
        finally:
            con.close()
    except sqlite3.OperationalError:
        return 0


def test_kill_9_ten_times_during_a_sync_of_2000(dovecot: Dovecot, tmp_path: Path, dns_server) -> None:
    db = tmp_path / "serve.db"
    kill_9_during_sync(dovecot, tmp_path, dns_server, {}, lambda sql: _count(db, sql))


def kill_9_during_sync(dovecot: Dovecot, tmp_path: Path, dns_server: Any, store: dict[str, Any],
                       count: Callable[[str], int]) -> None:
    """The scenario on any store (``store``: the [store] table; {}: the SQLite file of ServeProcess);
    ``count(sql)`` answers a COUNT query on it."""
    _count_ = count
    dns_server.set_zone({})
    for i in range(N):
        dovecot.deliver(USER, message(i, body=f"message {i}\r\n"), seen=(i % 3 == 0))
    srv = ServeProcess(tmp_path, dns_server.port, source=[source_table(dovecot, tmp_path, poll_interval="1s")],
                       pipeline={"poll_interval": "200ms", "processes": 1}, **({"store": store} if store else {}))
    kills_during_sync = 0
    try:
        for k in range(KILLS):
            before = _count_("SELECT COUNT(*) FROM source_messages")
            srv.start()
            deadline = time.monotonic() + 60
            # kill once this run has imported (or settled) a little more: always in the middle of the work
            step = N // (KILLS + 4)
            while time.monotonic() < deadline:
                now = _count_("SELECT COUNT(*) FROM source_messages")
                settled = _count_("SELECT COUNT(*) FROM source_messages WHERE state='settled'")
                if now >= before + step or (now == N and settled > k * step):
                    break
                time.sleep(0.02)
            if _count_("SELECT COUNT(*) FROM source_messages WHERE state='settled'") < N:
                kills_during_sync += 1
            srv.proc.send_signal(signal.SIGKILL)
            srv.proc.wait(timeout=30)
        srv.start()
        deadline = time.monotonic() + 120
        while _count_("SELECT COUNT(*) FROM source_messages WHERE state='settled'") < N:
            assert time.monotonic() < deadline, (srv.log.read_text()[-3000:], dovecot.log(),
                                                 _count_("SELECT COUNT(*) FROM source_messages"))
            time.sleep(0.2)
        srv.stop()
    finally:
        if srv.proc and srv.proc.poll() is None:
            srv.proc.kill()
            srv.proc.wait()
    assert kills_during_sync == KILLS
    assert _count_("SELECT COUNT(*) FROM spool") == N                        # nothing imported twice
    assert _count_("SELECT COUNT(DISTINCT message_id) FROM spool") == N      # nothing lost
    assert _count_("SELECT COUNT(*) FROM spool WHERE state='ticket_created'") == N
    assert _count_("SELECT COUNT(*) FROM tickets") == N
    assert _count_("SELECT COUNT(*) FROM source_messages") == N
    assert dovecot.count(USER) == 0 and dovecot.count(USER, "Processed") == N
