"""Run a command under restrictions that systemd/ticketmx.service asks for, without systemd.

    python tests/ops/sandbox.py seccomp systemd/ticketmx.service -- COMMAND...
    python tests/ops/sandbox.py fs --rw DIR [--rw DIR ...] -- COMMAND...      (root only)

This machine (and CI) has no systemd as PID 1, so the unit cannot be started for real.

``fs`` approximates the filesystem settings in a private mount namespace: every mount read-only
except /dev, /proc, /sys (ProtectSystem=strict; the ``--rw`` directories play StateDirectory=, and
/tmp and /var/tmp stay writable as PrivateTmp= would have them), and /proc remounted with
``hidepid=invisible,subset=pid`` (ProtectProc=invisible, ProcSubset=pid). Not reproduced: ProtectHome=
(the test interpreter may live under /root), PrivateDevices=, the ProtectKernel* settings.

``seccomp`` loads the restrictions that are plain seccomp filters, built here the way systemd 252
builds them, from the unit's own settings:

- ``SystemCallFilter=`` (allow list, then ``~`` lines taken away; groups expanded by
  ``systemd-analyze syscall-filter`` of the installed systemd) with ``SystemCallErrorNumber=``;
- ``SystemCallArchitectures=native`` (only the native ABI is allowed in the filter);
- ``RestrictAddressFamilies=`` (``socket()`` of any other family fails with EAFNOSUPPORT);
- ``MemoryDenyWriteExecute=yes`` (no W+X mmap, no mprotect/pkey_mprotect to PROT_EXEC, no SHM_EXEC);
- ``RestrictRealtime=yes`` (no realtime scheduling policy);
- ``NoNewPrivileges=yes`` (set before the filters load, as systemd does).

Like systemd, each feature is its own filter: the kernel runs all of them and the most restrictive
answer wins. Capabilities are handled by the caller (``setpriv``, between ``fs`` and ``seccomp``).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import subprocess
import sys
from pathlib import Path

SCMP_ACT_ALLOW = 0x7FFF0000
SCMP_ACT_ERRNO_BASE = 0x00050000
SCMP_CMP_EQ = 4
SCMP_CMP_MASKED_EQ = 7

PROT_WRITE, PROT_EXEC = 0x2, 0x4
SHM_EXEC = 0o100000
SCHED_FIFO, SCHED_RR, SCHED_DEADLINE = 1, 2, 6

AF_MAX = 46  # Linux 6.x: families are 0..45
FAMILIES = {"AF_UNIX": 1, "AF_LOCAL": 1, "AF_INET": 2, "AF_INET6": 10, "AF_NETLINK": 16, "AF_PACKET": 17}


class ScmpArgCmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int),
                ("datum_a", ctypes.c_uint64), ("datum_b", ctypes.c_uint64)]


def _errno_action(code: int) -> int:
    return SCMP_ACT_ERRNO_BASE | (code & 0xFFFF)


class Seccomp:
    """The few libseccomp calls needed, through ctypes (libseccomp2 comes with systemd)."""

    def __init__(self) -> None:
        name = ctypes.util.find_library("seccomp") or "libseccomp.so.2"
        lib = self.lib = ctypes.CDLL(name, use_errno=True)
        lib.seccomp_init.restype = ctypes.c_void_p
        lib.seccomp_init.argtypes = [ctypes.c_uint32]
        lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
        lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint,
                                               ctypes.POINTER(ScmpArgCmp)]
        lib.seccomp_load.argtypes = [ctypes.c_void_p]
        lib.seccomp_release.argtypes = [ctypes.c_void_p]

    def nr(self, name: str) -> int | None:
        n = self.lib.seccomp_syscall_resolve_name(name.encode())
        return n if n >= 0 else None  # negative: unknown here, or a pseudo number of another ABI

    def filter(self, default: int, rules: list[tuple[int, str, list[tuple[int, int, int, int]]]]) -> None:
        """Build one filter and load it. rules: (action, syscall, [(arg, op, a, b), ...])."""
        ctx = self.lib.seccomp_init(default)
        if not ctx:
            raise OSError("seccomp_init failed")
        try:
            for action, name, cmps in rules:
                nr = self.nr(name)
                if nr is None:
                    continue
                arr = (ScmpArgCmp * max(1, len(cmps)))(*[ScmpArgCmp(*c) for c in cmps])
                rc = self.lib.seccomp_rule_add_array(ctx, action, nr, len(cmps), arr)
                if rc < 0 and rc != -errno.EEXIST:
                    raise OSError(-rc, f"seccomp_rule_add({name}) failed")
            rc = self.lib.seccomp_load(ctx)
            if rc < 0:
                raise OSError(-rc, "seccomp_load failed")
        finally:
            self.lib.seccomp_release(ctx)


def unit_settings(unit: Path) -> dict[str, list[str]]:
    """[Service] assignments in file order (a setting may repeat)."""
    out: dict[str, list[str]] = {}
    section = ""
    for raw in unit.read_text().splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            section = line
            continue
        if section == "[Service]" and "=" in line:
            key, value = line.split("=", 1)
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def syscall_groups() -> dict[str, list[str]]:
    """Every @group of the installed systemd, as `systemd-analyze syscall-filter` prints them."""
    text = subprocess.run(["systemd-analyze", "syscall-filter", "--no-pager"], capture_output=True,
                          text=True, check=True).stdout
    groups: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in text.splitlines():
        if line.startswith("@"):
            current = groups.setdefault(line.strip(), [])
        elif current is not None and line.strip() and not line.strip().startswith("#"):
            current.append(line.strip())
        elif not line.strip():
            current = None
    return groups


def expand(items: list[str], groups: dict[str, list[str]]) -> set[str]:
    out: set[str] = set()
    for item in items:
        if item.startswith("@"):
            out |= expand(groups[item], groups)
        else:
            out.add(item)
    return out


def allowed_syscalls(settings: dict[str, list[str]]) -> set[str] | None:
    """The allow list SystemCallFilter= lines add up to (None: no filter)."""
    lines = settings.get("SystemCallFilter", [])
    if not lines:
        return None
    groups = syscall_groups()
    allowed: set[str] | None = None
    for line in lines:
        deny = line.startswith("~")
        names = line.lstrip("~").split()
        if allowed is None:
            if deny:
                raise SystemExit("a deny-list SystemCallFilter= is not reproduced here")
            allowed = expand(["@default"], groups)  # systemd always allows @default
        if deny:
            allowed -= expand(names, groups) - expand(["@default"], groups)
        else:
            allowed |= expand(names, groups)
    return allowed


def apply(unit: Path) -> list[str]:
    """Load the unit's filters into this process; returns what was applied (for the log)."""
    s = unit_settings(unit)
    sc = Seccomp()
    allowed = allowed_syscalls(s)  # runs systemd-analyze: before any filter is loaded
    done: list[str] = []
    err_name = (s.get("SystemCallErrorNumber") or [""])[-1]
    deny_action = _errno_action(getattr(errno, err_name)) if err_name else 0x80000000  # KILL_PROCESS
    # NoNewPrivileges=yes (libseccomp would also set it; be explicit)
    libc = ctypes.CDLL(None, use_errno=True)
    if (s.get("NoNewPrivileges") or ["no"])[-1] == "yes":
        PR_SET_NO_NEW_PRIVS = 38
        if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "PR_SET_NO_NEW_PRIVS")
        done.append("NoNewPrivileges")
    if (s.get("MemoryDenyWriteExecute") or ["no"])[-1] == "yes":
        eperm = _errno_action(errno.EPERM)
        wx = PROT_WRITE | PROT_EXEC
        sc.filter(SCMP_ACT_ALLOW, [
            (eperm, "mmap", [(2, SCMP_CMP_MASKED_EQ, wx, wx)]),
            (eperm, "mprotect", [(2, SCMP_CMP_MASKED_EQ, PROT_EXEC, PROT_EXEC)]),
            (eperm, "pkey_mprotect", [(2, SCMP_CMP_MASKED_EQ, PROT_EXEC, PROT_EXEC)]),
            (eperm, "shmat", [(2, SCMP_CMP_MASKED_EQ, SHM_EXEC, SHM_EXEC)]),
        ])
        done.append("MemoryDenyWriteExecute")
    families = " ".join(s.get("RestrictAddressFamilies", [])).split()
    if families:
        keep = {FAMILIES[f] for f in families}
        eaf = _errno_action(errno.EAFNOSUPPORT)
        sc.filter(SCMP_ACT_ALLOW, [(eaf, "socket", [(0, SCMP_CMP_EQ, af, 0)])
                                   for af in range(AF_MAX) if af not in keep])
        done.append("RestrictAddressFamilies " + " ".join(families))
    if (s.get("RestrictRealtime") or ["no"])[-1] == "yes":
        eperm = _errno_action(errno.EPERM)
        sc.filter(SCMP_ACT_ALLOW, [(eperm, "sched_setscheduler", [(1, SCMP_CMP_EQ, p, 0)])
                                   for p in (SCHED_FIFO, SCHED_RR, SCHED_DEADLINE)])
        done.append("RestrictRealtime")
    arch = (s.get("SystemCallArchitectures") or [""])[-1]
    if arch and arch != "native":
        raise SystemExit(f"SystemCallArchitectures={arch} is not reproduced here")
    # Last, as systemd does: the allow list forbids seccomp() itself, so no filter can follow it.
    if allowed is not None:
        sc.filter(deny_action, [(SCMP_ACT_ALLOW, name, []) for name in sorted(allowed)])
        done.append(f"SystemCallFilter ({len(allowed)} names)")
    return done


CLONE_NEWNS = 0x00020000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 0x1, 0x2, 0x4, 0x8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 0x20, 0x1000, 0x4000, 0x40000
API_FS = ("/proc", "/sys", "/dev")


def _mount(libc: ctypes.CDLL, source: str | None, target: str, fstype: str | None, flags: int,
           data: str | None = None) -> None:
    enc = (lambda v: v.encode() if v is not None else None)
    if libc.mount(enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {source} {target} {fstype} {flags:#x} {data}: {os.strerror(err)}")


def _under(path: str, tops: tuple[str, ...] | list[str]) -> bool:
    return any(path == t or path.startswith(t.rstrip("/") + "/") for t in tops)


def filesystem(rw: list[str]) -> list[str]:
    """Private mount namespace: read-only but for ``rw``, /tmp, /var/tmp and the API filesystems."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNS) != 0:
        raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNS)")
    _mount(libc, None, "/", None, MS_REC | MS_PRIVATE)  # nothing below propagates back to the host
    writable = [os.path.realpath(p) for p in [*rw, "/tmp", "/var/tmp"] if os.path.isdir(p)]
    for path in writable:
        _mount(libc, path, path, None, MS_BIND | MS_REC)
    mounts = [line.split()[4] for line in open("/proc/self/mountinfo")]
    for mp in sorted(set(mounts), key=len):
        mp = mp.replace("\\040", " ")
        if _under(mp, API_FS) or _under(mp, writable) or _under(mp, ["/mnt"]):
            continue
        try:
            _mount(libc, None, mp, None, MS_REMOUNT | MS_BIND | MS_RDONLY)
        except OSError as exc:
            if exc.errno not in (errno.EACCES, errno.EPERM, errno.EINVAL):
                raise
    _mount(libc, "proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, "hidepid=invisible,subset=pid")
    return [f"ProtectSystem=strict (writable: {' '.join(writable)})", "ProcSubset=pid", "ProtectProc=invisible"]


def main(argv: list[str]) -> None:
    if len(argv) < 3 or argv[0] not in ("seccomp", "fs") or "--" not in argv:
        raise SystemExit(f"usage: {sys.argv[0]} seccomp UNIT -- COMMAND... | fs [--rw DIR]... -- COMMAND...")
    sep = argv.index("--")
    args, cmd = argv[1:sep], argv[sep + 1:]
    if argv[0] == "fs":
        if len(args) % 2 or any(a != "--rw" for a in args[::2]):
            raise SystemExit("fs takes --rw DIR options only")
        done = filesystem(args[1::2])
    else:
        if len(args) != 1:
            raise SystemExit("seccomp takes one UNIT")
        done = apply(Path(args[0]))
    print(f"sandbox: {', '.join(done)}; exec {cmd[0]}", file=sys.stderr, flush=True)
    os.execvp(cmd[0], cmd)


if __name__ == "__main__":
    main(sys.argv[1:])
