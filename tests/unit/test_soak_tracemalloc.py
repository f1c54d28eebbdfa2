"""bench.soak --tracemalloc: a process with bench.tracehook writes snapshots on SIGUSR2, and the growth
report names the line that keeps growing, apart from a cache that filled before the first snapshot
and from garbage that only waits in a reference cycle for the collector."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

from bench import soak, tracehook
from bench.drain import REPO

# A leak (a list that gains 2 KB a tick), a bounded cache (full before the first snapshot) and cyclic
# garbage (freed only by the collector, which is switched off here so it piles up).
_PROGRAM = """
import gc, sys, time
import bench.tracehook
bench.tracehook.install()
gc.disable()
leak = []
cache = {i: bytes(1000) for i in range(100)}
class Node:
    pass
def cycle():
    node = Node()
    node.me = node
    node.data = bytes(3000)
print("ready", flush=True)
while True:
    leak.append(bytes(2000))  # leak-here
    cycle()
    time.sleep(0.005)
"""


def _snap(proc: subprocess.Popen[str], directory: Path, number: int) -> None:
    soak._take_snapshot(proc, directory, number)  # type: ignore[arg-type]  # only its pid and signal


def test_growth_report_names_the_leak_and_not_the_cache_or_the_garbage(tmp_path: Path) -> None:
    snaps = tmp_path / "snaps"
    env = {"PATH": "/usr/bin:/bin", tracehook.DIR_ENV: str(snaps), tracehook.FRAMES_ENV: "10"}
    proc = subprocess.Popen(
        [sys.executable, "-c", _PROGRAM], cwd=REPO, env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        for number in range(3):
            _snap(proc, snaps, number)
            time.sleep(1.0)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    report = soak.growth_report(snaps)
    top = report["sites"][0]
    assert top["site"].startswith("<string>:") and top["growth"] > 200_000
    assert top["first_half"] > 0 and top["second_half"] > 0  # a leak grows in both halves
    lines = soak.describe_growth("probe", report, 2 / 3600)
    assert any("<string>" in line for line in lines)
    # The garbage is not there: the snapshot is taken after a full collection (in the child).
    assert sum(row["growth"] for row in report["sites"] if row["growth"] > 0) < 1.5 * top["growth"]
    first, last = report["figures"][0], report["figures"][-1]
    assert last["traced"] - last["kept"] > 100_000  # the uncollected cycles were there
    assert any(row["type"] == "Node" and row["count"] > 100 for row in last["garbage"])
    assert last["rss"] > first["rss"] > 0 and last["malloc"]["in_use"] > 0
