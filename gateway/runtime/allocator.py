"""The C allocator's settings for the gateway's long-running processes (glibc only; a no-op elsewhere).

Why: glibc raises its mmap threshold each time a large block is freed (up to 32 MiB), so after the
first 1 MiB chunk buffers of a large message are freed, the next ones -- DATA read buffers, spool
chunks, decoded attachments up to 32 MiB, SQLite's buffers -- come from the heap and from one arena
per thread. Freed, they stay in the process (heap tops that cannot shrink, idle arenas), and a
growing buffer is copied by ``realloc`` instead of remapped. The peak RSS of a 1-5 MB message was
4-14x its size (issue 18 item 9; docs/perf.md, "Memory per message size"). A fixed threshold keeps
every block from 128 KiB in its own mapping (returned to the kernel on free, grown with ``mremap``),
and two arenas bound what idle threads keep. Small objects are unaffected (Python's own allocator
serves them from 1 MiB arenas).

``TICKETMX_MALLOC_TUNE=0`` leaves the allocator alone (glibc's own ``MALLOC_*`` environment
variables still apply either way).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os

MMAP_THRESHOLD = 128 * 1024
ARENA_MAX = 2
_M_MMAP_THRESHOLD = -3  # glibc malloc.h
_M_ARENA_MAX = -8


def tune() -> bool:
    """Apply the settings to this process; True when glibc took them. Call it early in each process
    (serve, the SMTP children, the pipeline workers): spawned processes do not inherit it."""
    if os.environ.get("TICKETMX_MALLOC_TUNE", "1") == "0":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to tune
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_ARENA_MAX, ARENA_MAX))
