"""A long run: does memory stay flat, and is every message handled exactly once?

``mailroom watch`` and ``mailroom worker`` run as real processes on private servers, watching
``--mailboxes`` mailboxes (one Dovecot user each) while ``--rate`` messages a second are APPENDed to
random ones for ``--minutes``. Every ``--sample`` seconds the resident memory (VmRSS, /proc/PID/status)
of both is recorded; after a warm-up (the first third of the run, at most 5 minutes) the slope of each
is fitted by least squares and printed in MB per hour. At the end every message must have been handled
by the worker's ``log`` handler exactly once (its ``email_received`` lines, by reply key).

``python -m bench.soak`` runs an hour; ``make bench`` runs ``--minutes 3``. Exit status 1 if a message
was lost or handled twice, or a slope is over ``--max-slope`` MB/h (default: no limit).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from imapclient import IMAPClient

from bench import messages
from bench.drain import REPO, Target, mailroom_argv
from bench.many import many_config
from bench.scenarios import Stack
from devstack import Dovecot, RedisServer

MB = 1_000_000
KEY_PREFIX = "soak"


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


class _Appender:
    """``rate`` APPENDs a second to random mailboxes, one kept connection per mailbox."""

    def __init__(self, targets: list[Target], rate: float, seconds: float) -> None:
        self.targets = targets
        self.interval = 1.0 / rate
        self.count = int(seconds * rate)
        self.sent = 0
        self._clients: dict[str, IMAPClient] = {}
        self._rng = random.Random(7)  # which mailbox: not a secret
        self.thread = threading.Thread(target=self._run, name="appender", daemon=True)

    def _run(self) -> None:
        begin = time.monotonic()
        for i in range(self.count):
            pause = begin + i * self.interval - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            target = self._rng.choice(self.targets)
            client = self._clients.get(target.user)
            if client is None:
                client = IMAPClient(target.host, port=target.port, ssl=False, timeout=30)
                client.login(target.user, target.password)
                self._clients[target.user] = client
            client.append("INBOX", messages.message(i, f"{KEY_PREFIX}{i}"))
            self.sent = i + 1

    def close(self) -> None:
        for client in self._clients.values():
            try:
                client.logout()
            except Exception:  # a bench helper: the server may be gone already
                client.shutdown()


def _handled(log: Path) -> Counter[str]:
    counts: Counter[str] = Counter()
    with log.open(errors="replace") as lines:
        for line in lines:
            if '"email_received"' in line:
                key = json.loads(line).get("reply_key") or ""
                if key.startswith(KEY_PREFIX):
                    counts[key] += 1
    return counts


def soak(
    stack: Stack,
    minutes: float,
    mailboxes: int = 50,
    rate: float = 2.0,
    sample: float = 5.0,
    say: Any = print,
) -> dict[str, Any]:
    """Run the watcher and a worker for ``minutes`` under ``rate`` messages/s; RSS slopes and counts."""
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
    appender = _Appender(targets, rate, seconds)
    try:
        for name, log in logs.items():
            with log.open("wb") as out:
                argv = [*mailroom_argv(), "--config", str(config), name]
                procs[name] = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=REPO, env=env)
        time.sleep(3.0)
        began = time.monotonic()
        appender.thread.start()
        next_report = began + 60
        while appender.thread.is_alive():
            now = time.monotonic()
            for name, proc in procs.items():
                if proc.poll() is not None:
                    tail = logs[name].read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"mailroom {name} exited with {proc.returncode}:\n{tail}")
                samples[name].append((now - began, rss(proc.pid)))
            if now >= next_report:
                next_report += 60
                rss_now = ", ".join(f"{n} {s[-1][1] / MB:.1f} MB" for n, s in samples.items())
                say(f"soak: {(now - began) / 60:.0f}/{minutes:g} min, {appender.sent} sent; RSS {rss_now}")
            appender.thread.join(sample)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and sum(_handled(logs["worker"]).values()) < appender.count:
            time.sleep(0.5)
        time.sleep(2.0)  # a duplicate, if any, would show up now
        handled = _handled(logs["worker"])
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
    return result


def describe(result: dict[str, Any]) -> str:
    return (
        f"{result['minutes']:g} min, {result['mailboxes']} mailboxes, {result['rate']:g} msg/s:"
        f" {result['handled']}/{result['sent']} handled, {result['lost']} lost, {result['twice']} twice;"
        f" after {result['warmup_s'] / 60:.1f} min warm-up: watcher {result['watch_rss_start_mb']:.1f} ->"
        f" {result['watch_rss_end_mb']:.1f} MB ({result['watch_slope_mb_h']:+.2f} MB/h), worker"
        f" {result['worker_rss_start_mb']:.1f} -> {result['worker_rss_end_mb']:.1f} MB"
        f" ({result['worker_slope_mb_h']:+.2f} MB/h)"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=60.0)
    parser.add_argument("--mailboxes", type=int, default=50)
    parser.add_argument("--rate", type=float, default=2.0, help="messages APPENDed per second")
    parser.add_argument("--sample", type=float, default=5.0, help="seconds between RSS samples")
    parser.add_argument("--max-slope", type=float, help="fail if a slope is over this many MB/h")
    args = parser.parse_args(argv)
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
            )
    print(describe(result))
    print(json.dumps(result))
    bad = result["lost"] or result["twice"]
    if args.max_slope is not None:
        bad = bad or max(result["watch_slope_mb_h"], result["worker_slope_mb_h"]) > args.max_slope
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
