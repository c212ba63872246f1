"""Name child processes so ``ps -o comm``, ``top`` and the bench can tell them apart.

Every multiprocessing "spawn" child has the same command line; the kernel's
per-process name (``/proc/PID/comm``, 15 bytes) is what we can set cheaply.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)
_PR_SET_NAME = 15


def set_name(name: str) -> None:
    """Best effort: Linux only, a no-op elsewhere."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_NAME, ctypes.c_char_p(name.encode()[:15]), 0, 0, 0)
    except (OSError, AttributeError):
        log.debug("cannot set the process name", exc_info=True)
