"""`ticketmx serve` as a real subprocess: swaks, the CLI's JSON contract, metrics, kill -9 recovery."""
from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import aiosmtplib
import pytest

from .conftest import ROOT, free_port, queued_id, simple_message, toml_dump, wait_port


class ServeProcess:
    def __init__(self, tmp_path: Path, dns_port: int, **over) -> None:
        self.port = free_port()
        self.metrics_port = free_port()
        data = {
            "smtp": {"listen": [f"127.0.0.1:{self.port}"], "hostname": "mx.example.test", "shutdown_grace": "5s"},
            "store": {"url": f"sqlite:///{tmp_path}/serve.db"},
            "mailbox": [{"address": "support@example.test", "aliases": ["help@example.test"], "queue": "IT"}],
            "metrics": {"listen": f"127.0.0.1:{self.metrics_port}"},
            "pipeline": {"poll_interval": "200ms"},
            "dns": {"nameservers": [f"127.0.0.1:{dns_port}"], "timeout": "1s"},
        }
        data.update(over)
        self.config = tmp_path / "serve.toml"
        self.config.write_text(toml_dump(data))
        self.log = tmp_path / "serve.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> "ServeProcess":
        self.proc = subprocess.Popen([sys.executable, "-m", "gateway", "serve", "--config", str(self.config)],
                                     cwd=ROOT, stdout=open(self.log, "ab"), stderr=subprocess.STDOUT)
        wait_port(self.port)
        return self

    def cli(self, *args: str) -> str:
        proc = subprocess.run([sys.executable, "-m", "gateway", *args, "--config", str(self.config)],
                              capture_output=True, text=True, cwd=ROOT, timeout=60)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    def cli_json(self, *args: str):
        return json.loads(self.cli(*args, "--json"))

    def wait_all_done(self, timeout: float = 60) -> list[dict]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            entries = self.cli_json("spool", "list")
            if all(e["state"] not in ("queued", "processing") for e in entries):
                return entries
            time.sleep(0.3)
        raise AssertionError("spool did not drain")

    def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        return self.proc.wait(timeout=30)


@pytest.fixture
def serve(tmp_path, dns_server):
    procs: list[ServeProcess] = []
    dns_server.set_zone({})

    def make(**over) -> ServeProcess:
        p = ServeProcess(tmp_path, dns_server.port, **over)
        procs.append(p)
        return p

    yield make
    for p in procs:
        if p.proc and p.proc.poll() is None:
            p.proc.kill()
            p.proc.wait()


@pytest.mark.skipif(shutil.which("swaks") is None, reason="swaks not installed (scripts/test installs it)")
def test_swaks_to_serve_process_makes_ticket_and_cli_json_contract(serve, tmp_path):
    srv = serve().start()
    attach = tmp_path / "report.txt"
    attach.write_text("line one\nline two\n")
    out = subprocess.run(
        ["swaks", "--server", "127.0.0.1", "--port", str(srv.port), "--ehlo", "swaks.test",
         "--from", "carol@customer.test", "--to", "help@example.test",
         "--header", "Subject: =?UTF-8?B?w4ljaGVjIGRlIGNvbm5leGlvbg==?=",
         "--header", "Message-Id: <swaks-1@customer.test>", "--header", "From: Carol <carol@customer.test>",
         "--body", "Cannot log in.", "--attach", f"@{attach}"],
        capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert " 250 2.0.0 Ok: queued as " in out.stdout
    spool_id = out.stdout.split("queued as ")[1].split()[0]
    srv.wait_all_done()
    spool = srv.cli_json("spool", "list")
    assert [e["id"] for e in spool] == [spool_id]
    e = spool[0]
    for key in ("id", "state", "reason", "received_at", "mail_from", "rcpt_tos", "message_id"):
        assert key in e
    assert e["state"] == "ticket_created" and e["mail_from"] == "carol@customer.test"
    assert e["rcpt_tos"] == ["help@example.test"] and e["message_id"] == "swaks-1@customer.test"
    tickets = srv.cli_json("tickets", "list")
    assert len(tickets) == 1
    t = tickets[0]
    for key in ("id", "number", "subject", "requester", "queue", "status", "created_at"):
        assert key in t
    assert t["number"] == "HD-1000" and t["subject"] == "Échec de connexion"
    assert t["requester"] == "carol@customer.test" and t["queue"] == "IT"
    shown = srv.cli_json("tickets", "show", "HD-1000")
    (art,) = shown["articles"]
    for key in ("id", "spool_id", "message_id", "from", "to", "subject", "body_text", "created_at", "attachments"):
        assert key in art
    assert art["spool_id"] == spool_id and "Cannot log in." in art["body_text"]
    (att,) = art["attachments"]
    assert att["filename"] == "report.txt" and att["size"] == len(attach.read_bytes())
    assert set(att) >= {"filename", "content_type", "size", "sha256"}
    assert srv.cli_json("spool", "show", spool_id)["ticket_number"] == "HD-1000"
    # metrics over HTTP
    body = urllib.request.urlopen(f"http://127.0.0.1:{srv.metrics_port}/metrics", timeout=5).read().decode()
    assert "ticketmx_messages_accepted_total 1.0" in body
    assert 'ticketmx_pipeline_outcomes_total{state="ticket_created"} 1.0' in body
    assert srv.stop() == 0


@pytest.mark.parametrize("smtp_processes", [1, 2])
def test_kill_9_mid_load_loses_nothing_and_duplicates_nothing(serve, smtp_processes):
    """Every 250'd message is a ticket exactly once after a SIGKILL and a restart. With two SMTP
    processes the orphaned one sees its control pipe close, drains and exits by itself."""
    srv = serve()
    if smtp_processes > 1:
        text = srv.config.read_text().replace("[smtp]\n", f"[smtp]\nprocesses = {smtp_processes}\n", 1)
        srv.config.write_text(text)
    srv.start()
    deadline = time.monotonic() + 20  # at least one pipeline worker, plus the extra SMTP processes (named
    while len(children := _children(srv.proc.pid)) < smtp_processes:  # once their interpreter is up)
        assert time.monotonic() < deadline, children
        time.sleep(0.05)
    accepted: dict[str, str] = {}  # message-id -> spool id from the 250
    total, sessions = 400, 8

    async def client(n: int) -> None:
        smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=srv.port, timeout=10, start_tls=False)
        try:
            await smtp.connect()
            for i in range(n, total, sessions):
                mid = f"load-{i}@customer.test"
                _e, text = await smtp.sendmail("load@customer.test", ["support@example.test"],
                                               simple_message(subject=f"load {i}", message_id=mid))
                accepted[mid] = queued_id(text)
        except (aiosmtplib.SMTPException, OSError):
            return  # the server died under us: this message got no 250

    async def load_then_kill() -> None:
        tasks = [asyncio.create_task(client(n)) for n in range(sessions)]
        while len(accepted) < 120:
            await asyncio.sleep(0.005)
        srv.proc.kill()  # SIGKILL mid-run
        await asyncio.gather(*tasks)

    asyncio.run(load_then_kill())
    srv.proc.wait(timeout=10)
    assert 120 <= len(accepted) < total
    deadline = time.monotonic() + 20
    while any(_alive(pid) for pid in children):  # workers and SMTP processes: none outlives its parent
        assert time.monotonic() < deadline, f"orphans still running: {[p for p in children if _alive(p)]}"
        time.sleep(0.1)
    srv.start()
    entries = srv.wait_all_done()
    by_id = {e["id"]: e for e in entries}
    for mid, sid in accepted.items():
        assert sid in by_id, f"250'd message {mid} lost"
    tickets = srv.cli_json("tickets", "list")
    subjects = [t["subject"] for t in tickets]
    assert len(subjects) == len(set(subjects)), "a message became two tickets"
    ticketed = {e["message_id"] for e in entries if e["state"] == "ticket_created"}
    assert set(accepted) <= ticketed
    assert all(e["state"] in ("ticket_created", "suppressed") for e in entries)
    assert srv.stop() == 0


def _children(pid: int) -> list[int]:
    """Direct children of ``pid`` that are ticketmx workers or SMTP processes (not the resource tracker)."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            comm = (entry / "comm").read_text().strip()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid and comm.startswith("ticketmx-"):
            out.append(int(entry.name))
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_pipeline_worker_process_killed_is_restarted_and_work_completes(serve):
    """kill -9 of the pipeline worker process: its claims are released and a new worker finishes the job."""
    import re
    srv = serve(pipeline={"poll_interval": "200ms", "processes": 2}).start()

    def worker_pids() -> list[int]:
        return [int(p) for p in re.findall(r"pipeline worker \S+ started \(pid (\d+)\)", srv.log.read_text())]

    deadline = time.monotonic() + 20
    while len(worker_pids()) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    initial = worker_pids()
    assert len(initial) == 2
    first = initial[0]
    os.kill(first, signal.SIGKILL)

    async def send_some() -> list[str]:
        ids = []
        smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=srv.port, timeout=10, start_tls=False)
        await smtp.connect()
        for i in range(20):
            _e, text = await smtp.sendmail("w@customer.test", ["support@example.test"],
                                           simple_message(subject=f"after kill {i}", message_id=f"wk-{i}@c.test"))
            ids.append(queued_id(text))
        await smtp.quit()
        return ids

    ids = asyncio.run(send_some())
    entries = {e["id"]: e for e in srv.wait_all_done(timeout=30)}
    assert all(entries[i]["state"] == "ticket_created" for i in ids)
    deadline = time.monotonic() + 20
    while len(worker_pids()) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    pids = worker_pids()
    assert len(pids) == 3 and pids[2] not in initial  # one replacement, the other worker untouched
    assert "died (exit code -9)" in srv.log.read_text()
    assert srv.stop() == 0


@pytest.mark.parametrize("smtp_processes", [1, 2])
def test_sighup_reloads_mailboxes_and_refuses_a_bad_config(serve, smtp_processes):
    srv = serve()
    if smtp_processes > 1:
        text = srv.config.read_text().replace("[smtp]\n", f"[smtp]\nprocesses = {smtp_processes}\n", 1)
        srv.config.write_text(text)
    srv.start()

    def rcpt_code(addr: str) -> int:
        import smtplib
        with smtplib.SMTP("127.0.0.1", srv.port, timeout=10) as s:
            s.ehlo("c.test")
            s.mail("a@customer.test")
            return s.rcpt(addr)[0]

    assert rcpt_code("sales@example.test") == 550
    good = srv.config.read_text() + '\n[[mailbox]]\naddress = "sales@example.test"\nqueue = "Sales"\n'
    srv.config.write_text(good)
    srv.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while rcpt_code("sales@example.test") != 250 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert rcpt_code("sales@example.test") == 250

    async def send() -> str:
        _e, text = await aiosmtplib.send(simple_message(to="sales@example.test", message_id="hup@c.test"),
                                         sender="a@customer.test", recipients=["sales@example.test"],
                                         hostname="127.0.0.1", port=srv.port, start_tls=False)
        return queued_id(text)
    asyncio.run(send())
    srv.wait_all_done()
    assert [t["queue"] for t in srv.cli_json("tickets", "list")] == ["Sales"]  # the new workers know Sales

    srv.config.write_text(good + "\n[smtp]\nbogus_key = 1\n")  # duplicate table + unknown key: refused
    srv.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while "reload refused" not in srv.log.read_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "reload refused, keeping the running config" in srv.log.read_text()
    assert rcpt_code("sales@example.test") == 250 and rcpt_code("support@example.test") == 250
    assert srv.stop() == 0


def test_sigterm_under_load_loses_no_accepted_message_and_logs_json_with_trace_ids(serve):
    srv = serve(log={"level": "info", "json": True, "headers_level": "info"}).start()
    accepted: dict[str, str] = {}
    refused: list[str] = []

    async def client(k: int) -> None:
        smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=srv.port, timeout=10, start_tls=False)
        try:
            await smtp.connect()
            for i in range(k, 300, 6):
                mid = f"term-{i}@customer.test"
                _e, text = await smtp.sendmail("t@customer.test", ["support@example.test"],
                                               simple_message(subject=f"term {i}", message_id=mid))
                accepted[mid] = queued_id(text)
        except (aiosmtplib.SMTPException, OSError) as exc:
            refused.append(str(exc))

    async def load_then_term() -> None:
        tasks = [asyncio.create_task(client(k)) for k in range(6)]
        while len(accepted) < 60:
            await asyncio.sleep(0.005)
        srv.proc.send_signal(signal.SIGTERM)
        await asyncio.gather(*tasks)

    asyncio.run(load_then_term())
    assert srv.proc.wait(timeout=60) == 0
    assert refused, "the clients should have been told to go away (421) once draining started"
    srv.start()
    entries = {e["id"]: e for e in srv.wait_all_done()}
    assert all(entries[sid]["state"] == "ticket_created" for sid in accepted.values())
    lines = [json.loads(line) for line in srv.log.read_text().splitlines() if line.startswith("{")]
    sid = next(iter(accepted.values()))
    traced = [r for r in lines if r.get("trace_id") == sid]
    assert any(r["msg"].startswith("accepted") for r in traced)
    assert any(r["logger"] == "ticketmx.audit" and "Message-ID: <term-" in r["msg"] for r in traced)
    assert any("ticket_created" in r["msg"] for r in traced)  # the worker process logs with the same id
    assert srv.stop() == 0
