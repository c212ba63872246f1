"""`ticketmx serve` under the unit's restrictions: SystemCallFilter=@system-service (minus @privileged
@resources), MemoryDenyWriteExecute, RestrictAddressFamilies, RestrictRealtime and NoNewPrivileges as
seccomp filters, CAP_NET_BIND_SERVICE as its only capability, and (as root) a read-only filesystem but
for its state directory with /proc limited to processes. None of it may break CPython, asyncio, SQLite,
STARTTLS, the auth checks' DNS or the spawned pipeline worker process, and a port below 1024 binds with
the one ambient capability. No systemd as PID 1 is needed: tests/ops/sandbox.py builds the filters the
way systemd does from the unit (its docstring says what is and is not reproduced)."""
from __future__ import annotations

import ctypes.util
import json
import os
import random
import shutil
import socket
import ssl
import subprocess
import sys
from pathlib import Path

import pytest

from ..conftest import ROOT
from ._serve import Serve

UNIT = ROOT / "systemd" / "ticketmx.service"
SANDBOX = ROOT / "tests" / "ops" / "sandbox.py"
CAP_NET_BIND_SERVICE = 1 << 10

pytestmark = [
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="seccomp is Linux only"),
    pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                       reason="systemd-analyze not found: install the Debian package `systemd`"),
    pytest.mark.skipif(ctypes.util.find_library("seccomp") is None,
                       reason="libseccomp not found: install the Debian package `libseccomp2` (systemd "
                              "depends on it)"),
]

AS_ROOT = os.geteuid() == 0 and shutil.which("setpriv") is not None


def _mount_namespaces_work() -> bool:
    if not AS_ROOT:
        return False
    proc = subprocess.run([sys.executable, str(SANDBOX), "fs", "--", "true"], capture_output=True, timeout=30)
    return proc.returncode == 0


FS = _mount_namespaces_work()  # false in a container without CAP_SYS_ADMIN: the fs part is left out


def wrapper(state_dir: Path) -> list[str]:
    """As root: a private mount namespace where only ``state_dir``, /tmp and /var/tmp are writable
    and /proc shows processes only (``sandbox.py fs``); then capabilities like the unit's — nothing but
    CAP_NET_BIND_SERVICE (bounding, ambient), with the noroot securebits so that exec does not give
    a uid 0 process its capabilities back (``setpriv``); then the seccomp filters (``sandbox.py
    seccomp``). Not root: the seccomp filters only."""
    prefix: list[str] = []
    if FS:
        prefix = [sys.executable, str(SANDBOX), "fs", "--rw", str(state_dir), "--"]
    if AS_ROOT:
        prefix += ["setpriv", "--bounding-set=-all,+net_bind_service", "--inh-caps=-all,+net_bind_service",
                   "--ambient-caps=-all,+net_bind_service",
                   "--securebits=+noroot,+noroot_locked,+no_setuid_fixup,+no_setuid_fixup_locked", "--"]
    return [*prefix, sys.executable, str(SANDBOX), "seccomp", str(UNIT), "--"]


PROBE = r"""
import errno, json, mmap, os, socket
out = {}
def attempt(name, fn):
    try:
        fn()
        out[name] = "ok"
    except OSError as exc:
        out[name] = errno.errorcode.get(exc.errno, str(exc.errno))
attempt("mmap_wx", lambda: mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC))
attempt("mmap_rw", lambda: mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE))
attempt("netlink", lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0).close())
attempt("packet", lambda: socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0).close())
attempt("inet6", lambda: socket.socket(socket.AF_INET6, socket.SOCK_STREAM).close())
attempt("unix", lambda: socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).close())
attempt("setaffinity", lambda: os.sched_setaffinity(0, os.sched_getaffinity(0)))
attempt("setpriority", lambda: os.setpriority(os.PRIO_PROCESS, 0, os.getpriority(os.PRIO_PROCESS, 0)))
attempt("setuid", lambda: os.setuid(os.getuid()))
attempt("fifo", lambda: os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1)))
attempt("chroot", lambda: os.chroot("/"))
attempt("write_repo", lambda: open("/usr/.ticketmx-sandbox-probe", "w").close())  # outside /tmp wherever the repo is
attempt("cpuinfo", lambda: open("/proc/cpuinfo").close())
status = dict(l.split(":\t", 1) for l in open("/proc/self/status").read().splitlines() if ":\t" in l)
out["seccomp"] = status["Seccomp"].strip()
out["nnp"] = status["NoNewPrivs"].strip()
out["cap_eff"] = status["CapEff"].strip()
print(json.dumps(out))
"""


def test_the_filters_bite(tmp_path):
    """The sandbox is not a no-op: what the unit forbids fails the way systemd makes it fail."""
    proc = subprocess.run([*wrapper(tmp_path), sys.executable, "-c", PROBE], capture_output=True, text=True,
                          timeout=60, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    assert got["seccomp"] == "2" and got["nnp"] == "1"
    assert got["mmap_wx"] == "EPERM" and got["mmap_rw"] == "ok"               # MemoryDenyWriteExecute
    assert got["netlink"] == "EAFNOSUPPORT" and got["packet"] == "EAFNOSUPPORT"  # RestrictAddressFamilies
    assert got["inet6"] == "ok" and got["unix"] == "ok"
    assert got["setaffinity"] == "EPERM" and got["setpriority"] == "EPERM"     # ~@resources
    assert got["setuid"] == "EPERM" and got["chroot"] == "EPERM"               # ~@privileged
    assert got["fifo"] == "EPERM"                                              # RestrictRealtime
    if AS_ROOT:
        assert int(got["cap_eff"], 16) == CAP_NET_BIND_SERVICE
    if FS:
        assert got["write_repo"] == "EROFS"                                    # ProtectSystem=strict (/usr)
        assert got["cpuinfo"] == "ENOENT"                                      # ProcSubset=pid


def privileged_port() -> int:
    ports = list(range(600, 1000))
    random.shuffle(ports)
    for port in ports:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
                return port
            except OSError:
                continue
    pytest.skip("no free port below 1024")


def test_serve_runs_under_the_unit_restrictions(tmp_path, dns_server):
    """SMTP on a port below 1024 with STARTTLS, SPF/DMARC lookups, the spawned pipeline worker,
    SQLite, /metrics, SIGTERM: all under the filters."""
    import trustme
    dns_server.set_zone({"customer.test": [("TXT", "v=spf1 ip4:127.0.0.1 -all")],
                         "_dmarc.customer.test": [("TXT", "v=DMARC1; p=reject")]})
    ca = trustme.CA()
    cert = ca.issue_cert("mx.example.test", "127.0.0.1")
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
    cert.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    (tmp_path / "key.pem").chmod(0o600)
    client_tls = ssl.create_default_context()
    ca.configure_trust(client_tls)
    client_tls.check_hostname = False
    port = privileged_port() if AS_ROOT else None
    srv = Serve(tmp_path, dns_server.port, smtp_port=port,
                tls={"tls_cert": str(tmp_path / "cert.pem"), "tls_key": str(tmp_path / "key.pem")})
    srv.start(wrapper=wrapper(tmp_path))
    try:
        assert srv.proc is not None
        status = dict(line.split(":\t", 1) for line in open(f"/proc/{srv.proc.pid}/status").read().splitlines()
                      if ":\t" in line)
        assert status["Seccomp"].strip() == "2", "serve is not running under the filters"
        if AS_ROOT:
            assert int(status["CapEff"], 16) == CAP_NET_BIND_SERVICE
        spool_id = srv.send_one_and_one_refused(tls=client_tls)
        entry = srv.wait_state(spool_id)
        assert entry["state"] == "ticket_created", entry
        assert entry["tls"]["version"].startswith("TLSv1"), entry  # STARTTLS (OpenSSL) under the filters
        assert "spf=pass" in json.dumps(entry), entry  # the DNS lookups worked inside the sandbox
        srv.wait_metric('ticketmx_pipeline_outcomes_total{state="ticket_created"} 1.0')
        assert srv.http("/readyz") == (200, "ready\n")
    finally:
        code = srv.stop()
    log = srv.log.read_text()
    assert code == 0, log
    assert "sandbox: NoNewPrivileges, MemoryDenyWriteExecute" in log and "SystemCallFilter" in log
    if FS:
        assert "sandbox: ProtectSystem=strict" in log
    assert "pipeline worker" in log and "started (pid" in log   # the spawned worker process ran
    for bad in ("Traceback", "Operation not permitted", "PermissionError"):
        assert bad not in log, log
