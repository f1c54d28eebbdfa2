"""A long run: does memory stay flat, and is every message handled exactly once?

``mailroom watch`` and ``mailroom worker`` run as real processes on private servers, watching
``--mailboxes`` mailboxes (one Dovecot user each) while ``--rate`` messages a second are APPENDed to
random ones for ``--minutes``. Every ``--sample`` seconds the resident memory (VmRSS, /proc/PID/status)
of both is recorded; after a warm-up (the first third of the run, at most 5 minutes) the slope of each
is fitted by least squares and printed in MB per hour, and the slopes of the two halves of the rest
apart (growth that slows down, such as pages touched for the first time, against growth that keeps
its pace). At the end every message must have been handled by the worker's ``log`` handler exactly
once (its ``email_received`` lines, by reply key).

``python -m bench.soak`` runs an hour; ``make bench`` runs ``--minutes 3``. Exit status 1 if a message
was lost or handled twice, or a slope is over ``--max-slope`` MB/h (default: no limit).

``--tracemalloc`` finds what grows: both processes run with tracemalloc on (bench/tracehook.py) and
write a snapshot when the warm-up ends, half-way through the rest and at the end; the allocation sites
that grew most from the first to the last are printed for each process, with their growth in each half
(a cache that warms up grows in the first half only, a leak in both), beside how much of the RSS growth
Python's heap accounts for and how much is glibc's (in use, or freed and kept: fragmentation). Tracing
costs CPU and memory of its own, so its slopes are not the plain run's.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections import Counter
from pathlib import Path
from typing import Any

from bench import tracehook
from bench.drain import REPO, mailroom_argv
from bench.many import Appender, many_config
from bench.scenarios import Stack
from devstack import Dovecot, RedisServer

MB = 1_000_000
KEY_PREFIX = "soak"
HOOK = "import bench.tracehook as t; t.install(); from mailroom.cli import cli; cli()"
OURS = ("/mailroom/", "/workers/")


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def slope_mb_per_hour(samples: list[tuple[float, int]]) -> float:
    """Least-squares slope of (seconds, bytes) samples, in MB per hour."""
    n = len(samples)
    if n < 2:
        return 0.0
    mean_t = sum(t for t, _ in samples) / n
    mean_b = sum(b for _, b in samples) / n
    var = sum((t - mean_t) ** 2 for t, _ in samples)
    if var == 0:
        return 0.0
    cov = sum((t - mean_t) * (b - mean_b) for t, b in samples)
    return cov / var * 3600 / MB


def _handled(log: Path) -> Counter[str]:
    counts: Counter[str] = Counter()
    with log.open(errors="replace") as lines:
        for line in lines:
            if '"email_received"' in line:
                key = json.loads(line).get("reply_key") or ""
                if key.startswith(KEY_PREFIX):
                    counts[key] += 1
    return counts


def _take_snapshot(proc: subprocess.Popen[bytes], directory: Path, number: int) -> None:
    """Ask a traced process for snapshot ``number`` and wait until it is written."""
    done = directory / f"snap-{number}.json"
    proc.send_signal(signal.SIGUSR2)
    deadline = time.monotonic() + 300
    while not done.exists():
        if time.monotonic() > deadline or proc.poll() is not None:
            raise RuntimeError(f"no tracemalloc snapshot {number} from pid {proc.pid} in {directory}")
        time.sleep(0.2)


def _site(trace: tracemalloc.Traceback) -> str:
    """Where an allocation comes from: the innermost frame in mailroom or workers, else the innermost."""
    frames = list(trace)[::-1]  # a Traceback runs oldest first
    for frame in frames:
        if any(part in frame.filename for part in OURS):
            return f"{_short(frame.filename)}:{frame.lineno}"
    return f"{_short(frames[0].filename)}:{frames[0].lineno}" if frames else "?"


def _short(filename: str) -> str:
    for marker in ("/site-packages/", "/mailroom/", "/workers/", "/bench/", "/lib/python3"):
        at = filename.rfind(marker)
        if at >= 0:
            rest = filename[at + 1 :]
            return rest.split("/", 1)[1] if marker in ("/site-packages/", "/lib/python3") else rest
    return filename


def _by_traceback(path: Path) -> dict[tracemalloc.Traceback, tuple[int, int]]:
    snap = tracemalloc.Snapshot.load(str(path)).filter_traces(
        [
            tracemalloc.Filter(False, tracemalloc.__file__),
            tracemalloc.Filter(False, "<frozen importlib._bootstrap*"),
            tracemalloc.Filter(False, tracehook.__file__, all_frames=True),
        ]
    )
    return {stat.traceback: (stat.size, stat.count) for stat in snap.statistics("traceback")}


def growth_report(directory: Path, top: int = 12) -> dict[str, Any]:
    """The memory figures of each snapshot and the allocation sites that grew most, first to last."""
    numbers = sorted(int(p.stem.split("-")[1]) for p in directory.glob("snap-*.json"))
    figures = [json.loads((directory / f"snap-{n}.json").read_text()) for n in numbers]
    tables = [_by_traceback(directory / f"snap-{n}.tracemalloc") for n in numbers]
    first, middle, last = tables[0], tables[len(tables) // 2], tables[-1]
    sites: dict[str, list[int]] = {}  # site -> [growth, count growth, first half, second half]
    examples: dict[str, tracemalloc.Traceback] = {}
    for trace in set(first) | set(last):
        size0, count0 = first.get(trace, (0, 0))
        size1, _ = middle.get(trace, (0, 0))
        size2, count2 = last.get(trace, (0, 0))
        site = _site(trace)
        row = sites.setdefault(site, [0, 0, 0, 0])
        row[0] += size2 - size0
        row[1] += count2 - count0
        row[2] += size1 - size0
        row[3] += size2 - size1
        if size2 - size0 > 0 and (site not in examples or last.get(examples[site], (0, 0))[0] < size2):
            examples[site] = trace
    ranked = sorted(sites.items(), key=lambda item: item[1][0], reverse=True)[:top]
    return {
        "figures": figures,
        "sites": [
            {
                "site": site,
                "growth": row[0],
                "count": row[1],
                "first_half": row[2],
                "second_half": row[3],
                "stack": [f"{_short(f.filename)}:{f.lineno}" for f in list(examples[site])[::-1][:8]]
                if site in examples
                else [],
            }
            for site, row in ranked
        ],
    }


def describe_growth(name: str, report: dict[str, Any], hours: float) -> list[str]:
    """Lines for one process: where its RSS growth went, and the growing allocation sites."""
    a, b = report["figures"][0], report["figures"][-1]

    def delta(key: str, sub: str | None = None) -> str:
        before = a[key][sub] if sub else a[key]
        after = b[key][sub] if sub else b[key]
        change = after - before
        rate = f", {change / MB / hours:+.2f} MB/h" if hours > 0 else ""
        return f"{before / MB:.2f} -> {after / MB:.2f} MB ({change / 1000:+.0f} KB{rate})"

    lines = [
        f"{name}: from the warm-up's end to the last snapshot ({hours * 60:.0f} min):",
        f"  RSS                          {delta('rss')}",
        f"  Python heap (traced)         {delta('traced')}",
        f"    kept between work items    {delta('kept')}",
        f"  tracemalloc's own            {delta('tracemalloc_overhead')}",
    ]
    if a.get("malloc") and b.get("malloc"):
        lines += [
            f"  glibc malloc in use          {delta('malloc', 'in_use')}",
            f"  glibc malloc freed, kept     {delta('malloc', 'free')}",
            f"  glibc malloc mmapped         {delta('malloc', 'mmap')}",
        ]
    garbage = b.get("garbage") or []
    if garbage:
        total = sum(row["bytes"] for row in garbage)
        lines.append(
            f"  cyclic garbage a full collection freed at the end ({total / 1000:.0f} KB in the top):"
        )
        for row in garbage[:8]:
            lines.append(
                f"  {row['bytes'] / 1000:9.1f} KB {row['count']:6d} {row['type']:<18} {row['where']}"
            )
    lines.append("  growing sites of what is kept (first -> last; first half, second half; blocks):")
    for row in report["sites"]:
        if row["growth"] <= 0:
            break
        halves = f"{row['first_half'] / 1000:+.1f}, {row['second_half'] / 1000:+.1f}"
        lines.append(f"  {row['growth'] / 1000:+9.1f} KB ({halves}; {row['count']:+d})  {row['site']}")
        lines.append("             " + " < ".join(row["stack"][:5]))
    return lines


def soak(
    stack: Stack,
    minutes: float,
    mailboxes: int = 50,
    rate: float = 2.0,
    sample: float = 5.0,
    say: Any = print,
    trace: bool = False,
) -> dict[str, Any]:
    """Run the watcher and a worker for ``minutes`` under ``rate`` messages/s; RSS slopes and counts.

    With ``trace``, both run under tracemalloc and the result has a ``growth`` report for each.
    """
    stack.reset_redis()
    targets = [stack.new_user(KEY_PREFIX) for _ in range(mailboxes)]
    for target in targets:
        stack.dovecot.deliver_files(target.user, [])
    config = many_config(targets, stack.workdir / "soak.yml")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    procs: dict[str, subprocess.Popen[bytes]] = {}
    logs = {name: stack.workdir / f"soak-{name}.log" for name in ("watch", "worker")}
    seconds = minutes * 60
    warmup = min(300.0, seconds / 3)
    samples: dict[str, list[tuple[float, int]]] = {"watch": [], "worker": []}
    appender = Appender(targets, 1.0 / rate, seconds, KEY_PREFIX, seed=7)
    snapdirs = {name: stack.workdir / f"tracemalloc-{name}" for name in logs}
    snap_at = [warmup, (warmup + seconds) / 2] if trace else []
    snap_times: list[float] = []
    try:
        for name, log in logs.items():
            with log.open("wb") as out:
                argv = [*mailroom_argv(), "--config", str(config), name]
                proc_env = env
                if trace:
                    argv = [sys.executable, "-c", HOOK, *argv[-3:]]
                    proc_env = {**env, tracehook.DIR_ENV: str(snapdirs[name])}
                procs[name] = subprocess.Popen(
                    argv, stdout=out, stderr=subprocess.STDOUT, cwd=REPO, env=proc_env
                )
        time.sleep(3.0)
        began = time.monotonic()
        appender.thread.start()
        next_report = began + 60
        while appender.thread.is_alive():
            now = time.monotonic()
            if snap_at and now - began >= snap_at[0]:
                snap_at.pop(0)
                for name, proc in procs.items():
                    _take_snapshot(proc, snapdirs[name], len(snap_times))
                snap_times.append(time.monotonic() - began)
                say(f"soak: tracemalloc snapshot {len(snap_times) - 1} at {snap_times[-1] / 60:.1f} min")
            for name, proc in procs.items():
                if proc.poll() is not None:
                    tail = logs[name].read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"mailroom {name} exited with {proc.returncode}:\n{tail}")
                samples[name].append((now - began, rss(proc.pid)))
            if now >= next_report:
                next_report += 60
                rss_now = ", ".join(f"{n} {s[-1][1] / MB:.1f} MB" for n, s in samples.items())
                sent = len(appender.sent)
                say(f"soak: {(now - began) / 60:.0f}/{minutes:g} min, {sent} sent; RSS {rss_now}")
            appender.thread.join(sample)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and sum(_handled(logs["worker"]).values()) < appender.count:
            time.sleep(0.5)
        time.sleep(2.0)  # a duplicate, if any, would show up now
        handled = _handled(logs["worker"])
        if trace:
            for name, proc in procs.items():
                _take_snapshot(proc, snapdirs[name], len(snap_times))
            snap_times.append(time.monotonic() - began)
    finally:
        appender.close()
        for proc in procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in procs.values():
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
    expected = {f"{KEY_PREFIX}{i}" for i in range(appender.count)}
    result: dict[str, Any] = {
        "minutes": minutes,
        "mailboxes": mailboxes,
        "rate": rate,
        "sent": appender.count,
        "handled": sum(handled.values()),
        "lost": len(expected - set(handled)),
        "twice": sum(1 for k in expected if handled[k] > 1),
        "warmup_s": warmup,
    }
    for name, points in samples.items():
        after = [(t, b) for t, b in points if t >= warmup]
        result[f"{name}_rss_start_mb"] = after[0][1] / MB if after else 0.0
        result[f"{name}_rss_end_mb"] = after[-1][1] / MB if after else 0.0
        result[f"{name}_slope_mb_h"] = slope_mb_per_hour(after)
        if after:  # growth that slows down (pages touched once) against growth that keeps its pace
            half = (after[0][0] + after[-1][0]) / 2
            result[f"{name}_halves_mb_h"] = [
                slope_mb_per_hour([p for p in after if p[0] < half]),
                slope_mb_per_hour([p for p in after if p[0] >= half]),
            ]
    if trace and len(snap_times) >= 2:
        result["snapshot_minutes"] = [round(t / 60, 2) for t in snap_times]
        result["growth"] = {name: growth_report(snapdirs[name]) for name in procs}
    return result


def describe(result: dict[str, Any]) -> str:
    def halves(name: str) -> str:
        first, second = result.get(f"{name}_halves_mb_h", [0.0, 0.0])
        return f"; halves {first:+.2f}, {second:+.2f}"

    return (
        f"{result['minutes']:g} min, {result['mailboxes']} mailboxes, {result['rate']:g} msg/s:"
        f" {result['handled']}/{result['sent']} handled, {result['lost']} lost, {result['twice']} twice;"
        f" after {result['warmup_s'] / 60:.1f} min warm-up: watcher {result['watch_rss_start_mb']:.1f} ->"
        f" {result['watch_rss_end_mb']:.1f} MB ({result['watch_slope_mb_h']:+.2f} MB/h{halves('watch')}),"
        f" worker {result['worker_rss_start_mb']:.1f} -> {result['worker_rss_end_mb']:.1f} MB"
        f" ({result['worker_slope_mb_h']:+.2f} MB/h{halves('worker')})"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.soak",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--minutes", type=float, default=60.0, help="length of the run (default: %(default)g)"
    )
    parser.add_argument("--mailboxes", type=int, default=50, help="mailboxes watched (default: %(default)d)")
    parser.add_argument(
        "--rate", type=float, default=2.0, help="messages APPENDed per second (default: %(default)g)"
    )
    parser.add_argument(
        "--sample", type=float, default=5.0, help="seconds between RSS samples (default: %(default)g)"
    )
    parser.add_argument(
        "--max-slope", type=float, help="exit 1 if a slope is over this many MB/h (default: no limit)"
    )
    parser.add_argument(
        "--tracemalloc",
        action="store_true",
        help="trace both processes' allocations and print what grew after the warm-up (default: off)",
    )
    parser.add_argument(
        "--frames",
        type=int,
        default=25,
        help="with --tracemalloc, frames kept a trace (default: %(default)d)",
    )
    parser.add_argument(
        "--keep",
        type=Path,
        help="copy the run's logs and snapshots into this directory (default: discarded)",
    )
    args = parser.parse_args(argv)
    if args.tracemalloc:
        os.environ[tracehook.FRAMES_ENV] = str(args.frames)
    with tempfile.TemporaryDirectory(prefix="mailroom-soak-") as tmp:
        root = Path(tmp)
        with RedisServer(root / "redis") as redis_server, Dovecot(root / "dovecot", users={}) as dovecot:
            stack = Stack(dovecot, redis_server, root)
            result = soak(
                stack,
                args.minutes,
                args.mailboxes,
                args.rate,
                args.sample,
                lambda line: print(f"[soak] {line}", file=sys.stderr, flush=True),
                args.tracemalloc,
            )
            if args.keep:
                args.keep.mkdir(parents=True, exist_ok=True)
                for path in root.glob("soak-*.log"):
                    shutil.copy(path, args.keep / path.name)
                for path in root.glob("tracemalloc-*"):
                    shutil.copytree(path, args.keep / path.name, dirs_exist_ok=True)
    print(describe(result))
    growth = result.pop("growth", None)
    if growth:
        minutes_traced = result["snapshot_minutes"][-1] - result["snapshot_minutes"][0]
        for name, report in growth.items():
            print("\n".join(describe_growth(name, report, minutes_traced / 60)))
    print(json.dumps(result))
    bad = result["lost"] or result["twice"]
    if args.max_slope is not None:
        bad = bad or max(result["watch_slope_mb_h"], result["worker_slope_mb_h"]) > args.max_slope
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
