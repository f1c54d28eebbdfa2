"""glibc's malloc arenas are capped before a process's threads start (mailroom.malloc), checked by
counting the arenas malloc_info reports after threads have allocated, in a fresh interpreter each."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from mailroom import malloc

# Threads that each allocate (bytes over 512 are glibc's, not pymalloc's), then the arena count.
_PROBE = """
import ctypes, sys, tempfile, threading
from mailroom.malloc import limit_arenas
if sys.argv[1] == "limit":
    limit_arenas()
held = []
barrier = threading.Barrier(16)
def work():
    barrier.wait()  # all at once, so glibc hands out arenas to threads contending for one
    held.extend(bytes(4096 + i) for i in range(200))
threads = [threading.Thread(target=work) for _ in range(16)]
for t in threads: t.start()
for t in threads: t.join()
libc = ctypes.CDLL(None)
libc.fopen.restype = ctypes.c_void_p
with tempfile.NamedTemporaryFile() as out:
    fp = libc.fopen(out.name.encode(), b"w")
    libc.malloc_info(0, ctypes.c_void_p(fp))
    libc.fclose(ctypes.c_void_p(fp))
    print(open(out.name).read().count("<heap nr="))
"""

glibc = pytest.mark.skipif(
    not sys.platform.startswith("linux") or os.confstr("CS_GNU_LIBC_VERSION") is None, reason="glibc only"
)


def _arenas(mode: str) -> int:
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    result = subprocess.run(
        [sys.executable, "-c", _PROBE, mode], capture_output=True, text=True, check=True, env=env
    )
    return int(result.stdout.strip())


@glibc
def test_many_threads_share_two_arenas_once_limited():
    assert _arenas("limit") <= malloc.ARENAS
    assert _arenas("default") > malloc.ARENAS  # what the limit is for: glibc's own default gives more


def test_an_operators_malloc_arena_max_is_left_alone(monkeypatch):
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert malloc.limit_arenas() is False
