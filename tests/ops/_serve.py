"""A real ``ticketmx serve`` subprocess for the operations tests (optionally wrapped in a sandbox)."""
from __future__ import annotations

import json
import signal
import smtplib
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from ..conftest import ROOT, free_port, toml_dump, wait_port


class Serve:
    def __init__(self, tmp_path: Path, dns_port: int, smtp_port: int | None = None,
                 tls: dict[str, str] | None = None, **over: Any) -> None:
        self.port = smtp_port or free_port()
        self.metrics_port = free_port()
        data: dict[str, Any] = {
            "smtp": {"listen": [f"127.0.0.1:{self.port}"], "hostname": "mx.example.test", "shutdown_grace": "5s"},
            "store": {"url": f"sqlite:///{tmp_path}/ops.db"},
            "mailbox": [{"address": "support@example.test", "aliases": ["help@example.test"], "queue": "IT"}],
            "metrics": {"listen": f"127.0.0.1:{self.metrics_port}"},
            "pipeline": {"processes": 1, "poll_interval": "200ms"},
            "dns": {"nameservers": [f"127.0.0.1:{dns_port}"], "timeout": "1s"},
        }
        data["smtp"].update(tls or {})
        data.update(over)
        self.config = tmp_path / "ops.toml"
        self.config.write_text(toml_dump(data))
        self.log = tmp_path / "ops-serve.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, wrapper: list[str] | None = None) -> "Serve":
        cmd = [*(wrapper or []), sys.executable, "-m", "gateway", "serve", "--config", str(self.config)]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=open(self.log, "ab"), stderr=subprocess.STDOUT)
        try:
            wait_port(self.port)
        except AssertionError:
            self.kill()
            raise AssertionError(f"serve did not open its port; log:\n{self.log.read_text()}")
        return self

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=60)

    def cli_json(self, *args: str) -> Any:
        proc = subprocess.run([sys.executable, "-m", "gateway", *args, "--json", "--config", str(self.config)],
                              capture_output=True, text=True, cwd=ROOT, timeout=60)
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)

    def http(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}{path}", timeout=5) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def send_one_and_one_refused(self, tls: ssl.SSLContext | None = None) -> str:
        """One accepted message (returns its spool id) and one refused recipient, so the counters with
        labels have samples. With ``tls``, over STARTTLS."""
        with smtplib.SMTP("127.0.0.1", self.port, timeout=30) as smtp:
            smtp.ehlo("client.customer.test")
            if tls is not None:
                smtp.starttls(context=tls)
                smtp.ehlo("client.customer.test")
            code, _ = smtp.docmd("MAIL FROM:<nobody@customer.test>")
            assert code == 250
            code, _ = smtp.docmd("RCPT TO:<no-such-mailbox@example.test>")
            assert code == 550, code
            smtp.rset()
            msg = (b"From: Alice <alice@customer.test>\r\nTo: support@example.test\r\n"
                   b"Subject: Printer on fire\r\nMessage-ID: <ops-1@customer.test>\r\n"
                   b"Date: Sun, 22 Nov 2026 10:00:00 +0000\r\n\r\nIt is on fire.\r\n")
            smtp.mail("alice@customer.test")
            smtp.rcpt("support@example.test")
            code, text = smtp.data(msg)
            assert code == 250, (code, text)
            return text.decode().rsplit("queued as", 1)[1].strip()

    def wait_state(self, spool_id: str, timeout: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            entry = self.cli_json("spool", "show", spool_id)
            if entry["state"] not in ("queued", "processing"):
                return entry
            time.sleep(0.2)
        raise AssertionError(f"{spool_id} not processed; log:\n{self.log.read_text()}")

    def wait_metric(self, needle: str, timeout: float = 30) -> str:
        """/metrics once it contains ``needle`` (worker reports arrive after each batch)."""
        deadline = time.monotonic() + timeout
        body = ""
        while time.monotonic() < deadline:
            _status, body = self.http("/metrics")
            if needle in body:
                return body
            time.sleep(0.2)
        raise AssertionError(f"{needle!r} never appeared in /metrics:\n{body}")
