"""kill -9 of a real `ticketmx serve` pulling from the Graph EMULATOR, several times mid-sync: 0 lost, 0 duplicated."""
from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import ROOT, free_port, toml_dump, wait_port
from tests.sources.conftest import message
from tests.sources.graph_emulator import GraphEmulator

USER = "support@example.test"
N = 300
KILLS = 4


def count(db: Path, sql: str) -> int:
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as c:
            return int(c.execute(sql).fetchone()[0])
    except sqlite3.OperationalError:   # not created yet
        return 0


def test_kill_9_during_a_graph_sync_loses_and_duplicates_nothing(tmp_path: Path, dns_server) -> None:
    dns_server.set_zone({})
    with GraphEmulator() as emu:
        for i in range(N):
            emu.deliver(USER, message(i), received=1_790_000_000 + i)
        secret = tmp_path / "graph-secret"
        secret.write_text(emu.client_secret + "\n")
        secret.chmod(0o600)
        port = free_port()
        db = tmp_path / "serve.db"
        cfg = tmp_path / "serve.toml"
        cfg.write_text(toml_dump({
            "smtp": {"listen": [f"127.0.0.1:{port}"], "hostname": "mx.example.test"},
            "store": {"url": f"sqlite:///{db}"},
            "mailbox": [{"address": USER, "queue": "IT"}],
            "pipeline": {"poll_interval": "200ms"},
            "metrics": {"listen": f"127.0.0.1:{free_port()}"},
            "dns": {"nameservers": [f"127.0.0.1:{dns_server.port}"], "timeout": "1s"},
            "source": [{"name": "m365", "kind": "graph", "mailbox": USER, "tenant": emu.tenant, "user": USER,
                        "endpoint": emu.base, "authority": emu.base, "oauth_client_id": emu.client_id,
                        "oauth_client_secret_file": str(secret), "poll_interval": "1s", "stop_after_failures": 0}],
        }))
        log = open(tmp_path / "serve.log", "ab")

        def serve() -> subprocess.Popen[bytes]:
            p = subprocess.Popen([sys.executable, "-m", "gateway", "serve", "--config", str(cfg)], cwd=ROOT,
                                 stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            wait_port(port)
            return p

        proc = serve()
        try:
            imported_at_kill = []
            for k in range(KILLS):
                target = (k + 1) * N // (KILLS + 2)
                deadline = time.monotonic() + 60
                while count(db, "SELECT count(*) FROM source_messages") < target:
                    assert time.monotonic() < deadline, "no progress"
                    time.sleep(0.02)
                os.killpg(proc.pid, signal.SIGKILL)   # the gateway and its pipeline workers, mid-sync
                proc.wait()
                imported_at_kill.append(count(db, "SELECT count(*) FROM source_messages"))
                proc = serve()
            deadline = time.monotonic() + 120
            while count(db, "SELECT count(*) FROM source_messages WHERE state = 'settled'") < N:
                assert time.monotonic() < deadline, "did not settle everything"
                time.sleep(0.1)
        finally:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        print(f"imported at each kill: {imported_at_kill}; $value GETs: {sum(1 for _, p in emu.requests if p.endswith('/$value'))}")
        assert imported_at_kill == sorted(imported_at_kill) and imported_at_kill[-1] < N   # killed mid-sync
        assert count(db, "SELECT count(*) FROM tickets") == N
        assert count(db, "SELECT count(DISTINCT subject) FROM tickets") == N
        assert count(db, "SELECT count(*) FROM spool") == N
        processed = {f.name: f.id for f in emu.mailbox(USER).folders.values()}["Processed"]
        assert len(emu.folder_messages(USER, processed)) == N and emu.folder_messages(USER, "inbox") == []
