"""Fewer glibc malloc arenas in a process of many threads, so its resident memory stays flat.

glibc gives threads their own malloc arenas, up to eight per core, each a heap of its own that is
returned to the system only from its top. With a watcher thread per mailbox and worker threads each
allocating message-sized buffers, memory freed in one arena is not reused by threads allocating in
another, and RSS creeps up over hours (bench/soak.py). Two arenas is the setting widely used for
threaded Python services (``MALLOC_ARENA_MAX=2``); it must be chosen before the threads start.
An operator's own ``MALLOC_ARENA_MAX`` wins; elsewhere than glibc this does nothing.
"""

from __future__ import annotations

import ctypes
import os

M_ARENA_MAX = -8  # glibc's mallopt parameter number (malloc.h)
ARENAS = 2


def limit_arenas(count: int = ARENAS) -> bool:
    """Cap glibc's malloc arenas at ``count``; True if it was set here."""
    if "MALLOC_ARENA_MAX" in os.environ:
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc: musl, macOS
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_ARENA_MAX, count))
