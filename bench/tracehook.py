"""Memory snapshots on demand inside a process under ``bench.soak --tracemalloc``.

``python -c "import bench.tracehook as t; t.install(); from mailroom.cli import cli; cli()" ...`` runs
mailroom with tracemalloc started (``SOAK_TRACEMALLOC_FRAMES`` frames a trace, as
``PYTHONTRACEMALLOC`` would) and a SIGUSR2 handler: each signal writes ``snap-N.tracemalloc`` (a
``tracemalloc.Snapshot``) and then ``snap-N.json`` into ``SOAK_TRACEMALLOC_DIR``, N counting from 0.
The JSON holds, taken at the same moment, what the process looks like from three sides:

- ``rss``: resident memory (VmRSS), what the soak's slope is fitted to;
- ``traced``: bytes of live Python allocations tracemalloc sees (objects and their buffers, through
  pymalloc or malloc), and ``tracemalloc_overhead``, tracemalloc's own bookkeeping (in RSS, not traced);
- ``malloc``: glibc's ``mallinfo2()`` summed over its arenas: ``in_use`` (``uordblks``, what malloc has
  handed out and not had back, C libraries' too: OpenSSL, hiredis), ``free`` (``fordblks``, freed but
  kept inside the heaps: fragmentation), ``mmap`` (``hblkhd``, large blocks mapped on their own).

RSS growth that ``traced`` does not follow is outside Python's objects: fragmentation shows as ``free``
growing, a C library's own growth as ``in_use`` growing faster than ``traced``.

The figures are read first, then the snapshot is taken and written by a forked child: a snapshot of a
busy process allocates tens of MB, which glibc would keep in the traced process's heap and show as
growth of its own. The child is a copy with one thread: the other threads' frames are gone, and with
them what they hold for the work in hand (a batch being fetched, a job running). It runs a full
garbage collection, lists what that freed (``garbage``: objects only a reference cycle kept, by type
and allocation site), and snapshots the rest: what the process keeps between pieces of work (caches,
connections, registries, metrics), ``kept`` beside ``traced``. That is where a leak shows.
"""

from __future__ import annotations

import ctypes
import gc
import json
import os
import signal
import sys
import threading
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

DIR_ENV = "SOAK_TRACEMALLOC_DIR"
FRAMES_ENV = "SOAK_TRACEMALLOC_FRAMES"


class _Mallinfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
            "keepcost",
        )
    ]  # fmt: skip


def _mallinfo2() -> Callable[[], _Mallinfo2] | None:
    try:
        func = ctypes.CDLL(None).mallinfo2
    except (OSError, AttributeError):
        return None
    func.restype = _Mallinfo2
    return func


_MALLINFO2 = _mallinfo2()


def mallinfo() -> dict[str, int] | None:
    """glibc's heap figures (glibc 2.33 or later), or None elsewhere."""
    if _MALLINFO2 is None:
        return None
    info = _MALLINFO2()
    return {
        "heap": info.arena,
        "in_use": info.uordblks,
        "free": info.fordblks,
        "mmap": info.hblkhd,
        "top_pad": info.keepcost,
    }


def rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def _garbage(top: int = 15) -> list[dict[str, Any]]:
    """Collect everything; what the collector freed (objects only a reference cycle kept), by type and
    the place it was allocated (where tracemalloc knows it)."""
    gc.set_debug(gc.DEBUG_SAVEALL)
    gc.collect()
    gc.set_debug(0)
    groups: dict[tuple[str, str], list[int]] = {}
    for obj in gc.garbage:
        trace = tracemalloc.get_object_traceback(obj)
        where = " < ".join(f"{f.filename.rsplit('/', 2)[-1]}:{f.lineno}" for f in list(trace or [])[::-1][:6])
        row = groups.setdefault((type(obj).__qualname__, where), [0, 0])
        row[0] += 1
        row[1] += sys.getsizeof(obj)
    gc.garbage.clear()
    gc.collect()
    ranked = sorted(groups.items(), key=lambda item: item[1][1], reverse=True)[:top]
    return [{"type": kind, "where": where, "count": n, "bytes": size} for (kind, where), (n, size) in ranked]


def _snapshot(directory: Path, number: int) -> None:
    traced, peak = tracemalloc.get_traced_memory()
    stats: dict[str, Any] = {
        "rss": rss(),
        "traced": traced,
        "traced_peak": peak,
        "tracemalloc_overhead": tracemalloc.get_tracemalloc_memory(),
        "malloc": mallinfo(),
    }
    child = os.fork()
    if child == 0:  # the copy writes the snapshot; the traced process's heap is left as it was
        code = 1
        try:
            stats["gc"] = {"counts": gc.get_count(), "stats": gc.get_stats()}
            stats["garbage"] = _garbage()
            stats["kept"] = tracemalloc.get_traced_memory()[0]
            tracemalloc.take_snapshot().dump(str(directory / f"snap-{number}.tracemalloc"))
            part = directory / f"snap-{number}.json.part"
            part.write_text(json.dumps(stats))
            part.rename(directory / f"snap-{number}.json")  # the soak waits for this name: written last
            code = 0
        finally:
            os._exit(code)
    threading.Thread(target=os.waitpid, args=(child, 0), name="tracehook-wait", daemon=True).start()


def install() -> None:
    """Start tracing and answer SIGUSR2 with a snapshot; nothing if ``SOAK_TRACEMALLOC_DIR`` is unset."""
    where = os.environ.get(DIR_ENV)
    if not where:
        return
    directory = Path(where)
    directory.mkdir(parents=True, exist_ok=True)
    tracemalloc.start(int(os.environ.get(FRAMES_ENV, "25")))
    taken = [0]

    def on_signal(signum: int, frame: FrameType | None) -> None:
        _snapshot(directory, taken[0])
        taken[0] += 1

    signal.signal(signal.SIGUSR2, on_signal)
