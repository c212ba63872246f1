"""A real Dovecot (Debian's dovecot-imapd and dovecot-pop3d) for the source tests, started as an ordinary
process on 127.0.0.1 with a generated config, passwd-file users and Maildirs under a temporary directory,
and killed (its whole process group) afterwards.

Its files live in a directory of their own under /tmp (``tempfile.mkdtemp``), not under pytest's basetemp:
as root, Dovecot's mail user (``dovecot``) must traverse every parent of the Maildirs, and every pytest
session that starts (another test run on the machine) resets /tmp/pytest-of-root to 0700. That reset is what
made Dovecot answer ``[SERVERBUG]`` to SELECT/CREATE now and then and a running source see an empty folder
(its log: ``stat(.../dovecot.index.log) failed: Permission denied (euid=105(dovecot))``). ``root/dovecot``
(the directory the test gives) gets a symlink to it while it runs and a copy of Dovecot's log after ``stop()``.

Mail is put in by writing Maildir files directly (``deliver``/``fill``: fast, thousands a second), the way
an MDA does (tmp/ then rename into new/). Ports: IMAP (plain + STARTTLS), IMAPS, POP3, POP3S, each free.

Used by H8's POP3 and XOAUTH2 tests too: ``Dovecot(tmp_path, oauth2_introspection_url=...)`` adds an
oauth2 passdb (Dovecot's ``oauth2`` driver against a token endpoint the test runs).
"""
from __future__ import annotations

import grp
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Iterator

import pytest

DOVECOT = shutil.which("dovecot") or "/usr/sbin/dovecot"


def _free_ports(n: int) -> list[int]:
    """``n`` distinct free ports: every socket stays bound until all are chosen, so the kernel cannot hand
    out the same port twice (four separate picks once gave IMAP and POP3 one port: "duplicate listener")."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _cert(d: Path) -> tuple[Path, Path, Path]:
    """A CA and a certificate for 127.0.0.1/localhost (trustme), written as PEM files."""
    import trustme
    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1")
    ca_path, cert_path, key_path = d / "ca.pem", d / "cert.pem", d / "key.pem"
    ca.cert_pem.write_to_path(str(ca_path))
    cert.cert_chain_pems[0].write_to_path(str(cert_path))
    cert.private_key_pem.write_to_path(str(key_path))
    os.chmod(key_path, 0o600)
    return ca_path, cert_path, key_path


class Dovecot:
    """One Dovecot instance; ``start()`` returns once IMAP answers, ``stop()`` kills it."""

    def __init__(self, root: Path, users: dict[str, str] | None = None, *, idle_notify: str = "1 secs",
                 oauth2_introspection_url: str = "", extra_conf: str = "") -> None:
        self.link = root / "dovecot"
        self.root = Path(tempfile.mkdtemp(prefix="ticketmx-dovecot-"))
        if not self.link.exists():
            self.link.parent.mkdir(parents=True, exist_ok=True)
            self.link.symlink_to(self.root)
        self.users = dict(users or {"support@example.test": "s3cret"})
        self.imap_port, self.imaps_port, self.pop3_port, self.pop3s_port = _free_ports(4)
        self.idle_notify = idle_notify
        self.oauth2_introspection_url = oauth2_introspection_url
        self.extra_conf = extra_conf
        self.proc: subprocess.Popen[bytes] | None = None
        self.ca_path = self.cert_path = self.key_path = Path()
        self.uid_gid = self._owner()[:2]

    # -- layout ---------------------------------------------------------------------------------------
    def maildir(self, user: str, folder: str = "INBOX") -> Path:
        base = self.root / "mail" / user
        return base if folder == "INBOX" else base / f".{folder.replace('/', '.')}"

    def _owner(self) -> tuple[int, int, str, str]:
        """(mail uid, gid, login user, internal user): as root (Dovecot refuses mail as uid 0) the mail
        belongs to Debian's ``dovecot`` user and the login processes run as ``dovenull``; otherwise
        everything runs as the current user."""
        if os.geteuid() == 0:
            pw = pwd.getpwnam("dovecot")
            return pw.pw_uid, pw.pw_gid, "dovenull", "dovecot"
        me = pwd.getpwuid(os.geteuid()).pw_name
        return os.geteuid(), os.getegid(), me, me

    def _chown(self, top: Path) -> None:
        uid, gid = self._owner()[:2]
        if os.geteuid() != 0:
            return
        os.chown(top, uid, gid)
        for dirpath, dirnames, filenames in os.walk(top):
            for n in dirnames + filenames:
                os.chown(os.path.join(dirpath, n), uid, gid)

    def write_config(self) -> Path:
        r = self.root
        for d in ("run", "state", "mail"):
            (r / d).mkdir(parents=True, exist_ok=True)
        os.chmod(r, 0o755)   # its parent is /tmp (1777): the mail user reaches the Maildirs whatever pytest does
        os.chmod(r / "run", 0o755)
        self.ca_path, self.cert_path, self.key_path = _cert(r)
        uid, gid, login_user, internal_user = self._owner()
        lines = [f"{u}:{{PLAIN}}{p}:{uid}:{gid}::{r}/mail/{u}::" for u, p in self.users.items()]
        (r / "users").write_text("\n".join(lines) + "\n")
        os.chmod(r / "users", 0o640)
        for u in self.users:
            for sub in ("cur", "new", "tmp"):
                (self.maildir(u) / sub).mkdir(parents=True, exist_ok=True)
        self._chown(r / "mail")
        oauth = ""
        if self.oauth2_introspection_url:
            (r / "oauth2.conf").write_text(f"introspection_mode = post\nintrospection_url = "
                                           f"{self.oauth2_introspection_url}\nusername_attribute = username\n"
                                           "active_attribute = active\nactive_value = true\n")
            oauth = f"passdb {{\n  driver = oauth2\n  mechanisms = xoauth2 oauthbearer\n  args = {r}/oauth2.conf\n}}\n"
        conf = f"""
base_dir = {r}/run
state_dir = {r}/state
instance_name = ticketmx-test-{uuid.uuid4().hex[:8]}
log_path = {r}/dovecot.log
info_log_path = {r}/dovecot.log
mail_debug = {"yes" if os.environ.get("TICKETMX_DOVECOT_DEBUG") else "no"}
auth_debug = {"yes" if os.environ.get("TICKETMX_DOVECOT_DEBUG") else "no"}
protocols = imap pop3
listen = 127.0.0.1
ssl = yes
ssl_cert = <{self.cert_path}
ssl_key = <{self.key_path}
disable_plaintext_auth = no
auth_mechanisms = plain login{' xoauth2 oauthbearer' if oauth else ''}
default_login_user = {login_user}
default_internal_user = {internal_user}
default_internal_group = {grp.getgrgid(pwd.getpwnam(internal_user).pw_gid).gr_name}
first_valid_uid = {uid}
first_valid_gid = 0
mail_location = maildir:~
mail_privileged_group =
imap_idle_notify_interval = 2 mins
mailbox_idle_check_interval = {self.idle_notify}
mail_max_userip_connections = 1000
namespace inbox {{
  inbox = yes
  separator = /
}}
{oauth}passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {r}/users
}}
userdb {{
  driver = passwd-file
  args = username_format=%u {r}/users
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {self.imap_port}
  }}
  inet_listener imaps {{
    address = 127.0.0.1
    port = {self.imaps_port}
    ssl = yes
  }}
  process_min_avail = 0
  service_count = 0
  process_limit = 4
  client_limit = 1000
}}
service pop3-login {{
  inet_listener pop3 {{
    address = 127.0.0.1
    port = {self.pop3_port}
  }}
  inet_listener pop3s {{
    address = 127.0.0.1
    port = {self.pop3s_port}
    ssl = yes
  }}
}}
service imap {{
  process_limit = 1024
}}
service auth {{
  user = {"root" if os.geteuid() == 0 else internal_user}
}}
service auth-worker {{
  user = {"root" if os.geteuid() == 0 else internal_user}
}}
service anvil {{
  chroot =
}}
service stats {{
  inet_listener http {{
    port = 0
  }}
}}
{self.extra_conf}
"""
        path = r / "dovecot.conf"
        path.write_text(conf)
        return path

    # -- lifecycle ------------------------------------------------------------------------------------
    def start(self, timeout: float = 20.0) -> "Dovecot":
        conf = self.write_config()
        self.proc = subprocess.Popen([DOVECOT, "-F", "-c", str(conf)], stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                out = self.proc.stdout.read().decode("utf-8", "replace") if self.proc.stdout else ""
                raise RuntimeError(f"dovecot exited {self.proc.returncode}: {out}\n{self.log()}")
            try:
                with socket.create_connection(("127.0.0.1", self.imap_port), timeout=0.5) as s:
                    if s.recv(200).startswith(b"* OK"):
                        return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"dovecot did not answer on {self.imap_port} within {timeout}s: {self.log()}")

    def stop(self, remove: bool = True) -> None:
        """Kill Dovecot (its whole process group); ``remove``: delete its files, keeping a copy of its log
        in the test's directory (``root/dovecot.log``)."""
        if self.proc is not None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)  # its children (auth, imap, login) are in its group
            except ProcessLookupError:
                pass
            self.proc.wait(timeout=10)
            if self.proc.stdout:
                self.proc.stdout.close()
            self.proc = None
        if remove and self.root.exists():
            if self.link.is_symlink():
                self.link.unlink()
                self.link.with_suffix(".log").write_text(self.log(full=True))
            shutil.rmtree(self.root, ignore_errors=True)

    def log(self, full: bool = False) -> str:
        try:
            text = (self.root / "dovecot.log").read_text(errors="replace")
            return text if full else text[-4000:]
        except OSError:
            return ""

    def doveadm(self, *args: str) -> str:
        """``doveadm`` against this instance's config (it works on the storage directly, as the mail user)."""
        r = subprocess.run(["doveadm", "-c", str(self.root / "dovecot.conf"), *args], capture_output=True,
                           text=True, timeout=30)
        if r.returncode != 0:
            raise RuntimeError(f"doveadm {' '.join(args)}: exit {r.returncode}: {r.stderr.strip()}")
        return r.stdout

    def uidvalidity(self, user: str, folder: str = "INBOX") -> int:
        out = self.doveadm("mailbox", "status", "-u", user, "uidvalidity", folder)
        return int(out.strip().rsplit("=", 1)[1])

    def set_uidvalidity(self, user: str, value: int, folder: str = "INBOX") -> None:
        """What a server does when it rebuilds a folder's index: a new UIDVALIDITY, every UID new to clients."""
        self.doveadm("mailbox", "update", "-u", user, "--uid-validity", str(value), folder)
        assert self.uidvalidity(user, folder) == value

    # -- mail -----------------------------------------------------------------------------------------
    def deliver(self, user: str, raw: bytes, folder: str = "INBOX", seen: bool = False,
                mtime: float | None = None) -> str:
        """Put one message in a Maildir folder as an MDA does; ``seen``: already read by another client."""
        base = self.maildir(user, folder)
        if not (base / "tmp").is_dir():
            self._make_folder(base, folder != "INBOX")
        name = f"{time.time():.6f}.{uuid.uuid4().hex}.ticketmx-test"
        tmp = base / "tmp" / name
        tmp.write_bytes(raw)
        if mtime is not None:
            os.utime(tmp, (mtime, mtime))
        if self.uid_gid[0] != os.geteuid():
            os.chown(tmp, *self.uid_gid)
        final = base / ("cur" if seen else "new") / (name + (":2,S" if seen else ""))
        os.rename(tmp, final)
        return name

    def _make_folder(self, base: Path, sub: bool) -> None:
        """A Maildir folder made aside and renamed into place already owned by the mail user: Dovecot never
        sees it half made or owned by root (it would fail to write its index there: [SERVERBUG])."""
        work = self.root / "staging" / uuid.uuid4().hex  # same file system, outside every Maildir
        for d in ("cur", "new", "tmp"):
            (work / d).mkdir(parents=True)
        if sub:
            (work / "maildirfolder").touch()
        self._chown(work)
        try:
            os.rename(work, base)
        except OSError:  # made meanwhile (by Dovecot: a CREATE)
            shutil.rmtree(work, ignore_errors=True)

    def fill(self, user: str, messages: Iterator[bytes] | list[bytes]) -> int:
        n = 0
        for raw in messages:
            self.deliver(user, raw)
            n += 1
        return n

    def count(self, user: str, folder: str = "INBOX") -> int:
        base = self.maildir(user, folder)
        return sum(1 for sub in ("cur", "new") if (base / sub).is_dir() for _ in (base / sub).iterdir())

    def files(self, user: str, folder: str = "INBOX") -> list[Path]:
        base = self.maildir(user, folder)
        return [p for sub in ("cur", "new") if (base / sub).is_dir() for p in sorted((base / sub).iterdir())]

    def flags(self, user: str, folder: str = "INBOX") -> list[str]:
        return [p.name.split(":2,", 1)[1] if ":2," in p.name else "" for p in self.files(user, folder)]


@pytest.fixture
def dovecot(tmp_path: Path) -> Iterator[Dovecot]:
    d = Dovecot(tmp_path).start()
    try:
        yield d
    finally:
        d.stop()
