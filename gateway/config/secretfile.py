"""Files that hold secrets: refuse ones others can read, create new ones private whatever the umask.

The rule is ssh's: a key, secret or password file whose mode grants anything to "other"
(``mode & 0o007``) is refused. Group bits are left alone on purpose: a file mode 0640 owned by
root and the service's group (``root:ticketmx``) is the usual way to let the daemon read a secret
it must not be able to rewrite.
"""
from __future__ import annotations

import os
import stat

PRIVATE = 0o600


def exposure(path: str) -> str | None:
    """Why ``path`` may not hold a secret (a sentence naming the file), or None when it may.

    A file that cannot be stat()ed is not judged here: the reader reports that itself.
    """
    try:
        st = os.stat(path)
    except OSError:
        return None
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o007:
        return (f"{path} is accessible by others (mode {mode:04o}); refusing to use a secret everybody can read:"
                f" chmod o-rwx {path} (0600, or 0640 with the service's group)")
    return None


def create_private(path: str, data: bytes, mode: int = PRIVATE, *, exclusive: bool = True,
                   group: int | None = None) -> int:
    """Write ``data`` to a new file created with ``mode`` (0600 by default) whatever the umask.

    The mode is set on the descriptor before a byte is written, so the secret is never readable
    by others, not even for an instant; ``exclusive`` refuses to overwrite an existing file.
    ``group`` (a gid): the file's group, so ``mode`` 0640 lets the service's group read it; when the
    caller may not give the file that group, the file stays 0600. Returns the mode the file has.
    """
    flags = os.O_WRONLY | os.O_CREAT | (os.O_EXCL if exclusive else os.O_TRUNC) | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(path, flags, mode & PRIVATE)
    try:
        if group is not None:
            try:
                os.fchown(fd, -1, group)  # before any group bit is set: never readable by the wrong group
            except PermissionError:
                mode = PRIVATE
        os.fchmod(fd, mode)  # the umask may have removed bits; an existing file keeps its old mode otherwise
        with os.fdopen(fd, "wb", closefd=False) as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    finally:
        os.close(fd)
    return mode


def ensure_mode(path: str, mode: int) -> None:
    """Create ``path`` empty with ``mode`` if it does not exist (umask-proof); leave an existing file alone."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), mode)
    except FileExistsError:
        return
    try:
        os.fchmod(fd, mode)
    finally:
        os.close(fd)


def read_fernet_keys(path: str) -> list[bytes]:
    """The keys of an encryption key file (``[store] encryption_key_file``): one Fernet key a line, the
    first encrypts, all decrypt; ``#`` lines are comments. Raises ValueError for an empty file or a line
    that is not a Fernet key, so a bad file is a config error at load, not a failure at the first write."""
    from pathlib import Path

    from cryptography.fernet import Fernet
    keys = [line.strip().encode() for line in Path(path).read_text().splitlines()
            if line.strip() and not line.startswith("#")]
    if not keys:
        raise ValueError(f"{path}: no key (generate one with `ticketmx store genkey`)")
    for n, key in enumerate(keys, 1):
        try:
            Fernet(key)
        except ValueError as exc:
            raise ValueError(f"{path}: key {n} is not a Fernet key ({exc})") from None
    return keys
